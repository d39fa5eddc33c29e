//! Attention with its inside exposed: the TransformerLens hook points `blocks.L.attn.hook_q`,
//! `hook_k`, `hook_v`, `hook_rot_q`, `hook_rot_k`, `hook_attn_scores`, `hook_pattern`, `hook_z`
//! and `hook_result`, each captured, changed or tracked through the `HookSet` like any other site.
//!
//! Invariants:
//! - This path runs for a layer only when `HookSet::needs_attention_internals(layer)` says a hook
//!   reads or changes that layer's inside; every other layer keeps the fused kernels, so sites
//!   nobody asked for cost nothing.
//! - With no intervention it computes what `Transformer::attention`'s unfused path computes (the
//!   same ops in the same order), so capturing a site never changes the model's output.
//! - Layouts are TransformerLens's, batch first: q, rot_q, z `[B, T, H, Dh]`; k, v, rot_k
//!   `[B, T, Hkv, Dh]` (grouped-query attention: one per key-value head); scores and pattern
//!   `[B, H, T, Tk]`; result `[B, T, H, d_model]`. hook_q/hook_k are the projections (with bias)
//!   before any q/k norm and rotary; hook_rot_q/hook_rot_k what the scores are computed from.
//! - Scores are scaled and soft-capped (Gemma 2, as transformers: before the mask); entries a
//!   query may not attend (causal, padding, sliding window) are −∞, as TransformerLens fills them.
//!   The softmax reads them as the additive mask of the unfused path does: a row with no allowed
//!   key at all (a padding position beyond a sliding window) becomes uniform rather than NaN.
//! - With a key/value cache the hooks see the new positions only for q/k/v/rot_q/rot_k/z/result;
//!   scores and pattern span every key so far.

use super::config::ModelConfig;
use super::hooks::{AttnHook, HookSet, Site, SiteKind};
use super::layers::{softmax_last, Norm};
use super::transformer::{Block, KvCache, Transformer};
use anyhow::Result;
use candle_core::{DType, Tensor};

/// Units of an attention-internal site as `HOOK:N` counts them (the flattened last two axes per
/// token); 0 for scores and pattern, whose width depends on the number of tokens.
pub fn site_dim(cfg: &ModelConfig, h: AttnHook) -> usize {
    let (heads, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    match h {
        AttnHook::Q | AttnHook::RotQ | AttnHook::Z => heads * dh,
        AttnHook::K | AttnHook::V | AttnHook::RotK => kv * dh,
        AttnHook::Result => heads * cfg.d_model,
        AttnHook::Scores | AttnHook::Pattern => 0,
    }
}

/// Each head's output norm per token: hook_z `[B, T, H, Dh]` → `[B, T, H]` (in f32), what
/// `localize --site attn.hook_z` and `record` make of a head.
pub fn head_norms(z: &Tensor) -> Result<Tensor> {
    Ok(z.to_dtype(DType::F32)?.sqr()?.sum(3)?.sqrt()?)
}

/// An activation as `[B, T, units]` for per-unit statistics (`record`, the server's contexts):
/// hook_z as its head norms (a head per unit), the other per-token attention sites with heads ×
/// dims flattened; 3-d sites pass unchanged.
pub fn per_token_units(site: Site, x: Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        return Ok(x);
    }
    let (b, t, h, d) = x.dims4()?;
    match site {
        Site::Block(_, SiteKind::Attn(AttnHook::Z)) => Ok(head_norms(&x)?.to_dtype(x.dtype())?),
        _ => Ok(x.reshape((b, t, h * d))?),
    }
}

fn site(l: usize, h: AttnHook) -> Site {
    Site::Block(l, SiteKind::Attn(h))
}

/// Apply the hooks of a `[B, H, T, D]` (head-major, what the matmuls want) tensor at a site laid
/// out `[B, T, H, D]`: transposed only when the site is active.
fn hook_head_major(hooks: &mut HookSet, site: Site, x: Tensor) -> Result<Tensor> {
    if !hooks.is_active(site) {
        return Ok(x);
    }
    let y = hooks.apply(site, x.transpose(1, 2)?.contiguous()?)?;
    Ok(y.transpose(1, 2)?.contiguous()?)
}

