//! BERT-style encoders (e.g. all-MiniLM-L6-v2): learned positions and token types, post-LN blocks,
//! bidirectional attention, no LM head (the model's output is the last block's hidden state).

use super::config::ModelConfig;
use super::layers::Linear;
use super::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use super::weights::WeightStore;
use anyhow::Result;

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embeddings.word_embeddings.weight", &["", "bert."])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let embed = Embeddings {
        tok: ws.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, d])?,
        pos: Some(ws.get("embeddings.position_embeddings.weight", &[cfg.n_ctx, d])?),
        token_type: match cfg.type_vocab_size {
            0 => None,
            n => Some(ws.get("embeddings.token_type_embeddings.weight", &[n, d])?),
        },
        norm: Some(ws.layer_norm("embeddings.LayerNorm", d, eps)?),
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("encoder.layer.{l}");
        let q = ws.linear(&format!("{p}.attention.self.query"), d, d, true)?;
        let k = ws.linear(&format!("{p}.attention.self.key"), d, d, true)?;
        let v = ws.linear(&format!("{p}.attention.self.value"), d, d, true)?;
        let qkv = Linear::concat(&[q, k, v])?;
        blocks.push(Block {
            ln1: ws.layer_norm(&format!("{p}.attention.output.LayerNorm"), d, eps)?,
            attn: Attention {
                qkv,
                o: ws.linear(&format!("{p}.attention.output.dense"), d, d, true)?,
            },
            ln2: ws.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.intermediate.dense"), d, m, true)?,
                up: None,
                down: ws.linear(&format!("{p}.output.dense"), m, d, true)?,
            },
        });
    }
    Ok((embed, blocks, None, None))
}
