//! What a neuron writes and reads, from the weights alone ("decoding specialised feature neurons
//! with the final projection layer"; the key–value view of MetaMixer).
//!
//! **Writes.** Neuron i of layer l adds a_i · v_i to the residual stream, v_i = W_out[:, i] (row i of
//! the stored down projection). Its direct effect on the logits is s = W_U (g ⊙ v_i), g the final
//! norm's gain: the largest entries are the tokens it promotes, the smallest those it suppresses.
//! *(choice)* The direct path ignores the final norm's mean-centering, its bias and its division by
//! the residual's scale: the bias adds the same vector for every neuron, and the scale is one
//! positive number per position, so neither changes a neuron's ranking of tokens; centering would,
//! slightly, but the method (and the papers) leave it out.
//! Where the MLP output passes a norm of its own before joining the residual stream (Gemma 2/3's
//! `post_feedforward_layernorm`), its gain g_post is folded in the same way: v_i becomes
//! g_post ⊙ v_i (its division by the output's scale is again one positive number per position).
//! Encoders without an LM head (BERT, MiniLM) decode against their input embedding matrix instead,
//! and say so in `unembed`. Their final "norm" is each block's own post-LN, so g = 1 there.
//!
//! **Reads.** Neuron i's pre-activation is norm(x) · r_i with r_i the W_in column (the gate column
//! for gated MLPs; `reads_up` gives the up projection's). Folding the MLP's input-norm gain g_in
//! gives the residual direction g_in ⊙ r_i. *(choice)* It is scored against the token embeddings
//! scaled to unit norm, so a token ranks by the direction of its embedding, not by its length; the
//! norm's centering and bias are ignored as above.
//!
//! Only ids below both the weight matrix's rows and the tokenizer's vocabulary are ranked: padded
//! vocabulary rows have no token to show.

use crate::model::config::Residual;
use crate::model::Model;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

pub const LM_HEAD: &str = "lm head";
pub const INPUT_EMBEDDINGS: &str = "input embeddings (model has no LM head)";
pub const READS_BASIS: &str =
    "unit-norm token embeddings · (MLP input-norm gain ⊙ W_in column; gate for gated MLPs)";

/// A token id and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub id: u32,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenScore {
    pub token: String,
    pub id: u32,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeuronDescription {
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    /// Which matrix decoded the writes: `lm head` or the input-embedding fallback.
    pub unembed: &'static str,
    pub promotes: Vec<TokenScore>,
    pub suppresses: Vec<TokenScore>,
    pub reads_basis: &'static str,
    pub reads: Vec<TokenScore>,
    /// Gated MLPs only: what the up projection's column reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_up: Option<Vec<TokenScore>>,
}

/// The dtype the products run in: f32 on the CPU (its half-precision matmuls are slow), the
/// model's own on an accelerator.
fn work_dtype(m: &Model) -> DType {
    match m.device() {
        Device::Cpu => DType::F32,
        _ => m.net.dtype,
    }
}

/// Number of token ids that can be ranked against `rows` rows of a weight matrix.
fn ranked_vocab(m: &Model, rows: usize) -> usize {
    rows.min(m.tokenizer.vocab_size().max(1))
}

/// Which matrix decodes the writes.
pub fn unembed_label(m: &Model) -> &'static str {
    if m.net.unembed.is_some() {
        LM_HEAD
    } else {
        INPUT_EMBEDDINGS
    }
}

/// W_U with the final norm's gain folded into its columns: [n_tok, d_model], and its label.
pub fn decoder(m: &Model) -> Result<(Tensor, &'static str)> {
    let (w, label) = match &m.net.unembed {
        Some(u) => (u, LM_HEAD),
        None => (&m.net.embed.tok, INPUT_EMBEDDINGS),
    };
    let n = ranked_vocab(m, w.dim(0)?);
    let mut w = w.narrow(0, 0, n)?.to_dtype(work_dtype(m))?;
    if let (Some(norm), LM_HEAD) = (&m.net.final_norm, label) {
        w = w.broadcast_mul(&norm.gain().to_dtype(w.dtype())?)?;
    }
    Ok((w.contiguous()?, label))
}

