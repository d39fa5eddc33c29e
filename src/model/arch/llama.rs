//! Llama-family checkpoints (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2): RMSNorm, rotary,
//! grouped-query attention, SiLU-gated MLP; Mistral adds a sliding window on every layer, Qwen2
//! q/k/v biases and a sliding window on the layers its config marks.

use super::ArchEntry;
use crate::model::config::{
    Activation, Arch, Fields, ModelConfig, NormKind, Residual, SlidingWindow,
};
use crate::model::layers::Linear;
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const LLAMA: ArchEntry = ArchEntry {
    model_types: &["llama"],
    config,
    load,
};

pub const MISTRAL: ArchEntry = ArchEntry {
    model_types: &["mistral"],
    config: mistral_config,
    load,
};

pub const QWEN2: ArchEntry = ArchEntry {
    model_types: &["qwen2"],
    config: qwen2_config,
    load,
};

/// How the members of the family differ in config.json.
struct Variant {
    /// Qwen2: q, k and v projections always have biases.
    qkv_bias: bool,
    /// The sliding window, given the config and the number of layers.
    sliding_window: fn(&Fields, usize) -> Result<Option<SlidingWindow>>,
}

/// Llama 2/3 (and checkpoints that reuse its layout under `model_type: llama`).
pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    llama_like(
        f,
        arch,
        Variant {
            qkv_bias: false,
            sliding_window: |_, _| Ok(None),
        },
    )
}

/// Mistral: Llama plus a sliding window on every layer when `sliding_window` is set.
pub fn mistral_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    llama_like(
        f,
        arch,
        Variant {
            qkv_bias: false,
            sliding_window: mistral_window,
        },
    )
}

/// Qwen2: Llama plus q/k/v biases and an optional sliding window on some layers.
pub fn qwen2_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    llama_like(
        f,
        arch,
        Variant {
            qkv_bias: true,
            sliding_window: qwen2_window,
        },
    )
}

fn mistral_window(f: &Fields, n_layers: usize) -> Result<Option<SlidingWindow>> {
    Ok(f.get(&["sliding_window"])
        .and_then(|w| w.as_u64())
        .map(|w| SlidingWindow {
            size: w as usize,
            layers: vec![true; n_layers],
        }))
}

/// As transformers' `Qwen2Config`: the window exists only with `use_sliding_window` (its size
/// `sliding_window`, 4096 when the key is absent, none when it is null), and applies to the layers
/// `layer_types` marks `sliding_attention` (transformers 5) or, without `layer_types`, to the
/// layers `>= max_window_layers` (default 28).
fn qwen2_window(f: &Fields, n_layers: usize) -> Result<Option<SlidingWindow>> {
    if !f.bool_or(&["use_sliding_window"], false)? {
        return Ok(None);
    }
    let size = match f.v.get("sliding_window") {
        None => 4096,
        Some(w) if w.is_null() => return Ok(None),
        Some(_) => f.usize(&["sliding_window"])?,
    };
    let layers = match f.layer_types()? {
        Some(layers) => layers,
        None => {
            let first = f.usize_or(&["max_window_layers"], 28)?;
            (0..n_layers).map(|l| l >= first).collect()
        }
    };
    // `validate` checks that `layer_types` has one entry per layer
    Ok(layers
        .contains(&true)
        .then_some(SlidingWindow { size, layers }))
}

