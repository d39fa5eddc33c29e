//! A GGUF file's metadata → the `config.json` transformers would build from it, as a
//! `serde_json::Value` for the ordinary registry (`ModelConfig::from_json`).
//!
//! This follows transformers' `load_gguf_checkpoint` (`modeling_gguf_pytorch_utils.py`) and its
//! `GGUF_CONFIG_MAPPING` (`integrations/ggml.py`), so a `.gguf` gives the model
//! `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` gives:
//! - `general.architecture` picks the family: `llama` (`mistral` when `general.name` is exactly
//!   `mistral`, as transformers tests it), `qwen2`, `gemma3` (→ `gemma3_text`, the text backbone),
//!   `qwen3`, `phi3`;
//! - `{arch}.block_count`, `context_length`, `embedding_length`, `feed_forward_length`,
//!   `attention.head_count`, `attention.head_count_kv`, `attention.layer_norm_rms_epsilon`,
//!   `rope.freq_base` map to their config.json names; `rope.dimension_count` is `head_dim` for
//!   llama/mistral only (qwen3 and phi3 keep their config classes' head_dim: 128 for Qwen3,
//!   d_model / heads for Phi-3), `attention.key_length` is `head_dim` for gemma3, and
//!   `attention.sliding_window` is gemma3's `sliding_window`;
//! - `vocab_size` is `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens` (else, where
//!   transformers would fall back to a class default, the rows of `token_embd.weight`);
//! - `tie_word_embeddings` is true exactly when the file has no `output.weight`;
//! - bos/eos/pad/unk ids come from `tokenizer.ggml.*_token_id`;
//! - every other field is the transformers config class's default, written out here where ftri's
//!   translation would otherwise use a different default (`max_position_embeddings`, Mistral's
//!   4096 `sliding_window`, Gemma 3's local rope base 10000, `query_pre_attn_scalar` 256 and its
//!   layer pattern: every 6th layer full attention, the rest sliding).
//!
//! Metadata keys transformers ignores (e.g. llama.cpp's rope scaling keys) are ignored here too.

use super::reader::GgufFile;
use crate::error::user_error;
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map, Value as Json};

/// The `general.architecture` values ftri loads.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "gemma3", "qwen3", "phi3"];

/// A metadata value as JSON (numbers widened to f64/u64/i64 as Python would print them).
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(x) => Json::Array(x.iter().map(to_json).collect()),
    }
}

/// The architecture's `general.architecture` string, checked against [`SUPPORTED`].
pub fn architecture(g: &GgufFile) -> Result<&str> {
    let arch = match g.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(user_error(format!(
                "{}: metadata `general.architecture` is not a string",
                g.path.display()
            )))
        }
        None => {
            return Err(user_error(format!(
                "{}: missing metadata `general.architecture`",
                g.path.display()
            )))
        }
    };
    if !SUPPORTED.contains(&arch) {
        return Err(user_error(format!(
            "{}: unsupported GGUF architecture `{arch}` (supported: {})",
            g.path.display(),
            SUPPORTED.join(", ")
        )));
    }
    Ok(arch)
}

/// The HF `model_type` a GGUF's architecture loads as.
pub fn model_type(g: &GgufFile) -> Result<&'static str> {
    Ok(match architecture(g)? {
        "llama" => match g.metadata.get("general.name") {
            Some(Value::String(n)) if n == "mistral" => "mistral",
            _ => "llama",
        },
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        _ => "gemma3_text",
    })
}

