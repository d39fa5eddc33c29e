//! `config.json` → one architecture-neutral description of the network.
//!
//! Hugging Face names the same quantity differently per architecture (`n_embd`, `hidden_size`, …);
//! everything downstream reads only `ModelConfig`.

use crate::error::user_error;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "bert"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    Llama,
    Mistral,
    Qwen2,
    GptNeox,
    Bert,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::GptNeox => "gpt_neox",
            Arch::Bert => "bert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`)
    GeluTanh,
    /// exact erf GELU (`gelu`)
    GeluErf,
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str, file: &Path) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(user_error(format!(
                    "{}: unsupported activation function `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu)",
                    file.display()
                )))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Number of leading dimensions of each head that rotate (GPT-NeoX `rotary_pct` < 1).
    pub rotary_dims: usize,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// x + attn(ln1 x), then + mlp(ln2 ·)
    Sequential,
    /// x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX / Pythia)
    Parallel,
    /// BERT: LN(x + attn(x)), then LN(· + mlp(·))
    PostLn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub n_ctx: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub act: Activation,
    pub gated_mlp: bool,
    pub residual: Residual,
    pub rope: Option<RopeConfig>,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub type_vocab_size: usize,
    pub pad_token_id: Option<u32>,
    /// GPT-2 `scale_attn_by_inverse_layer_idx`
    pub scale_attn_by_layer: bool,
    /// Mistral: a query attends only the last `sliding_window` keys.
    pub sliding_window: Option<usize>,
}

struct Fields<'a> {
    v: &'a Value,
    file: &'a Path,
}

