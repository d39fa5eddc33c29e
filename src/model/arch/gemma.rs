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
            },
            _ => Block {
                ln1,
                attn,
                ln2: norm(&format!("{p}.pre_feedforward_layernorm"), d)?,
                mlp,
                post_attn_norm: Some(norm(&format!("{p}.post_attention_layernorm"), d)?),
                post_mlp_norm: Some(norm(&format!("{p}.post_feedforward_layernorm"), d)?),
            },
        });
    }
    let final_norm = norm("norm", d)?;
    let unembed = if cfg.tie_embeddings || !ws.contains_full("lm_head.weight") {
        tok
    } else {
        ws.get_full("lm_head.weight", &[cfg.vocab_size, d])?
    };
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
