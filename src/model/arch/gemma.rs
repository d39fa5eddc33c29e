//! The Gemma family: `gemma` (Gemma 1), `gemma2`, `gemma3_text` (Gemma 3's text model, e.g.
//! Gemma-3-270M/1B). The checkpoint layout is Llama's (`model.layers.L.self_attn.q_proj`, …,
//! `mlp.gate_proj/up_proj/down_proj`, grouped-query attention, rotary); what differs from
//! `llama.rs`, each as transformers 5 computes it:
//!
//! All three
//! - **RMSNorm gain 1 + w, in f32** (`GemmaRMSNorm`): the checkpoint stores w, the norm is
//!   `(norm(x.float()) * (1 + w.float())).type_as(x)`, so the norm runs in f32 whatever the dtype
//!   ([`Norm::rms_unit_offset`]; `describe` sees the gain 1 + w).
//! - **Embeddings × √d_model**, the factor rounded to the model's dtype first
//!   (`embeds * torch.tensor(d**0.5).to(dtype)`; in bf16 √2304 becomes 48.0). `hook_embed` is
//!   *after* the scale: it is what transformers 5's `embed_tokens` returns and what
//!   TransformerLens's Gemma `W_E` (pre-scaled by √d_model) gives, so `hook_embed` equals
//!   `blocks.0.hook_resid_pre`. The unembedding (tied by default) is the unscaled matrix.
//! - **GeGLU**: the gate goes through tanh-GELU. Gemma 1 reads `hidden_act` and, as transformers
//!   5 does, takes its legacy value `gelu` to mean the tanh approximation; Gemma 2/3 read
//!   `hidden_activation` (default `gelu_pytorch_tanh`) and ignore `hidden_act`.
//! - **head_dim from config.json** (default 256, transformers' default; not d_model / heads).
//!
//! Gemma 2 and 3
//! - **Sandwich norms**: `input_layernorm` before attention (`ln1`), `post_attention_layernorm`
//!   on the attention *output* before the residual add (unlike Llama, where that name is the
//!   pre-MLP norm), `pre_feedforward_layernorm` before the MLP (`ln2`),
//!   `post_feedforward_layernorm` on the MLP output. `hook_attn_out` / `hook_mlp_out` are the
//!   post-norms' outputs: what is added to the residual stream.
//! - **Attention scale** `query_pre_attn_scalar`^-½ (default 256) instead of head_dim^-½.
//! - **Sliding-window layers**: `layer_types` (transformers 5) or, without it, Gemma 2's rule
//!   (even layers slide) / Gemma 3's `sliding_window_pattern` (default 6: every 6th layer is
//!   global). `sliding_window` defaults to 4096; `null` turns the window off (Gemma 2 only).
//!
//! Gemma 2 only
//! - **Soft-capping**: attention logits c·tanh(s/c) before the mask (`attn_logit_softcapping`,
//!   default 50) and final logits (`final_logit_softcapping`, default 30); `null` turns either off.
//!
//! Gemma 3 only
//! - **q_norm / k_norm**: per-head RMSNorm (1 + w) of queries and keys, before rotary.
//! - **Two rotary bases**: sliding layers use `rope_local_base_freq` (default 1e4) without
//!   scaling, global ones `rope_theta` (default 1e6) with `rope_scaling`; transformers 5 nests
//!   both as `rope_parameters: {"sliding_attention": {…}, "full_attention": {…}}`.
//! - `final_logit_softcapping` applies when set (default none); `attn_logit_softcapping` is
//!   ignored, as transformers 5's `Gemma3Attention` never passes it to the attention.
//! - `use_bidirectional_attention` (EmbeddingGemma) is not supported and is refused.

use super::ArchEntry;
use crate::error::user_error;
use crate::model::config::{
    Activation, Arch, Fields, ModelConfig, NormKind, Residual, RopeConfig, RopeScaling,
    SlidingWindow,
};
use crate::model::layers::{Linear, Norm};
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const GEMMA: ArchEntry = ArchEntry {
    model_types: &["gemma"],
    config: gemma_config,
    load: |c, ws| load(c, ws, Version::Gemma1),
};

