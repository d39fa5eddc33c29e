//! The `describe --all` table, written one layer at a time: CSV (list cells as JSON arrays, so
//! token text with commas, quotes or newlines survives) or Parquet (native list columns), both
//! readable from pandas.

use crate::analyze::describe::{describe_all, token_texts, AllTiming, NeuronTop, Scored};
use crate::error::user_error;
use crate::model::Model;
use anyhow::Result;

/// Writes `describe --all` results one layer at a time.
pub enum TableWriter {
    Csv(std::io::BufWriter<std::fs::File>),
    Parquet {
        path: std::path::PathBuf,
        writer: Option<Box<parquet::arrow::ArrowWriter<std::fs::File>>>,
    },
}

pub const TABLE_COLUMNS: [&str; 9] = [
    "neuron",
    "layer",
    "index",
    "promotes",
    "promote_ids",
    "promote_scores",
    "suppresses",
    "suppress_ids",
    "suppress_scores",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    Parquet,
}

impl TableFormat {
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
        {
            Some(e) if e == "csv" => Ok(TableFormat::Csv),
            Some(e) if e == "parquet" => Ok(TableFormat::Parquet),
            _ => Err(user_error(format!(
                "{}: unknown table format (name it .csv or .parquet)",
                path.display()
            ))),
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl TableWriter {
    pub fn create(path: &std::path::Path, format: TableFormat) -> Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| user_error(format!("{}: cannot create: {e}", path.display())))?;
        Ok(match format {
            TableFormat::Csv => {
                use std::io::Write;
                let mut w = std::io::BufWriter::new(file);
                writeln!(w, "{}", TABLE_COLUMNS.join(","))?;
                TableWriter::Csv(w)
            }
            TableFormat::Parquet => {
                drop(file);
                TableWriter::Parquet {
                    path: path.to_path_buf(),
                    writer: None,
                }
            }
        })
    }

    /// `texts[id]` is token `id`'s text.
    pub fn write_layer(
        &mut self,
        layer: usize,
        rows: &[NeuronTop],
        texts: &[String],
    ) -> Result<()> {
        let text = |id: u32| texts.get(id as usize).map(String::as_str).unwrap_or("");
        match self {
            TableWriter::Csv(w) => {
                use std::io::Write;
                for r in rows {
                    let cells = |s: &[Scored]| -> Result<[String; 3]> {
                        let toks: Vec<&str> = s.iter().map(|x| text(x.id)).collect();
                        let ids: Vec<u32> = s.iter().map(|x| x.id).collect();
                        let scores: Vec<f32> = s.iter().map(|x| x.score).collect();
                        Ok([
                            csv_field(&serde_json::to_string(&toks)?),
                            csv_field(&serde_json::to_string(&ids)?),
                            csv_field(&serde_json::to_string(&scores)?),
                        ])
                    };
                    let [pt, pi, ps] = cells(&r.promotes)?;
                    let [st, si, ss] = cells(&r.suppresses)?;
                    writeln!(
                        w,
                        "{layer}.{},{layer},{},{pt},{pi},{ps},{st},{si},{ss}",
                        r.index, r.index
                    )?;
                }
            }
            TableWriter::Parquet { path, writer } => {
                let batch = parquet_batch(layer, rows, &text)?;
                if writer.is_none() {
                    let file = std::fs::File::create(&*path).map_err(|e| {
                        user_error(format!("{}: cannot create: {e}", path.display()))
                    })?;
                    *writer = Some(Box::new(parquet::arrow::ArrowWriter::try_new(
                        file,
                        batch.schema(),
                        None,
                    )?));
                }
                if let Some(w) = writer {
                    w.write(&batch)?;
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        match self {
            TableWriter::Csv(mut w) => {
                use std::io::Write;
                w.flush()?;
            }
            TableWriter::Parquet { writer, .. } => {
                if let Some(w) = writer {
                    w.close()?;
                }
            }
        }
        Ok(())
    }
}

fn parquet_batch<'a>(
    layer: usize,
    rows: &[NeuronTop],
    text: &dyn Fn(u32) -> &'a str,
) -> Result<arrow_array::RecordBatch> {
    use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder, UInt32Builder};
    use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
    use std::sync::Arc;
    let neuron = StringArray::from_iter_values(rows.iter().map(|r| format!("{layer}.{}", r.index)));
    let layers = UInt32Array::from_iter_values(rows.iter().map(|_| layer as u32));
    let index = UInt32Array::from_iter_values(rows.iter().map(|r| r.index as u32));
    let lists = |pick: &dyn Fn(&NeuronTop) -> &[Scored]| -> [ArrayRef; 3] {
        let mut toks = ListBuilder::new(StringBuilder::new());
        let mut ids = ListBuilder::new(UInt32Builder::new());
        let mut scores = ListBuilder::new(Float32Builder::new());
        for r in rows {
            for s in pick(r) {
                toks.values().append_value(text(s.id));
                ids.values().append_value(s.id);
                scores.values().append_value(s.score);
            }
            toks.append(true);
            ids.append(true);
            scores.append(true);
        }
        [
            Arc::new(toks.finish()),
            Arc::new(ids.finish()),
            Arc::new(scores.finish()),
        ]
    };
    let [pt, pi, ps] = lists(&|r| &r.promotes);
    let [st, si, ss] = lists(&|r| &r.suppresses);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(neuron),
        Arc::new(layers),
        Arc::new(index),
        pt,
        pi,
        ps,
        st,
        si,
        ss,
    ];
    Ok(RecordBatch::try_from_iter(
        TABLE_COLUMNS.iter().copied().zip(cols),
    )?)
}

/// `describe --all`: every neuron's top tokens into the table at `out` (written atomically).
/// `progress` gets the neurons done so far and the timing up to then.
pub fn write_describe_table(
    m: &Model,
    out: &std::path::Path,
    format: TableFormat,
    top: usize,
    chunk: usize,
    progress: &mut dyn FnMut(usize, &AllTiming),
) -> Result<AllTiming> {
    let texts = token_texts(m)?;
    let mut timing = None;
    crate::output::write_atomic(out, |tmp| {
        let mut w = TableWriter::create(tmp, format)?;
        let t = describe_all(
            m,
            top,
            chunk,
            |layer, rows| w.write_layer(layer, &rows, &texts),
            |done, t| progress(done, t),
        )?;
        w.finish()?;
        timing = Some(t);
        Ok(())
    })?;
    timing.ok_or_else(|| anyhow::anyhow!("describe --all finished without timing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_quote_what_needs_it() {
        assert_eq!(csv_field("abc"), "abc");
        assert_eq!(csv_field("[\"a,b\"]"), "\"[\"\"a,b\"\"]\"");
        assert_eq!(csv_field("x\ny"), "\"x\ny\"");
    }
}
