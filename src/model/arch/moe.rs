//! Mixture-of-experts checkpoints: Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE. Attention and norms
//! are Llama's (Mixtral: Mistral's sliding window; Qwen2-MoE: Qwen2's q/k/v biases and window;
//! Qwen3-MoE: per-head q/k norms; OLMoE: q/k norms over the whole projection); the MLP of the
//! layers `ModelConfig::moe` marks is a mixture of experts (`model/moe.rs`), the others a dense
//! gated MLP of `intermediate_size`.
//!
//! Expert weights are read per expert, under the hub names (`block_sparse_moe.experts.E.w1/w3/w2`
//! for Mixtral, `mlp.experts.E.gate_proj/up_proj/down_proj` for the others; transformers 5.24
//! saves these too), or fused as transformers 5 holds them in memory (`mlp.experts.gate_up_proj`
//! [E, 2·I, d] with the gate rows first, `mlp.experts.down_proj` [E, d, I]).

use super::{llama, ArchEntry};
use crate::error::user_error;
use crate::model::config::{Arch, Fields, ModelConfig, MoeConfig, SlidingWindow};
use crate::model::layers::Linear;
use crate::model::moe::{Expert, Moe, SharedExpert};
use crate::model::transformer::{Attention, Block, Embeddings, Mlp, Parts};
use crate::model::weights::WeightStore;
use anyhow::Result;

pub const MIXTRAL: ArchEntry = ArchEntry {
    model_types: &["mixtral"],
    config: mixtral_config,
    load,
};

pub const QWEN2_MOE: ArchEntry = ArchEntry {
    model_types: &["qwen2_moe"],
    config: qwen2_moe_config,
    load,
};

pub const QWEN3_MOE: ArchEntry = ArchEntry {
    model_types: &["qwen3_moe"],
    config: qwen3_moe_config,
    load,
};

pub const OLMOE: ArchEntry = ArchEntry {
    model_types: &["olmoe"],
    config: olmoe_config,
    load,
};

/// The experts of one config: `experts`/`top_k`/`d_expert` name the keys, `norm` is
/// `norm_topk_prob` (absent → false) or `Some(true)` for Mixtral, which always renormalizes.
fn moe_config(
    f: &Fields,
    n_layers: usize,
    d_expert_key: &str,
    always_norm: bool,
    shared: bool,
) -> Result<MoeConfig> {
    let n_experts = f.usize(&["num_experts", "num_local_experts"])?;
    let step = f.usize_or(&["decoder_sparse_step"], 1)?.max(1);
    let dense: Vec<usize> = match f.get(&["mlp_only_layers"]) {
        None => vec![],
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| {
                user_error(format!(
                    "{}: `mlp_only_layers` must be a list of layer numbers, not {v}",
                    f.file.display()
                ))
            })?,
    };
    let shared_size = match shared {
        true => Some(f.usize(&["shared_expert_intermediate_size"])?).filter(|&s| s > 0),
        false => None,
    };
    Ok(MoeConfig {
        n_experts,
        top_k: f.usize_or(&["num_experts_per_tok"], 2)?,
        d_expert: f.usize(&[d_expert_key])?,
        norm_topk_prob: always_norm || f.bool_or(&["norm_topk_prob"], false)?,
        shared_expert: shared_size,
        // transformers: `layer_idx not in mlp_only_layers and (layer_idx + 1) % step == 0`
        layers: (0..n_layers)
            .map(|l| n_experts > 0 && !dense.contains(&l) && (l + 1) % step == 0)
            .collect(),
    })
}

pub fn mixtral_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let mut c = llama::mistral_config(f, arch)?;
    c.norm_eps = f.f64_or(&["rms_norm_eps"], 1e-5)?;
    c.moe = Some(moe_config(f, c.n_layers, "intermediate_size", true, false)?);
    Ok(c)
}

pub fn qwen2_moe_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let mut c = llama::qwen2_config(f, arch)?;
    // transformers 5 writes `qkv_bias` (default true); hub configs have no key and biases
    c.qkv_bias = f.bool_or(&["qkv_bias"], true)?;
    c.moe = Some(moe_config(
        f,
        c.n_layers,
        "moe_intermediate_size",
        false,
        true,
    )?);
    Ok(c)
}

pub fn qwen3_moe_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let mut c = llama::config(f, arch)?;
    // Qwen3MoeConfig: the window (if `use_sliding_window`) applies to every layer
    c.sliding_window = match f.bool_or(&["use_sliding_window"], false)? {
        true => f
            .get(&["sliding_window"])
            .and_then(|w| w.as_u64())
            .map(|w| SlidingWindow {
                size: w as usize,
                layers: vec![true; c.n_layers],
            }),
        false => None,
    };
    c.moe = Some(moe_config(
        f,
        c.n_layers,
        "moe_intermediate_size",
        false,
        false,
    )?);
    Ok(c)
}

pub fn olmoe_config(f: &Fields, arch: Arch) -> Result<ModelConfig> {
    let mut c = llama::config(f, arch)?;
    c.norm_eps = f.f64_or(&["rms_norm_eps"], 1e-5)?;
    if f.get(&["clip_qkv"]).is_some() {
        return Err(user_error(format!(
            "{}: `clip_qkv` is not supported (OLMoE checkpoints have it null)",
            f.file.display()
        )));
    }
    c.moe = Some(moe_config(
        f,
        c.n_layers,
        "intermediate_size",
        false,
        false,
    )?);
    Ok(c)
}

