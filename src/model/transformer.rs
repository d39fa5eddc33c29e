//! One forward pass for every supported architecture. The architectures differ only in how their
//! checkpoints name and lay out weights (see `arch/`) and in a few switches from `ModelConfig`
//! (norm kind, gated MLP, rotary, residual wiring).
//!
//! Fast paths and hooks: the fused attention kernels (`kernels::attention_fused`,
//! `kernels::attention`) never materialize a layer's q, k, v, attention pattern or z. They run
//! only when the pass is not differentiable and `HookSet::needs_attention_internals(layer)` is
//! false; `attention()` asks that before any fused path. Every hook site or intervention inside
//! attention must therefore make `needs_attention_internals` true for its layer; that method is
//! the single place such sites plug in.

use super::config::{ModelConfig, Residual};
use super::hooks::{AttnHook, HookSet, Site, SiteKind};
use super::kernels::{self, AttnMask};
use super::layers::{activate, attention_mask, softmax_last, Linear, Norm, Rope};
use super::moe::Moe;
use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

pub struct Attention {
    /// q, k and v projections fused into one [d_model, (H + 2·Hkv)·Dh] matrix.
    pub qkv: Linear,
    pub o: Linear,
    /// Norms of each head's query and key (over its Dh entries), applied before rotary
    /// (Gemma 3's `q_norm` / `k_norm`).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

pub struct Mlp {
    /// c_fc / dense_h_to_4h, or the gate projection of a gated MLP (`mlp.hook_pre`).
    pub pre: Linear,
    /// The up projection of a gated MLP (`mlp.hook_pre_linear`).
    pub up: Option<Linear>,
    pub down: Linear,
}

impl Mlp {
    /// The placeholder `mlp` of a block whose MLP is a mixture of experts: no neurons.
    pub fn empty(d_model: usize, device: &Device, dtype: DType) -> Result<Self> {
        let none = |i, o| -> Result<Linear> {
            Ok(Linear {
                w: Tensor::zeros((i, o), dtype, device)?,
                b: None,
            })
        };
        Ok(Self {
            pre: none(d_model, 0)?,
            up: None,
            down: none(0, d_model)?,
        })
    }
}

pub struct Block {
    /// Pre-attention norm; for post-LN (BERT) the norm applied after the attention residual.
    pub ln1: Norm,
    pub attn: Attention,
    /// Pre-MLP norm; for post-LN the norm applied after the MLP residual.
    pub ln2: Norm,
    pub mlp: Mlp,
    /// Norm of the attention output before it joins the residual stream (Gemma 2/3's
    /// `post_attention_layernorm`); `hook_attn_out` is its output.
    pub post_attn_norm: Option<Norm>,
    /// Norm of the MLP output before it joins the residual stream (Gemma 2/3's
    /// `post_feedforward_layernorm`); `hook_mlp_out` is its output.
    pub post_mlp_norm: Option<Norm>,
    /// A mixture-of-experts MLP (`model/moe.rs`), which then replaces `mlp` (left empty:
    /// [`Mlp::empty`]).
    pub moe: Option<Moe>,
}

pub struct Embeddings {
    pub tok: Tensor,
    pub pos: Option<Tensor>,
    pub token_type: Option<Tensor>,
    pub norm: Option<Norm>,
    /// Token embeddings are multiplied by this, rounded to the model's dtype first, before
    /// `hook_embed` (Gemma: √d_model, as transformers' `ScaledWordEmbedding` and
    /// TransformerLens's scaled `W_E` both do). `tok` itself stays unscaled (it may be the tied
    /// unembedding).
    pub scale: Option<f64>,
}

impl Embeddings {
    /// Token embeddings only: no learned positions, token types, embedding norm or scale.
    pub fn tokens(tok: Tensor) -> Self {
        Self {
            tok,
            pos: None,
            token_type: None,
            norm: None,
            scale: None,
        }
    }
}

pub struct Transformer {
    pub cfg: ModelConfig,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    /// [vocab, d_model]; `None` for encoders without an LM head.
    pub unembed: Option<Tensor>,
    pub rope: Option<Rope>,
    /// Rotary of the sliding-window layers when it differs from `rope` (`ModelConfig::rope_local`).
    pub rope_local: Option<Rope>,
    pub device: Device,
    pub dtype: DType,
}

/// What the hooks ask of one attention layer: `HookSet` answers; tests substitute their own.
trait AttentionNeeds {
    /// Gradients must flow, so only plain candle ops may run.
    fn differentiable(&self) -> bool;
    /// Something reads q, k, v, the pattern or z of `layer`: no fused kernel may run there.
    fn needs_attention_internals(&self, layer: usize) -> bool;
}

impl AttentionNeeds for HookSet {
    fn differentiable(&self) -> bool {
        self.differentiable
    }
    fn needs_attention_internals(&self, layer: usize) -> bool {
        HookSet::needs_attention_internals(self, layer)
    }
}

/// Token ids of several sequences, right-padded to one length. Padding is masked out of attention,
/// so each sequence's activations equal those of running it alone.
pub struct Batch {
    pub ids: Tensor,
    pub lengths: Vec<usize>,
}

impl Batch {
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(user_error(
                "cannot run an empty sequence (the text has no tokens)",
            ));
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap();
        let mut flat = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(pad_id, t - s.len()));
        }
        Ok(Self {
            ids: Tensor::from_vec(flat, (seqs.len(), t), device)?,
            lengths: seqs.iter().map(|s| s.len()).collect(),
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.lengths.len(), self.ids.dim(1).unwrap_or(0))
    }
}

