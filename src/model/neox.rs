//! GPT-NeoX / Pythia checkpoints: LayerNorm, partial rotary, parallel (or sequential) residual.
//! `query_key_value` interleaves q, k, v per head; it is regrouped once at load into [q | k | v]
//! so the forward pass shares the attention code of the other architectures.

use super::config::ModelConfig;
use super::layers::Linear;
use super::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use super::weights::WeightStore;
use anyhow::Result;

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_in.weight", &["gpt_neox.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let (h, dh) = (cfg.n_heads, cfg.head_dim);
    let tok = ws.get("embed_in.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings {
        tok: tok.clone(),
        pos: None,
        token_type: None,
        norm: None,
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        let w = ws.get(
            &format!("{p}.attention.query_key_value.weight"),
            &[3 * h * dh, d],
        )?;
        // rows are (head, q|k|v, dim) → (q|k|v, head, dim)
        let w = w
            .reshape((h, 3, dh, d))?
            .transpose(0, 1)?
            .reshape((3 * h * dh, d))?
            .t()?
            .contiguous()?;
        let b = match cfg.qkv_bias {
            true => {
                let b = ws.get(
                    &format!("{p}.attention.query_key_value.bias"),
                    &[3 * h * dh],
                )?;
                Some(
                    b.reshape((h, 3, dh))?
                        .transpose(0, 1)?
                        .reshape(3 * h * dh)?,
                )
            }
            false => None,
        };
        blocks.push(Block {
            ln1: ws.layer_norm(&format!("{p}.input_layernorm"), d, eps)?,
            attn: Attention {
                qkv: Linear { w, b },
                o: ws.linear(&format!("{p}.attention.dense"), h * dh, d, cfg.o_bias)?,
            },
            ln2: ws.layer_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.mlp.dense_h_to_4h"), d, m, true)?,
                up: None,
                down: ws.linear(&format!("{p}.mlp.dense_4h_to_h"), m, d, true)?,
            },
        });
    }
    let final_norm = ws.layer_norm("final_layer_norm", d, eps)?;
    let unembed = if cfg.tie_embeddings && !ws.contains_full("embed_out.weight") {
        tok
    } else {
        ws.get_full("embed_out.weight", &[cfg.vocab_size, d])?
    };
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
