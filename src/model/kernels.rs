//! CPU kernels where candle's generic path is the bottleneck. candle applies unary ops on one
//! thread with libm's tanh; on a GPT-2-small forward the GELU alone took ~17 % of CPU time. These
//! run the same formulas split over the rayon pool. Inference only: they carry no gradient, so the
//! differentiable path keeps candle's ops.

use super::config::Activation;
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

struct Elementwise(Activation);

/// e^x to ~1e-7 relative, in plain arithmetic so the loops vectorize (libm's expf is a call per
/// element): 2^(x·log2 e) split into an integer power set in the exponent bits and 2^f, |f| ≤ ½,
/// from its Taylor series. Rounding uses the 1.5·2²³ trick, which needs no `floor` instruction.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    let m = t + MAGIC;
    let n = m - MAGIC;
    let k = (m.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let f = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0
                        + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    f32::from_bits((k.wrapping_add(127) << 23) as u32) * p
}

/// GPT-2's tanh GELU, written as x·σ(2u) = x / (1 + e^(−2u)), which equals ½x(1 + tanh u) and
/// needs one exp instead of a tanh.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// One scalar function, monomorphised into the loops below so it inlines and vectorizes.
trait Scalar: Copy {
    fn f(x: f32) -> f32;
}

#[derive(Clone, Copy)]
struct Gelu;
#[derive(Clone, Copy)]
struct GeluErf;
#[derive(Clone, Copy)]
struct Silu;
#[derive(Clone, Copy)]
struct Relu;

impl Scalar for Gelu {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        gelu_tanh(x)
    }
}
impl Scalar for GeluErf {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        gelu_erf(x)
    }
}
impl Scalar for Silu {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        silu(x)
    }
}
impl Scalar for Relu {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x.max(0.0)
    }
}

#[inline(always)]
fn map_generic<S: Scalar>(src: &[f32], dst: &mut [f32]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = S::f(x);
    }
}

/// The same loop compiled for AVX-512 (chosen at run time): 16 lanes instead of SSE2's 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_avx512<S: Scalar>(src: &[f32], dst: &mut [f32]) {
    map_generic::<S>(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2<S: Scalar>(src: &[f32], dst: &mut [f32]) {
    map_generic::<S>(src, dst)
}

fn map<S: Scalar>(src: &[f32], dst: &mut [f32], _: S) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { map_avx512::<S>(src, dst) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { map_avx2::<S>(src, dst) };
        }
    }
    map_generic::<S>(src, dst)
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        "ftri-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("ftri-activation: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("ftri-activation: contiguous input only")
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        const CHUNK: usize = 1 << 14;
        let act = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, s)| match act {
                Activation::GeluTanh => map(s, o, Gelu),
                Activation::GeluErf => map(s, o, GeluErf),
                Activation::Silu => map(s, o, Silu),
                Activation::Relu => map(s, o, Relu),
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The activation through the parallel kernel when it applies (CPU, f32, contiguous), else None.
pub fn fast_activation(x: &Tensor, act: Activation) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || !x.is_contiguous() {
        return Ok(None);
    }
    Ok(Some(x.apply_op1_no_bwd(&Elementwise(act))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            // x·log2 e is rounded to f32, so the error grows with |x|; activations live near 0
            let tol = if x.abs() <= 20.0 { 1e-6 } else { 1e-5 };
            assert!(
                ((got - want) / want).abs() < tol,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn fast_activations_match_candle() {
        let xs: Vec<f32> = (-800..800).map(|i| i as f32 / 80.0).collect();
        let x = Tensor::from_vec(xs, 1600, &candle_core::Device::Cpu).unwrap();
        for (act, reference) in [
            (Activation::GeluTanh, x.gelu().unwrap()),
            (Activation::GeluErf, x.gelu_erf().unwrap()),
            (Activation::Silu, x.silu().unwrap()),
            (Activation::Relu, x.relu().unwrap()),
        ] {
            let got = fast_activation(&x, act).unwrap().unwrap();
            let diff = (got - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 2e-6, "{act:?}: max diff {diff}");
        }
    }
}

/// Run `f` on the f32 data of a contiguous CPU tensor; `None` for any other tensor.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(data)) => {
            let (start, end) = layout.contiguous_offsets()?;
            Some(f(&data[start..end]))
        }
        _ => None,
    }
}

fn threads() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// y = x·W + b for x [n, in], W [in, out]: the output starts as the bias rows and gemm adds the
/// product into it, which saves candle's zero fill and its separate broadcast-add pass.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let (n, in_dim) = x.dims2()?;
    let (in_w, out_dim) = w.dims2()?;
    if in_dim != in_w {
        anyhow::bail!("linear: input has {in_dim} features, weight expects {in_w}");
    }
    let bias: Option<Vec<f32>> = match b {
        Some(b) => match with_cpu_f32(b, |s| s.to_vec()) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let out = with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| {
            let mut dst: Vec<f32> = match &bias {
                Some(bv) => {
                    let mut d = Vec::with_capacity(n * out_dim);
                    for _ in 0..n {
                        d.extend_from_slice(bv);
                    }
                    d
                }
                None => vec![0.0; n * out_dim],
            };
            // SAFETY: the slices hold n·in, in·out and n·out elements laid out row-major, as the
            // strides passed say.
            unsafe {
                gemm::gemm(
                    n,
                    out_dim,
                    in_dim,
                    dst.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    bias.is_some(),
                    xs.as_ptr(),
                    1,
                    in_dim as isize,
                    ws.as_ptr(),
                    1,
                    out_dim as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    threads(),
                )
            };
            dst
        })
    })
    .flatten();
    match out {
        Some(dst) => Ok(Some(Tensor::from_vec(
            dst,
            (n, out_dim),
            &candle_core::Device::Cpu,
        )?)),
        None => Ok(None),
    }
}

/// Which keys a query may attend.
pub struct AttnMask<'a> {
    pub lengths: &'a [usize],
    /// Position of the first query (keys start at 0): the length of a key/value cache.
    pub offset: usize,
    pub causal: bool,
    pub window: Option<usize>,
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
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|s| *s *= inv);
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