pub const GEMMA2: ArchEntry = ArchEntry {
    model_types: &["gemma2"],
    config: gemma2_config,
    load: |c, ws| load(c, ws, Version::Gemma2),
};

pub const GEMMA3_TEXT: ArchEntry = ArchEntry {
    model_types: &["gemma3_text"],
    config: gemma3_config,
    load: |c, ws| load(c, ws, Version::Gemma3),
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Gemma1,
    Gemma2,
    Gemma3,
}

pub fn gemma_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    config(f, arch, Version::Gemma1)
}

pub fn gemma2_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    config(f, arch, Version::Gemma2)
}

pub fn gemma3_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    config(f, arch, Version::Gemma3)
}

fn config(f: &Fields, arch: Arch, version: Version) -> Result<ModelConfig> {
    let d_model = f.usize(&["hidden_size"])?;
    let n_heads = f.usize(&["num_attention_heads"])?;
    let n_layers = f.usize(&["num_hidden_layers"])?;
    let head_dim = f.usize_or(&["head_dim"], 256)?;
    let attention_bias = f.bool_or(&["attention_bias"], false)?;
    if f.bool_or(&["use_bidirectional_attention"], false)? {
        return Err(user_error(format!(
            "{}: `use_bidirectional_attention` (EmbeddingGemma) is not supported",
            f.file.display()
        )));
    }
    let act = match version {
        Version::Gemma1 => match f.str_or(&["hidden_act"], "gelu_pytorch_tanh")? {
            // transformers: "a legacy value of the official releases … meant to target the tanh
            // approximation"
            "gelu" => Activation::GeluTanh,
            other => Activation::parse(other, f.file)?,
        },
        _ => Activation::parse(
            f.str_or(&["hidden_activation"], "gelu_pytorch_tanh")?,
            f.file,
        )?,
    };
    let (rope, rope_local) = match version {
        Version::Gemma3 => gemma3_rope(f, head_dim)?,
        _ => (ModelConfig::rope(f, head_dim, 10000.0)?, None),
    };
    let sliding_window = match version {
        Version::Gemma1 => None,
        Version::Gemma2 => window(f, version, n_layers)?,
        Version::Gemma3 => {
            let w = window(f, version, n_layers)?;
            if w.is_none() {
                return Err(user_error(format!(
                    "{}: `sliding_window` is null; gemma3_text needs a window for its local layers",
                    f.file.display()
                )));
            }
            w
        }
    };
    let (attn_scale, attn_softcap, final_softcap) = match version {
        Version::Gemma1 => (None, None, None),
        Version::Gemma2 => (
            Some(f.f64_or(&["query_pre_attn_scalar"], 256.0)?.powf(-0.5)),
            f.f64_default_or_null("attn_logit_softcapping", 50.0)?,
            f.f64_default_or_null("final_logit_softcapping", 30.0)?,
        ),
        Version::Gemma3 => (
            Some(f.f64_or(&["query_pre_attn_scalar"], 256.0)?.powf(-0.5)),
            None,
            match f.get(&["final_logit_softcapping"]) {
                None => None,
                Some(_) => Some(f.f64_or(&["final_logit_softcapping"], 0.0)?),
            },
        ),
    };
    let default_ctx = match version {
        Version::Gemma3 => 131_072,
        _ => 8192,
    };
    Ok(ModelConfig {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: f.usize_or(&["num_key_value_heads"], n_heads)?,
        head_dim,
        d_mlp: f.usize(&["intermediate_size"])?,
        vocab_size: f.usize(&["vocab_size"])?,
        n_ctx: f.usize_or(&["max_position_embeddings"], default_ctx)?,
        norm: NormKind::RmsNorm,
        norm_eps: f.f64_or(&["rms_norm_eps"], 1e-6)?,
        act,
        gated_mlp: true,
        residual: Residual::Sequential,
        rope: Some(rope),
        tie_embeddings: f.bool_or(&["tie_word_embeddings"], true)?,
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: false,
        type_vocab_size: 0,
        pad_token_id: None,
        scale_attn_by_layer: false,
        sliding_window,
        lm_head: true,
        attn_scale,
        attn_softcap,
        final_softcap,
        rope_local,
        moe: None,
    })
}

