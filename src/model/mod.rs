//! The `model` stage: load a Hugging Face checkpoint (config.json + safetensors + tokenizer.json)
//! or a GGUF file (config, weights and tokenizer in one; see `gguf`) and run it with
//! TransformerLens-named hook points.

pub mod arch;
pub mod attention_hooks;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod hub;
pub mod kernels;
pub mod layers;
pub mod moe;
pub mod plant;
pub mod plant_expert;
pub mod synth;
pub mod tokenizer;
pub mod transformer;
pub mod unit;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use hooks::{AttnHook, ExpertHook, HookSet, Intervention, Op, Route, Router, Site, SiteKind};
pub use tokenizer::Tokenizer;
pub use transformer::{Batch, KvCache, Transformer};
pub use unit::UnitId;
pub use weights::fingerprint;

use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use layers::Rope;
use std::path::PathBuf;
use weights::WeightStore;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// Parse `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        "f64" | "float64" => DType::F64,
        other => {
            return Err(user_error(format!(
                "unknown dtype `{other}` (choose f32, f16, bf16 or f64)"
            )))
        }
    })
}

/// The `--dtype` spelling of a dtype (what atlas manifests record).
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Parse `--device`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(|o| o.parse::<usize>())
                .transpose()
                .map_err(|_| user_error(format!("bad device `{s}` (use cpu, cuda or cuda:N)")))?;
            Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
                user_error(format!(
                    "cannot use {s}: {e} (was ftri built with `--features cuda`?)"
                ))
            })
        }
        other => Err(user_error(format!(
            "unknown device `{other}` (use cpu, cuda or cuda:N)"
        ))),
    }
}

pub struct Model {
    /// What the user passed as `--model`.
    pub id: String,
    /// The checkpoint folder (for a GGUF file, the folder that holds it).
    pub dir: PathBuf,
    /// Where the weights came from: the checkpoint folder or the GGUF file.
    pub source: hub::Source,
    pub cfg: ModelConfig,
    pub tokenizer: Tokenizer,
    pub net: Transformer,
    /// `sha256-sampled:…`, identifying the weights (see `weights::fingerprint`).
    pub fingerprint: String,
}

impl Model {
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let source = hub::resolve_model(spec)?;
        let (dir, cfg, tokenizer, mut ws) = match &source {
            hub::Source::Dir(dir) => {
                let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
                let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
                let ws = WeightStore::open(dir, &opts.device, opts.dtype)?;
                (dir.clone(), cfg, tokenizer, ws)
            }
            hub::Source::Gguf(file) => {
                let g = gguf::reader::GgufFile::open(file)?;
                let json = gguf::config::hf_config(&g)?;
                let cfg = ModelConfig::from_json(&json, file)?;
                let tokenizer =
                    Tokenizer::from_tokenizer(gguf::tokenizer::from_metadata(&g.metadata, file)?);
                let weights = gguf::tensors::GgufWeights::new(g, &json)?;
                let ws = WeightStore::from_gguf(weights, &opts.device, opts.dtype);
                let dir = file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .to_path_buf();
                (dir, cfg, tokenizer, ws)
            }
        };
        // before loading, which drops the mapped pages the samples would be read from
        let fingerprint = ws.fingerprint();
        let (embed, blocks, final_norm, unembed) = cfg.arch.load(&cfg, &mut ws)?;
        let rope = |r: &Option<config::RopeConfig>| {
            r.as_ref()
                .map(|r| Rope::new(r, cfg.n_ctx, &opts.device, opts.dtype))
                .transpose()
        };
        let net = Transformer {
            cfg: cfg.clone(),
            embed,
            blocks,
            final_norm,
            unembed,
            rope: rope(&cfg.rope)?,
            rope_local: rope(&cfg.rope_local)?,
            device: opts.device.clone(),
            dtype: opts.dtype,
        };
        Ok(Self {
            id: spec.to_string(),
            dir,
            source,
            cfg,
            tokenizer,
            net,
            fingerprint,
        })
    }

    /// SHA-256 (hex) of the model's config: config.json, or for a GGUF file its header, metadata
    /// and tensor table (where its config and tokenizer live).
    pub fn config_sha256(&self) -> Result<String> {
        match &self.source {
            hub::Source::Dir(dir) => Ok(crate::hash::sha256_file(&dir.join("config.json"))?.1),
            hub::Source::Gguf(file) => gguf_table_sha256(file),
        }
    }

    /// SHA-256 (hex) of the model's tokenizer: tokenizer.json, or for a GGUF file the same as
    /// [`Model::config_sha256`].
    pub fn tokenizer_sha256(&self) -> Result<String> {
        match &self.source {
            hub::Source::Dir(dir) => Ok(crate::hash::sha256_file(&dir.join("tokenizer.json"))?.1),
            hub::Source::Gguf(file) => gguf_table_sha256(file),
        }
    }

    /// The tokenizer.json an atlas keeps a copy of: the checkpoint's own file, or for a GGUF file
    /// (whose tokenizer lives in its metadata) the tokenizer built from it, serialized.
    pub fn tokenizer_json(&self) -> Result<Vec<u8>> {
        match &self.source {
            hub::Source::Dir(dir) => {
                let p = dir.join("tokenizer.json");
                std::fs::read(&p)
                    .map_err(|e| user_error(format!("{}: cannot read: {e}", p.display())))
            }
            hub::Source::Gguf(_) => Ok(self.tokenizer.to_json()?.into_bytes()),
        }
    }

    pub fn device(&self) -> &Device {
        &self.net.device
    }

    pub fn sites(&self) -> Vec<Site> {
        self.net.sites()
    }

    pub fn site_dim(&self, site: Site) -> usize {
        self.net.site_dim(site)
    }

    /// Parse a hook name and check that this model has it.
    pub fn parse_site(&self, name: &str) -> Result<Site> {
        let site =
            Site::parse(name).ok_or_else(|| user_error(format!("unknown hook point `{name}`")))?;
        if !self.sites().contains(&site) {
            return Err(user_error(format!(
                "this {} model has no hook point `{name}` ({} layers)",
                self.cfg.arch.name(),
                self.cfg.n_layers
            )));
        }
        Ok(site)
    }

    /// Tokenize a text with the tokenizer's default special tokens, checking it fits the context.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text)?;
        if ids.len() > self.cfg.n_ctx {
            return Err(user_error(format!(
                "the text has {} tokens but the model's context is {} tokens",
                ids.len(),
                self.cfg.n_ctx
            )));
        }
        Ok(ids)
    }

    pub fn batch(&self, seqs: &[Vec<u32>]) -> Result<Batch> {
        Batch::new(seqs, self.tokenizer.pad_id(), self.device())
    }

    pub fn forward(&self, batch: &Batch, hooks: &mut HookSet) -> Result<Option<Tensor>> {
        self.net.forward(batch, hooks)
    }
}

fn gguf_table_sha256(file: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let g = gguf::reader::GgufFile::open(file)?;
    Ok(format!("{:x}", Sha256::digest(g.table_bytes())))
}

/// A parity fixture's folder (tests/fixtures/NAME), for the unit tests of this stage.
#[cfg(test)]
pub(crate) fn test_fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
