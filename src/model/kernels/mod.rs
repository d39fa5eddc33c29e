//! CPU kernels where candle's generic path is the bottleneck. candle applies unary ops on one
//! thread with libm's tanh; on a GPT-2-small forward the GELU alone took ~17 % of CPU time. These
//! run the same formulas split over the rayon pool. Inference only: they carry no gradient, so the
//! differentiable path keeps candle's ops.
//!
//! `activations.rs`: the elementwise activation functions; `linear.rs`: x·W + b straight into
//! gemm; `attention.rs`: softmax(q·kᵀ)·v per (sequence, head), fused with the mask.

mod activations;
mod attention;
mod linear;

pub use activations::fast_activation;
pub use attention::{attention, attention_fused, AttnMask};
pub use linear::linear;

use candle_core::{CpuStorage, Tensor};

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
