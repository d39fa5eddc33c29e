//! Llama-family checkpoints (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2): RMSNorm, rotary,
//! grouped-query attention, SiLU-gated MLP; Qwen2 adds q/k/v biases.

use super::config::ModelConfig;
use super::layers::Linear;
use super::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use super::weights::WeightStore;
use anyhow::Result;

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
