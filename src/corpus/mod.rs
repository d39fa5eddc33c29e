//! The `corpus` stage: read documents from text, a folder of `.txt` files, JSONL or Parquet, in a
//! fixed reading order, and cut their token sequences into model-sized windows.
//!
//! Documents are numbered from 0 in reading order across all inputs; a skipped document (empty, or
//! not UTF-8 in a plain-text file) keeps its number, so `doc` always points at the same line/row.

pub mod matrix;
mod parquet_reader;
pub mod window;

use crate::error::{user_error, UserContext};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

pub use window::{windows, Window};

/// How one input file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One document per line.
    Lines,
    /// The whole file is one document (files of a folder).
    Whole,
    /// One JSON object per line; the text is in a string field.
    Jsonl,
    /// A Parquet table with a string column (the Hugging Face datasets layout).
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("jsonl") | Some("ndjson") | Some("json") => Format::Jsonl,
            Some("parquet") => Format::Parquet,
            _ => Format::Lines,
        }
    }
}

/// A corpus file as the atlas manifest records it, so a resume or merge can check it is the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CorpusFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Why a document yields no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Empty,
    NotUtf8,
}

#[derive(Debug)]
pub struct Doc {
    pub index: u64,
    pub text: std::result::Result<String, Skip>,
}

pub struct Corpus {
    files: Vec<(PathBuf, Format)>,
    text_field: String,
}

impl Corpus {
    /// Resolve the inputs: files by extension, folders to their `.txt` files in name order.
    pub fn open(paths: &[PathBuf], text_field: &str) -> Result<Self> {
        if paths.is_empty() {
            return Err(user_error("no --corpus given"));
        }
        let mut files = Vec::new();
        for p in paths {
            let meta = std::fs::metadata(p).user_context(|| format!("{}", p.display()))?;
            if meta.is_dir() {
                let mut txt: Vec<PathBuf> = std::fs::read_dir(p)
                    .user_context(|| format!("{}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "txt"))
                    .collect();
                if txt.is_empty() {
                    return Err(user_error(format!(
                        "{}: folder has no .txt files",
                        p.display()
                    )));
                }
                txt.sort();
                files.extend(txt.into_iter().map(|f| (f, Format::Whole)));
            } else {
                files.push((p.clone(), Format::of(p)));
            }
        }
        Ok(Self {
            files,
            text_field: text_field.to_string(),
        })
    }

    pub fn text_field(&self) -> &str {
        &self.text_field
    }

    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|(p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Sizes and SHA-256 of every input file.
    pub fn describe(&self) -> Result<Vec<CorpusFile>> {
        self.files
            .iter()
            .map(|(p, _)| {
                let (size, sha256) = crate::hash::sha256_file(p)?;
                Ok(CorpusFile {
                    path: p.display().to_string(),
                    size,
                    sha256,
                })
            })
            .collect()
    }

    pub fn documents(&self) -> Documents<'_> {
        Documents {
            corpus: self,
            file: 0,
            reader: None,
            next_index: 0,
            bytes_done: 0,
        }
    }
}

enum Reader {
    Lines {
        r: BufReader<File>,
        line: u64,
        pos: u64,
    },
    Jsonl {
        r: BufReader<File>,
        line: u64,
        pos: u64,
    },
    Parquet(parquet_reader::TextColumn),
}

/// Streams the documents of a corpus in reading order; holds one line / one row group at a time.
pub struct Documents<'a> {
    corpus: &'a Corpus,
    file: usize,
    reader: Option<Reader>,
    next_index: u64,
    /// Bytes of the files already finished.
    bytes_done: u64,
}

impl Documents<'_> {
    /// Approximate bytes consumed so far, for progress and ETA.
    pub fn bytes_read(&self) -> u64 {
        let cur = match &self.reader {
            Some(Reader::Lines { pos, .. }) | Some(Reader::Jsonl { pos, .. }) => *pos,
            Some(Reader::Parquet(p)) => p.approx_bytes_read(),
            None => 0,
        };
        self.bytes_done + cur
    }

    fn emit(&mut self, text: std::result::Result<String, Skip>) -> Doc {
        let index = self.next_index;
        self.next_index += 1;
        Doc { index, text }
    }

    /// The next document, or `None` at the end of the corpus.
    pub fn next_doc(&mut self) -> Result<Option<Doc>> {
        loop {
            let Some((path, format)) = self.corpus.files.get(self.file).cloned() else {
                return Ok(None);
            };
            let shown = || format!("{}", path.display());
            if self.reader.is_none() {
                match format {
                    Format::Whole => {
                        let bytes = std::fs::read(&path).user_context(shown)?;
                        self.file += 1;
                        self.bytes_done += bytes.len() as u64;
                        let text = match String::from_utf8(bytes) {
                            Ok(s) if s.trim().is_empty() => Err(Skip::Empty),
                            Ok(s) => Ok(s),
                            Err(_) => Err(Skip::NotUtf8),
                        };
                        return Ok(Some(self.emit(text)));
                    }
                    Format::Lines | Format::Jsonl => {
                        let r = BufReader::new(File::open(&path).user_context(shown)?);
                        self.reader = Some(if format == Format::Lines {
                            Reader::Lines { r, line: 0, pos: 0 }
                        } else {
                            Reader::Jsonl { r, line: 0, pos: 0 }
                        });
                    }
                    Format::Parquet => {
                        self.reader = Some(Reader::Parquet(parquet_reader::TextColumn::open(
                            &path,
                            &self.corpus.text_field,
                        )?));
                    }
                }
            }
            let field = self.corpus.text_field.clone();
            let next = match self.reader.as_mut().unwrap() {
                Reader::Lines { r, line, pos } => {
                    let mut buf = Vec::new();
                    let n = r.read_until(b'\n', &mut buf).user_context(shown)?;
                    *line += 1;
                    *pos += n as u64;
                    (n > 0).then(|| {
                        strip_newline(&mut buf);
                        match String::from_utf8(buf) {
                            Ok(s) if s.trim().is_empty() => Err(Skip::Empty),
                            Ok(s) => Ok(s),
                            Err(_) => Err(Skip::NotUtf8),
                        }
                    })
                }
                Reader::Jsonl { r, line, pos } => loop {
                    let mut buf = Vec::new();
                    let n = r.read_until(b'\n', &mut buf).user_context(shown)?;
                    *line += 1;
                    *pos += n as u64;
                    if n == 0 {
                        break None;
                    }
                    strip_newline(&mut buf);
                    // A blank line between records is not a record.
                    if buf.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    break Some(
                        json_text(&buf, &field)
                            .map_err(|e| user_error(format!("{}:{}: {e}", path.display(), line)))?,
                    );
                },
                Reader::Parquet(p) => p.next_text()?,
            };
            match next {
                Some(text) => return Ok(Some(self.emit(text))),
                None => {
                    self.reader = None;
                    self.file += 1;
                    self.bytes_done += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
}

fn strip_newline(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

fn json_text(
    line: &[u8],
    field: &str,
) -> std::result::Result<std::result::Result<String, Skip>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not valid JSON: {e}"))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(Err(Skip::Empty)),
        Some(serde_json::Value::String(s)) => Ok(Ok(s.clone())),
        Some(serde_json::Value::Null) => Ok(Err(Skip::Empty)),
        Some(_) => Err(format!("field `{field}` is not a string")),
        None => Err(format!(
            "no field `{field}` (choose the text field with --text-field)"
        )),
    }
}
