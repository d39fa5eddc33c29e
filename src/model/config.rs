//! `config.json` → one architecture-neutral description of the network.
//!
//! Hugging Face names the same quantity differently per architecture (`n_embd`, `hidden_size`, …);
//! everything downstream reads only `ModelConfig`. Each architecture's translation lives in its own
//! file under `arch/` (see the registry there); this file holds `ModelConfig`, its enums and the
//! helpers those translations share: the `Fields` reader, `rope`, `head_dim` and `validate`.

use crate::error::user_error;
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

pub use super::arch::Arch;

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
    pub fn parse(name: &str, file: &Path) -> Result<Self> {
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
    /// LongRoPE (Phi-3): frequency i is divided by `short_factor[i]` while the sequence (its last
    /// position + 1) is at most `original_max_position`, by `long_factor[i]` beyond it; cos and
    /// sin are multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position: usize,
        attention_factor: f64,
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

/// In the layers it marks, a query attends only the last `size` keys (itself included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    pub size: usize,
    /// One flag per layer: does this layer use the window?
    pub layers: Vec<bool>,
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
    /// Sliding-window attention (Mistral: every layer; Qwen2: the layers its config marks).
    pub sliding_window: Option<SlidingWindow>,
    /// Whether the checkpoint has an unembedding (encoders such as BERT stop at the last block).
    pub lm_head: bool,
    /// The attention logits' scale when it is not 1/√head_dim (Gemma 2/3:
    /// `query_pre_attn_scalar`^-½).
    pub attn_scale: Option<f64>,
    /// Attention logit soft-capping: each scaled logit s becomes c·tanh(s/c) before the mask and
    /// the softmax (Gemma 2's `attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// Final logit soft-capping: logits z become c·tanh(z/c) (Gemma 2/3's
    /// `final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// Rotary settings of the sliding-window layers when they differ from `rope`'s (Gemma 3:
    /// `rope_local_base_freq`, no scaling); `None`: every layer uses `rope`.
    pub rope_local: Option<RopeConfig>,
    /// Mixture-of-experts MLPs (Mixtral, Qwen2/3-MoE, OLMoE); `None`: every MLP is dense.
    pub moe: Option<MoeConfig>,
}

/// The mixture-of-experts layers of a model: a router picks `top_k` of `n_experts` gated MLPs
/// per token (see `model/moe.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub d_expert: usize,
    /// Divide the top-k routing weights by their sum (Mixtral always; Qwen/OLMoE `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Qwen2-MoE's shared expert (its intermediate size), gated by a sigmoid.
    pub shared_expert: Option<usize>,
    /// One flag per layer: is its MLP a mixture of experts? (`decoder_sparse_step`,
    /// `mlp_only_layers`; the other layers have a dense MLP of `d_mlp` neurons.)
    pub layers: Vec<bool>,
}

impl ModelConfig {
    /// True when layer `l`'s MLP is a mixture of experts.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| m.layers.get(l).copied().unwrap_or(false))
    }
}

/// Typed access to the fields of one `config.json`, with errors that name the file and the field.
/// Each lookup takes the names a quantity goes by, first match wins; JSON `null` counts as absent.
pub struct Fields<'a> {
    pub v: &'a Value,
    pub file: &'a Path,
}