/// Token embeddings scaled to unit norm: [n_tok, d_model].
pub fn read_basis(m: &Model) -> Result<Tensor> {
    let e = &m.net.embed.tok;
    let n = ranked_vocab(m, e.dim(0)?);
    let e = e.narrow(0, 0, n)?.to_dtype(DType::F32)?;
    // A zero embedding row stays zero instead of becoming NaN.
    let norm = e.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(e.broadcast_div(&norm)?.to_dtype(work_dtype(m))?)
}

/// The MLP's write directions of `layer`, [d_mlp, d_model]: the down projection's rows, times the
/// gain of the norm between the MLP and the residual stream when the block has one.
pub fn write_matrix(m: &Model, layer: usize) -> Result<Tensor> {
    let b = &m.net.blocks[layer];
    let w = &b.mlp.down.w;
    Ok(match &b.post_mlp_norm {
        Some(n) => w.broadcast_mul(&n.gain().to_dtype(w.dtype())?)?,
        None => w.clone(),
    })
}

/// The gain of the norm whose output the MLP of `layer` reads.
fn mlp_input_gain(m: &Model, layer: usize) -> &Tensor {
    let b = &m.net.blocks[layer];
    match m.cfg.residual {
        Residual::PostLn => b.ln1.gain(),
        Residual::Sequential | Residual::Parallel => b.ln2.gain(),
    }
}

/// The `k` largest scores (`largest = true`) or smallest, best first; ties go to the lower id,
/// NaN never ranks. One pass with a threshold: almost every score is rejected by one comparison,
/// so this runs at memory speed and k·log(n/k) replacements are all the extra work.
pub fn select(row: &[f32], k: usize, largest: bool) -> Vec<Scored> {
    if k == 0 {
        return Vec::new();
    }
    let sign = if largest { 1.0f32 } else { -1.0 };
    let mut buf: Vec<(f32, u32)> = Vec::with_capacity(k);
    // The entry to evict next: smallest key, and of equal keys the highest id.
    let worst = |buf: &[(f32, u32)]| -> (usize, f32) {
        let mut w = 0;
        for (j, e) in buf.iter().enumerate().skip(1) {
            if e.0 < buf[w].0 || (e.0 == buf[w].0 && e.1 > buf[w].1) {
                w = j;
            }
        }
        (w, buf[w].0)
    };
    let (mut worst_pos, mut worst_key) = (0usize, f32::NEG_INFINITY);
    // Blocks whose best key cannot enter are skipped after one vectorizable max over lanes, so
    // the scan runs at SIMD speed; NaN loses every `>` and never counts as a block's best.
    const LANES: usize = 16;
    const BLOCK: usize = 64;
    let mut i = 0;
    while i < row.len() {
        let end = (i + BLOCK).min(row.len());
        if buf.len() == k && end - i == BLOCK {
            let mut acc = [f32::NEG_INFINITY; LANES];
            for c in row[i..end].chunks_exact(LANES) {
                for (a, &x) in acc.iter_mut().zip(c) {
                    let key = sign * x;
                    *a = if key > *a { key } else { *a };
                }
            }
            let best = acc
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
            if best <= worst_key {
                i = end;
                continue;
            }
        }
        for (j, &x) in row[i..end].iter().enumerate() {
            let key = sign * x;
            if buf.len() < k {
                if !key.is_nan() {
                    buf.push((key, (i + j) as u32));
                    if buf.len() == k {
                        (worst_pos, worst_key) = worst(&buf);
                    }
                }
            } else if key > worst_key {
                // Ids arrive in increasing order, so an equal key never displaces an earlier id.
                buf[worst_pos] = (key, (i + j) as u32);
                (worst_pos, worst_key) = worst(&buf);
            }
        }
        i = end;
    }
    buf.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    buf.into_iter()
        .map(|(key, id)| Scored {
            id,
            score: sign * key,
        })
        .collect()
}

fn named(m: &Model, s: &[Scored]) -> Vec<TokenScore> {
    s.iter()
        .map(|x| TokenScore {
            token: m.tokenizer.token_text(x.id),
            id: x.id,
            score: x.score,
        })
        .collect()
}