impl Transformer {
    pub fn site_dim(&self, site: Site) -> usize {
        let moe = |l: usize| self.blocks.get(l).and_then(|b| b.moe.as_ref());
        match site {
            Site::Embed => self.cfg.d_model,
            Site::Logits => self.cfg.vocab_size,
            Site::Block(l, k) => match k {
                SiteKind::MlpPre | SiteKind::MlpPreLinear | SiteKind::MlpPost => self.cfg.d_mlp,
                SiteKind::RouterLogits => moe(l).map_or(0, Moe::n_experts),
                SiteKind::ExpertWeights | SiteKind::ExpertIndices => moe(l).map_or(0, |m| m.top_k),
                SiteKind::Expert(..) => moe(l).map_or(0, Moe::d_expert),
                SiteKind::SharedExpertPost => moe(l)
                    .and_then(|m| m.shared.as_ref())
                    .map_or(0, |s| s.mlp.d_expert()),
                SiteKind::Attn(h) => super::attention_hooks::site_dim(&self.cfg, h),
                _ => self.cfg.d_model,
            },
        }
    }

    /// Every hook point this model has, in forward order.
    pub fn sites(&self) -> Vec<Site> {
        let mut out = vec![Site::Embed];
        for l in 0..self.cfg.n_layers {
            let moe = self.blocks.get(l).and_then(|b| b.moe.as_ref());
            for k in SiteKind::ALL {
                let present = match k {
                    SiteKind::ResidMid => self.cfg.residual != Residual::Parallel,
                    SiteKind::MlpPreLinear => self.cfg.gated_mlp && moe.is_none(),
                    SiteKind::MlpPre | SiteKind::MlpPost => moe.is_none(),
                    _ => true,
                };
                if k == SiteKind::MlpOut {
                    if let Some(m) = moe {
                        out.extend(m.sites(l));
                    }
                }
                if present {
                    out.push(Site::Block(l, k));
                }
                if k == SiteKind::ResidPre {
                    let rotary = self.rope.is_some() || self.rope_local.is_some();
                    out.extend(
                        AttnHook::ALL
                            .into_iter()
                            .filter(|h| rotary || !matches!(h, AttnHook::RotQ | AttnHook::RotK))
                            .map(|h| Site::Block(l, SiteKind::Attn(h))),
                    );
                }
            }
        }
        if self.unembed.is_some() {
            out.push(Site::Logits);
        }
        out
    }

