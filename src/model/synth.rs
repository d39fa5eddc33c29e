//! Synthetic checkpoints in the Hugging Face layout (config.json, model.safetensors,
//! tokenizer.json) that transformers loads as well: random GPT-2 / Llama / Mixtral networks of any
//! shape, for benchmarks, and the base into which `plant` writes neurons and experts with known
//! behaviour. Mixtral weights use the hub names (`block_sparse_moe.gate`, `experts.E.w1/w3/w2`),
//! which both ftri and transformers read.

use crate::output::write_atomic;
use crate::rng::Rng;
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthArch {
    Gpt2,
    Llama,
    /// Llama attention with a mixture of `experts` gated MLPs (each of `d_mlp` neurons) in every
    /// layer, `top_k` chosen per token.
    Mixtral {
        experts: usize,
        top_k: usize,
    },
}

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub arch: SynthArch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_mlp: usize,
    pub n_ctx: usize,
    /// Token strings, in id order; the tokenizer is a whitespace word-level one over them.
    pub vocab: Vec<String>,
    pub seed: u64,
}

impl SynthSpec {
    pub fn heads_invalid(&self) -> bool {
        self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads)
    }

    /// Mixtral 8x7B's routing (8 experts, top-2) at `d_model` 512, 8 layers of 8 heads, experts of
    /// 1024 neurons, 32000 tokens: a mixture-of-experts model to benchmark on a small machine.
    pub fn mixtral_small() -> Self {
        Self {
            arch: SynthArch::Mixtral {
                experts: 8,
                top_k: 2,
            },
            n_layers: 8,
            d_model: 512,
            n_heads: 8,
            d_mlp: 1024,
            n_ctx: 1024,
            vocab: default_vocab(32000),
            seed: 0,
        }
    }

    /// The shape of GPT-2 small (124M parameters) with a vocabulary of 50257 made-up words.
    pub fn gpt2_small() -> Self {
        Self {
            arch: SynthArch::Gpt2,
            n_layers: 12,
            d_model: 768,
            n_heads: 12,
            d_mlp: 3072,
            n_ctx: 1024,
            vocab: default_vocab(50257),
            seed: 0,
        }
    }
}

/// `<unk>` then `w1`, `w2`, … : a vocabulary whose every token is a whitespace-separated word.
pub fn default_vocab(n: usize) -> Vec<String> {
    vocab_with(&[], n)
}

/// `<unk>`, then `words` (deduplicated, in order), then fillers `w1`, `w2`, … up to `n` tokens.
pub fn vocab_with(words: &[String], n: usize) -> Vec<String> {
    let mut v = vec!["<unk>".to_string()];
    for w in words {
        if !v.contains(w) {
            v.push(w.clone());
        }
    }
    let mut i = 1;
    while v.len() < n {
        let f = format!("w{i}");
        if !v.contains(&f) {
            v.push(f);
        }
        i += 1;
    }
    v
}

/// A named tensor: data and shape.
pub type Weights = BTreeMap<String, (Vec<f32>, Vec<usize>)>;

fn randn(rng: &mut Rng, shape: &[usize], std: f32) -> (Vec<f32>, Vec<usize>) {
    let n: usize = shape.iter().product();
    ((0..n).map(|_| rng.normal(std)).collect(), shape.to_vec())
}

fn filled(shape: &[usize], v: f32) -> (Vec<f32>, Vec<usize>) {
    (vec![v; shape.iter().product()], shape.to_vec())
}