/// A gated MLP's gate and up projections side by side, and its down projection.
fn expert(ws: &WeightStore, base: &str, names: [&str; 3], d: usize, i: usize) -> Result<Expert> {
    let gate = ws.linear(&format!("{base}.{}", names[0]), d, i, false)?;
    let up = ws.linear(&format!("{base}.{}", names[1]), d, i, false)?;
    Ok(Expert {
        gate_up: Linear::concat(&[gate, up])?,
        down: ws.linear(&format!("{base}.{}", names[2]), i, d, false)?,
    })
}

fn load_moe(cfg: &ModelConfig, m: &MoeConfig, ws: &WeightStore, p: &str) -> Result<Moe> {
    let (d, e, i) = (cfg.d_model, m.n_experts, m.d_expert);
    let base = ["mlp", "block_sparse_moe"]
        .into_iter()
        .map(|b| format!("{p}.{b}"))
        .find(|b| ws.contains(&format!("{b}.gate.weight")))
        .unwrap_or_else(|| format!("{p}.mlp"));
    let router = ws.linear(&format!("{base}.gate"), d, e, false)?;
    let fused = format!("{base}.experts.gate_up_proj");
    let experts = if ws.contains(&fused) {
        let gu = ws.get(&fused, &[e, 2 * i, d])?;
        let down = ws.get(&format!("{base}.experts.down_proj"), &[e, d, i])?;
        (0..e)
            .map(|x| -> Result<Expert> {
                Ok(Expert {
                    gate_up: Linear {
                        w: gu.get(x)?.t()?.contiguous()?,
                        b: None,
                    },
                    down: Linear {
                        w: down.get(x)?.t()?.contiguous()?,
                        b: None,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let names = if ws.contains(&format!("{base}.experts.0.w1.weight")) {
            ["w1", "w3", "w2"]
        } else {
            ["gate_proj", "up_proj", "down_proj"]
        };
        (0..e)
            .map(|x| expert(ws, &format!("{base}.experts.{x}"), names, d, i))
            .collect::<Result<Vec<_>>>()?
    };
    let shared = match m.shared_expert {
        Some(s) => Some(SharedExpert {
            mlp: expert(
                ws,
                &format!("{base}.shared_expert"),
                ["gate_proj", "up_proj", "down_proj"],
                d,
                s,
            )?,
            gate: ws.linear(&format!("{base}.shared_expert_gate"), d, 1, false)?,
        }),
        None => None,
    };
    Ok(Moe {
        router,
        experts,
        top_k: m.top_k,
        norm_topk_prob: m.norm_topk_prob,
        shared,
    })
}

pub fn load(cfg: &ModelConfig, ws: &mut WeightStore) -> Result<Parts> {
    ws.detect_prefix("embed_tokens.weight", &["model.", ""])?;
    let m = cfg
        .moe
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("a mixture-of-experts loader needs `ModelConfig::moe`"))?;
    let (d, eps) = (cfg.d_model, cfg.norm_eps);
    let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let tok = ws.get("embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed = Embeddings::tokens(tok.clone());
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("layers.{l}");
        let q = ws.linear(&format!("{p}.self_attn.q_proj"), d, q_dim, cfg.qkv_bias)?;
        let k = ws.linear(&format!("{p}.self_attn.k_proj"), d, kv_dim, cfg.qkv_bias)?;
        let v = ws.linear(&format!("{p}.self_attn.v_proj"), d, kv_dim, cfg.qkv_bias)?;
        // OLMoE normalizes the whole q and k projections, Qwen3-MoE each head
        let (qn, kn) = match cfg.arch.name() {
            "olmoe" => (q_dim, kv_dim),
            "qwen3_moe" => (cfg.head_dim, cfg.head_dim),
            _ => (0, 0),
        };
        let qk_norm = |name: &str, dim: usize| match dim {
            0 => Ok(None),
            _ => ws
                .rms_norm(&format!("{p}.self_attn.{name}"), dim, eps)
                .map(Some),
        };
        let (mlp, moe) = if cfg.is_moe_layer(l) {
            (
                Mlp::empty(d, tok.device(), tok.dtype())?,
                Some(load_moe(cfg, m, ws, &p)?),
            )
        } else {
            let dm = cfg.d_mlp;
            (
                Mlp {
                    pre: ws.linear(&format!("{p}.mlp.gate_proj"), d, dm, false)?,
                    up: Some(ws.linear(&format!("{p}.mlp.up_proj"), d, dm, false)?),
                    down: ws.linear(&format!("{p}.mlp.down_proj"), dm, d, false)?,
                },
                None,
            )
        };
        blocks.push(Block {
            ln1: ws.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
            attn: Attention {
                qkv: Linear::concat(&[q, k, v])?,
                o: ws.linear(&format!("{p}.self_attn.o_proj"), q_dim, d, cfg.o_bias)?,
                q_norm: qk_norm("q_norm", qn)?,
                k_norm: qk_norm("k_norm", kn)?,
            },
            ln2: ws.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            mlp,
            post_attn_norm: None,
            post_mlp_norm: None,
            moe,
        });
    }
    let final_norm = ws.rms_norm("norm", d, eps)?;
    let unembed = super::unembedding(cfg, ws, tok)?;
    Ok((embed, blocks, Some(final_norm), Some(unembed)))
}
