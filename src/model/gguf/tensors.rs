//! A GGUF file's tensors under the Hugging Face names the architecture loaders ask for, with
//! llama.cpp's conversion undone, as transformers' GGUF loader undoes it:
//! - names: `token_embd` → `model.embed_tokens`, `blk.N.attn_q` → `model.layers.N.self_attn.q_proj`,
//!   … (gguf-py's `tensor_mapping.py` for the architecture; `ffn_norm` is Llama's
//!   `post_attention_layernorm` but Gemma's `pre_feedforward_layernorm`); a GGUF tensor with no
//!   HF counterpart (e.g. `rope_freqs.weight`) is ignored, as transformers ignores it;
//! - Llama (and Mistral) q/k rows: llama.cpp permutes them for its rotary layout; transformers'
//!   `LlamaTensorProcessor._reverse_permute_weights` puts them back (per head, interleaved pairs
//!   → halves), with the key heads counted as `head_count_kv`;
//! - Gemma 3 norms: llama.cpp stores `1 + w` for every `*norm.weight`; transformers'
//!   `Gemma2TensorProcessor` subtracts 1 (in f32, before the cast to the compute dtype).
//!
//! [`GgufWeights::get`] dequantizes to f32, applies the fix, then casts, so values equal what
//! transformers loads (it also dequantizes to f32 first, with gguf-py).

use super::config::{architecture, model_type};
use super::reader::GgufFile;
use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// What to undo on a tensor after dequantizing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    None,
    /// llama.cpp's rotary row permutation, over this many heads.
    Unpermute(usize),
    /// Subtract 1 (Gemma norms).
    MinusOne,
}

pub struct GgufWeights {
    pub file: GgufFile,
    /// HF name → (index into `file.tensors`, fix).
    map: HashMap<String, (usize, Fix)>,
}

/// The HF name of a llama.cpp block tensor's stem (`attn_q`, …), for a model_type.
fn block_name(stem: &str, gemma: bool) -> Option<&'static str> {
    Some(match stem {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    })
}

/// The HF name of a GGUF tensor name, if it has one.
pub fn hf_name(gguf: &str, gemma: bool) -> Option<String> {
    let (base, suffix) = gguf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (n, stem) = rest.split_once('.')?;
            let n: usize = n.parse().ok()?;
            format!("model.layers.{n}.{}", block_name(stem, gemma)?)
        }
    };
    Some(format!("{hf}.{suffix}"))
}

/// Phi-3's `ffn_up` is the fused gate and up projection (gguf-py: `mlp.gate_up_proj`).
fn phi3_name(hf: String) -> String {
    match hf.strip_suffix(".mlp.up_proj.weight") {
        Some(stem) => format!("{stem}.mlp.gate_up_proj.weight"),
        None => hf,
    }
}

impl GgufWeights {
    /// Index `file`'s tensors by HF name; `config` is the HF config built from it (for the head
    /// counts of the q/k permutation).
    pub fn new(file: GgufFile, config: &serde_json::Value) -> Result<Self> {
        let arch = architecture(&file)?.to_string();
        let gemma = model_type(&file)? == "gemma3_text";
        let phi3 = model_type(&file)? == "phi3";
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = config["num_key_value_heads"]
            .as_u64()
            .map(|x| x as usize)
            .unwrap_or(heads);
        let mut map = HashMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            let Some(mut hf) = hf_name(&t.name, gemma) else {
                continue;
            };
            if phi3 {
                hf = phi3_name(hf);
            }
            let fix = if arch == "llama" && t.name.contains(".attn_q.") {
                Fix::Unpermute(heads)
            } else if arch == "llama" && t.name.contains(".attn_k.") {
                Fix::Unpermute(kv_heads)
            } else if gemma && t.name.contains("norm.weight") {
                Fix::MinusOne
            } else {
                Fix::None
            };
            map.insert(hf, (i, fix));
        }
        Ok(Self { file, map })
    }

    pub fn contains(&self, hf: &str) -> bool {
        self.map.contains_key(hf)
    }

    /// HF names, sorted.
    pub fn names(&self) -> Vec<&String> {
        let mut v: Vec<&String> = self.map.keys().collect();
        v.sort();
        v
    }

    /// The tensor `hf` in PyTorch's layout and the exact `shape`, fixed, as `dtype` on the CPU.
    pub fn get(&self, hf: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let path = self.file.path.display();
        let &(i, fix) = self
            .map
            .get(hf)
            .ok_or_else(|| user_error(format!("{path}: missing tensor `{hf}`")))?;
        let t = &self.file.tensors[i];
        if t.shape() != shape {
            return Err(user_error(format!(
                "{path}: tensor `{}` (`{hf}`) has shape {:?}, but the metadata implies {:?}",
                t.name,
                t.shape(),
                shape
            )));
        }
        let x = self.file.dequantize(t)?;
        let x = match fix {
            Fix::None => x,
            Fix::MinusOne => (x - 1.0)?,
            Fix::Unpermute(n_head) => unpermute(&x, n_head).map_err(|e| {
                user_error(format!(
                    "{path}: tensor `{}`: cannot undo the rotary permutation over {n_head} heads: {e}",
                    t.name
                ))
            })?,
        };
        Ok(x.to_dtype(dtype)?)
    }
}

/// transformers' `_reverse_permute_weights`: rows `[n_head, dim, 2]` → `[n_head, 2, dim]`.
pub fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let shape = w.dims().to_vec();
    let rows = shape[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        anyhow::bail!("{rows} rows are not a multiple of 2 × {n_head}");
    }
    let dim = rows / n_head / 2;
    let rest: usize = shape[1..].iter().product();
    let x = w
        .reshape((n_head, dim, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(shape)?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_follow_gguf_py() {
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", false).unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", true).unwrap(),
            "model.layers.3.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias", false).unwrap(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(hf_name("output.weight", false).unwrap(), "lm_head.weight");
        assert_eq!(hf_name("rope_freqs.weight", false), None);
        assert_eq!(hf_name("blk.x.attn_q.weight", false), None);
        // Phi-3's fused projections, Qwen3's q/k norms
        assert_eq!(
            hf_name("blk.1.attn_qkv.weight", false).unwrap(),
            "model.layers.1.self_attn.qkv_proj.weight"
        );
        assert_eq!(
            phi3_name(hf_name("blk.1.ffn_up.weight", false).unwrap()),
            "model.layers.1.mlp.gate_up_proj.weight"
        );
        assert_eq!(
            phi3_name(hf_name("blk.1.ffn_down.weight", false).unwrap()),
            "model.layers.1.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.2.attn_k_norm.weight", false).unwrap(),
            "model.layers.2.self_attn.k_norm.weight"
        );
    }

    /// Undoing llama.cpp's permutation (`reshape(n, 2, d).swapaxes(1, 2)`) gives the rows back.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, dim, cols) = (3usize, 4usize, 2usize);
        let rows = n_head * 2 * dim;
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let permuted = w
            .reshape((n_head, 2, dim, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let back = unpermute(&permuted, n_head).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