impl Fields<'_> {
    pub fn get(&self, names: &[&str]) -> Option<&Value> {
        names
            .iter()
            .find_map(|n| self.v.get(*n).filter(|x| !x.is_null()))
    }
    pub fn usize(&self, names: &[&str]) -> Result<usize> {
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
    pub fn usize_or(&self, names: &[&str], default: usize) -> Result<usize> {
        if self.get(names).is_some() {
            self.usize(names)
        } else {
            Ok(default)
        }
    }
    pub fn f64_or(&self, names: &[&str], default: f64) -> Result<f64> {
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
    pub fn bool_or(&self, names: &[&str], default: bool) -> Result<bool> {
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
    pub fn str_or<'b>(&'b self, names: &[&str], default: &'b str) -> Result<&'b str> {
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

impl Fields<'_> {
    /// transformers 5's `layer_types`, one flag per listed layer: `sliding_attention` → true,
    /// `full_attention` → false; `None` when the key is absent. (`validate` checks the length
    /// against the number of layers.)
    pub fn layer_types(&self) -> Result<Option<Vec<bool>>> {
        let Some(types) = self.get(&["layer_types"]) else {
            return Ok(None);
        };
        let bad = || {
            user_error(format!(
                "{}: `layer_types` must be a list of \"full_attention\" / \"sliding_attention\", not {types}",
                self.file.display()
            ))
        };
        types
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(bad()),
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// A number that has a default when the key is absent but means "off" when it is `null`
    /// (transformers' `sliding_window`, `*_softcapping`): `None` for null, else the value.
    pub fn f64_default_or_null(&self, name: &str, default: f64) -> Result<Option<f64>> {
        match self.v.get(name) {
            None => Ok(Some(default)),
            Some(x) if x.is_null() => Ok(None),
            Some(_) => self.f64_or(&[name], default).map(Some),
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

    /// Translate a parsed `config.json` through the architecture registry (`arch::REGISTRY`).
    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        super::arch::config_from_json(super::arch::REGISTRY, v, file)
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
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
        if let Some(w) = &self.sliding_window {
            if w.size == 0 {
                return bad("sliding_window is 0".into());
            }
            if w.layers.len() != self.n_layers {
                return bad(format!(
                    "`layer_types` has {} entries but the model has {} layers",
                    w.layers.len(),
                    self.n_layers
                ));
            }
        }
        for (name, c) in [
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
            ("query_pre_attn_scalar", self.attn_scale),
        ] {
            if c.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                return bad(format!("`{name}` must be a positive number"));
            }
        }
        if let Some(m) = &self.moe {
            if m.n_experts == 0 || m.top_k == 0 || m.top_k > m.n_experts || m.d_expert == 0 {
                return bad(format!(
                    "mixture of experts: top-k {} of {} experts of size {} (all must be positive, top-k at most the experts)",
                    m.top_k, m.n_experts, m.d_expert
                ));
            }
            if m.layers.len() != self.n_layers {
                return bad(format!(
                    "mixture of experts: {} layer flags for {} layers",
                    m.layers.len(),
                    self.n_layers
                ));
            }
        }
        for r in self.rope.iter().chain(&self.rope_local) {
            if r.rotary_dims % 2 != 0 || r.rotary_dims == 0 || r.rotary_dims > self.head_dim {
                return bad(format!(
                    "rotary dimension {} must be even, positive and at most head_dim {}",
                    r.rotary_dims, self.head_dim
                ));
            }
        }
        Ok(())
    }

    pub fn head_dim(f: &Fields, d_model: usize, n_heads: usize) -> Result<usize> {
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

    /// `rope_theta` / `rope_scaling`, or the newer `rope_parameters` that holds both.
    pub fn rope(f: &Fields, rotary_dims: usize, default_theta: f64) -> Result<RopeConfig> {
        let params = f.get(&["rope_parameters"]);
        let scaling = f.get(&["rope_scaling"]).or(params);
        let mut theta = f.f64_or(&["rope_theta", "rotary_emb_base"], default_theta)?;
        if let Some(t) = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            theta = t;
        }
        Ok(RopeConfig {
            theta,
            rotary_dims,
            scaling: Self::rope_scaling(f, scaling)?,
        })
    }

    /// One rotary parameter object as transformers 5 writes it (`{"rope_type", "rope_theta",
    /// "factor", …}`), e.g. one entry of Gemma 3's per-layer-type `rope_parameters`.
    pub fn rope_from_params(
        f: &Fields,
        params: &Value,
        rotary_dims: usize,
        default_theta: f64,
    ) -> Result<RopeConfig> {
        let theta = match params.get("rope_theta").filter(|t| !t.is_null()) {
            None => default_theta,
            Some(t) => t.as_f64().ok_or_else(|| {
                user_error(format!(
                    "{}: `rope_theta` is not a number: {t}",
                    f.file.display()
                ))
            })?,
        };
        Ok(RopeConfig {
            theta,
            rotary_dims,
            scaling: Self::rope_scaling(f, Some(params))?,
        })
    }

    /// The scaling named by a `rope_scaling` / `rope_parameters` object (`None`: no scaling).
    fn rope_scaling(f: &Fields, scaling: Option<&Value>) -> Result<RopeScaling> {
        Ok(match scaling {
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
        })
    }

    /// The sliding window of layer `layer`, if that layer has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .as_ref()
            .filter(|w| w.layers.get(layer).copied().unwrap_or(false))
            .map(|w| w.size)
    }

    /// Models with an unembedding produce logits; encoders such as BERT stop at the last block.
    pub fn has_lm_head(&self) -> bool {
        self.lm_head
    }
}
