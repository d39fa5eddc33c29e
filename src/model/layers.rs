//! The pieces every architecture is built from. Each has a fused path for inference and a plain-op
//! path for when gradients are needed (candle's fused softmax/norm/rope carry no gradient).

use super::config::{Activation, RopeConfig, RopeScaling};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

/// y = x·W + b with W stored [in, out] (transposed once at load).
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&0);
        let n: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((n, in_dim))?;
        let fast = match differentiable {
            false => super::kernels::linear(&x2, &self.w, self.b.as_ref())?,
            true => None,
        };
        let y = match fast {
            Some(y) => y,
            None => {
                let y = x2.matmul(&self.w)?;
                match &self.b {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.w.dim(1)?;
        Ok(y.reshape(out)?)
    }

    /// Projections of the same input side by side, so q, k and v cost one matmul instead of three.
    pub fn concat(parts: &[Linear]) -> Result<Linear> {
        let ws: Vec<&Tensor> = parts.iter().map(|p| &p.w).collect();
        let bs: Vec<&Tensor> = parts.iter().filter_map(|p| p.b.as_ref()).collect();
        Ok(Linear {
            w: Tensor::cat(&ws, 1)?,
            b: if bs.len() == parts.len() {
                Some(Tensor::cat(&bs, 0)?)
            } else {
                None
            },
        })
    }

    pub fn out_dim(&self) -> usize {
        self.w.dims()[1]
    }
}

pub enum Norm {
    Layer {
        w: Tensor,
        b: Tensor,
        eps: f32,
    },
    Rms {
        w: Tensor,
        eps: f32,
    },
    /// RMSNorm computed in f32 whatever the model's dtype, the gain applied before the cast back
    /// (transformers' `GemmaRMSNorm`: `(norm(x.float()) * (1 + w.float())).type_as(x)`). `w` is
    /// f32 and holds the whole gain (Gemma's 1 + w; see [`Norm::rms_unit_offset`]).
    RmsF32 {
        w: Tensor,
        eps: f32,
    },
    /// No norm: the input passes unchanged (OLMo 2 has no pre-attention / pre-MLP norms). `w` is
    /// ones, so `gain()` reads "gain 1".
    Identity {
        w: Tensor,
    },
}

impl Norm {
    pub fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        // candle's fused norms have no f64 kernel: `--dtype f64` takes the composed path.
        let composed = differentiable || x.dtype() == DType::F64;
        Ok(match (self, composed) {
            (Norm::Layer { w, b, eps }, false) => {
                candle_nn::ops::layer_norm(&x.contiguous()?, w, b, *eps)?
            }
            (Norm::Layer { w, b, eps }, true) => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                xc.broadcast_div(&(var + *eps as f64)?.sqrt()?)?
                    .broadcast_mul(w)?
                    .broadcast_add(b)?
            }
            (Norm::Rms { w, eps }, false) => candle_nn::ops::rms_norm(&x.contiguous()?, w, *eps)?,
            (Norm::Rms { w, eps }, true) => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + *eps as f64)?.sqrt()?)?
                    .broadcast_mul(w)?
            }
            (Norm::RmsF32 { w, eps }, _) => {
                let rms = Norm::Rms {
                    w: w.clone(),
                    eps: *eps,
                };
                rms.forward(&x.to_dtype(DType::F32)?, differentiable)?
                    .to_dtype(x.dtype())?
            }
            (Norm::Identity { .. }, _) => x.clone(),
        })
    }

    /// The identity, for a block without a norm in that place (`gain()` is ones of `dim`).
    pub fn identity(dim: usize, device: &Device, dtype: DType) -> Result<Norm> {
        Ok(Norm::Identity {
            w: Tensor::ones(dim, dtype, device)?,
        })
    }

    /// Gemma's RMSNorm from its checkpoint weight `w`: gain 1 + w, added in f32 as transformers
    /// does, and the norm computed in f32.
    pub fn rms_unit_offset(w: &Tensor, eps: f64) -> Result<Norm> {
        Ok(Norm::RmsF32 {
            w: (w.to_dtype(DType::F32)? + 1.0)?,
            eps: eps as f32,
        })
    }

    /// The gain vector (used by `describe` to fold the final norm into the unembedding).
    pub fn gain(&self) -> &Tensor {
        match self {
            Norm::Layer { w, .. }
            | Norm::Rms { w, .. }
            | Norm::RmsF32 { w, .. }
            | Norm::Identity { w } => w,
        }
    }
}

