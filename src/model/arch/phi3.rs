//! Phi-3 (`phi3`): Llama's wiring (pre-norms, rotary, grouped-query attention, SiLU-gated MLP)
//! with transformers 5's `Phi3` checkpoint layout and rotary:
//! - **fused projections**: `self_attn.qkv_proj` holds q, k and v stacked (heads·head_dim, then
//!   kv_heads·head_dim twice), `mlp.gate_up_proj` the gate (first half: `mlp.hook_pre`) and the
//!   up projection (second half: `mlp.hook_pre_linear`);
//! - **partial rotary**: the first int(head_dim · `partial_rotary_factor`) dims of each head
//!   rotate (read from the rope parameters first, then the top level, default 1);
//! - **rope scaling** `default` or `longrope` (`su` and `yarn` are read as `longrope`, as
//!   `Phi3Config` does): `short_factor` while the sequence is at most
//!   `original_max_position_embeddings` long (the top-level key, default 4096, which transformers
//!   prefers to the one inside the rope parameters), `long_factor` beyond; cos and sin are scaled by
//!   `attention_factor`, default √(1 + ln s / ln original) with s = `factor` or
//!   max_position_embeddings / original (1 when s ≤ 1). Other scalings are refused;
//! - `sliding_window`, when set, applies to every layer.

use super::ArchEntry;
use crate::error::user_error;
use crate::model::config::{
    Activation, Arch, Fields, ModelConfig, NormKind, Residual, RopeConfig, RopeScaling,
    SlidingWindow,
};
use crate::model::layers::Linear;
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;
use serde_json::Value;

pub const PHI3: ArchEntry = ArchEntry {
    model_types: &["phi3"],
    config,
    load,
};

pub fn config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let head_dim = ModelConfig::head_dim(f, d_model, n_heads)?;
    let n_layers = f.usize(&["num_hidden_layers"])?;
    let n_ctx = f.usize_or(&["max_position_embeddings"], 4096)?;
    let sliding_window = f
        .get(&["sliding_window"])
        .map(|_| f.usize(&["sliding_window"]))
        .transpose()?
        .map(|size| SlidingWindow {
            size,
            layers: vec![true; n_layers],
        });
    Ok(ModelConfig {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: f.usize_or(&["num_key_value_heads"], n_heads)?,
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx,
        norm: NormKind::RmsNorm,
        norm_eps: f.f64_or(&["rms_norm_eps"], 1e-5)?,
        act: Activation::parse(f.str_or(&["hidden_act"], "silu")?, f.file)?,
        gated_mlp: true,
        residual: Residual::Sequential,
        rope: Some(rope(f, head_dim, n_ctx)?),
        tie_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        type_vocab_size: 0,
        pad_token_id: None,
        scale_attn_by_layer: false,
        sliding_window,
        lm_head: true,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope_local: None,
        moe: None,
    })
}