/// The layer's attention output (before any post-norm), with every attention hook applied.
pub(crate) fn attention(
    net: &Transformer,
    l: usize,
    block: &Block,
    x: &Tensor,
    mask: Option<&Tensor>,
    (_lengths, offset, cache): (&[usize], usize, Option<&mut KvCache>),
    hooks: &mut HookSet,
) -> Result<Tensor> {
    let cfg = &net.cfg;
    let diff = hooks.differentiable;
    let (b, t, _) = x.dims3()?;
    let (h, hkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let qkv = block.attn.qkv.forward(x, diff)?;
    let mut scale = cfg.attn_scale.unwrap_or(1.0 / (dh as f64).sqrt());
    if cfg.scale_attn_by_layer {
        scale /= (l + 1) as f64;
    }
    let window = cfg.window(l);
    let rope = match (window, &net.rope_local) {
        (Some(_), Some(local)) => Some(local),
        _ => net.rope.as_ref(),
    };

    // q, k, v as the projections give them: [B, T, heads, Dh]
    let proj = |start: usize, heads: usize| -> Result<Tensor> {
        Ok(qkv
            .narrow(2, start, heads * dh)?
            .reshape((b, t, heads, dh))?)
    };
    let q = hooks.apply(site(l, AttnHook::Q), proj(0, h)?)?;
    let k = hooks.apply(site(l, AttnHook::K), proj(h * dh, hkv)?)?;
    let v = hooks.apply(site(l, AttnHook::V), proj((h + hkv) * dh, hkv)?)?;

    // q/k norms: over the whole projection (OLMoE, OLMo 2) or over each head (Qwen3, Gemma 3),
    // as `Transformer::attention` decides
    let norm = |x: Tensor, n: &Option<Norm>, heads: usize| -> Result<Tensor> {
        Ok(match n {
            Some(n) if heads > 1 && n.gain().dims() == [heads * dh] => n
                .forward(&x.reshape((b, t, heads * dh))?, diff)?
                .reshape((b, t, heads, dh))?,
            Some(n) => n.forward(&x, diff)?,
            None => x,
        })
    };
    let q = norm(q, &block.attn.q_norm, h)?
        .transpose(1, 2)?
        .contiguous()?;
    let k = norm(k, &block.attn.k_norm, hkv)?
        .transpose(1, 2)?
        .contiguous()?;
    let mut v = v.transpose(1, 2)?.contiguous()?;
    let (q, mut k) = match rope {
        Some(rope) => {
            let q = rope.apply(&q, diff, offset)?;
            let k = rope.apply(&k, diff, offset)?;
            (
                hook_head_major(hooks, site(l, AttnHook::RotQ), q)?,
                hook_head_major(hooks, site(l, AttnHook::RotK), k)?,
            )
        }
        None => (q, k),
    };
    if let Some(cache) = cache {
        if cache.layers.len() < net.blocks.len() {
            cache.layers.resize(net.blocks.len(), None);
        }
        if let Some((pk, pv)) = &cache.layers[l] {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        cache.layers[l] = Some((k.clone(), v.clone()));
    }
    let tk = k.dim(2)?;

    // grouped-query attention without copying k/v, as in `Transformer::attention`
    let n_rep = h / hkv;
    let qg = q.reshape((b, hkv, n_rep * t, dh))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?.reshape((b, h, t, tk))?;
    let scores = match cfg.attn_softcap {
        Some(c) => ((&scores / c)?.tanh()? * c)?,
        None => scores,
    };
    let scores_site = site(l, AttnHook::Scores);
    let probs = match mask {
        Some(m) if hooks.is_active(scores_site) => {
            // −∞ where masked (TransformerLens); the softmax then reads −∞ as the lowest finite
            // value, which is what adding the unfused path's mask gives
            let allowed = m.eq(0.0)?.broadcast_as(scores.shape())?;
            let neg_inf = Tensor::new(f32::NEG_INFINITY, &net.device)?
                .to_dtype(scores.dtype())?
                .broadcast_as(scores.shape())?;
            let masked = hooks.apply(scores_site, allowed.where_cond(&scores, &neg_inf)?)?;
            let lowest = Tensor::new(lowest(masked.dtype()), &net.device)?
                .to_dtype(masked.dtype())?
                .broadcast_as(masked.shape())?;
            softmax_last(&masked.maximum(&lowest)?, diff)?
        }
        Some(m) => softmax_last(&scores.broadcast_add(m)?, diff)?,
        None => softmax_last(&hooks.apply(scores_site, scores)?, diff)?,
    };
    let probs = hooks.apply(site(l, AttnHook::Pattern), probs)?;
    let probs = probs.contiguous()?.reshape((b, hkv, n_rep * t, tk))?;
    // z in TransformerLens's layout [B, T, H, Dh]
    let z = probs
        .matmul(&v)?
        .reshape((b, h, t, dh))?
        .transpose(1, 2)?
        .contiguous()?;
    let z = hooks.apply(site(l, AttnHook::Z), z)?;
    let result_site = site(l, AttnHook::Result);
    if !hooks.is_active(result_site) {
        return block.attn.o.forward(&z.reshape((b, t, h * dh))?, diff);
    }
    // each head's write: z_h · W_O[h·Dh .. (h+1)·Dh, :], the output projection split by rows
    let o = &block.attn.o;
    let d = o.out_dim();
    let w = o.w.reshape((h, dh, d))?;
    let zh = z.reshape((b * t, h, dh))?.transpose(0, 1)?.contiguous()?;
    let result = zh
        .matmul(&w)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((b, t, h, d))?;
    let result = hooks.apply(result_site, result)?;
    let out = result.sum(2)?;
    Ok(match &o.b {
        Some(bias) => out.broadcast_add(bias)?,
        None => out,
    })
}

/// What a masked (−∞) score becomes in the softmax: the unfused path's additive mask value, or
/// f16's lowest finite value (−1e30 overflows f16).
fn lowest(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        _ => -1e30,
    }
}