/// Gemma 3's global (full-attention) and local (sliding) rotary settings, from either spelling:
/// transformers 5's `rope_parameters` keyed by layer type, or the flat `rope_theta` /
/// `rope_scaling` (global) and `rope_local_base_freq` (local, never scaled) of transformers 4.
fn gemma3_rope(f: &Fields, head_dim: usize) -> Result<(RopeConfig, Option<RopeConfig>)> {
    const GLOBAL: f64 = 1_000_000.0;
    const LOCAL: f64 = 10_000.0;
    let nested = f
        .get(&["rope_parameters"])
        .filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let (global, local) = match nested {
        Some(p) => {
            let per_type = |key: &str, default: f64| match p.get(key).filter(|x| !x.is_null()) {
                Some(q) => ModelConfig::rope_from_params(f, q, head_dim, default),
                None => Ok(RopeConfig {
                    theta: default,
                    rotary_dims: head_dim,
                    scaling: RopeScaling::None,
                }),
            };
            (
                per_type("full_attention", GLOBAL)?,
                per_type("sliding_attention", LOCAL)?,
            )
        }
        None => (
            ModelConfig::rope(f, head_dim, GLOBAL)?,
            RopeConfig {
                theta: f.f64_or(&["rope_local_base_freq"], LOCAL)?,
                rotary_dims: head_dim,
                scaling: RopeScaling::None,
            },
        ),
    };
    Ok((global, Some(local)))
}

/// The sliding window and the layers it applies to (see the module docs).
fn window(f: &Fields, version: Version, n_layers: usize) -> Result<Option<SlidingWindow>> {
    let size = match f.v.get("sliding_window") {
        None => 4096,
        Some(w) if w.is_null() => return Ok(None),
        Some(_) => f.usize(&["sliding_window"])?,
    };
    let layers = match f.layer_types()? {
        Some(layers) => layers,
        None => {
            let pattern = match version {
                Version::Gemma2 => 2,
                _ => f.usize_or(&["sliding_window_pattern", "_sliding_window_pattern"], 6)?,
            };
            if pattern == 0 {
                return Err(user_error(format!(
                    "{}: `sliding_window_pattern` is 0",
                    f.file.display()
                )));
            }
            // transformers: layer i slides when (i + 1) % pattern != 0
            (0..n_layers).map(|l| (l + 1) % pattern != 0).collect()
        }
    };
    Ok(layers
        .contains(&true)
        .then_some(SlidingWindow { size, layers }))
}