impl Fields<'_> {
    fn get(&self, names: &[&str]) -> Option<&Value> {
        names
            .iter()
            .find_map(|n| self.v.get(*n).filter(|x| !x.is_null()))
    }
    fn usize(&self, names: &[&str]) -> Result<usize> {
        let v = self.get(names).ok_or_else(|| {
            user_error(format!(
                "{}: missing field `{}`",
                self.file.display(),
                names.join("` / `")
            ))
        })?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| {
            user_error(format!(
                "{}: field `{}` is not a non-negative integer: {v}",
                self.file.display(),
                names[0]
            ))
        })
    }
    fn usize_or(&self, names: &[&str], default: usize) -> Result<usize> {
        if self.get(names).is_some() {
            self.usize(names)
        } else {
            Ok(default)
        }
    }
    fn f64_or(&self, names: &[&str], default: f64) -> Result<f64> {
        match self.get(names) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                user_error(format!(
                    "{}: field `{}` is not a number: {v}",
                    self.file.display(),
                    names[0]
                ))
            }),
        }
    }
    fn bool_or(&self, names: &[&str], default: bool) -> Result<bool> {
        match self.get(names) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                user_error(format!(
                    "{}: field `{}` is not a boolean: {v}",
                    self.file.display(),
                    names[0]
                ))
            }),
        }
    }
    fn str_or<'b>(&'b self, names: &[&str], default: &'b str) -> Result<&'b str> {
        match self.get(names) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| {
                user_error(format!(
                    "{}: field `{}` is not a string: {v}",
                    self.file.display(),
                    names[0]
                ))
            }),
        }
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| user_error(format!("{}: cannot read config: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| user_error(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(&v, path)
    }

    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let f = Fields { v, file };
        let model_type = f
            .get(&["model_type"])
            .and_then(|x| x.as_str())
            .ok_or_else(|| {
                user_error(format!(
                    "{}: missing field `model_type` (supported: {})",
                    file.display(),
                    SUPPORTED_MODEL_TYPES.join(", ")
                ))
            })?;
        let arch = match model_type {
            "gpt2" => Arch::Gpt2,
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "gpt_neox" => Arch::GptNeox,
            "bert" => Arch::Bert,
            other => {
                return Err(user_error(format!(
                    "{}: unsupported model_type `{other}` (supported: {})",
                    file.display(),
                    SUPPORTED_MODEL_TYPES.join(", ")
                )))
            }
        };
        let cfg = match arch {
            Arch::Gpt2 => Self::gpt2(&f)?,
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => Self::llama_like(&f, arch)?,
            Arch::GptNeox => Self::neox(&f)?,
            Arch::Bert => Self::bert(&f)?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &Path) -> Result<()> {
        let bad = |m: String| Err(user_error(format!("{}: {m}", file.display())));
        if self.n_layers == 0
            || self.d_model == 0
            || self.n_heads == 0
            || self.d_mlp == 0
            || self.vocab_size == 0
        {
            return bad(
                "layers, hidden size, heads, intermediate size and vocabulary must all be positive"
                    .into(),
            );
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 {
            return bad("head dimension is 0".into());
        }
        if let Some(r) = &self.rope {
            if r.rotary_dims % 2 != 0 || r.rotary_dims == 0 || r.rotary_dims > self.head_dim {
                return bad(format!(
                    "rotary dimension {} must be even, positive and at most head_dim {}",
                    r.rotary_dims, self.head_dim
                ));
            }
        }
        Ok(())
    }

    fn head_dim(f: &Fields, d_model: usize, n_heads: usize) -> Result<usize> {
        match f.get(&["head_dim"]) {
            Some(_) => f.usize(&["head_dim"]),
            None => {
                if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
                    return Err(user_error(format!(
                        "{}: hidden size {d_model} is not divisible by {n_heads} attention heads",
                        f.file.display()
                    )));
                }
                Ok(d_model / n_heads)
            }
        }
    }

    fn gpt2(f: &Fields) -> Result<Self> {
        let d_model = f.usize(&["n_embd", "hidden_size"])?;
        let n_heads = f.usize(&["n_head", "num_attention_heads"])?;
        Ok(Self {
            arch: Arch::Gpt2,
            n_layers: f.usize(&["n_layer", "num_hidden_layers"])?,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: Self::head_dim(f, d_model, n_heads)?,
            d_mlp: f.usize_or(&["n_inner"], 4 * d_model)?,
            vocab_size: f.usize(&["vocab_size"])?,
            n_ctx: f.usize(&["n_positions", "n_ctx", "max_position_embeddings"])?,
            norm: NormKind::LayerNorm,
            norm_eps: f.f64_or(&["layer_norm_epsilon"], 1e-5)?,
            act: Activation::parse(f.str_or(&["activation_function"], "gelu_new")?, f.file)?,
            gated_mlp: false,
            residual: Residual::Sequential,
            rope: None,
            tie_embeddings: f.bool_or(&["tie_word_embeddings"], true)?,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            type_vocab_size: 0,
            pad_token_id: None,
            scale_attn_by_layer: f.bool_or(&["scale_attn_by_inverse_layer_idx"], false)?,
            sliding_window: None,
        })
    }

    /// `rope_theta` / `rope_scaling`, or the newer `rope_parameters` that holds both.
    fn rope(f: &Fields, rotary_dims: usize, default_theta: f64) -> Result<RopeConfig> {
        let params = f.get(&["rope_parameters"]);
        let scaling = f.get(&["rope_scaling"]).or(params);
        let mut theta = f.f64_or(&["rope_theta", "rotary_emb_base"], default_theta)?;
        if let Some(t) = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            theta = t;
        }
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default");
                let num = |k: &str| -> Result<f64> {
                    s.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
                        user_error(format!(
                            "{}: rope scaling `{kind}` needs the number `{k}`",
                            f.file.display()
                        ))
                    })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: num("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position: num("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(user_error(format!(
                            "{}: unsupported rope scaling `{other}` (supported: default, linear, llama3)",
                            f.file.display()
                        )))
                    }
                }
            }
        };
        Ok(RopeConfig {
            theta,
            rotary_dims,
            scaling,
        })
    }

    fn llama_like(f: &Fields, arch: Arch) -> Result<Self> {
        let d_model = f.usize(&["hidden_size"])?;
        let n_heads = f.usize(&["num_attention_heads"])?;
        let head_dim = Self::head_dim(f, d_model, n_heads)?;
        let qwen = arch == Arch::Qwen2;
        let attention_bias = f.bool_or(&["attention_bias"], false)?;
        Ok(Self {
            arch,
            n_layers: f.usize(&["num_hidden_layers"])?,
            d_model,
            n_heads,
            n_kv_heads: f.usize_or(&["num_key_value_heads"], n_heads)?,
            head_dim,
            d_mlp: f.usize(&["intermediate_size"])?,
            vocab_size: f.usize(&["vocab_size"])?,
            n_ctx: f.usize(&["max_position_embeddings"])?,
            norm: NormKind::RmsNorm,
            norm_eps: f.f64_or(&["rms_norm_eps"], 1e-6)?,
            act: Activation::parse(f.str_or(&["hidden_act"], "silu")?, f.file)?,
            gated_mlp: true,
            residual: Residual::Sequential,
            rope: Some(Self::rope(f, head_dim, 10000.0)?),
            tie_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
            qkv_bias: qwen || attention_bias,
            o_bias: attention_bias,
            mlp_bias: f.bool_or(&["mlp_bias"], false)?,
            type_vocab_size: 0,
            pad_token_id: None,
            scale_attn_by_layer: false,
            sliding_window: match arch {
                Arch::Mistral => f
                    .get(&["sliding_window"])
                    .and_then(|w| w.as_u64())
                    .map(|w| w as usize),
                Arch::Qwen2 if f.bool_or(&["use_sliding_window"], false)? => f
                    .get(&["sliding_window"])
                    .and_then(|w| w.as_u64())
                    .map(|w| w as usize),
                _ => None,
            },
        })
    }

    fn neox(f: &Fields) -> Result<Self> {
        let d_model = f.usize(&["hidden_size"])?;
        let n_heads = f.usize(&["num_attention_heads"])?;
        let head_dim = Self::head_dim(f, d_model, n_heads)?;
        let pct = match f
            .get(&["rope_parameters"])
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|x| x.as_f64())
        {
            Some(p) => p,
            None => f.f64_or(&["rotary_pct", "partial_rotary_factor"], 1.0)?,
        };
        // transformers: rotary_ndims = int(head_size * rotary_pct)
        let rotary_dims = (head_dim as f64 * pct) as usize;
        Ok(Self {
            arch: Arch::GptNeox,
            n_layers: f.usize(&["num_hidden_layers"])?,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            head_dim,
            d_mlp: f.usize(&["intermediate_size"])?,
            vocab_size: f.usize(&["vocab_size"])?,
            n_ctx: f.usize(&["max_position_embeddings"])?,
            norm: NormKind::LayerNorm,
            norm_eps: f.f64_or(&["layer_norm_eps"], 1e-5)?,
            act: Activation::parse(f.str_or(&["hidden_act"], "gelu")?, f.file)?,
            gated_mlp: false,
            residual: if f.bool_or(&["use_parallel_residual"], true)? {
                Residual::Parallel
            } else {
                Residual::Sequential
            },
            rope: Some(Self::rope(f, rotary_dims, 10000.0)?),
            tie_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
            qkv_bias: f.bool_or(&["attention_bias"], true)?,
            o_bias: f.bool_or(&["attention_bias"], true)?,
            mlp_bias: true,
            type_vocab_size: 0,
            pad_token_id: None,
            scale_attn_by_layer: false,
            sliding_window: None,
        })
    }

    fn bert(f: &Fields) -> Result<Self> {
        let d_model = f.usize(&["hidden_size"])?;
        let n_heads = f.usize(&["num_attention_heads"])?;
        let pos = f.str_or(&["position_embedding_type"], "absolute")?;
        if pos != "absolute" {
            return Err(user_error(format!(
                "{}: unsupported BERT position_embedding_type `{pos}` (supported: absolute)",
                f.file.display()
            )));
        }
        Ok(Self {
            arch: Arch::Bert,
            n_layers: f.usize(&["num_hidden_layers"])?,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: Self::head_dim(f, d_model, n_heads)?,
            d_mlp: f.usize(&["intermediate_size"])?,
            vocab_size: f.usize(&["vocab_size"])?,
            n_ctx: f.usize(&["max_position_embeddings"])?,
            norm: NormKind::LayerNorm,
            norm_eps: f.f64_or(&["layer_norm_eps"], 1e-12)?,
            act: Activation::parse(f.str_or(&["hidden_act"], "gelu")?, f.file)?,
            gated_mlp: false,
            residual: Residual::PostLn,
            rope: None,
            tie_embeddings: false,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            type_vocab_size: f.usize_or(&["type_vocab_size"], 2)?,
            pad_token_id: Some(f.usize_or(&["pad_token_id"], 0)? as u32),
            scale_attn_by_layer: false,
            sliding_window: None,
        })
    }

    /// Models with an unembedding produce logits; encoders such as BERT stop at the last block.
    pub fn has_lm_head(&self) -> bool {
        self.arch != Arch::Bert
    }
}
