//! Numeric matrices from users (recorded brain responses, repeats): NumPy `.npy`, safetensors,
//! CSV and Parquet, read into f32 in row-major (C) order whatever the file's layout.
//!
//! Invariants: the result's `shape` multiplies to `data.len()`; a file that is not what its
//! extension says, an unsupported dtype, a ragged CSV row or a non-numeric column is a user error
//! naming the file. Non-finite values are kept here: the caller decides (align refuses them,
//! naming row and column via [`Array::first_non_finite`]).
//! - `.npy`: little- or big-endian f2/f4/f8/i1–i8/u1–u8, C or Fortran order, any rank;
//! - `.safetensors`: the only tensor, or the one named by `key`;
//! - `.csv`: comma-separated numbers, one row per line; a first line that does not parse is a
//!   header, and a header whose first cell is empty or `Unnamed: 0` marks an index column
//!   (pandas' `to_csv`), which is dropped; an empty cell is NaN;
//! - `.parquet`: every numeric column is a unit (pandas' `__index_level_0__` skipped), nulls NaN.

use crate::error::{user_error, UserContext};
use anyhow::Result;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    /// (row, column) of the first NaN or infinity, for a 2-D array (or (index, 0)).
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        let cols = self
            .shape
            .get(1..)
            .map_or(1, |s| s.iter().product::<usize>().max(1));
        self.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i / cols, i % cols))
    }
}

/// Read a matrix (or array) by extension; `key` picks a safetensors tensor.
pub fn read_array(path: &Path, key: Option<&str>) -> Result<Array> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let a = match ext.as_str() {
        "npy" => read_npy(path)?,
        "safetensors" => read_safetensors(path, key)?,
        "csv" => read_csv(path)?,
        "parquet" => read_parquet(path)?,
        _ => {
            return Err(user_error(format!(
                "{}: unknown matrix format (use .npy, .safetensors, .csv or .parquet)",
                path.display()
            )))
        }
    };
    if a.shape.iter().product::<usize>() != a.data.len() {
        return Err(user_error(format!(
            "{}: shape {:?} does not match its {} values",
            path.display(),
            a.shape,
            a.data.len()
        )));
    }
    Ok(a)
}

fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    Some(rest)
}

