//! A one-layer GPT-2 built by hand in which one head (`COPY_HEAD`) copies the previous token and
//! every other head is silent: ground truth for head hooks, head lesions and head patching.

use super::fixture;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// Head `COPY_HEAD` of layer 0 attends to the previous token and writes that token's embedding
/// towards its unembedding (tied); everything else is silent. GPT-2 layout, d_model 128, 4 heads
/// of 32: positions live in dims 0..64, tokens in 64..96, both zero-mean with fixed norms, so
/// each LayerNorm only scales (by √(128/48)). Prompts stay under 32 tokens (the position code's
/// period).
pub const COPY_HEAD: usize = 2;

pub fn copy_head_model() -> tempfile::TempDir {
    let src = fixture("gpt2");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let (d, h, dh, v, n_pos) = (128usize, 4usize, 32usize, 350usize, 64usize);
    cfg["n_embd"] = d.into();
    cfg["n_head"] = h.into();
    cfg["n_layer"] = 1.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let mut rng = ftri::rng::Rng::new(11);
    // tokens: random in dims 64..96, zero mean, norm 4
    let mut wte = vec![0f32; v * d];
    for t in 0..v {
        let mut e: Vec<f32> = (0..32).map(|_| rng.normal(1.0)).collect();
        let mean = e.iter().sum::<f32>() / 32.0;
        e.iter_mut().for_each(|x| *x -= mean);
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (i, x) in e.iter().enumerate() {
            wte[t * d + 64 + i] = 4.0 * x / norm;
        }
    }
    // positions: (cos, sin)(ω_k·i) for ω_k = 2πk/32, k = 1..16, in dims 0..32 and negated in
    // 32..64 (zero mean, norm √32); Σ_k cos(ω_k·Δ) is 16 at Δ = 0 and ≤ 0 elsewhere (Δ < 32)
    let omega = |k: usize| 2.0 * std::f32::consts::PI * k as f32 / 32.0;
    let mut wpe = vec![0f32; n_pos * d];
    for i in 0..n_pos {
        for k in 1..=16 {
            let (c, s) = ((omega(k) * i as f32).cos(), (omega(k) * i as f32).sin());
            let j = 2 * (k - 1);
            wpe[i * d + j] = c;
            wpe[i * d + j + 1] = s;
            wpe[i * d + 32 + j] = -c;
            wpe[i * d + 32 + j + 1] = -s;
        }
    }
    // c_attn [d, 3d] (in × out): q of the copy head reads each position pair rotated by one
    // step back (q_i · k_j ∝ Σ_k cos(ω_k(i − 1 − j))), its k the pair as it is, its v the token
    let mut c_attn = vec![0f32; d * 3 * d];
    let (q0, k0, v0) = (COPY_HEAD * dh, d + COPY_HEAD * dh, 2 * d + COPY_HEAD * dh);
    let a = 3.0f32;
    for k in 1..=16 {
        let (c, s) = (omega(k).cos(), omega(k).sin());
        let (x, y) = (2 * (k - 1), 2 * (k - 1) + 1);
        // [cos, sin](ω i) → [cos, sin](ω (i − 1))
        c_attn[x * 3 * d + q0 + x] = a * c;
        c_attn[y * 3 * d + q0 + x] = a * s;
        c_attn[x * 3 * d + q0 + y] = -a * s;
        c_attn[y * 3 * d + q0 + y] = a * c;
        c_attn[x * 3 * d + k0 + x] = 1.0;
        c_attn[y * 3 * d + k0 + y] = 1.0;
    }
    for i in 0..32 {
        c_attn[(64 + i) * 3 * d + v0 + i] = 1.0;
    }
    // c_proj [d, d]: the copy head's z back into the token dims, twice (z ≈ 1.6·e_prev after the
    // LayerNorm's scaling, so the block adds ≈ 3.3·e_prev, which outweighs the current token)
    let mut c_proj = vec![0f32; d * d];
    for i in 0..32 {
        c_proj[(COPY_HEAD * dh + i) * d + 64 + i] = 2.0;
    }
    let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    let ones = || t(vec![1.0; d], &[d]);
    let zeros = |n: usize| t(vec![0.0; n], &[n]);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let p = "transformer.h.0.";
    w.insert("transformer.wte.weight".into(), t(wte, &[v, d]));
    w.insert("transformer.wpe.weight".into(), t(wpe, &[n_pos, d]));
    w.insert(format!("{p}attn.c_attn.weight"), t(c_attn, &[d, 3 * d]));
    w.insert(format!("{p}attn.c_attn.bias"), zeros(3 * d));
    w.insert(format!("{p}attn.c_proj.weight"), t(c_proj, &[d, d]));
    w.insert(format!("{p}attn.c_proj.bias"), zeros(d));
    w.insert(
        format!("{p}mlp.c_fc.weight"),
        t(vec![0.0; d * 4 * d], &[d, 4 * d]),
    );
    w.insert(format!("{p}mlp.c_fc.bias"), zeros(4 * d));
    w.insert(
        format!("{p}mlp.c_proj.weight"),
        t(vec![0.0; 4 * d * d], &[4 * d, d]),
    );
    w.insert(format!("{p}mlp.c_proj.bias"), zeros(d));
    for n in ["ln_1", "ln_2"] {
        w.insert(format!("{p}{n}.weight"), ones());
        w.insert(format!("{p}{n}.bias"), zeros(d));
    }
    w.insert("transformer.ln_f.weight".into(), ones());
    w.insert("transformer.ln_f.bias".into(), zeros(d));
    candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
    dir
}
