//! y = x·W + b on the CPU through gemm.

use super::with_cpu_f32;
use anyhow::Result;
use candle_core::Tensor;

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
