//! GPT-2 checkpoints: Conv1D weights are already stored [in, out], q/k/v fused in `c_attn`.

use super::config::ModelConfig;
use super::layers::Linear;
use super::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use super::weights::WeightStore;
use anyhow::Result;

fn conv1d(ws: &WeightStore, base: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Ok(Linear {
        w: ws.get(&format!("{base}.weight"), &[in_dim, out_dim])?,
        b: Some(ws.get(&format!("{base}.bias"), &[out_dim])?),
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("wte.weight", &["", "transformer."])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let tok = ws.get("wte.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings {
        tok: tok.clone(),
        pos: Some(ws.get("wpe.weight", &[cfg.n_ctx, d])?),
        token_type: None,
        norm: None,
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("h.{l}");
        blocks.push(Block {
            ln1: ws.layer_norm(&format!("{p}.ln_1"), d, eps)?,
            attn: Attention {
                qkv: conv1d(ws, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                o: conv1d(ws, &format!("{p}.attn.c_proj"), d, d)?,
            },
            ln2: ws.layer_norm(&format!("{p}.ln_2"), d, eps)?,
            mlp: Mlp {
                pre: conv1d(ws, &format!("{p}.mlp.c_fc"), d, m)?,
                up: None,
                down: conv1d(ws, &format!("{p}.mlp.c_proj"), m, d)?,
            },
        });
    }
    let final_norm = ws.layer_norm("ln_f", d, eps)?;
    let unembed = if cfg.tie_embeddings || !ws.contains_full("lm_head.weight") {
        tok
    } else {
        ws.get_full("lm_head.weight", &[cfg.vocab_size, d])?
    };
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