/// Random weights with GPT-2's initialisation scale (std 0.02, norms at 1, biases at 0).
pub fn random_weights(spec: &SynthSpec) -> Weights {
    let mut rng = Rng::new(spec.seed);
    let (d, m, v) = (spec.d_model, spec.d_mlp, spec.vocab.len());
    let mut w = Weights::new();
    match spec.arch {
        SynthArch::Gpt2 => {
            w.insert("wte.weight".into(), randn(&mut rng, &[v, d], 0.02));
            w.insert("wpe.weight".into(), randn(&mut rng, &[spec.n_ctx, d], 0.01));
            for l in 0..spec.n_layers {
                let p = format!("h.{l}");
                for ln in ["ln_1", "ln_2"] {
                    w.insert(format!("{p}.{ln}.weight"), filled(&[d], 1.0));
                    w.insert(format!("{p}.{ln}.bias"), filled(&[d], 0.0));
                }
                for (name, i, o) in [
                    ("attn.c_attn", d, 3 * d),
                    ("attn.c_proj", d, d),
                    ("mlp.c_fc", d, m),
                    ("mlp.c_proj", m, d),
                ] {
                    w.insert(format!("{p}.{name}.weight"), randn(&mut rng, &[i, o], 0.02));
                    w.insert(format!("{p}.{name}.bias"), filled(&[o], 0.0));
                }
            }
            w.insert("ln_f.weight".into(), filled(&[d], 1.0));
            w.insert("ln_f.bias".into(), filled(&[d], 0.0));
        }
        SynthArch::Llama | SynthArch::Mixtral { .. } => {
            w.insert(
                "model.embed_tokens.weight".into(),
                randn(&mut rng, &[v, d], 0.02),
            );
            for l in 0..spec.n_layers {
                let p = format!("model.layers.{l}");
                w.insert(format!("{p}.input_layernorm.weight"), filled(&[d], 1.0));
                w.insert(
                    format!("{p}.post_attention_layernorm.weight"),
                    filled(&[d], 1.0),
                );
                let mut mats: Vec<(String, usize, usize)> = ["q", "k", "v", "o"]
                    .iter()
                    .map(|x| (format!("self_attn.{x}_proj"), d, d))
                    .collect();
                match spec.arch {
                    SynthArch::Mixtral { experts, .. } => {
                        mats.push(("block_sparse_moe.gate".into(), experts, d));
                        for e in 0..experts {
                            let x = format!("block_sparse_moe.experts.{e}");
                            mats.push((format!("{x}.w1"), m, d));
                            mats.push((format!("{x}.w3"), m, d));
                            mats.push((format!("{x}.w2"), d, m));
                        }
                    }
                    _ => {
                        mats.push(("mlp.gate_proj".into(), m, d));
                        mats.push(("mlp.up_proj".into(), m, d));
                        mats.push(("mlp.down_proj".into(), d, m));
                    }
                }
                for (name, o, i) in mats {
                    w.insert(format!("{p}.{name}.weight"), randn(&mut rng, &[o, i], 0.02));
                }
            }
            w.insert("model.norm.weight".into(), filled(&[d], 1.0));
            w.insert("lm_head.weight".into(), randn(&mut rng, &[v, d], 0.02));
        }
    }
    w
}

fn config_json(spec: &SynthSpec) -> serde_json::Value {
    let v = spec.vocab.len();
    match spec.arch {
        SynthArch::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_layer": spec.n_layers, "n_embd": spec.d_model, "n_head": spec.n_heads, "n_inner": spec.d_mlp,
            "n_positions": spec.n_ctx, "vocab_size": v, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
        }),
        SynthArch::Llama => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": spec.n_layers, "hidden_size": spec.d_model, "num_attention_heads": spec.n_heads,
            "num_key_value_heads": spec.n_heads, "intermediate_size": spec.d_mlp, "max_position_embeddings": spec.n_ctx,
            "vocab_size": v, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 0,
        }),
        SynthArch::Mixtral { experts, top_k } => json!({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "num_hidden_layers": spec.n_layers, "hidden_size": spec.d_model, "num_attention_heads": spec.n_heads,
            "num_key_value_heads": spec.n_heads, "intermediate_size": spec.d_mlp, "max_position_embeddings": spec.n_ctx,
            "num_local_experts": experts, "num_experts_per_tok": top_k, "router_aux_loss_coef": 0.0,
            "vocab_size": v, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": null, "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 0,
        }),
    }
}

/// A word-level tokenizer over `vocab`, splitting on whitespace and punctuation.
fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"},
    })
}

/// Write a loadable checkpoint folder (atomically: a temporary folder renamed at the end).
/// `extra` files (name, contents) go beside the weights, e.g. plant.json.
pub fn write_checkpoint(
    dir: &Path,
    spec: &SynthSpec,
    weights: &Weights,
    extra: &[(&str, String)],
) -> Result<()> {
    write_atomic(dir, |tmp| {
        std::fs::create_dir_all(tmp)?;
        for (name, text) in extra {
            std::fs::write(tmp.join(name), text)?;
        }
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(&config_json(spec))?,
        )?;
        std::fs::write(
            tmp.join("tokenizer.json"),
            serde_json::to_string(&tokenizer_json(&spec.vocab))?,
        )?;
        let views: Vec<(String, safetensors::tensor::TensorView)> = weights
            .iter()
            .map(|(n, (data, shape))| {
                let bytes: &[u8] = bytemuck_f32(data);
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        bytes,
                    )?,
                ))
            })
            .collect::<Result<_>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &tmp.join("model.safetensors"))?;
        Ok(())
    })
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; little-endian like safetensors
    // on every platform we build for.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