    fn check_input(&self, batch: &Batch, offset: usize) -> Result<()> {
        let (_, t) = batch.dims();
        if t + offset > self.cfg.n_ctx {
            return Err(user_error(format!(
                "the text has {} tokens but the model's context is {} tokens",
                t + offset,
                self.cfg.n_ctx
            )));
        }
        let max = batch.ids.max_all()?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab_size {
            return Err(user_error(format!(
                "token id {max} is outside the model's vocabulary of {} (does tokenizer.json belong to this model?)",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Run the model. Returns the logits [B, T, vocab] when they are computed (a model with an LM
    /// head and hooks that need them), `None` when the pass stopped early.
    pub fn forward(&self, batch: &Batch, hooks: &mut HookSet) -> Result<Option<Tensor>> {
        self.forward_cached(batch, hooks, None)
    }

    /// `forward` continuing from the keys and values in `cache` (one sequence, no padding), and
    /// extending it: what generation runs for each new token.
    pub fn forward_cached(
        &self,
        batch: &Batch,
        hooks: &mut HookSet,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Option<Tensor>> {
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if cache.is_some() && batch.lengths.len() != 1 {
            anyhow::bail!(
                "a key/value cache holds one sequence, not a batch of {}",
                batch.lengths.len()
            );
        }
        self.check_input(batch, offset)?;
        hooks.position_offset = offset;
        let (b, t) = batch.dims();
        let diff = hooks.differentiable;
        let stop = hooks.stop_after_layer();

        let flat = batch.ids.flatten_all()?;
        let tok = self
            .embed
            .tok
            .embedding(&flat)?
            .reshape((b, t, self.cfg.d_model))?;
        let tok = match self.embed.scale {
            // transformers: `embeds * torch.tensor(scale).to(dtype)`
            Some(s) => {
                tok.broadcast_mul(&Tensor::new(s as f32, &self.device)?.to_dtype(tok.dtype())?)?
            }
            None => tok,
        };
        let tok = hooks.apply(Site::Embed, tok)?;
        let mut x = tok;
        if let Some(pos) = &self.embed.pos {
            x = x.broadcast_add(&pos.narrow(0, offset, t)?)?;
        }
        if let Some(tt) = &self.embed.token_type {
            // single-segment input: token type 0 everywhere
            x = x.broadcast_add(&tt.narrow(0, 0, 1)?)?;
        }
        if let Some(n) = &self.embed.norm {
            x = n.forward(&x, diff)?;
        }

        let causal = self.cfg.residual != Residual::PostLn;
        let mask_with = |window: Option<usize>| -> Result<Option<Tensor>> {
            attention_mask(&batch.lengths, t, offset, causal, window, &self.device)?
                .map(|m| Ok(m.to_dtype(self.dtype)?))
                .transpose()
        };
        // one mask for full-attention layers, one for sliding-window layers (if any)
        let full_mask = mask_with(None)?;
        let window_mask = match &self.cfg.sliding_window {
            Some(w) => mask_with(Some(w.size))?,
            None => None,
        };

        for (l, block) in self.blocks.iter().enumerate() {
            let mask = match self.cfg.window(l) {
                Some(_) => &window_mask,
                None => &full_mask,
            };
            x = hooks.apply(Site::Block(l, SiteKind::ResidPre), x)?;
            x = match self.cfg.residual {
                Residual::Sequential => {
                    let a = self.attend(
                        l,
                        block,
                        &block.ln1.forward(&x, diff)?,
                        mask.as_ref(),
                        (&batch.lengths, offset, cache.as_deref_mut()),
                        hooks,
                    )?;
                    let a = post_norm(&block.post_attn_norm, a, diff)?;
                    let a = hooks.apply(Site::Block(l, SiteKind::AttnOut), a)?;
                    let mid = hooks.apply(Site::Block(l, SiteKind::ResidMid), (x + a)?)?;
                    let Some(m) = self.mlp(l, block, &block.ln2.forward(&mid, diff)?, hooks)?
                    else {
                        return Ok(None);
                    };
                    (mid + m)?
                }
                Residual::Parallel => {
                    let a = self.attend(
                        l,
                        block,
                        &block.ln1.forward(&x, diff)?,
                        mask.as_ref(),
                        (&batch.lengths, offset, cache.as_deref_mut()),
                        hooks,
                    )?;
                    let a = post_norm(&block.post_attn_norm, a, diff)?;
                    let a = hooks.apply(Site::Block(l, SiteKind::AttnOut), a)?;
                    let Some(m) = self.mlp(l, block, &block.ln2.forward(&x, diff)?, hooks)? else {
                        return Ok(None);
                    };
                    ((x + a)? + m)?
                }
                Residual::PostLn => {
                    let a = self.attend(
                        l,
                        block,
                        &x,
                        mask.as_ref(),
                        (&batch.lengths, offset, cache.as_deref_mut()),
                        hooks,
                    )?;
                    let a = post_norm(&block.post_attn_norm, a, diff)?;
                    let a = hooks.apply(Site::Block(l, SiteKind::AttnOut), a)?;
                    let mid = block.ln1.forward(&(a + x)?, diff)?;
                    let mid = hooks.apply(Site::Block(l, SiteKind::ResidMid), mid)?;
                    let Some(m) = self.mlp(l, block, &mid, hooks)? else {
                        return Ok(None);
                    };
                    block.ln2.forward(&(m + mid)?, diff)?
                }
            };
            x = hooks.apply(Site::Block(l, SiteKind::ResidPost), x)?;
            if stop.is_some_and(|s| l >= s) {
                return Ok(None);
            }
        }

        if let Some(c) = cache {
            c.len += t;
        }
        let (Some(norm), Some(unembed)) = (&self.final_norm, &self.unembed) else {
            return Ok(None);
        };
        let x = norm.forward(&x, diff)?;
        let logits = x
            .reshape((b * t, self.cfg.d_model))?
            .matmul(&unembed.t()?)?
            .reshape((b, t, self.cfg.vocab_size))?;
        let logits = match self.cfg.final_softcap {
            Some(c) => softcap(&logits, c)?,
            None => logits,
        };
        let logits = hooks.apply(Site::Logits, logits)?;
        Ok(Some(logits))
    }

    /// A layer's attention output (before any post-norm): through `attention_hooks` when a hook
    /// reads or changes its inside, else the plain (fused when possible) path, which then costs
    /// nothing extra.
    fn attend(
        &self,
        l: usize,
        block: &Block,
        x: &Tensor,
        mask: Option<&Tensor>,
        ctx: (&[usize], usize, Option<&mut KvCache>),
        hooks: &mut HookSet,
    ) -> Result<Tensor> {
        if hooks.needs_attention_internals(l) {
            return super::attention_hooks::attention(self, l, block, x, mask, ctx, hooks);
        }
        self.attention(l, block, x, mask, ctx, &*hooks)
    }

    fn attention(
        &self,
        l: usize,
        block: &Block,
        x: &Tensor,
        mask: Option<&Tensor>,
        (lengths, offset, cache): (&[usize], usize, Option<&mut KvCache>),
        needs: &dyn AttentionNeeds,
    ) -> Result<Tensor> {
        let diff = needs.differentiable();
        // the fused kernels keep q, k, v, the pattern and z to themselves
        let fused_ok = !diff && !needs.needs_attention_internals(l);
        let (b, t, _) = x.dims3()?;
        let (h, hkv, dh) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let qkv = block.attn.qkv.forward(x, diff)?;
        let mut scale = self.cfg.attn_scale.unwrap_or(1.0 / (dh as f64).sqrt());
        if self.cfg.scale_attn_by_layer {
            scale /= (l + 1) as f64;
        }
        let window = self.cfg.window(l);
        let fast_mask = AttnMask {
            lengths,
            offset,
            causal: self.cfg.residual != Residual::PostLn,
            window,
            softcap: self.cfg.attn_softcap.map(|c| c as f32),
        };
        let rope = match (window, &self.rope_local) {
            (Some(_), Some(local)) => Some(local),
            _ => self.rope.as_ref(),
        };
        let qk_norm = block.attn.q_norm.is_some() || block.attn.k_norm.is_some();
        if fused_ok && rope.is_none() && !qk_norm && cache.is_none() {
            if let Some(ctx) = kernels::attention_fused(&qkv, h, hkv, scale as f32, &fast_mask)? {
                return block.attn.o.forward(&ctx, diff);
            }
        }
        // A q/k norm whose gain spans all heads normalizes the whole projection before the
        // split into heads (OLMoE); one of head_dim entries normalizes each head (Qwen3, Gemma 3).
        fn whole(n: &Option<Norm>, heads: usize, dh: usize) -> Option<&Norm> {
            n.as_ref()
                .filter(|n| heads > 1 && n.gain().dims() == [heads * dh])
        }
        let q_whole = whole(&block.attn.q_norm, h, dh);
        let k_whole = whole(&block.attn.k_norm, hkv, dh);
        let split = |start: usize, heads: usize, norm: Option<&Norm>| -> Result<Tensor> {
            let x = qkv.narrow(2, start, heads * dh)?;
            let x = match norm {
                Some(n) => n.forward(&x, diff)?,
                None => x,
            };
            Ok(x.reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = split(0, h, q_whole)?;
        let mut k = split(h * dh, hkv, k_whole)?;
        let mut v = split((h + hkv) * dh, hkv, None)?;
        if let (Some(n), None) = (&block.attn.q_norm, &q_whole) {
            q = n.forward(&q, diff)?;
        }
        if let (Some(n), None) = (&block.attn.k_norm, &k_whole) {
            k = n.forward(&k, diff)?;
        }
        if let Some(rope) = rope {
            q = rope.apply(&q, diff, offset)?;
            k = rope.apply(&k, diff, offset)?;
        }
        if let Some(cache) = cache {
            if cache.layers.len() < self.blocks.len() {
                cache.layers.resize(self.blocks.len(), None);
            }
            if let Some((pk, pv)) = &cache.layers[l] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.layers[l] = Some((k.clone(), v.clone()));
        }
        let tk = k.dim(2)?;
        if fused_ok {
            if let Some(ctx) = kernels::attention(&q, &k, &v, scale as f32, &fast_mask)? {
                return block.attn.o.forward(&ctx, diff);
            }
        }
        // Grouped-query attention without copying k/v: the n_rep query heads that share one
        // key/value head are consecutive, so they fold into the row dimension of one matmul.
        let n_rep = h / hkv;
        let qg = q.contiguous()?.reshape((b, hkv, n_rep * t, dh))?;
        let scores = (qg.matmul(&k.t()?)? * scale)?.reshape((b, h, t, tk))?;
        let scores = match self.cfg.attn_softcap {
            Some(c) => softcap(&scores, c)?,
            None => scores,
        };
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last(&scores, diff)?.reshape((b, hkv, n_rep * t, tk))?;
        let ctx = probs
            .matmul(&v)?
            .reshape((b, h, t, dh))?
            .transpose(1, 2)?
            .reshape((b, t, h * dh))?;
        block.attn.o.forward(&ctx, diff)
    }

    /// The MLP's output, or `None` when the hooks need nothing past its neurons (the last
    /// requested site is this layer's `mlp.hook_post`): the down projection is then skipped.
    fn mlp(
        &self,
        l: usize,
        block: &Block,
        x: &Tensor,
        hooks: &mut HookSet,
    ) -> Result<Option<Tensor>> {
        if let Some(moe) = &block.moe {
            let out = moe.forward(l, x, self.cfg.act, hooks)?;
            let out = post_norm(&block.post_mlp_norm, out, hooks.differentiable)?;
            return Ok(Some(hooks.apply(Site::Block(l, SiteKind::MlpOut), out)?));
        }
        let pre = hooks.apply(
            Site::Block(l, SiteKind::MlpPre),
            block.mlp.pre.forward(x, hooks.differentiable)?,
        )?;
        let mut post = activate(&pre, self.cfg.act, hooks.differentiable)?;
        if let Some(up) = &block.mlp.up {
            let lin = hooks.apply(
                Site::Block(l, SiteKind::MlpPreLinear),
                up.forward(x, hooks.differentiable)?,
            )?;
            post = (post * lin)?;
        }
        let post = hooks.apply(Site::Block(l, SiteKind::MlpPost), post)?;
        if hooks.done_after(Site::Block(l, SiteKind::MlpPost)) {
            return Ok(None);
        }
        let out = block.mlp.down.forward(&post, hooks.differentiable)?;
        let out = post_norm(&block.post_mlp_norm, out, hooks.differentiable)?;
        Ok(Some(hooks.apply(Site::Block(l, SiteKind::MlpOut), out)?))
    }
}

/// A sub-layer's output through its post-norm, if the block has one.
fn post_norm(norm: &Option<Norm>, x: Tensor, differentiable: bool) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x, differentiable),
        None => Ok(x),
    }
}

/// Soft-capping as transformers writes it: c·tanh(x/c).
fn softcap(x: &Tensor, c: f64) -> Result<Tensor> {
    Ok(((x / c)?.tanh()? * c)?)
}

/// Keys and values of the positions run so far (after rotary), per layer: each generation step
/// then runs only the new token.
#[derive(Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions held.
    pub len: usize,
}

/// What an architecture's loader hands back: embeddings, blocks, final norm, unembedding.
pub type Parts = (Embeddings, Vec<Block>, Option<Norm>, Option<Tensor>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, Model};
    use std::cell::RefCell;

    /// Says every layer's attention internals are needed, and records which layers asked.
    struct WantsInternals(RefCell<Vec<usize>>);

    impl AttentionNeeds for WantsInternals {
        fn differentiable(&self) -> bool {
            false
        }
        fn needs_attention_internals(&self, layer: usize) -> bool {
            self.0.borrow_mut().push(layer);
            true
        }
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    /// The guard is asked before the fused kernels; when it says internals are needed the
    /// unfused path runs (its rounding differs) and gives the same numbers.
    #[test]
    fn attention_internals_force_the_unfused_path_with_the_same_result() {
        // gpt2 and bert take `attention_fused` (no rotary), llama `kernels::attention`, gemma2
        // with soft-capping and windows, gemma3_text with q/k norms and two rotary bases
        for name in ["gpt2", "llama", "bert", "gemma2", "gemma3_text"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name);
            let m = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
            let net = &m.net;
            let seqs = [
                m.encode("The dog was quiet.").unwrap(),
                m.encode("In 1999").unwrap(),
            ];
            let batch = m.batch(&seqs).unwrap();
            let (b, t) = batch.dims();
            let d = net.cfg.d_model;
            let x = Tensor::arange(0u32, (b * t * d) as u32, &net.device)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .affine(0.37, 0.1)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((b, t, d))
                .unwrap();
            let causal = net.cfg.residual != Residual::PostLn;
            for (l, block) in net.blocks.iter().enumerate() {
                let mask =
                    attention_mask(&batch.lengths, t, 0, causal, net.cfg.window(l), &net.device)
                        .unwrap();
                let plain = HookSet::new();
                assert!(!plain.needs_attention_internals(l));
                let run = |needs: &dyn AttentionNeeds| {
                    net.attention(
                        l,
                        block,
                        &x,
                        mask.as_ref(),
                        (&batch.lengths, 0, None),
                        needs,
                    )
                    .unwrap()
                };
                let fused = run(&plain);
                let wants = WantsInternals(RefCell::new(vec![]));
                let unfused = run(&wants);
                assert_eq!(*wants.0.borrow(), vec![l], "{name}: the guard was asked");
                // compare the real positions only (padding rows are never read)
                for (i, &len) in batch.lengths.iter().enumerate() {
                    let f = fused.get(i).unwrap().narrow(0, 0, len).unwrap();
                    let u = unfused.get(i).unwrap().narrow(0, 0, len).unwrap();
                    let diff = max_abs(&(&f - &u).unwrap());
                    assert!(
                        diff <= 1e-5 * max_abs(&f).max(1.0),
                        "{name} layer {l} item {i}: fused and unfused differ by {diff}"
                    );
                    assert!(
                        i > 0 || diff > 0.0,
                        "{name} layer {l}: bit-identical, so the unfused path did not run"
                    );
                }
            }
        }
    }
}
