//! Safetensors checkpoints (single file or sharded with `model.safetensors.index.json`), memory-mapped.
//!
//! Each tensor is copied once into an owned f32 buffer in the layout the forward pass wants, then its
//! pages are dropped from the mapping so peak memory stays near the size of the weights, not twice it.

use super::layers::{Linear, Norm};
use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section within the file.
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Byte range within the data section.
    range: (usize, usize),
}

pub struct WeightStore {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// Prefix in front of every parameter name (`model.`, `transformer.`, …), found at open time.
    prefix: String,
    device: Device,
    dtype: DType,
}

impl WeightStore {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| user_error(format!("{}: cannot read: {e}", index.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| user_error(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    user_error(format!("{}: missing object `weight_map`", index.display()))
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                return Err(user_error(format!(
                    "{}: `weight_map` lists no files",
                    index.display()
                )));
            }
            for n in &names {
                if n.contains('/') || n.contains("..") {
                    return Err(user_error(format!(
                        "{}: shard name `{n}` is not a plain file name",
                        index.display()
                    )));
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(user_error(format!(
                "{}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
                dir.display()
            )));
        };
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path)
                .map_err(|e| user_error(format!("{}: cannot open: {e}", path.display())))?;
            // SAFETY: the file is opened read-only; a checkpoint changing underneath a running process
            // is outside what we defend against (as in every mmap-based loader).
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| user_error(format!("{}: cannot map: {e}", path.display())))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                user_error(format!(
                    "{}: corrupt or truncated safetensors file ({e})",
                    path.display()
                ))
            })?;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name.clone(),
                    Entry {
                        shard: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        range: info.data_offsets,
                    },
                );
            }
            shards.push(Shard {
                path,
                mmap,
                data_start: 8 + header_len,
            });
        }
        Ok(Self {
            shards,
            entries,
            prefix: String::new(),
            device: device.clone(),
            dtype,
        })
    }

    /// Choose the name prefix under which `probe` (e.g. `embed_tokens.weight`) exists.
    pub fn detect_prefix(&mut self, probe: &str, candidates: &[&str]) -> Result<()> {
        for c in candidates {
            if self.entries.contains_key(&format!("{c}{probe}")) {
                self.prefix = c.to_string();
                return Ok(());
            }
        }
        Err(user_error(format!(
            "{}: missing tensor `{probe}` (looked for it under the prefixes {:?})",
            self.describe_files(),
            candidates
        )))
    }

    fn describe_files(&self) -> String {
        let names: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        names.join(", ")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&format!("{}{name}", self.prefix))
    }

    /// Load `name` (after the detected prefix) with the exact shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_full(&format!("{}{name}", self.prefix), shape)
    }

    /// Load a tensor by its full name, ignoring the prefix (e.g. `lm_head.weight`, which sits
    /// beside the `model.` tree rather than in it).
    pub fn get_full(&self, full: &str, shape: &[usize]) -> Result<Tensor> {
        let full = full.to_string();
        let e = self.entries.get(&full).ok_or_else(|| {
            user_error(format!(
                "{}: missing tensor `{full}`",
                self.describe_files()
            ))
        })?;
        let shard = &self.shards[e.shard];
        if e.shape != shape {
            return Err(user_error(format!(
                "{}: tensor `{full}` has shape {:?}, but config.json implies {:?}",
                shard.path.display(),
                e.shape,
                shape
            )));
        }
        let dtype = match e.dtype {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F64 => DType::F64,
            other => {
                return Err(user_error(format!(
                "{}: tensor `{full}` has dtype {other:?}; weights must be f32, f16, bf16 or f64",
                shard.path.display()
            )))
            }
        };
        let (a, b) = (shard.data_start + e.range.0, shard.data_start + e.range.1);
        let bytes = &shard.mmap[a..b];
        let t = Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?.to_dtype(self.dtype)?;
        // The owned copy is made; let the kernel drop the mapped pages so they do not count twice.
        // SAFETY: the range lies within the mapping and no reference into it outlives this call.
        unsafe {
            let page = 4096;
            let start = a / page * page;
            let _ = shard
                .mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, b - start);
        }
        Ok(t.to_device(&self.device)?)
    }

    pub fn contains_full(&self, full: &str) -> bool {
        self.entries.contains_key(full)
    }

    /// A LayerNorm's weight and bias under `base` (`.weight`/`.bias`, or the old `.gamma`/`.beta`).
    pub fn layer_norm(&self, base: &str, dim: usize, eps: f64) -> Result<Norm> {
        let (w, b) = if self.contains(&format!("{base}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(Norm::Layer {
            w: self.get(&format!("{base}.{w}"), &[dim])?,
            b: self.get(&format!("{base}.{b}"), &[dim])?,
            eps: eps as f32,
        })
    }

    pub fn rms_norm(&self, base: &str, dim: usize, eps: f64) -> Result<Norm> {
        Ok(Norm::Rms {
            w: self.get(&format!("{base}.weight"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// An `nn.Linear` under `base` as a `Linear` with [in, out] weight and optional bias.
    pub fn linear(&self, base: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            w: self.linear_t(&format!("{base}.weight"), out_dim, in_dim)?,
            b: if bias {
                Some(self.get(&format!("{base}.bias"), &[out_dim])?)
            } else {
                None
            },
        })
    }

    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            Ok(Some(self.get(name, shape)?))
        } else {
            Ok(None)
        }
    }

    /// A `nn.Linear` weight stored as [out, in], returned transposed to [in, out] and contiguous,
    /// so every forward matmul is a plain row-major product.
    pub fn linear_t(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Tensor> {
        Ok(self.get(name, &[out_dim, in_dim])?.t()?.contiguous()?)
    }
}
