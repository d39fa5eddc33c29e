//! One string column of a Parquet file, read one record batch at a time.

use super::Skip;
use crate::error::{user_error, UserContext};
use anyhow::Result;
use arrow_array::cast::AsArray;
use arrow_array::Array;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct TextColumn {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    pending: VecDeque<std::result::Result<String, Skip>>,
    rows_read: u64,
    total_rows: u64,
    file_size: u64,
}

impl TextColumn {
    pub fn open(path: &Path, field: &str) -> Result<Self> {
        let shown = || format!("{}", path.display());
        let file = File::open(path).user_context(shown)?;
        let file_size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            user_error(format!(
                "{}: not a readable Parquet file: {e}",
                path.display()
            ))
        })?;
        let idx = builder.schema().index_of(field).map_err(|_| {
            let names: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            user_error(format!(
                "{}: no column `{field}` (columns: {}; choose one with --text-field)",
                path.display(),
                names.join(", ")
            ))
        })?;
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(1024)
            .build()
            .user_context(shown)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            pending: VecDeque::new(),
            rows_read: 0,
            total_rows,
            file_size,
        })
    }

    pub fn approx_bytes_read(&self) -> u64 {
        if self.total_rows == 0 {
            return 0;
        }
        (self.file_size as f64 * self.rows_read as f64 / self.total_rows as f64) as u64
    }

    pub fn next_text(&mut self) -> Result<Option<std::result::Result<String, Skip>>> {
        while self.pending.is_empty() {
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| {
                user_error(format!("{}: cannot read Parquet: {e}", self.path.display()))
            })?;
            let col = batch.column(0);
            let texts: Vec<Option<&str>> = if let Some(a) = col.as_string_opt::<i32>() {
                a.iter().collect()
            } else if let Some(a) = col.as_string_opt::<i64>() {
                a.iter().collect()
            } else if let Some(a) = col.as_string_view_opt() {
                a.iter().collect()
            } else {
                return Err(user_error(format!(
                    "{}: the text column is of type {}, not a string",
                    self.path.display(),
                    col.data_type()
                )));
            };
            self.pending.extend(texts.into_iter().map(|t| match t {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                _ => Err(Skip::Empty),
            }));
        }
        self.rows_read += 1;
        Ok(self.pending.pop_front())
    }
}