/// The config.json transformers builds from this file's metadata (see the module doc).
pub fn hf_config(g: &GgufFile) -> Result<Json> {
    let arch = architecture(g)?;
    let model_type = model_type(g)?;
    let md = &g.metadata;
    let mut c = Map::new();
    c.insert("model_type".into(), model_type.into());
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<Option<Json>> {
        match md.get(&key(k)) {
            None => Ok(None),
            Some(v) => match to_json(v) {
                Json::Number(n) if n.is_u64() => Ok(Some(Json::Number(n))),
                other => Err(user_error(format!(
                    "{}: metadata `{}` must be a non-negative integer, not {other}",
                    g.path.display(),
                    key(k)
                ))),
            },
        }
    };
    let float = |k: &str| -> Result<Option<Json>> {
        match md.get(&key(k)) {
            None => Ok(None),
            Some(v) => match to_json(v) {
                Json::Number(n) => Ok(Some(json!(n.as_f64().unwrap_or(0.0)))),
                other => Err(user_error(format!(
                    "{}: metadata `{}` must be a number, not {other}",
                    g.path.display(),
                    key(k)
                ))),
            },
        }
    };
    let required = [
        ("block_count", "num_hidden_layers"),
        ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
    ];
    for (k, name) in required {
        let v = int(k)?.ok_or_else(|| {
            user_error(format!(
                "{}: missing metadata `{}`",
                g.path.display(),
                key(k)
            ))
        })?;
        c.insert(name.into(), v);
    }
    let mut optional: Vec<(&str, &str)> = vec![
        ("context_length", "max_position_embeddings"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("vocab_size", "vocab_size"),
    ];
    match arch {
        "llama" => optional.push(("rope.dimension_count", "head_dim")),
        "gemma3" => {
            optional.push(("attention.key_length", "head_dim"));
            optional.push(("attention.sliding_window", "sliding_window"));
        }
        _ => {}
    }
    for (k, name) in optional {
        if let Some(v) = int(k)? {
            c.insert(name.into(), v);
        }
    }
    if let Some(v) = float("attention.layer_norm_rms_epsilon")? {
        c.insert("rms_norm_eps".into(), v);
    }
    let rope_theta = float("rope.freq_base")?;
    if let Some(v) = &rope_theta {
        c.insert("rope_theta".into(), v.clone());
    }
    if !c.contains_key("vocab_size") {
        let n = match md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => Some(t.len()),
            _ => g.tensor("token_embd.weight").map(|t| t.shape()[0]),
        };
        if let Some(n) = n {
            c.insert("vocab_size".into(), n.into());
        }
    }
    c.insert(
        "tie_word_embeddings".into(),
        g.tensor("output.weight").is_none().into(),
    );
    for (k, name) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
        ("unknown_token_id", "unk_token_id"),
    ] {
        if let Some(v) = md.get(&format!("tokenizer.ggml.{k}")) {
            c.insert(name.into(), to_json(v));
        }
    }
    // the config classes' defaults where ftri's translation has none or another
    let default_ctx = match model_type {
        "llama" => 2048,
        "mistral" | "qwen2" | "qwen3" => 32768,
        "phi3" => 4096,
        _ => 131072,
    };
    c.entry("max_position_embeddings")
        .or_insert(default_ctx.into());
    match model_type {
        "mistral" => {
            c.insert("sliding_window".into(), 4096.into());
        }
        "gemma3_text" => gemma3_defaults(&mut c, rope_theta),
        _ => {}
    }
    Ok(Json::Object(c))
}

/// transformers' `Gemma3TextConfig` defaults for what GGUF metadata does not carry, in its
/// transformers 5 spelling (`rope_parameters` per layer type, explicit `layer_types`).
fn gemma3_defaults(c: &mut Map<String, Json>, rope_theta: Option<Json>) {
    let n_layers = c["num_hidden_layers"].as_u64().unwrap_or(0);
    let pattern = 6;
    let layer_types: Vec<&str> = (0..n_layers)
        .map(|i| match (i + 1) % pattern {
            0 => "full_attention",
            _ => "sliding_attention",
        })
        .collect();
    c.insert("layer_types".into(), json!(layer_types));
    let global = rope_theta.unwrap_or(json!(1_000_000.0));
    c.remove("rope_theta");
    c.insert(
        "rope_parameters".into(),
        json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": global},
        }),
    );
    c.entry("sliding_window").or_insert(4096.into());
    c.insert("query_pre_attn_scalar".into(), 256.into());
    c.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
    c.insert("final_logit_softcapping".into(), Json::Null);
    c.insert("attn_logit_softcapping".into(), Json::Null);
    c.entry("head_dim").or_insert(256.into());
    c.entry("num_key_value_heads").or_insert(4.into());
    c.entry("rms_norm_eps").or_insert(json!(1e-6));
}
