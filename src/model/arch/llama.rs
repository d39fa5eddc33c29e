//! Llama-family checkpoints (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2): RMSNorm, rotary,
//! grouped-query attention, SiLU-gated MLP; Qwen2 adds q/k/v biases.

use super::ArchEntry;
use crate::model::config::{Activation, Arch, Fields, ModelConfig, NormKind, Residual};
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
    sliding_window: fn(&Fields) -> Result<Option<usize>>,
}

fn no_window(_: &Fields) -> Result<Option<usize>> {
    Ok(None)
}

fn window_size(f: &Fields) -> Option<usize> {
    f.get(&["sliding_window"])
        .and_then(|w| w.as_u64())
        .map(|w| w as usize)
}

/// Llama 2/3 (and checkpoints that reuse its layout under `model_type: llama`).
pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    llama_like(
        f,
        arch,
        Variant {
            qkv_bias: false,
            sliding_window: no_window,
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
            sliding_window: |f| Ok(window_size(f)),
        },
    )
}

/// Qwen2: Llama plus q/k/v biases and an optional sliding window (`use_sliding_window`).
pub fn qwen2_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    llama_like(
        f,
        arch,
        Variant {
            qkv_bias: true,
            sliding_window: |f| {
                Ok(match f.bool_or(&["use_sliding_window"], false)? {
                    true => window_size(f),
                    false => None,
                })
            },
        },
    )
}

fn llama_like(f: &Fields, arch: Arch, variant: Variant) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = ModelConfig::head_dim(f, d_model, n_heads)?;
    let attention_bias = f.bool_or(&["attention_bias"], false)?;
    Ok(ModelConfig {
        arch,
        n_layers: f.usize(&["num_hidden_layers"])?,
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
        sliding_window: (variant.sliding_window)(f)?,
        lm_head: true,
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings {
        tok: tok.clone(),
        pos: None,
        token_type: None,
        norm: None,
    };
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
            },
            ln2: ws.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.mlp.gate_proj"), d, m, cfg.mlp_bias)?,
                up: Some(ws.linear(&format!("{p}.mlp.up_proj"), d, m, cfg.mlp_bias)?),
                down: ws.linear(&format!("{p}.mlp.down_proj"), m, d, cfg.mlp_bias)?,
            },
        });
    }
    let final_norm = ws.rms_norm("norm", d, eps)?;
    let unembed = if cfg.tie_embeddings || !ws.contains_full("lm_head.weight") {
        tok
    } else {
        ws.get_full("lm_head.weight", &[cfg.vocab_size, d])?
    };
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
