//! BERT-style encoders (e.g. all-MiniLM-L6-v2): learned positions and token types, post-LN blocks,
//! bidirectional attention, no LM head (the model's output is the last block's hidden state).

use super::ArchEntry;
use crate::error::user_error;
use crate::model::config::{Activation, Arch, Fields, ModelConfig, NormKind, Residual};
use crate::model::layers::Linear;
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const BERT: ArchEntry = ArchEntry {
    model_types: &["bert"],
    config,
    load,
};

/// config.json → `ModelConfig`: post-LN, absolute positions only, no LM head.
pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let pos = f.str_or(&["position_embedding_type"], "absolute")?;
    if pos != "absolute" {
        return Err(user_error(format!(
            "{}: unsupported BERT position_embedding_type `{pos}` (supported: absolute)",
            f.file.display()
        )));
    }
    Ok(ModelConfig {
        arch,
        n_layers: f.usize(&["num_hidden_layers"])?,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: ModelConfig::head_dim(f, d_model, n_heads)?,
        d_mlp: f.usize(&["intermediate_size"])?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx: f.usize(&["max_position_embeddings"])?,
        norm: NormKind::LayerNorm,
        norm_eps: f.f64_or(&["layer_norm_eps"], 1e-12)?,
        act: Activation::parse(f.str_or(&["hidden_act"], "gelu")?, f.file)?,
        gated_mlp: false,
        residual: Residual::PostLn,
        rope: None,
        tie_embeddings: false,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        type_vocab_size: f.usize_or(&["type_vocab_size"], 2)?,
        pad_token_id: Some(f.usize_or(&["pad_token_id"], 0)? as u32),
        scale_attn_by_layer: false,
        sliding_window: None,
        lm_head: false,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope_local: None,
        moe: None,
    })
}

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
        scale: None,
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
                q_norm: None,
                k_norm: None,
            },
            ln2: ws.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.intermediate.dense"), d, m, true)?,
                up: None,
                down: ws.linear(&format!("{p}.output.dense"), m, d, true)?,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            moe: None,
        });
    }
    Ok((embed, blocks, None, None))
}
