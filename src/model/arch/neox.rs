//! GPT-NeoX / Pythia checkpoints: LayerNorm, partial rotary, parallel (or sequential) residual.
//! `query_key_value` interleaves q, k, v per head; it is regrouped once at load into [q | k | v]
//! so the forward pass shares the attention code of the other architectures.

use super::ArchEntry;
use crate::model::config::{Activation, Arch, Fields, ModelConfig, NormKind, Residual};
use crate::model::layers::Linear;
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const GPT_NEOX: ArchEntry = ArchEntry {
    model_types: &["gpt_neox"],
    config,
    load,
};

/// config.json → `ModelConfig`; partial rotary from `rotary_pct` (hub) or
/// `rope_parameters.partial_rotary_factor` (transformers 5).
pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = ModelConfig::head_dim(f, d_model, n_heads)?;
    let pct = match f
        .get(&["rope_parameters"])
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(|x| x.as_f64())
    {
        Some(p) => p,
        None => f.f64_or(&["rotary_pct", "partial_rotary_factor"], 1.0)?,
    };
    // transformers: rotary_ndims = int(head_size * rotary_pct)
    let rotary_dims = (head_dim as f64 * pct) as usize;
    Ok(ModelConfig {
        arch,
        n_layers: f.usize(&["num_hidden_layers"])?,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx: f.usize(&["max_position_embeddings"])?,
        norm: NormKind::LayerNorm,
        norm_eps: f.f64_or(&["layer_norm_eps"], 1e-5)?,
        act: Activation::parse(f.str_or(&["hidden_act"], "gelu")?, f.file)?,
        gated_mlp: false,
        residual: if f.bool_or(&["use_parallel_residual"], true)? {
            Residual::Parallel
        } else {
            Residual::Sequential
        },
        rope: Some(ModelConfig::rope(f, rotary_dims, 10000.0)?),
        tie_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
        qkv_bias: f.bool_or(&["attention_bias"], true)?,
        o_bias: f.bool_or(&["attention_bias"], true)?,
        mlp_bias: true,
        type_vocab_size: 0,
        pad_token_id: None,
        scale_attn_by_layer: false,
        sliding_window: None,
        lm_head: true,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope_local: None,
        moe: None,
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_in.weight", &["gpt_neox.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let (h, dh) = (cfg.n_heads, cfg.head_dim);
    let tok = ws.get("embed_in.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings::tokens(tok.clone());
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
                q_norm: None,
                k_norm: None,
            },
            ln2: ws.layer_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp: Mlp {
                pre: ws.linear(&format!("{p}.mlp.dense_h_to_4h"), d, m, true)?,
                up: None,
                down: ws.linear(&format!("{p}.mlp.dense_4h_to_h"), m, d, true)?,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            moe: None,
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
