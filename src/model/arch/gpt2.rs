//! GPT-2 checkpoints: Conv1D weights are already stored [in, out], q/k/v fused in `c_attn`.

use super::ArchEntry;
use crate::model::config::{Activation, Arch, Fields, ModelConfig, NormKind, Residual};
use crate::model::layers::Linear;
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const GPT2: ArchEntry = ArchEntry {
    model_types: &["gpt2"],
    config,
    load,
};

/// config.json → `ModelConfig` (GPT-2's own key names, with the generic ones as fallbacks).
pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let d_model = f.usize(&["n_embd", "hidden_size"])?;
    let n_heads = f.usize(&["n_head", "num_attention_heads"])?;
    Ok(ModelConfig {
        arch,
        n_layers: f.usize(&["n_layer", "num_hidden_layers"])?,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: ModelConfig::head_dim(f, d_model, n_heads)?,
        d_mlp: f.usize_or(&["n_inner"], 4 * d_model)?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx: f.usize(&["n_positions", "n_ctx", "max_position_embeddings"])?,
        norm: NormKind::LayerNorm,
        norm_eps: f.f64_or(&["layer_norm_epsilon"], 1e-5)?,
        act: Activation::parse(f.str_or(&["activation_function"], "gelu_new")?, f.file)?,
        gated_mlp: false,
        residual: Residual::Sequential,
        rope: None,
        tie_embeddings: f.bool_or(&["tie_word_embeddings"], true)?,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        type_vocab_size: 0,
        pad_token_id: None,
        scale_attn_by_layer: f.bool_or(&["scale_attn_by_inverse_layer_idx"], false)?,
        sliding_window: None,
        lm_head: true,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope_local: None,
        moe: None,
    })
}

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
        scale: None,
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("h.{l}");
        blocks.push(Block {
            ln1: ws.layer_norm(&format!("{p}.ln_1"), d, eps)?,
            attn: Attention {
                qkv: conv1d(ws, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                o: conv1d(ws, &format!("{p}.attn.c_proj"), d, d)?,
                q_norm: None,
                k_norm: None,
            },
            ln2: ws.layer_norm(&format!("{p}.ln_2"), d, eps)?,
            mlp: Mlp {
                pre: conv1d(ws, &format!("{p}.mlp.c_fc"), d, m)?,
                up: None,
                down: conv1d(ws, &format!("{p}.mlp.c_proj"), m, d)?,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            moe: None,
        });
    }
    let final_norm = ws.layer_norm("ln_f", d, eps)?;
    let unembed = super::unembedding(cfg, ws, tok)?;
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