fn read_npy(path: &Path) -> Result<Array> {
    let bad = |why: String| {
        user_error(format!(
            "{}: not a readable .npy file: {why}",
            path.display()
        ))
    };
    let bytes = std::fs::read(path).user_context(|| format!("{}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header".into()))?;
    let descr = header_field(header, "descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("no descr".into()))?;
    let fortran = header_field(header, "fortran_order")
        .map(|r| r.starts_with("True"))
        .unwrap_or(false);
    let shape_s = header_field(header, "shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(format!("shape ({shape_s})")))?;
    if !descr.is_ascii() || descr.len() < 3 {
        return Err(bad(format!("dtype {descr}")));
    }
    let (endian, kind) = descr.split_at(1);
    let big = endian == ">";
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    let size: usize = kind[1..]
        .parse()
        .map_err(|_| bad(format!("dtype {descr}")))?;
    if body.len() < n * size {
        return Err(bad(format!(
            "{} bytes of data for shape {shape:?} of {descr}",
            body.len()
        )));
    }
    let word = |i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        let src = &body[i * size..(i + 1) * size];
        if big {
            for (k, b) in src.iter().rev().enumerate() {
                w[k] = *b;
            }
        } else {
            w[..size].copy_from_slice(src);
        }
        w
    };
    let conv: Box<dyn Fn([u8; 8]) -> f32> = match (&kind[..1], size) {
        ("f", 2) => Box::new(|w| half::f16::from_le_bytes([w[0], w[1]]).to_f32()),
        ("f", 4) => Box::new(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        ("f", 8) => Box::new(|w| f64::from_le_bytes(w) as f32),
        ("i", 1) => Box::new(|w| w[0] as i8 as f32),
        ("i", 2) => Box::new(|w| i16::from_le_bytes([w[0], w[1]]) as f32),
        ("i", 4) => Box::new(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f32),
        ("i", 8) => Box::new(|w| i64::from_le_bytes(w) as f32),
        ("u", 1) => Box::new(|w| w[0] as f32),
        ("u", 2) => Box::new(|w| u16::from_le_bytes([w[0], w[1]]) as f32),
        ("u", 4) => Box::new(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f32),
        ("u", 8) => Box::new(|w| u64::from_le_bytes(w) as f32),
        _ => return Err(bad(format!("unsupported dtype {descr} (numbers only)"))),
    };
    let flat: Vec<f32> = (0..n).map(|i| conv(word(i))).collect();
    let data = if fortran && shape.len() > 1 {
        // Fortran order: the first index varies fastest.
        let mut out = vec![0f32; n];
        let mut idx = vec![0usize; shape.len()];
        for v in flat {
            let mut c = 0;
            for (d, i) in idx.iter().enumerate() {
                c = c * shape[d] + i;
            }
            out[c] = v;
            for d in 0..shape.len() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    } else {
        flat
    };
    Ok(Array { shape, data })
}

fn read_safetensors(path: &Path, key: Option<&str>) -> Result<Array> {
    let file = std::fs::File::open(path).user_context(|| format!("{}", path.display()))?;
    // SAFETY: read-only map of a file we only read; a concurrent truncation is the user's doing.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.user_context(|| format!("{}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
        user_error(format!(
            "{}: corrupt or truncated safetensors file ({e})",
            path.display()
        ))
    })?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let name = match key {
        Some(k) => k.to_string(),
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(user_error(format!(
                "{}: holds {} tensors ({}); name one with --brain-key",
                path.display(),
                names.len(),
                names.join(", ")
            )))
        }
    };
    let t = st.tensor(&name).map_err(|_| {
        user_error(format!(
            "{}: no tensor `{name}` (tensors: {})",
            path.display(),
            names.join(", ")
        ))
    })?;
    use safetensors::tensor::Dtype as D;
    let b = t.data();
    let data: Vec<f32> = match t.dtype() {
        D::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        D::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        D::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        D::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        D::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        D::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        other => {
            return Err(user_error(format!(
            "{}: tensor `{name}` has dtype {other:?}; numbers (f32, f64, f16, bf16, i32, i64) only",
            path.display()
        )))
        }
    };
    Ok(Array {
        shape: t.shape().to_vec(),
        data,
    })
}

