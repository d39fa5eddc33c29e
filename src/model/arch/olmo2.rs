//! OLMo 2 (`olmo2`): Llama's weights and rotary, wired as transformers 5's `Olmo2DecoderLayer`:
//! - **no pre-norms**: attention and MLP read the residual stream itself;
//! - **post-norms**: `h = x + post_attention_layernorm(attn(x))`,
//!   `out = h + post_feedforward_layernorm(mlp(h))`; `hook_attn_out` / `hook_mlp_out` are the
//!   post-norms' outputs (what joins the residual stream), `hook_resid_mid` is h;
//! - **q_norm / k_norm over the whole projection**: RMSNorms of size heads·head_dim (and
//!   kv_heads·head_dim) applied to the q and k projections before they are split into heads, and
//!   before rotary (a gain spanning all heads, which `Transformer::attention` applies to the whole
//!   projection);
//! - every RMSNorm computes in f32 and applies its gain before the cast back
//!   (`(w * norm(x.float())).to(dtype)`), [`Norm::RmsF32`]; `rms_norm_eps` defaults to 1e-5,
//!   `max_position_embeddings` to 2048.

use super::llama;
use super::ArchEntry;
use crate::model::config::{Arch, Fields, ModelConfig};
use crate::model::layers::{Linear, Norm};
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;
use candle_core::DType;

pub const OLMO2: ArchEntry = ArchEntry {
    model_types: &["olmo2"],
    config,
    load,
};

pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let mut v = f.v.clone();
    if f.get(&["max_position_embeddings"]).is_none() {
        v["max_position_embeddings"] = 2048.into();
    }
    let g = Fields {
        v: &v,
        file: f.file,
    };
    let mut c = llama::config(&g, arch)?;
    c.norm_eps = g.f64_or(&["rms_norm_eps"], 1e-5)?;
    Ok(c)
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let norm = |ws: &WeightStore, name: &str, dim: usize| -> Result<Norm> {
        Ok(Norm::RmsF32 {
            w: ws
                .get(&format!("{name}.weight"), &[dim])?
                .to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    };
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let (device, dtype) = (tok.device().clone(), tok.dtype());
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        let a = format!("{p}.self_attn");
        let q = ws.linear(&format!("{a}.q_proj"), d, q_dim, cfg.qkv_bias)?;
        let k = ws.linear(&format!("{a}.k_proj"), d, kv_dim, cfg.qkv_bias)?;
        let v = ws.linear(&format!("{a}.v_proj"), d, kv_dim, cfg.qkv_bias)?;
        let across = |name: &str, dim: usize| -> Result<Option<Norm>> {
            // a gain of all heads' width: the forward pass norms the whole projection before
            // splitting it into heads (see `Transformer::attention`)
            Ok(Some(norm(ws, &format!("{a}.{name}"), dim)?))
        };
        blocks.push(Block {
            ln1: Norm::identity(d, &device, dtype)?,
            attn: Attention {
                qkv: Linear::concat(&[q, k, v])?,
                o: ws.linear(&format!("{a}.o_proj"), q_dim, d, cfg.o_bias)?,
                q_norm: across("q_norm", q_dim)?,
                k_norm: across("k_norm", kv_dim)?,
            },
            ln2: Norm::identity(d, &device, dtype)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.mlp.gate_proj"), d, m, false)?,
                up: Some(ws.linear(&format!("{p}.mlp.up_proj"), d, m, false)?),
                down: ws.linear(&format!("{p}.mlp.down_proj"), m, d, false)?,
            },
            post_attn_norm: Some(norm(ws, &format!("{p}.post_attention_layernorm"), d)?),
            post_mlp_norm: Some(norm(ws, &format!("{p}.post_feedforward_layernorm"), d)?),
            moe: None,
        });
    }
    let final_norm = norm(ws, "norm", d)?;
    let unembed = super::unembedding(cfg, ws, tok.clone())?;
    Ok((
        Embeddings::tokens(tok),
        blocks,
        Some(final_norm),
        Some(unembed),
    ))
}