/// Phi3Config's rotary: `rope_scaling` (hub) or `rope_parameters` (transformers 5), whose keys
/// win over the top-level `rope_theta` / `partial_rotary_factor`.
fn rope(f: &Fields, head_dim: usize, n_ctx: usize) -> Result<RopeConfig> {
    let file = f.file.display();
    let params = f.get(&["rope_scaling"]).or(f.get(&["rope_parameters"]));
    let param = |k: &str| params.and_then(|p| p.get(k)).filter(|x| !x.is_null());
    let num = |k: &str| -> Result<Option<f64>> {
        param(k)
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| user_error(format!("{file}: rope `{k}` is not a number: {x}")))
            })
            .transpose()
    };
    let theta = match num("rope_theta")? {
        Some(t) => t,
        None => f.f64_or(&["rope_theta"], 10000.0)?,
    };
    let prf = match num("partial_rotary_factor")? {
        Some(p) => p,
        None => f.f64_or(&["partial_rotary_factor"], 1.0)?,
    };
    // transformers: dim = int(head_dim * partial_rotary_factor)
    let rotary_dims = (head_dim as f64 * prf) as usize;
    let kind = param("rope_type")
        .or_else(|| param("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match kind {
        "default" => RopeScaling::None,
        "longrope" | "su" | "yarn" => {
            let factors = |k: &str| -> Result<Vec<f64>> {
                let bad = || {
                    user_error(format!(
                        "{file}: longrope `{k}` must be a list of {} numbers (rotary dims / 2)",
                        rotary_dims / 2
                    ))
                };
                let list = param(k).and_then(Value::as_array).ok_or_else(bad)?;
                let v: Vec<f64> = list.iter().filter_map(Value::as_f64).collect();
                if v.len() != list.len() || v.len() != rotary_dims / 2 {
                    return Err(bad());
                }
                Ok(v)
            };
            let original = f.usize_or(&["original_max_position_embeddings"], 4096)?;
            if original == 0 {
                return Err(user_error(format!(
                    "{file}: `original_max_position_embeddings` is 0"
                )));
            }
            let factor = match num("factor")? {
                Some(s) => s,
                None => n_ctx as f64 / original as f64,
            };
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position: original,
                attention_factor,
            }
        }
        other => {
            return Err(user_error(format!(
                "{file}: unsupported rope scaling `{other}` for phi3 (supported: default, longrope)"
            )))
        }
    };
    Ok(RopeConfig {
        theta,
        rotary_dims,
        scaling,
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let (d, m, eps) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps);
    let q_dim = cfg.n_heads * cfg.head_dim;
    let qkv_dim = q_dim + 2 * cfg.n_kv_heads * cfg.head_dim;
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        // [d, 2m] after the transpose: the gate's columns, then the up projection's
        let gate_up = ws.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * m, false)?;
        let half = |start: usize| -> Result<Linear> {
            Ok(Linear {
                w: gate_up.w.narrow(1, start, m)?.contiguous()?,
                b: None,
            })
        };
        blocks.push(Block {
            ln1: ws.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
            attn: Attention {
                qkv: ws.linear(&format!("{p}.self_attn.qkv_proj"), d, qkv_dim, false)?,
                o: ws.linear(&format!("{p}.self_attn.o_proj"), q_dim, d, false)?,
                q_norm: None,
                k_norm: None,
            },
            ln2: ws.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp: Mlp {
                pre: half(0)?,
                up: Some(half(m)?),
                down: ws.linear(&format!("{p}.mlp.down_proj"), m, d, false)?,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            moe: None,
        });
    }
    let final_norm = ws.rms_norm("norm", d, eps)?;
    let unembed = super::unembedding(cfg, ws, tok.clone())?;
    Ok((
        Embeddings::tokens(tok),
        blocks,
        Some(final_norm),
        Some(unembed),
    ))
}

#[cfg(test)]
mod tests {
    use crate::model::arch::{config_from_json, REGISTRY};
    use crate::model::config::{ModelConfig, RopeScaling};
    use anyhow::Result;
    use serde_json::{json, Value};
    use std::path::Path;

    fn parse(v: &Value) -> Result<ModelConfig> {
        config_from_json(REGISTRY, v, Path::new("config.json"))
    }

    /// Phi-3-mini-128k's rotary, shortened: head_dim 96, 48 factors.
    fn mini_128k() -> Value {
        json!({
            "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
            "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32064, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
            "sliding_window": 262144,
            "rope_scaling": {"type": "longrope", "short_factor": vec![1.0; 48],
                             "long_factor": vec![2.0; 48]}
        })
    }

    #[test]
    fn longrope_follows_transformers() {
        let c = parse(&mini_128k()).unwrap();
        let r = c.rope.as_ref().unwrap();
        assert_eq!(r.rotary_dims, 96);
        let RopeScaling::LongRope {
            original_max_position,
            attention_factor,
            ..
        } = &r.scaling
        else {
            panic!("{:?}", r.scaling)
        };
        assert_eq!(*original_max_position, 4096);
        // transformers: sqrt(1 + ln(32) / ln(4096)) = 1.1902380714238083
        assert!((attention_factor - 1.1902380714238083).abs() < 1e-12);
        assert_eq!(c.window(1), Some(262144));
        // an explicit attention_factor wins; partial rotary from the rope parameters
        let mut v = mini_128k();
        v["rope_scaling"]["attention_factor"] = json!(1.5);
        v["rope_scaling"]["partial_rotary_factor"] = json!(0.5);
        v["rope_scaling"]["short_factor"] = json!(vec![1.0; 24]);
        v["rope_scaling"]["long_factor"] = json!(vec![1.0; 24]);
        let c = parse(&v).unwrap();
        let r = c.rope.as_ref().unwrap();
        assert_eq!(r.rotary_dims, 48);
        assert!(
            matches!(r.scaling, RopeScaling::LongRope { attention_factor, .. } if attention_factor == 1.5)
        );
        // wrong lengths and other scalings are clear errors
        let mut v = mini_128k();
        v["rope_scaling"]["long_factor"] = json!([1.0]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`long_factor` must be a list of 48 numbers"),
            "{e}"
        );
        let mut v = mini_128k();
        v["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0});
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("unsupported rope scaling `dynamic` for phi3"),
            "{e}"
        );
        // no scaling, no window
        let mut v = mini_128k();
        v["rope_scaling"] = Value::Null;
        v["sliding_window"] = Value::Null;
        let c = parse(&v).unwrap();
        assert_eq!(c.rope.as_ref().unwrap().scaling, RopeScaling::None);
        assert_eq!(c.sliding_window, None);
    }
}