fn read_csv(path: &Path) -> Result<Array> {
    let text = std::fs::read_to_string(path).user_context(|| format!("{}", path.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let parse = |c: &str| -> Option<f32> {
        let c = c.trim().trim_matches('"');
        if c.is_empty() || c.eq_ignore_ascii_case("nan") {
            Some(f32::NAN)
        } else {
            c.parse::<f32>().ok()
        }
    };
    let mut skip_first_col = false;
    let header: Option<&str> = lines.peek().map(|(_, l)| *l);
    if let Some(first) = header {
        let cells: Vec<&str> = first.split(',').collect();
        if cells.iter().any(|c| parse(c).is_none()) {
            let c0 = cells[0].trim().trim_matches('"');
            skip_first_col = c0.is_empty() || c0 == "Unnamed: 0";
            lines.next();
        }
    }
    let mut data = Vec::new();
    let mut cols = None;
    let mut rows = 0;
    for (i, line) in lines {
        let mut cells: Vec<&str> = line.split(',').collect();
        if skip_first_col && !cells.is_empty() {
            cells.remove(0);
        }
        if *cols.get_or_insert(cells.len()) != cells.len() {
            return Err(user_error(format!(
                "{}:{}: {} columns where earlier rows have {}",
                path.display(),
                i + 1,
                cells.len(),
                cols.unwrap_or(0)
            )));
        }
        for (j, c) in cells.iter().enumerate() {
            data.push(parse(c).ok_or_else(|| {
                user_error(format!(
                    "{}:{}: column {} is not a number: `{}`",
                    path.display(),
                    i + 1,
                    j + 1,
                    c.trim()
                ))
            })?);
        }
        rows += 1;
    }
    Ok(Array {
        shape: vec![rows, cols.unwrap_or(0)],
        data,
    })
}

fn read_parquet(path: &Path) -> Result<Array> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
    use arrow_array::Array as _;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let shown = || format!("{}", path.display());
    let file = std::fs::File::open(path).user_context(shown)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| {
            user_error(format!(
                "{}: not a readable Parquet file: {e}",
                path.display()
            ))
        })?
        .build()
        .user_context(shown)?;
    let mut columns: Vec<Vec<f32>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for batch in reader {
        let batch = batch
            .map_err(|e| user_error(format!("{}: cannot read Parquet: {e}", path.display())))?;
        let schema = batch.schema();
        let mut k = 0;
        for (ci, field) in schema.fields().iter().enumerate() {
            if field.name() == "__index_level_0__" {
                continue;
            }
            let col = batch.column(ci);
            let vals: Vec<f32> = if let Some(a) = col.as_primitive_opt::<Float64Type>() {
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            f32::NAN
                        } else {
                            a.value(i) as f32
                        }
                    })
                    .collect()
            } else if let Some(a) = col.as_primitive_opt::<Float32Type>() {
                (0..a.len())
                    .map(|i| if a.is_null(i) { f32::NAN } else { a.value(i) })
                    .collect()
            } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            f32::NAN
                        } else {
                            a.value(i) as f32
                        }
                    })
                    .collect()
            } else if let Some(a) = col.as_primitive_opt::<Int32Type>() {
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            f32::NAN
                        } else {
                            a.value(i) as f32
                        }
                    })
                    .collect()
            } else {
                return Err(user_error(format!(
                    "{}: column `{}` is of type {}, not a number (every column is a unit)",
                    path.display(),
                    field.name(),
                    col.data_type()
                )));
            };
            if columns.len() <= k {
                columns.push(Vec::new());
                names.push(field.name().clone());
            }
            columns[k].extend(vals);
            k += 1;
        }
    }
    let rows = columns.first().map_or(0, |c| c.len());
    let cols = columns.len();
    let mut data = vec![0f32; rows * cols];
    for (j, c) in columns.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            data[i * cols + j] = *v;
        }
    }
    Ok(Array {
        shape: vec![rows, cols],
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_a_pandas_index_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.csv");
        std::fs::write(&p, ",v0,v1\n0,1.5,2\n1,3,\n").unwrap();
        let a = read_array(&p, None).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(&a.data[..3], &[1.5, 2.0, 3.0]);
        assert_eq!(a.first_non_finite(), Some((1, 1)));
        std::fs::write(&p, "1,2\n3\n").unwrap();
        assert!(crate::error::is_user_error(
            &read_array(&p, None).unwrap_err()
        ));
    }

    #[test]
    fn parquet_columns_and_safetensors_tensors() {
        use arrow_array::{ArrayRef, Float64Array, Int32Array, RecordBatch};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.parquet");
        let batch = RecordBatch::try_from_iter(vec![
            (
                "v0",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
            ),
            ("v1", Arc::new(Int32Array::from(vec![4, 5, 6])) as ArrayRef),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&p).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let a = read_array(&p, None).unwrap();
        assert_eq!(a.shape, vec![3, 2]);
        assert_eq!(a.data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let s = dir.path().join("b.safetensors");
        let t = candle_core::Tensor::from_vec(
            vec![1f64, 2., 3., 4., 5., 6.],
            (3, 2),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let map: std::collections::HashMap<String, candle_core::Tensor> =
            [("x".to_string(), t.clone()), ("y".to_string(), t)]
                .into_iter()
                .collect();
        candle_core::safetensors::save(&map, &s).unwrap();
        let e = read_array(&s, None).unwrap_err();
        assert!(e.to_string().contains("--brain-key"), "{e}");
        let a = read_array(&s, Some("y")).unwrap();
        assert_eq!((a.shape.clone(), a.data[5]), (vec![3, 2], 6.0));
    }

    #[test]
    fn npy_c_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, fortran: bool, vals: &[f64]| {
            let h = format!(
                "{{'descr': '<f8', 'fortran_order': {}, 'shape': (2, 3), }}",
                if fortran { "True" } else { "False" }
            );
            let mut h = h.into_bytes();
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(b' ');
            }
            h.push(b'\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(h);
            vals.iter().for_each(|v| b.extend(v.to_le_bytes()));
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            read_array(&p, None).unwrap()
        };
        let c = write("c.npy", false, &[1., 2., 3., 4., 5., 6.]);
        let f = write("f.npy", true, &[1., 4., 2., 5., 3., 6.]);
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.data, f.data);
    }
}
