//! Attention on the CPU: one task per (sequence, head), the mask applied inside the softmax.

use super::activations::exp;
use super::with_cpu_f32;
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;

/// Which keys a query may attend, and how its scores are shaped before the softmax.
pub struct AttnMask<'a> {
    pub lengths: &'a [usize],
    /// Position of the first query (keys start at 0): the length of a key/value cache.
    pub offset: usize,
    pub causal: bool,
    pub window: Option<usize>,
    /// Soft-capping of the scaled scores, s ← c·tanh(s/c), before the mask (Gemma 2).
    pub softcap: Option<f32>,
}

struct SendPtr(*mut f32);
// SAFETY: each task writes a disjoint set of elements (its own batch item and head).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Where one head's [T, Dh] block of q, k or v lies in its buffer.
#[derive(Clone, Copy)]
struct HeadLayout {
    base: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
}

impl HeadLayout {
    fn offset(&self, batch: usize, head: usize) -> usize {
        self.base + batch * self.batch_stride + head * self.head_stride
    }
}

/// softmax(q·kᵀ·scale + mask)·v, written straight into [B, T, H·Dh] (the layout the output
/// projection reads). One task per (sequence, head) with a single-threaded gemm inside: candle's
/// batched matmul instead syncs the whole thread pool for each of the B·H small products.
#[allow(clippy::too_many_arguments)]
fn attention_core(
    (qs, ql): (&[f32], HeadLayout),
    (ks, kl): (&[f32], HeadLayout),
    (vs, vl): (&[f32], HeadLayout),
    (b, h, hkv, t, tk, dh): (usize, usize, usize, usize, usize, usize),
    scale: f32,
    mask: &AttnMask,
) -> Vec<f32> {
    let mut out = vec![0f32; b * t * h * dh];
    let ptr = SendPtr(out.as_mut_ptr());
    let n_rep = h / hkv;
    (0..b * h).into_par_iter().for_each(|task| {
        let (bi, hi) = (task / h, task % h);
        let kh = hi / n_rep;
        // keys 0..tk; query i sits at position offset + i
        let (off, len) = (mask.offset, mask.offset + mask.lengths[bi]);
        let mut scores = vec![0f32; t * tk];
        // SAFETY: the layouts were built from the buffers' shapes, so every (row, column) the
        // strides reach lies inside qs, ks and vs; scores is t×tk.
        unsafe {
            gemm::gemm(
                t,
                tk,
                dh,
                scores.as_mut_ptr(),
                1,
                tk as isize,
                false,
                qs.as_ptr().add(ql.offset(bi, hi)),
                1,
                ql.row_stride as isize,
                ks.as_ptr().add(kl.offset(bi, kh)),
                kl.row_stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        if let Some(c) = mask.softcap {
            scores.iter_mut().for_each(|s| *s = (*s / c).tanh() * c);
        }
        for (i, row) in scores.chunks_mut(tk).enumerate() {
            let qa = i + off;
            let allowed = |j: usize| {
                j < len && (!mask.causal || j <= qa) && mask.window.is_none_or(|w| qa < j + w)
            };
            let mut max = f32::NEG_INFINITY;
            for (j, s) in row.iter().enumerate() {
                if allowed(j) && *s > max {
                    max = *s;
                }
            }
            let mut sum = 0f32;
            for (j, s) in row.iter_mut().enumerate() {
                *s = if allowed(j) { exp(*s - max) } else { 0.0 };
                sum += *s;
            }
            if sum > 0.0 {
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            } else {
                // No key to attend (a padding position further than a sliding window from the
                // last real token): every key equally, as the additive mask of the unfused path
                // (and transformers' eager attention) gives, rather than 0/0, whose NaNs would
                // reach the real positions through the next layer's values (0·NaN is NaN).
                row.fill(1.0 / tk as f32);
            }
        }
        // SAFETY: this task alone writes out[bi, :, hi·dh .. (hi+1)·dh].
        unsafe {
            let dst = ptr.get().add(bi * t * h * dh + hi * dh);
            gemm::gemm(
                t,
                dh,
                tk,
                dst,
                1,
                (h * dh) as isize,
                false,
                scores.as_ptr(),
                1,
                tk as isize,
                vs.as_ptr().add(vl.offset(bi, kh)),
                1,
                vl.row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
    });
    out
}

/// Attention for q [B, H, T, Dh] and k, v [B, Hkv, T, Dh], all contiguous (after rotary).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttnMask,
) -> Result<Option<Tensor>> {
    let (b, h, t, dh) = q.dims4()?;
    let (hkv, tk) = (k.dim(1)?, k.dim(2)?);
    let per_head = |heads: usize, len: usize| HeadLayout {
        base: 0,
        batch_stride: heads * len * dh,
        head_stride: len * dh,
        row_stride: dh,
    };
    let out = with_cpu_f32(q, |qs| {
        with_cpu_f32(k, |ks| {
            with_cpu_f32(v, |vs| {
                attention_core(
                    (qs, per_head(h, t)),
                    (ks, per_head(hkv, tk)),
                    (vs, per_head(hkv, tk)),
                    (b, h, hkv, t, tk, dh),
                    scale,
                    mask,
                )
            })
        })
    })
    .flatten()
    .flatten();
    match out {
        Some(o) => Ok(Some(Tensor::from_vec(
            o,
            (b, t, h * dh),
            &candle_core::Device::Cpu,
        )?)),
        None => Ok(None),
    }
}

/// Attention read straight from the fused projection output qkv [B, T, (H + 2·Hkv)·Dh] (models
/// without rotary), which saves splitting q, k and v into three head-major copies.
pub fn attention_fused(
    qkv: &Tensor,
    h: usize,
    hkv: usize,
    scale: f32,
    mask: &AttnMask,
) -> Result<Option<Tensor>> {
    let (b, t, width) = qkv.dims3()?;
    let dh = width / (h + 2 * hkv);
    let at = |base: usize| HeadLayout {
        base,
        batch_stride: t * width,
        head_stride: dh,
        row_stride: width,
    };
    let out = with_cpu_f32(qkv, |s| {
        attention_core(
            (s, at(0)),
            (s, at(h * dh)),
            (s, at((h + hkv) * dh)),
            (b, h, hkv, t, t, dh),
            scale,
            mask,
        )
    });
    match out {
        Some(o) => Ok(Some(Tensor::from_vec(
            o,
            (b, t, h * dh),
            &candle_core::Device::Cpu,
        )?)),
        None => Ok(None),
    }
}
