//! Safetensors checkpoints (single file or sharded with `model.safetensors.index.json`), memory-mapped,
//! or a GGUF file (`gguf::tensors::GgufWeights`, which serves the same Hugging Face names,
//! dequantized): the arch loaders see one `WeightStore` API either way.
//!
//! Each tensor is copied once into an owned f32 buffer in the layout the forward pass wants, then its
//! pages are dropped from the mapping so peak memory stays near the size of the weights, not twice it.
//!
//! `fingerprint` identifies a checkpoint's weights cheaply (a sampled SHA-256), so an atlas can
//! check that it is read with the model it was recorded from.

use super::gguf::reader::GgufFile;
use super::gguf::tensors::GgufWeights;
use super::layers::{Linear, Norm};
use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use sha2::{Digest, Sha256};
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

/// Where the tensors come from.
enum Backend {
    Safetensors {
        shards: Vec<Shard>,
        entries: HashMap<String, Entry>,
    },
    Gguf(Box<GgufWeights>),
}

pub struct WeightStore {
    backend: Backend,
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
            backend: Backend::Safetensors { shards, entries },
            prefix: String::new(),
            device: device.clone(),
            dtype,
        })
    }

    /// Serve the tensors of a GGUF file (under their Hugging Face names).
    pub fn from_gguf(g: GgufWeights, device: &Device, dtype: DType) -> Self {
        Self {
            backend: Backend::Gguf(Box::new(g)),
            prefix: String::new(),
            device: device.clone(),
            dtype,
        }
    }

    /// Choose the name prefix under which `probe` (e.g. `embed_tokens.weight`) exists.
    pub fn detect_prefix(&mut self, probe: &str, candidates: &[&str]) -> Result<()> {
        for c in candidates {
            if self.contains_full(&format!("{c}{probe}")) {
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
        match &self.backend {
            Backend::Safetensors { shards, .. } => {
                let names: Vec<String> = shards
                    .iter()
                    .map(|s| s.path.display().to_string())
                    .collect();
                names.join(", ")
            }
            Backend::Gguf(g) => g.file.path.display().to_string(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.contains_full(&format!("{}{name}", self.prefix))
    }

    /// Load `name` (after the detected prefix) with the exact shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_full(&format!("{}{name}", self.prefix), shape)
    }

    /// Load a tensor by its full name, ignoring the prefix (e.g. `lm_head.weight`, which sits
    /// beside the `model.` tree rather than in it).
    pub fn get_full(&self, full: &str, shape: &[usize]) -> Result<Tensor> {
        let (shards, entries) = match &self.backend {
            Backend::Safetensors { shards, entries } => (shards, entries),
            Backend::Gguf(g) => {
                if !g.contains(full) {
                    return Err(user_error(format!(
                        "{}: missing tensor `{full}`",
                        self.describe_files()
                    )));
                }
                return Ok(g.get(full, shape, self.dtype)?.to_device(&self.device)?);
            }
        };
        let full = full.to_string();
        let e = entries.get(&full).ok_or_else(|| {
            user_error(format!(
                "{}: missing tensor `{full}`",
                self.describe_files()
            ))
        })?;
        let shard = &shards[e.shard];
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
        match &self.backend {
            Backend::Safetensors { entries, .. } => entries.contains_key(full),
            Backend::Gguf(g) => g.contains(full),
        }
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

    /// `sha256-sampled:<hex>`: SHA-256 over each file's safetensors header (names, dtypes, shapes,
    /// offsets, metadata), then, tensor by tensor in name order, its name, byte length and the
    /// bytes `sampled_ranges` picks. Reads a few KiB per tensor, so it costs milliseconds on any
    /// checkpoint; it changes when a header changes or a weight changes in a sampled place (every
    /// byte of a tensor up to 4 KiB), not when a weight changes between samples of a larger one.
    /// Call before `get` drops the pages, or the samples are read from disk again.
    ///
    /// A GGUF file: the same over its header, metadata and tensor table, then each tensor (in
    /// GGUF name order) as stored, quantized (its own `v1-gguf` domain, so no safetensors
    /// checkpoint can collide with it).
    pub fn fingerprint(&self) -> String {
        let (shards, entries) = match &self.backend {
            Backend::Safetensors { shards, entries } => (shards, entries),
            Backend::Gguf(g) => return gguf_fingerprint(&g.file),
        };
        let mut h = Sha256::new();
        h.update(b"ftri weights fingerprint v1\0");
        h.update((shards.len() as u64).to_le_bytes());
        for shard in shards {
            // the 8-byte header length and the JSON header
            h.update(&shard.mmap[..shard.data_start]);
        }
        let mut names: Vec<&String> = entries.keys().collect();
        names.sort();
        for name in names {
            let e = &entries[name];
            let shard = &shards[e.shard];
            let bytes = &shard.mmap[shard.data_start + e.range.0..shard.data_start + e.range.1];
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            for (a, b) in sampled_ranges(bytes.len()) {
                h.update(&bytes[a..b]);
            }
        }
        hex_fingerprint(h)
    }
}

fn hex_fingerprint(h: Sha256) -> String {
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{FINGERPRINT_PREFIX}{hex}")
}

/// `WeightStore::fingerprint` of a GGUF file.
fn gguf_fingerprint(g: &GgufFile) -> String {
    let mut h = Sha256::new();
    h.update(b"ftri weights fingerprint v1-gguf\0");
    h.update(g.table_bytes());
    let mut tensors: Vec<_> = g.tensors.iter().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    for t in tensors {
        let bytes = g.data(t);
        h.update((t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        for (a, b) in sampled_ranges(bytes.len()) {
            h.update(&bytes[a..b]);
        }
    }
    hex_fingerprint(h)
}

pub const FINGERPRINT_PREFIX: &str = "sha256-sampled:";

/// Bytes per sample, and evenly spaced samples per tensor besides its first and last bytes.
const SAMPLE: usize = 64;
const SAMPLES: usize = 64;

/// The byte ranges of an `len`-byte tensor that the fingerprint hashes: all of it up to
/// (SAMPLES + 2)·SAMPLE bytes, else its first and last SAMPLE bytes and SAMPLES slices of SAMPLE
/// bytes evenly spaced between them.
pub fn sampled_ranges(len: usize) -> Vec<(usize, usize)> {
    if len <= (SAMPLES + 2) * SAMPLE {
        return vec![(0, len)];
    }
    let last = len - SAMPLE;
    let mut out = Vec::with_capacity(SAMPLES + 2);
    out.push((0, SAMPLE));
    for i in 1..=SAMPLES {
        let start = i * last / (SAMPLES + 1);
        out.push((start, start + SAMPLE));
    }
    out.push((last, len));
    out
}

/// The weights fingerprint (`WeightStore::fingerprint`) of the checkpoint at `path` (a folder, a
/// `.gguf` file, or a folder holding one), without loading its weights: what an atlas checks
/// against the model it is opened with.
pub fn fingerprint(path: &Path) -> Result<String> {
    match super::hub::local_source(path)? {
        super::hub::Source::Dir(dir) => {
            Ok(WeightStore::open(&dir, &Device::Cpu, DType::F32)?.fingerprint())
        }
        super::hub::Source::Gguf(file) => Ok(gguf_fingerprint(&GgufFile::open(&file)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
    use crate::model::{LoadOptions, Model};

    use crate::model::test_fixture as fixture;

    #[test]
    fn sampled_ranges_cover_both_ends_and_do_not_overlap() {
        assert_eq!(sampled_ranges(0), [(0, 0)]);
        assert_eq!(sampled_ranges(4224), [(0, 4224)]);
        for n in [4225, 65_536, 1_000_003, 3 << 30] {
            let r = sampled_ranges(n);
            assert_eq!(r.len(), SAMPLES + 2);
            assert_eq!((r[0], r[SAMPLES + 1]), ((0, SAMPLE), (n - SAMPLE, n)));
            assert!(r.iter().all(|(a, b)| b - a == SAMPLE && *b <= n));
            assert!(
                r.windows(2).all(|w| w[0].1 <= w[1].0),
                "{n}: sorted, disjoint"
            );
        }
    }

    fn synth(dir: &Path, seed: u64) {
        let spec = SynthSpec {
            arch: SynthArch::Gpt2,
            n_layers: 2,
            d_model: 32,
            n_heads: 4,
            d_mlp: 64,
            n_ctx: 32,
            vocab: vocab_with(&[], 50),
            seed,
        };
        write_checkpoint(dir, &spec, &random_weights(&spec), &[]).unwrap();
    }

    #[test]
    fn same_checkpoint_same_fingerprint_other_seed_other_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        synth(&a, 1);
        synth(&b, 2);
        let fa = fingerprint(&a).unwrap();
        assert!(fa.starts_with(FINGERPRINT_PREFIX) && fa.len() == FINGERPRINT_PREFIX.len() + 64);
        assert_ne!(fa, fingerprint(&b).unwrap(), "same config, other seed");
        let load = |d: &Path| {
            Model::load(d.to_str().unwrap(), &LoadOptions::default())
                .unwrap()
                .fingerprint
        };
        assert_eq!(
            load(&a),
            fa,
            "the model's fingerprint is the free function's"
        );
        assert_eq!(load(&a), fa, "and the same on every load");
    }

    /// Flipping one bit of one weight in a sampled place changes the fingerprint, for every tensor
    /// of a fixture (at its first, a middle and its last sample); between samples of a tensor
    /// larger than 4 KiB it does not (that is what "sampled" buys the speed with).
    #[test]
    fn one_changed_weight_in_a_sampled_place_changes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("model.safetensors");
        let original = std::fs::read(fixture("gpt2").join("model.safetensors")).unwrap();
        std::fs::write(&file, &original).unwrap();
        let base = fingerprint(tmp.path()).unwrap();
        let tensors: Vec<(String, usize, usize)> = {
            let ws = WeightStore::open(tmp.path(), &Device::Cpu, DType::F32).unwrap();
            let Backend::Safetensors { shards, entries } = &ws.backend else {
                unreachable!()
            };
            let data = shards[0].data_start;
            entries
                .iter()
                .map(|(n, e)| (n.clone(), data + e.range.0, e.range.1 - e.range.0))
                .collect()
        };
        let mut checked = 0;
        let mut unsampled = 0;
        for (name, start, len) in tensors {
            let r = sampled_ranges(len);
            // the middle of the first, a middle and the last sample, and just past the middle one
            let mid = r[r.len() / 2];
            let positions = [
                (r[0].0 + r[0].1) / 2,
                (mid.0 + mid.1) / 2,
                (r[r.len() - 1].0 + r[r.len() - 1].1) / 2,
                mid.1 + 1,
            ];
            for at in positions.into_iter().filter(|&at| at < len) {
                let sampled = r.iter().any(|&(a, b)| a <= at && at < b);
                let mut bytes = original.clone();
                bytes[start + at] ^= 0x01;
                std::fs::write(&file, &bytes).unwrap();
                let f = fingerprint(tmp.path()).unwrap();
                assert_eq!(f != base, sampled, "{name}: byte {at} of {len}");
                checked += sampled as usize;
                unsampled += !sampled as usize;
            }
        }
        assert!(checked >= 30 && unsampled > 0, "{checked} {unsampled}");
    }

    /// Milliseconds on the real MiniLM (90 MB) when it is present.
    #[test]
    fn fingerprint_is_cheap() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        if !dir.join("model.safetensors").exists() {
            return;
        }
        let first = std::time::Instant::now();
        let f = fingerprint(&dir).unwrap();
        let first = first.elapsed();
        let again = std::time::Instant::now();
        assert_eq!(fingerprint(&dir).unwrap(), f);
        let again = again.elapsed();
        eprintln!("all-MiniLM-L6-v2 fingerprint {f}: {first:?} (first), {again:?} (again)");
        assert!(again < std::time::Duration::from_secs(2), "{again:?}");
    }
}