pub fn activate(x: &Tensor, act: Activation, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        if let Some(y) = super::kernels::fast_activation(x, act)? {
            return Ok(y);
        }
    }
    Ok(match act {
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Rotary position embedding tables, rotating the first `rotary_dims` of each head (rotate-half
/// convention, as in transformers' Llama and GPT-NeoX).
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotary_dims: usize,
    /// LongRoPE (Phi-3): the tables of the long factors and the length past which they apply
    /// (transformers switches when the last position + 1 exceeds `original_max_position`).
    long: Option<(Tensor, Tensor, usize)>,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, max_pos: usize, device: &Device, dtype: DType) -> Result<Self> {
        let dim = cfg.rotary_dims;
        // transformers computes inv_freq in f32: 1 / theta^(2i/dim)
        let base = |i: usize| cfg.theta.powf((2 * i) as f64 / dim as f64);
        let mut inv_freq: Vec<f32> = (0..dim / 2).map(|i| (1.0 / base(i)) as f32).collect();
        let mut long = None;
        let mut scale = 1.0;
        match &cfg.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f32)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let (factor, low_freq_factor, high_freq_factor, original_max_position) = (
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position,
                );
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let fv = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / fv;
                    let scaled = if wavelen > low_wavelen {
                        fv / factor
                    } else {
                        fv
                    };
                    // neither high- nor low-frequency (wavelengths are finite, so the comparisons are total)
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    let out = if medium {
                        let smooth = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                    *f = out as f32;
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position,
                attention_factor,
            } => {
                // transformers: inv_freq = 1 / (ext_factors * theta^(2i/dim)), cos and sin times
                // the attention factor
                let with = |ext: &[f64]| -> Vec<f32> {
                    (0..dim / 2)
                        .map(|i| (1.0 / (ext[i] * base(i))) as f32)
                        .collect()
                };
                inv_freq = with(short_factor);
                scale = *attention_factor;
                let (c, s) = Self::tables(with(long_factor), max_pos, scale, device, dtype)?;
                long = Some((c, s, *original_max_position));
            }
        }
        let (cos, sin) = Self::tables(inv_freq, max_pos, scale, device, dtype)?;
        Ok(Self {
            cos,
            sin,
            rotary_dims: dim,
            long,
        })
    }

    /// cos and sin of position × frequency for positions 0..max_pos, times `scale`.
    fn tables(
        inv_freq: Vec<f32>,
        max_pos: usize,
        scale: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let n = inv_freq.len();
        let inv = Tensor::from_vec(inv_freq, (1, n), device)?;
        let pos = Tensor::arange(0u32, max_pos as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_pos, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let (cos, sin) = if scale == 1.0 {
            (cos, sin)
        } else {
            ((cos * scale)?, (sin * scale)?)
        };
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
    }

    /// x: [B, H, T, Dh] contiguous, its first token at position `offset`.
    pub fn apply(&self, x: &Tensor, differentiable: bool, offset: usize) -> Result<Tensor> {
        let (_, _, t, dh) = x.dims4()?;
        let (cos, sin) = match &self.long {
            Some((c, s, original)) if offset + t > *original => (c, s),
            _ => (&self.cos, &self.sin),
        };
        let cos = cos.narrow(0, offset, t)?;
        let sin = sin.narrow(0, offset, t)?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            Ok(if differentiable {
                candle_nn::rotary_emb::rope_slow(x, &cos, &sin)?
            } else {
                candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?
            })
        };
        if self.rotary_dims == dh {
            return rotate(x);
        }
        let rot = rotate(&x.narrow(D::Minus1, 0, self.rotary_dims)?)?;
        let pass = x.narrow(D::Minus1, self.rotary_dims, dh - self.rotary_dims)?;
        Ok(Tensor::cat(&[&rot, &pass], D::Minus1)?)
    }
}

pub fn softmax_last(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    Ok(if differentiable {
        candle_nn::ops::softmax(x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)?
    })
}

/// Additive attention mask [B or 1, 1, T, T]: 0 where a query may attend a key, a large negative
/// number elsewhere (causal, key padding, and a sliding window). `None` when nothing is masked.
pub fn attention_mask(
    lengths: &[usize],
    t: usize,
    offset: usize,
    causal: bool,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let padded = lengths.iter().any(|&l| l < t);
    if !causal && !padded && window.is_none() {
        return Ok(None);
    }
    const NEG: f32 = -1e30;
    let tk = offset + t;
    let b = if padded { lengths.len() } else { 1 };
    let mut m = vec![0f32; b * t * tk];
    for (bi, chunk) in m.chunks_mut(t * tk).enumerate() {
        let len = offset + if padded { lengths[bi] } else { t };
        for q in 0..t {
            let qa = q + offset;
            for k in 0..tk {
                let outside_window = window.is_some_and(|w| qa >= k + w);
                if (causal && k > qa) || k >= len || outside_window {
                    chunk[q * tk + k] = NEG;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (b, 1, t, tk), device)?))
}