fn load(cfg: &ModelConfig, ws: &mut WeightStore, version: Version) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let (d, m, eps, dh) = (cfg.d_model, cfg.d_mlp, cfg.norm_eps, cfg.head_dim);
    let (q_dim, kv_dim) = (cfg.n_heads * dh, cfg.n_kv_heads * dh);
    let norm = |name: &str, dim: usize| -> Result<Norm> {
        Norm::rms_unit_offset(&ws.get(&format!("{name}.weight"), &[dim])?, eps)
    };
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings {
        scale: Some((d as f64).sqrt()),
        ..Embeddings::tokens(tok.clone())
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        let a = format!("{p}.self_attn");
        let q = ws.linear(&format!("{a}.q_proj"), d, q_dim, cfg.qkv_bias)?;
        let k = ws.linear(&format!("{a}.k_proj"), d, kv_dim, cfg.qkv_bias)?;
        let v = ws.linear(&format!("{a}.v_proj"), d, kv_dim, cfg.qkv_bias)?;
        let qk_norm = |n: &str| -> Result<Option<Norm>> {
            match version {
                Version::Gemma3 => Ok(Some(norm(&format!("{a}.{n}"), dh)?)),
                _ => Ok(None),
            }
        };
        let attn = Attention {
            qkv: Linear::concat(&[q, k, v])?,
            o: ws.linear(&format!("{a}.o_proj"), q_dim, d, cfg.o_bias)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
        };
        let mlp = Mlp {
            pre: ws.linear(&format!("{p}.mlp.gate_proj"), d, m, false)?,
            up: Some(ws.linear(&format!("{p}.mlp.up_proj"), d, m, false)?),
            down: ws.linear(&format!("{p}.mlp.down_proj"), m, d, false)?,
        };
        let ln1 = norm(&format!("{p}.input_layernorm"), d)?;
        blocks.push(match version {
            // Llama's wiring: `post_attention_layernorm` is the pre-MLP norm
            Version::Gemma1 => Block {
                ln1,
                attn,
                ln2: norm(&format!("{p}.post_attention_layernorm"), d)?,
                mlp,
                post_attn_norm: None,
                post_mlp_norm: None,
                moe: None,
            },
            _ => Block {
                ln1,
                attn,
                ln2: norm(&format!("{p}.pre_feedforward_layernorm"), d)?,
                mlp,
                post_attn_norm: Some(norm(&format!("{p}.post_attention_layernorm"), d)?),
                post_mlp_norm: Some(norm(&format!("{p}.post_feedforward_layernorm"), d)?),
                moe: None,
            },
        });
    }
    let final_norm = norm("norm", d)?;
    let unembed = super::unembedding(cfg, ws, tok)?;
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::{config_from_json, REGISTRY};
    use serde_json::{json, Value};
    use std::path::Path;

    fn parse(v: &Value) -> Result<ModelConfig> {
        config_from_json(REGISTRY, v, Path::new("config.json"))
    }

    /// Gemma-3-270M's shape: 18 layers, 5 local : 1 global.
    fn gemma3_270m_common() -> Value {
        json!({
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "attn_logit_softcapping": null,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
            "final_logit_softcapping": null,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 640,
            "initializer_range": 0.02,
            "intermediate_size": 2048,
            "max_position_embeddings": 32768,
            "num_attention_heads": 4,
            "num_hidden_layers": 18,
            "num_key_value_heads": 1,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-6,
            "sliding_window": 512,
            "torch_dtype": "bfloat16",
            "use_bidirectional_attention": false,
            "use_cache": true,
            "vocab_size": 262144
        })
    }

    fn layer_types(n: usize, pattern: usize) -> Value {
        (0..n)
            .map(|i| match (i + 1) % pattern {
                0 => "full_attention",
                _ => "sliding_attention",
            })
            .collect()
    }

    fn windows(c: &ModelConfig) -> Vec<Option<usize>> {
        (0..c.n_layers).map(|l| c.window(l)).collect()
    }

    #[test]
    fn gemma3_270m_parses_in_both_spellings() {
        // transformers 4.5x: flat rope keys, layer_types and the private pattern
        let mut v4 = gemma3_270m_common();
        let o = v4.as_object_mut().unwrap();
        o.insert("rope_theta".into(), json!(1000000.0));
        o.insert("rope_local_base_freq".into(), json!(10000.0));
        o.insert("rope_scaling".into(), Value::Null);
        o.insert("_sliding_window_pattern".into(), json!(6));
        o.insert("layer_types".into(), layer_types(18, 6));
        o.insert("transformers_version".into(), json!("4.55.0.dev0"));
        // transformers 5: rope_parameters per layer type
        let mut v5 = gemma3_270m_common();
        let o = v5.as_object_mut().unwrap();
        o.insert(
            "rope_parameters".into(),
            json!({
                "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
            }),
        );
        o.insert("layer_types".into(), layer_types(18, 6));
        o.insert("sliding_window_pattern".into(), json!(6));
        // … and an older one with neither layer_types nor rope_local_base_freq
        let mut old = v4.clone();
        let o = old.as_object_mut().unwrap();
        o.remove("layer_types");
        o.remove("_sliding_window_pattern");
        o.remove("rope_local_base_freq");
        o.insert("sliding_window_pattern".into(), json!(6));
        for v in [&v4, &v5, &old] {
            let c = parse(v).unwrap();
            assert_eq!(c.arch.name(), "gemma3_text");
            assert_eq!(
                (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim),
                (18, 640, 4, 1, 256)
            );
            assert_eq!((c.d_mlp, c.vocab_size, c.n_ctx), (2048, 262144, 32768));
            assert_eq!(c.act, Activation::GeluTanh);
            assert!(c.tie_embeddings, "tied by default");
            assert_eq!(c.norm_eps, 1e-6);
            assert_eq!(c.attn_scale, Some(1.0 / 16.0));
            assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
            let rope = c.rope.as_ref().unwrap();
            let local = c.rope_local.as_ref().unwrap();
            assert_eq!((rope.theta, local.theta), (1e6, 1e4));
            assert_eq!(
                (rope.scaling.clone(), local.scaling.clone()),
                (RopeScaling::None, RopeScaling::None)
            );
            assert_eq!(rope.rotary_dims, 256);
            let w = windows(&c);
            for (l, w) in w.iter().enumerate() {
                let global = l % 6 == 5;
                assert_eq!(*w, (!global).then_some(512), "layer {l}");
            }
        }
    }

    #[test]
    fn gemma3_rope_scaling_applies_to_global_layers_only() {
        let mut v4 = gemma3_270m_common();
        let o = v4.as_object_mut().unwrap();
        o.insert("rope_theta".into(), json!(1000000.0));
        o.insert("rope_local_base_freq".into(), json!(10000.0));
        o.insert(
            "rope_scaling".into(),
            json!({"rope_type": "linear", "factor": 8.0}),
        );
        let mut v5 = gemma3_270m_common();
        v5["rope_parameters"] = json!({
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
        });
        for v in [v4, v5] {
            let c = parse(&v).unwrap();
            assert_eq!(
                c.rope.as_ref().unwrap().scaling,
                RopeScaling::Linear { factor: 8.0 }
            );
            assert_eq!(c.rope_local.as_ref().unwrap().scaling, RopeScaling::None);
            // no layer_types: sliding_window_pattern's default 6
            assert_eq!(windows(&c).iter().filter(|w| w.is_none()).count(), 3);
        }
    }

    #[test]
    fn gemma2_defaults_and_nulls_follow_transformers() {
        let base = json!({
            "model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100
        });
        let c = parse(&base).unwrap();
        // absent keys: transformers' defaults
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.attn_scale, Some(1.0 / 16.0), "query_pre_attn_scalar 256");
        assert_eq!(c.head_dim, 256);
        assert_eq!(windows(&c), [Some(4096), None, Some(4096), None]);
        assert_eq!(c.rope.as_ref().unwrap().theta, 10000.0);
        assert!(c.rope_local.is_none());
        // explicit nulls turn soft-capping and the window off
        let mut v = base.clone();
        v["attn_logit_softcapping"] = Value::Null;
        v["final_logit_softcapping"] = Value::Null;
        v["sliding_window"] = Value::Null;
        let c = parse(&v).unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        assert_eq!(c.sliding_window, None);
        // layer_types wins over the even/odd rule
        let mut v = base.clone();
        v["layer_types"] = json!([
            "full_attention",
            "sliding_attention",
            "full_attention",
            "full_attention"
        ]);
        v["sliding_window"] = json!(8);
        assert_eq!(windows(&parse(&v).unwrap()), [None, Some(8), None, None]);
        // bad values are clear errors
        let mut v = base.clone();
        v["attn_logit_softcapping"] = json!(0.0);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`attn_logit_softcapping` must be a positive number"),
            "{e}"
        );
    }

    #[test]
    fn gemma1_reads_legacy_gelu_as_tanh() {
        let mut v = json!({
            "model_type": "gemma", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 12, "vocab_size": 100, "hidden_act": "gelu",
            "hidden_activation": "gelu_pytorch_tanh"
        });
        let c = parse(&v).unwrap();
        assert_eq!(c.act, Activation::GeluTanh);
        assert_eq!(
            (c.attn_scale, c.attn_softcap, c.final_softcap),
            (None, None, None)
        );
        assert_eq!(c.sliding_window, None);
        assert!(c.tie_embeddings);
        v["hidden_act"] = json!("gelu_new");
        assert_eq!(parse(&v).unwrap().act, Activation::GeluTanh);
        v["hidden_act"] = json!("relu");
        assert_eq!(parse(&v).unwrap().act, Activation::Relu);
    }

    #[test]
    fn unsupported_gemma_variants_are_refused() {
        let mut v = gemma3_270m_common();
        v["use_bidirectional_attention"] = json!(true);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        let mut v = gemma3_270m_common();
        v["sliding_window"] = Value::Null;
        assert!(parse(&v).is_err());
    }
}
