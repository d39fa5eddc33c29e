//! Figures about this machine and process that reports print: peak memory, and the matmul
//! speed every throughput figure is compared with.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// f32 GFLOP/s of a 1024x4096 @ 4096x1024 product through candle (best of 5).
pub fn matmul_gflops() -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (1024, 4096), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (4096, 1024), &Device::Cpu)?;
    let flops = 2.0 * 1024.0 * 4096.0 * 1024.0;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.sum_all()?.to_scalar::<f32>()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(flops / best / 1e9)
}
