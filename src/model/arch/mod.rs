//! One file per architecture family, and the one registry that maps `config.json`'s `model_type`
//! to that family's config translation and weight loader.
//!
//! Each family file (`gpt2.rs`, `llama.rs` for Llama/Mistral/Qwen2, `neox.rs`, `bert.rs`,
//! `gemma.rs` for Gemma 1/2/3) owns
//! - its `model_type` names, in a `pub const …: ArchEntry`,
//! - its `config.json` → [`ModelConfig`] translation, for both spellings (the flat hub keys and
//!   transformers 5's nested `rope_parameters`; the shared readers are in `config.rs`: `Fields`,
//!   `ModelConfig::rope`, `ModelConfig::head_dim`; `validate` runs after every translation),
//! - its checkpoint's weight names and layout (`load`), handing back [`Parts`] for the shared
//!   forward pass in `transformer.rs`.
//!
//! [`REGISTRY`] drives everything that depends on the set of architectures: the dispatch from
//! `model_type` to translation and loader, the supported list, and the error messages for a
//! missing or unknown `model_type` (which list the types in registry order).
//!
//! # Adding a `model_type` that reuses a family
//! One line in [`REGISTRY`], e.g. for a checkpoint laid out exactly like Llama:
//! ```text
//!     ArchEntry { model_types: &["my_llama"], ..llama::LLAMA },
//! ```
//! (`ftri info` then prints `my_llama` as its architecture). The unit test
//! `a_llama_alias_is_one_registry_line` below registers such a line in a registry of its own and
//! loads the Llama fixture through it.
//!
//! # Adding an architecture
//! 1. A new file `arch/<family>.rs` with `pub const <FAMILY>: ArchEntry`, a `config` function
//!    (config.json → `ModelConfig`; reuse `Fields`, `ModelConfig::rope`, `ModelConfig::head_dim`)
//!    and a `load` function (weight names → `Parts`; reuse `WeightStore::linear`/`layer_norm`/
//!    `rms_norm`).
//! 2. One `pub mod <family>;` line and one registry line `<family>::<FAMILY>,` here.
//! 3. Its fixture in `scripts/make_fixtures.py` (a `build_<family>` function, its hooks and a
//!    `FIXTURE_SPECS` entry), generated into `tests/fixtures/<family>`, and its name in the
//!    `parity_tests!` list of `tests/parity.rs`.
//!
//! A family whose forward pass needs something `transformer.rs` does not have (e.g. a mixture of
//! experts MLP) also needs that piece there, behind a new `ModelConfig` switch.

pub mod bert;
pub mod gemma;
pub mod gpt2;
pub mod llama;
pub mod moe;
pub mod neox;
pub mod olmo2;
pub mod phi3;
pub mod qwen3;

use super::config::{Fields, ModelConfig};
use super::transformer::Parts;
use super::weights::WeightStore;
use crate::error::user_error;
use anyhow::Result;
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// One line of the registry: the `model_type`s it answers to, and what to do with them.
pub struct ArchEntry {
    /// `model_type` values of config.json; each is also the name `Arch::name` reports.
    pub model_types: &'static [&'static str],
    /// config.json → `ModelConfig` (store the given `Arch` in `ModelConfig::arch`).
    pub config: fn(&Fields, Arch) -> Result<ModelConfig>,
    /// Checkpoint weights → the parts of the shared forward pass.
    pub load: fn(&ModelConfig, &mut WeightStore) -> Result<Parts>,
}

/// Every supported architecture, in the order the error messages list them.
pub static REGISTRY: &[ArchEntry] = &[
    gpt2::GPT2,
    llama::LLAMA,
    llama::MISTRAL,
    llama::QWEN2,
    neox::GPT_NEOX,
    bert::BERT,
    gemma::GEMMA,
    gemma::GEMMA2,
    gemma::GEMMA3_TEXT,
    qwen3::QWEN3,
    olmo2::OLMO2,
    phi3::PHI3,
    moe::MIXTRAL,
    moe::QWEN2_MOE,
    moe::QWEN3_MOE,
    moe::OLMOE,
];

/// The architecture a config was read as: its `model_type` and the registry entry it matched.
#[derive(Clone, Copy)]
pub struct Arch {
    model_type: &'static str,
    entry: &'static ArchEntry,
}

impl Arch {
    /// The `model_type` (`gpt2`, `llama`, `mistral`, `qwen2`, `gpt_neox`, `bert`, …).
    pub fn name(self) -> &'static str {
        self.model_type
    }

    pub fn entry(self) -> &'static ArchEntry {
        self.entry
    }

    /// Load the checkpoint's weights with this architecture's loader.
    pub fn load(self, cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
        (self.entry.load)(cfg, ws)
    }

    /// Find `model_type` in `registry`.
    pub fn lookup(registry: &'static [ArchEntry], model_type: &str) -> Option<Arch> {
        registry.iter().find_map(|entry| {
            entry
                .model_types
                .iter()
                .find(|t| **t == model_type)
                .map(|t| Arch {
                    model_type: t,
                    entry,
                })
        })
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.model_type == other.model_type && std::ptr::eq(self.entry, other.entry)
    }
}

impl Eq for Arch {}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Arch").field(&self.model_type).finish()
    }
}

