//! Activation functions over the rayon pool, with an `exp` that vectorizes.

use crate::model::config::Activation;
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

struct Elementwise(Activation);

/// e^x to ~1e-7 relative, in plain arithmetic so the loops vectorize (libm's expf is a call per
/// element): 2^(x·log2 e) split into an integer power set in the exponent bits and 2^f, |f| ≤ ½,
/// from its Taylor series. Rounding uses the 1.5·2²³ trick, which needs no `floor` instruction.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
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