/// basis [n_tok, d_model] · v [d_model] as a host vector.
fn project(basis: &Tensor, v: &Tensor) -> Result<Vec<f32>> {
    let v = v.to_dtype(basis.dtype())?.reshape((v.elem_count(), 1))?;
    Ok(basis
        .matmul(&v)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Describe one neuron: top `k` promoted, suppressed and read tokens.
pub fn describe_neuron(
    m: &Model,
    layer: usize,
    index: usize,
    k: usize,
) -> Result<NeuronDescription> {
    let (dec, label) = decoder(m)?;
    let mlp = &m.net.blocks[layer].mlp;
    let write = write_matrix(m, layer)?.narrow(0, index, 1)?;
    let s = project(&dec, &write)?;
    let basis = read_basis(m)?;
    let gain = mlp_input_gain(m, layer);
    let read_of = |w: &Tensor| -> Result<Vec<TokenScore>> {
        let r = w.narrow(1, index, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
        let r = (r * gain.to_dtype(DType::F32)?)?;
        Ok(named(m, &select(&project(&basis, &r)?, k, true)))
    };
    Ok(NeuronDescription {
        neuron: format!("{layer}.{index}"),
        layer,
        index,
        unembed: label,
        promotes: named(m, &select(&s, k, true)),
        suppresses: named(m, &select(&s, k, false)),
        reads_basis: READS_BASIS,
        reads: read_of(&mlp.pre.w)?,
        reads_up: mlp.up.as_ref().map(|u| read_of(&u.w)).transpose()?,
    })
}

/// Top and bottom `k` of one neuron in `describe_all`.
#[derive(Debug, Clone)]
pub struct NeuronTop {
    pub index: usize,
    pub promotes: Vec<Scored>,
    pub suppresses: Vec<Scored>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllTiming {
    pub layers: usize,
    pub neurons: usize,
    pub vocab: usize,
    pub d_model: usize,
    /// 2 · vocab · d_model · neurons.
    pub flops: f64,
    /// Seconds in the matrix products only.
    pub product_seconds: f64,
    /// Seconds for everything (products, selection, the caller's writing).
    pub seconds: f64,
    pub product_gflops: f64,
    pub overall_gflops: f64,
}

/// Every neuron of every layer: per layer and chunk of `chunk` neurons, the scores
/// [chunk, d_model] × [d_model, vocab] (one contiguous row per neuron, which suits the selection),
/// then the top/bottom `k` per row in parallel. Only one chunk of scores is alive at a time.
/// `on_layer` gets each layer's results in neuron order; `on_progress` the neurons done so far.
pub fn describe_all(
    m: &Model,
    k: usize,
    chunk: usize,
    mut on_layer: impl FnMut(usize, Vec<NeuronTop>) -> Result<()>,
    mut on_progress: impl FnMut(usize, &AllTiming),
) -> Result<AllTiming> {
    let start = Instant::now();
    let (dec, _) = decoder(m)?;
    let (vocab, d_model) = dec.dims2()?;
    let chunk = chunk.max(1);
    let mut t = AllTiming {
        layers: m.net.blocks.len(),
        neurons: 0,
        vocab,
        d_model,
        flops: 0.0,
        product_seconds: 0.0,
        seconds: 0.0,
        product_gflops: 0.0,
        overall_gflops: 0.0,
    };
    let cpu = matches!(m.device(), Device::Cpu);
    let dec_host: Vec<f32> = if cpu {
        dec.flatten_all()?.to_vec1()?
    } else {
        Vec::new()
    };
    let dec_t = dec.t()?;
    // One scores buffer for the whole run: a fresh chunk-sized allocation per product would be
    // returned to the OS and page-faulted in again every time (measured: a third of the run).
    let mut scores: Vec<f32> = Vec::new();
    let mut done = 0;
    for layer in 0..m.net.blocks.len() {
        let w_out = write_matrix(m, layer)?.to_dtype(dec.dtype())?;
        let d_mlp = w_out.dim(0)?;
        let w_host: Vec<f32> = if cpu {
            w_out.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        let mut tops = Vec::with_capacity(d_mlp);
        for lo in (0..d_mlp).step_by(chunk) {
            let n = chunk.min(d_mlp - lo);
            let t0 = Instant::now();
            if cpu {
                scores.resize(n * vocab, 0.0);
                product_into(
                    &mut scores,
                    &w_host[lo * d_model..(lo + n) * d_model],
                    &dec_host,
                    d_model,
                )?;
            } else {
                let s = w_out.narrow(0, lo, n)?.matmul(&dec_t)?;
                m.device().synchronize()?;
                scores = s.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            }
            t.product_seconds += t0.elapsed().as_secs_f64();
            t.flops += 2.0 * (vocab * d_model * n) as f64;
            let part: Vec<NeuronTop> = scores[..n * vocab]
                .par_chunks(vocab)
                .enumerate()
                .map(|(j, row)| NeuronTop {
                    index: lo + j,
                    promotes: select(row, k, true),
                    suppresses: select(row, k, false),
                })
                .collect();
            tops.extend(part);
            done += n;
            t.neurons = done;
            t.seconds = start.elapsed().as_secs_f64();
            t.product_gflops = t.flops / t.product_seconds.max(1e-12) / 1e9;
            t.overall_gflops = t.flops / t.seconds.max(1e-12) / 1e9;
            on_progress(done, &t);
        }
        on_layer(layer, tops)?;
    }
    t.seconds = start.elapsed().as_secs_f64();
    t.overall_gflops = t.flops / t.seconds.max(1e-12) / 1e9;
    Ok(t)
}

/// dst [n, vocab] = v [n, d] · dec [vocab, d]ᵀ, row-major, written into a caller-owned buffer.
fn product_into(dst: &mut [f32], v: &[f32], dec: &[f32], d: usize) -> Result<()> {
    let n = v.len() / d.max(1);
    let vocab = dec.len() / d.max(1);
    if d == 0 || v.len() != n * d || dec.len() != vocab * d || dst.len() != n * vocab {
        anyhow::bail!(
            "describe: product shapes disagree ({} / {} / {} for d = {d})",
            v.len(),
            dec.len(),
            dst.len()
        );
    }
    let threads = match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the lengths were checked above; v is [n, d] row-major (column stride 1, row stride
    // d), decᵀ is read from dec [vocab, d] row-major (element (k, j) at j·d + k), dst is
    // [n, vocab] row-major. read_dst = false, so dst's old contents are never read.
    unsafe {
        gemm::gemm(
            n,
            vocab,
            d,
            dst.as_mut_ptr(),
            1,
            vocab as isize,
            false,
            v.as_ptr(),
            1,
            d as isize,
            dec.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        )
    };
    Ok(())
}

/// Every ranked token's text, indexed by id.
pub fn token_texts(m: &Model) -> Result<Vec<String>> {
    let rows = m.net.unembed.as_ref().unwrap_or(&m.net.embed.tok).dim(0)?;
    let n = ranked_vocab(m, rows);
    Ok((0..n as u32).map(|id| m.tokenizer.token_text(id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(row: &[f32], k: usize, largest: bool) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_nan())
            .map(|(i, &s)| (i as u32, s))
            .collect();
        v.sort_by(|a, b| {
            let o = if largest {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            };
            o.then(a.0.cmp(&b.0))
        });
        v.truncate(k);
        v
    }

    #[test]
    fn select_matches_a_full_sort_with_ties_and_nan() {
        // Coarse values so that ties are everywhere.
        let row: Vec<f32> = (0..5000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 97) as f32 - 48.0)
            .chain([f32::NAN, 100.0, -100.0, f32::NAN])
            .collect();
        for k in [1, 5, 20, 97, 300] {
            for largest in [true, false] {
                let got: Vec<(u32, f32)> = select(&row, k, largest)
                    .iter()
                    .map(|s| (s.id, s.score))
                    .collect();
                assert_eq!(got, brute(&row, k, largest), "k={k} largest={largest}");
            }
        }
        assert!(select(&row, 0, true).is_empty());
        assert_eq!(
            select(&[f32::NAN, 1.0], 5, true),
            vec![Scored { id: 1, score: 1.0 }]
        );
    }
}