/// Every `model_type` of `registry`, in order.
/// The unembedding: `lm_head.weight` [vocab, d] when the checkpoint has its own, else the token
/// embeddings `tok` (tied, or a checkpoint that omits the head because it is tied).
pub fn unembedding(
    cfg: &ModelConfig,
    ws: &WeightStore,
    tok: candle_core::Tensor,
) -> Result<candle_core::Tensor> {
    if cfg.tie_embeddings || !ws.contains_full("lm_head.weight") {
        Ok(tok)
    } else {
        ws.get_full("lm_head.weight", &[cfg.vocab_size, cfg.d_model])
    }
}

pub fn supported_model_types(registry: &[ArchEntry]) -> Vec<&'static str> {
    registry
        .iter()
        .flat_map(|e| e.model_types.iter().copied())
        .collect()
}

/// config.json (parsed) → `ModelConfig`, through the translation `registry` names for its
/// `model_type`; `file` is the path error messages name.
pub fn config_from_json(
    registry: &'static [ArchEntry],
    v: &Value,
    file: &Path,
) -> Result<ModelConfig> {
    let f = Fields { v, file };
    let supported = || supported_model_types(registry).join(", ");
    let model_type = f
        .get(&["model_type"])
        .and_then(|x| x.as_str())
        .ok_or_else(|| {
            user_error(format!(
                "{}: missing field `model_type` (supported: {})",
                file.display(),
                supported()
            ))
        })?;
    let arch = Arch::lookup(registry, model_type).ok_or_else(|| {
        user_error(format!(
            "{}: unsupported model_type `{model_type}` (supported: {})",
            file.display(),
            supported()
        ))
    })?;
    let cfg = (arch.entry.config)(&f, arch)?;
    cfg.validate(file)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_fixture as fixture;
    use candle_core::{DType, Device};

    fn read_json(path: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn supported_list_and_names_are_unchanged() {
        assert_eq!(
            supported_model_types(REGISTRY),
            [
                "gpt2",
                "llama",
                "mistral",
                "qwen2",
                "gpt_neox",
                "bert",
                "gemma",
                "gemma2",
                "gemma3_text",
                "qwen3",
                "olmo2",
                "phi3",
                "mixtral",
                "qwen2_moe",
                "qwen3_moe",
                "olmoe"
            ]
        );
        for name in [
            "gpt2",
            "llama",
            "mistral",
            "qwen2",
            "gpt_neox",
            "bert",
            "gemma",
            "gemma2",
            "gemma3_text",
            "qwen3",
            "olmo2",
            "phi3",
        ] {
            let dir = fixture(name);
            let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
            assert_eq!(cfg.arch.name(), name);
            assert_eq!(cfg.arch, Arch::lookup(REGISTRY, name).unwrap());
        }
    }

    #[test]
    fn model_type_errors_list_the_registry() {
        let file = Path::new("x/config.json");
        let mut v = read_json(&fixture("llama").join("config.json"));
        v["model_type"] = "mamba".into();
        let err = ModelConfig::from_json(&v, file).unwrap_err().to_string();
        assert_eq!(
            err,
            "x/config.json: unsupported model_type `mamba` (supported: gpt2, llama, mistral, qwen2, gpt_neox, bert, gemma, gemma2, gemma3_text, qwen3, olmo2, phi3, mixtral, qwen2_moe, qwen3_moe, olmoe)"
        );
        v.as_object_mut().unwrap().remove("model_type");
        let err = ModelConfig::from_json(&v, file).unwrap_err().to_string();
        assert_eq!(
            err,
            "x/config.json: missing field `model_type` (supported: gpt2, llama, mistral, qwen2, gpt_neox, bert, gemma, gemma2, gemma3_text, qwen3, olmo2, phi3, mixtral, qwen2_moe, qwen3_moe, olmoe)"
        );
    }

    /// An alias that reuses Llama's translation and loader is one registry line.
    #[test]
    fn a_llama_alias_is_one_registry_line() {
        static WITH_ALIAS: &[ArchEntry] = &[
            gpt2::GPT2,
            llama::LLAMA,
            ArchEntry {
                model_types: &["my_llama"],
                ..llama::LLAMA
            },
        ];
        let dir = fixture("llama");
        let file = dir.join("config.json");
        let mut v = read_json(&file);
        let want = config_from_json(WITH_ALIAS, &v, &file).unwrap();
        v["model_type"] = "my_llama".into();
        // the real registry does not know it …
        assert!(config_from_json(REGISTRY, &v, &file).is_err());
        // … the one with the extra line does, and reads the same model
        let mut got = config_from_json(WITH_ALIAS, &v, &file).unwrap();
        assert_eq!(got.arch.name(), "my_llama");
        assert_eq!(
            supported_model_types(WITH_ALIAS),
            ["gpt2", "llama", "my_llama"]
        );
        let arch = got.arch;
        got.arch = want.arch;
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        // and its loader reads the Llama checkpoint
        let mut ws = WeightStore::open(&dir, &Device::Cpu, DType::F32).unwrap();
        let (_, blocks, norm, unembed) = arch.load(&got, &mut ws).unwrap();
        assert_eq!(blocks.len(), got.n_layers);
        assert!(norm.is_some() && unembed.is_some());
    }
}
