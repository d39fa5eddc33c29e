//! Qwen3 (`qwen3`): Qwen2's checkpoint layout and sliding-window rule, plus what transformers 5's
//! `Qwen3Attention` adds:
//! - **q_norm / k_norm**: an RMSNorm (plain gain w) of each head's query and key, over its
//!   head_dim entries, before rotary.
//! - **head_dim from config.json**, default 128 (`Qwen3Config`), not d_model / heads.
//! - q/k/v/o biases only with `attention_bias` (Qwen2 always has q/k/v biases).
//! - `max_position_embeddings` defaults to 32768.

use super::llama;
use super::ArchEntry;
use crate::model::config::{Arch, Fields, ModelConfig};
use crate::model::transformer::Parts;
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const QWEN3: ArchEntry = ArchEntry {
    model_types: &["qwen3"],
    config,
    load,
};

pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    // Qwen3Config's defaults where they differ from what the Llama reader assumes
    let mut v = f.v.clone();
    for (key, default) in [("head_dim", 128), ("max_position_embeddings", 32768)] {
        if f.get(&[key]).is_none() {
            v[key] = default.into();
        }
    }
    let g = Fields {
        v: &v,
        file: f.file,
    };
    let mut c = llama::qwen2_config(&g, arch)?;
    let bias = g.bool_or(&["attention_bias"], false)?;
    c.qkv_bias = bias;
    c.o_bias = bias;
    Ok(c)
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    let (embed, mut blocks, norm, unembed) = llama::load(cfg, ws)?;
    for (l, b) in blocks.iter_mut().enumerate() {
        let a = format!("layers.{l}.self_attn");
        b.attn.q_norm = Some(ws.rms_norm(&format!("{a}.q_norm"), cfg.head_dim, cfg.norm_eps)?);
        b.attn.k_norm = Some(ws.rms_norm(&format!("{a}.k_norm"), cfg.head_dim, cfg.norm_eps)?);
    }
    Ok((embed, blocks, norm, unembed))
}

#[cfg(test)]
mod tests {
    use crate::model::arch::{config_from_json, REGISTRY};
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn qwen3_defaults_follow_transformers() {
        let mut v = json!({
            "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100
        });
        let c = config_from_json(REGISTRY, &v, Path::new("config.json")).unwrap();
        assert_eq!(
            (c.head_dim, c.n_ctx, c.qkv_bias, c.o_bias),
            (128, 32768, false, false)
        );
        assert_eq!(c.rope.as_ref().unwrap().rotary_dims, 128);
        assert_eq!(c.sliding_window, None);
        v["attention_bias"] = true.into();
        v["use_sliding_window"] = true.into();
        v["sliding_window"] = 5.into();
        v["max_window_layers"] = 1.into();
        let c = config_from_json(REGISTRY, &v, Path::new("config.json")).unwrap();
        assert!(c.qkv_bias && c.o_bias);
        let w: Vec<_> = (0..3).map(|l| c.window(l)).collect();
        assert_eq!(w, [None, Some(5), Some(5)]);
    }
}