fn llama_like(f: &Fields, arch: Arch, variant: Variant) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = ModelConfig::head_dim(f, d_model, n_heads)?;
    let attention_bias = f.bool_or(&["attention_bias"], false)?;
    let n_layers = f.usize(&["num_hidden_layers"])?;
    Ok(ModelConfig {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: f.usize_or(&["num_key_value_heads"], n_heads)?,
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx: f.usize(&["max_position_embeddings"])?,
        norm: NormKind::RmsNorm,
        norm_eps: f.f64_or(&["rms_norm_eps"], 1e-6)?,
        act: Activation::parse(f.str_or(&["hidden_act"], "silu")?, f.file)?,
        gated_mlp: true,
        residual: Residual::Sequential,
        rope: Some(ModelConfig::rope(f, head_dim, 10000.0)?),
        tie_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
        qkv_bias: variant.qkv_bias || attention_bias,
        o_bias: attention_bias,
        mlp_bias: f.bool_or(&["mlp_bias"], false)?,
        type_vocab_size: 0,
        pad_token_id: None,
        scale_attn_by_layer: false,
        sliding_window: (variant.sliding_window)(f, n_layers)?,
        lm_head: true,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope_local: None,
        moe: None,
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings::tokens(tok.clone());
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        let q = ws.linear(&format!("{p}.self_attn.q_proj"), d, q_dim, cfg.qkv_bias)?;
        let k = ws.linear(&format!("{p}.self_attn.k_proj"), d, kv_dim, cfg.qkv_bias)?;
        let v = ws.linear(&format!("{p}.self_attn.v_proj"), d, kv_dim, cfg.qkv_bias)?;
        let qkv = Linear::concat(&[q, k, v])?;
        blocks.push(Block {
            ln1: ws.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
            attn: Attention {
                qkv,
                o: ws.linear(&format!("{p}.self_attn.o_proj"), q_dim, d, cfg.o_bias)?,
                q_norm: None,
                k_norm: None,
            },
            ln2: ws.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.mlp.gate_proj"), d, m, cfg.mlp_bias)?,
                up: Some(ws.linear(&format!("{p}.mlp.up_proj"), d, m, cfg.mlp_bias)?),
                down: ws.linear(&format!("{p}.mlp.down_proj"), m, d, cfg.mlp_bias)?,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            moe: None,
        });
    }
    let final_norm = ws.rms_norm("norm", d, eps)?;
    let unembed = super::unembedding(cfg, ws, tok)?;
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::{config_from_json, REGISTRY};
    use serde_json::{json, Value};
    use std::path::Path;

    /// The fixture's config of `name` with the keys of `set` set and those of `remove` removed.
    fn cfg(name: &str, set: &Value, remove: &[&str]) -> Result<ModelConfig> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
            .join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let o = v.as_object_mut().unwrap();
        for (k, x) in set.as_object().unwrap() {
            o.insert(k.clone(), x.clone());
        }
        for k in remove {
            o.remove(*k);
        }
        config_from_json(REGISTRY, &v, &file)
    }

    fn windows(c: &ModelConfig) -> Vec<Option<usize>> {
        (0..c.n_layers).map(|l| c.window(l)).collect()
    }

    #[test]
    fn qwen2_window_follows_transformers() {
        let q = |set: Value, remove: &[&str]| cfg("qwen2", &set, remove);
        // the fixture: use_sliding_window false
        assert_eq!(q(json!({}), &[]).unwrap().sliding_window, None);
        // hub spelling (no layer_types): layers >= max_window_layers slide, default 28
        let hub = |set: Value| q(set, &["layer_types"]).unwrap();
        let on = json!({"use_sliding_window": true, "sliding_window": 3});
        assert_eq!(hub(on.clone()).sliding_window, None, "28 > 2 layers");
        let mut c = on.clone();
        c["max_window_layers"] = 1.into();
        assert_eq!(windows(&hub(c.clone())), [None, Some(3)]);
        c["max_window_layers"] = 0.into();
        assert_eq!(windows(&hub(c.clone())), [Some(3), Some(3)]);
        // transformers 5: layer_types decides
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
        assert_eq!(windows(&q(c.clone(), &[]).unwrap()), [Some(3), None]);
        // no `sliding_window` key: transformers' default 4096; an explicit null: no window
        assert_eq!(
            windows(&q(c.clone(), &["sliding_window"]).unwrap()),
            [Some(4096), None]
        );
        let mut null = c.clone();
        null["sliding_window"] = Value::Null;
        assert_eq!(q(null, &[]).unwrap().sliding_window, None);
        // use_sliding_window false wins over layer_types
        let mut off = c.clone();
        off["use_sliding_window"] = false.into();
        assert_eq!(q(off, &[]).unwrap().sliding_window, None);
        // a layer_types list of the wrong length or with an unknown entry is an error
        let mut bad = on.clone();
        bad["layer_types"] = json!(["sliding_attention"]);
        let e = q(bad.clone(), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`layer_types` has 1 entries but the model has 2 layers"),
            "{e}"
        );
        bad["layer_types"] = json!(["sliding_attention", "chunked"]);
        let e = q(bad, &[]).unwrap_err().to_string();
        assert!(e.contains("`layer_types` must be a list"), "{e}");
    }

    #[test]
    fn mistral_window_covers_every_layer() {
        let m = |set: Value| cfg("mistral", &set, &[]).unwrap();
        assert_eq!(m(json!({})).sliding_window, None);
        assert_eq!(
            windows(&m(json!({"sliding_window": 5}))),
            [Some(5), Some(5)]
        );
    }
}
