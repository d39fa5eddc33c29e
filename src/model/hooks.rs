//! Hook points with TransformerLens names, and what a forward pass does at each: capture the value,
//! change it (interventions), or neither. Sites nobody asked for cost one set lookup.

use crate::error::user_error;
use anyhow::Result;
use candle_core::{DType, Tensor, Var, D};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    ResidPre,
    /// One hook point inside attention (`attn.hook_q`, …, `attn.hook_result`); see [`AttnHook`].
    Attn(AttnHook),
    AttnOut,
    ResidMid,
    MlpPre,
    MlpPreLinear,
    MlpPost,
    /// Mixture-of-experts block: the router (gate) logits [.., n_experts], before top-k.
    RouterLogits,
    /// The routing weights of the chosen experts [.., top_k] (renormalized iff the architecture
    /// does), in top-k order.
    ExpertWeights,
    /// The chosen experts' indices [.., top_k] as f32 values, in top-k order.
    ExpertIndices,
    /// One hook point of expert E's gated MLP [.., d_expert]; zero where the token was not routed
    /// to E.
    Expert(usize, ExpertHook),
    /// The shared expert's neurons (Qwen2-MoE), before its down projection.
    SharedExpertPost,
    MlpOut,
    ResidPost,
}

/// The hook points inside one expert, as in a dense gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpertHook {
    /// Gate projection (`mlp.experts.E.hook_pre`).
    Pre,
    /// Up projection (`mlp.experts.E.hook_pre_linear`).
    PreLinear,
    /// act(gate)·up, what enters the down projection (`mlp.experts.E.hook_post`).
    Post,
}

/// The hook points inside attention, TransformerLens names and layouts (batch first):
/// q, rot_q, z `[B, T, heads, d_head]`; k, v, rot_k `[B, T, kv_heads, d_head]` (grouped-query
/// attention keeps one key/value per key-value head); scores and pattern
/// `[B, heads, q_tokens, k_tokens]`; result `[B, T, heads, d_model]`. In forward order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttnHook {
    /// The query projection (with its bias), before any q norm and rotary.
    Q,
    /// The key projection, before any k norm and rotary.
    K,
    /// The value projection.
    V,
    /// The query as attention uses it: after the q norm and rotary (rotary models only).
    RotQ,
    /// The key as attention uses it: after the k norm and rotary (rotary models only).
    RotK,
    /// Scaled (and soft-capped) q·k, masked entries −∞ as TransformerLens fills them.
    Scores,
    /// softmax(scores).
    Pattern,
    /// pattern·v: each head's output before the output projection.
    Z,
    /// Each head's write to the residual stream, z_h·W_O[h] (no bias); computed only when asked.
    Result,
}

impl AttnHook {
    pub const ALL: [AttnHook; 9] = [
        AttnHook::Q,
        AttnHook::K,
        AttnHook::V,
        AttnHook::RotQ,
        AttnHook::RotK,
        AttnHook::Scores,
        AttnHook::Pattern,
        AttnHook::Z,
        AttnHook::Result,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            AttnHook::Q => "attn.hook_q",
            AttnHook::K => "attn.hook_k",
            AttnHook::V => "attn.hook_v",
            AttnHook::RotQ => "attn.hook_rot_q",
            AttnHook::RotK => "attn.hook_rot_k",
            AttnHook::Scores => "attn.hook_attn_scores",
            AttnHook::Pattern => "attn.hook_pattern",
            AttnHook::Z => "attn.hook_z",
            AttnHook::Result => "attn.hook_result",
        }
    }

    /// Laid out `[B, heads, q_tokens, k_tokens]` (the others are `[B, T, heads, dim]`).
    pub fn is_pattern_like(self) -> bool {
        matches!(self, AttnHook::Scores | AttnHook::Pattern)
    }
}

impl ExpertHook {
    pub const ALL: [ExpertHook; 3] = [ExpertHook::Pre, ExpertHook::PreLinear, ExpertHook::Post];

    fn suffix(self) -> &'static str {
        match self {
            ExpertHook::Pre => "hook_pre",
            ExpertHook::PreLinear => "hook_pre_linear",
            ExpertHook::Post => "hook_post",
        }
    }
}

impl SiteKind {
    pub const ALL: [SiteKind; 8] = [
        SiteKind::ResidPre,
        SiteKind::AttnOut,
        SiteKind::ResidMid,
        SiteKind::MlpPre,
        SiteKind::MlpPreLinear,
        SiteKind::MlpPost,
        SiteKind::MlpOut,
        SiteKind::ResidPost,
    ];

    /// The routing hook points of a mixture-of-experts layer (the per-expert ones follow them).
    pub const ROUTING: [SiteKind; 3] = [
        SiteKind::RouterLogits,
        SiteKind::ExpertWeights,
        SiteKind::ExpertIndices,
    ];

    pub fn suffix(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            SiteKind::ResidPre => "hook_resid_pre",
            SiteKind::AttnOut => "hook_attn_out",
            SiteKind::ResidMid => "hook_resid_mid",
            SiteKind::MlpPre => "mlp.hook_pre",
            SiteKind::MlpPreLinear => "mlp.hook_pre_linear",
            SiteKind::MlpPost => "mlp.hook_post",
            SiteKind::MlpOut => "hook_mlp_out",
            SiteKind::ResidPost => "hook_resid_post",
            SiteKind::RouterLogits => "mlp.hook_router_logits",
            SiteKind::ExpertWeights => "mlp.hook_expert_weights",
            SiteKind::ExpertIndices => "mlp.hook_expert_indices",
            SiteKind::SharedExpertPost => "mlp.shared_expert.hook_post",
            SiteKind::Expert(e, h) => {
                return Cow::Owned(format!("mlp.experts.{e}.{}", h.suffix()));
            }
            SiteKind::Attn(h) => h.suffix(),
        })
    }

    pub fn from_suffix(s: &str) -> Option<Self> {
        if let Some(rest) = s.strip_prefix("mlp.experts.") {
            let (e, h) = rest.split_once('.')?;
            let e: usize = e.parse().ok()?;
            let h = ExpertHook::ALL.into_iter().find(|k| k.suffix() == h)?;
            return Some(SiteKind::Expert(e, h));
        }
        if s.starts_with("attn.") {
            return AttnHook::ALL
                .into_iter()
                .find(|h| h.suffix() == s)
                .map(SiteKind::Attn);
        }
        Self::ALL
            .into_iter()
            .chain(Self::ROUTING)
            .chain([SiteKind::SharedExpertPost])
            .find(|k| k.suffix() == s)
    }
}

/// A place in the forward pass. Ordered in the order the forward pass reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    Block(usize, SiteKind),
    Logits,
}

impl Site {
    pub fn layer(self) -> Option<usize> {
        match self {
            Site::Block(l, _) => Some(l),
            _ => None,
        }
    }

    /// Parse a TransformerLens name: `hook_embed`, `blocks.3.mlp.hook_post`, `logits`.
    pub fn parse(name: &str) -> Option<Site> {
        match name {
            "hook_embed" => return Some(Site::Embed),
            "logits" => return Some(Site::Logits),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.")?;
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        Some(Site::Block(layer, SiteKind::from_suffix(suffix)?))
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => f.write_str("hook_embed"),
            Site::Logits => f.write_str("logits"),
            Site::Block(l, k) => write!(f, "blocks.{l}.{}", k.suffix()),
        }
    }
}

/// The sites among `all` whose TransformerLens names match comma-separated globs
/// (`blocks.*.mlp.hook_post,logits`), in forward order.
pub fn select_sites(all: &[Site], globs: &str) -> Result<Vec<Site>> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        b.add(
            globset::Glob::new(g)
                .map_err(|e| user_error(format!("bad hook-point pattern `{g}`: {e}")))?,
        );
    }
    let set = b
        .build()
        .map_err(|e| user_error(format!("bad hook-point patterns `{globs}`: {e}")))?;
    let chosen: Vec<Site> = all
        .iter()
        .copied()
        .filter(|s| set.is_match(s.to_string()))
        .collect();
    if chosen.is_empty() {
        // The default `blocks.*.mlp.hook_post` finds nothing in an all-MoE model: say where its
        // neurons are.
        let moe = all.iter().any(|s| s.to_string().contains(".mlp.experts."));
        let hint = if moe {
            "; the neurons of this mixture-of-experts model are `blocks.*.mlp.experts.*.hook_post`"
        } else {
            ""
        };
        return Err(user_error(format!(
            "hook-point pattern `{globs}` matches no hook point of this model (see `ftri info`{hint})"
        )));
    }
    Ok(chosen)
}

/// What an intervention does to the selected entries `h` of a site.
#[derive(Debug, Clone)]
pub enum Op {
    /// h ← 0 (lesion)
    Zero,
    /// h ← f·h
    Scale(f32),
    /// h ← v (clamp)
    Set(f32),
    /// h ← h + v
    Add(f32),
    /// h ← values[unit] (e.g. the corpus mean of each unit); a vector over the site's dimension
    SetPerUnit(Vec<f32>),
    /// Neuron Adjust (skill unlearning): a value more likely under the forget distribution
    /// N(μf, σf) than under the retain one N(μr, σr) is mapped to μr + (h − μf)·σr/σf; others
    /// pass. One entry per selected unit (in the order of `Intervention::units`, or every unit of
    /// the site when that is `None`); units not selected are never computed on.
    Adjust {
        mu_f: Vec<f32>,
        sd_f: Vec<f32>,
        mu_r: Vec<f32>,
        sd_r: Vec<f32>,
    },
    /// h ← h + vector (steering); a vector over the site's dimension
    AddVector(Vec<f32>),
    /// h ← replacement, a tensor shaped like the site's activation [batch, tokens, dim]
    Replace(Tensor),
    /// Per token, keep the k entries of largest magnitude over the site's units and zero the
    /// rest (exact top-k; entries tied with the k-th magnitude are kept too). Magnitude, because
    /// a gated MLP's neurons are signed (silu(gate)·up): a large negative value writes as much
    /// as a large positive one. Acts on every unit of the site.
    TopK(usize),
    /// Spark Transformer's statistical top-k on magnitudes: per token keep the entries with
    /// |h| ≥ mean + z·std of the token's |h| (population std, in f32), zero the rest. Every unit.
    StatTopK(f32),
    /// MoEfication: per token keep the units of the `r` best-scoring experts, zero the others.
    Route(Route),
}

/// Experts of a dense layer (MoEfication) and how a token picks them.
#[derive(Debug, Clone)]
pub struct Route {
    /// Each unit's expert, `0..n_experts`.
    pub groups: Vec<u32>,
    pub n_experts: usize,
    /// Experts kept per token; `r ≥ n_experts` keeps all, leaving the value bit-identical.
    pub r: usize,
    /// `None`: the oracle, experts scored by the squared norm of their own units' values.
    pub router: Option<Router>,
}

/// A linear router: scores = [input, 1] · w, `input` being another site's value earlier in the
/// same pass (the forward pass keeps it when a `Route` asks for it).
#[derive(Debug, Clone)]
pub struct Router {
    pub input: Site,
    /// [d_input + 1, n_experts], the last row the bias.
    pub w: Tensor,
}

#[derive(Debug, Clone)]
pub struct Intervention {
    pub site: Site,
    /// Units (last-dimension indices) to touch; `None` = all.
    pub units: Option<Vec<usize>>,
    /// Token positions to touch; `None` = all.
    pub positions: Option<Vec<usize>>,
    pub op: Op,
}

/// The hooks of one forward pass: which sites to capture and which to change.
#[derive(Default)]
pub struct HookSet {
    capture: BTreeSet<Site>,
    interventions: Vec<Intervention>,
    captured: BTreeMap<Site, Tensor>,
    /// Compute the logits even when nothing asks to capture them (a plain forward pass).
    pub want_logits: bool,
    /// Use only ops that carry gradients (candle's fused softmax/norm/rope silently drop them).
    pub differentiable: bool,
    /// Sites whose gradient is wanted: a zero `Var` is added there (candle keeps gradients only
    /// for variables), so after `backward` its gradient is d(loss)/d(activation).
    grad_sites: BTreeSet<Site>,
    grad_vars: BTreeMap<Site, (Var, Tensor)>,
    /// Values of the sites that `Route` routers read, kept for the sites they route.
    router_inputs: BTreeMap<Site, Tensor>,
    /// Absolute position of the pass's first token (the key/value cache length during
    /// generation), so intervention positions stay positions in the whole sequence.
    pub position_offset: usize,
}

impl HookSet {
    pub fn new() -> Self {
        Self {
            want_logits: true,
            ..Default::default()
        }
    }

    /// Capture these sites; a forward pass then stops after the deepest layer it needs.
    pub fn capturing(sites: impl IntoIterator<Item = Site>) -> Self {
        let mut h = Self::new();
        h.want_logits = false;
        for s in sites {
            h.capture(s);
        }
        h
    }

    pub fn capture(&mut self, site: Site) {
        if site == Site::Logits {
            self.want_logits = true;
        }
        self.capture.insert(site);
    }

    /// Make `site` differentiable-through and remember its activation; see `gradient`.
    /// Implies `differentiable`.
    pub fn track_gradient(&mut self, site: Site) {
        self.differentiable = true;
        self.grad_sites.insert(site);
    }

    /// The activation at a tracked site and its gradient from `grads`: `None` when the forward
    /// pass did not reach the site, an error when it did but `grads` holds no gradient for it
    /// (the loss was not computed from this pass, or does not depend on the site).
    pub fn gradient(
        &self,
        site: Site,
        grads: &candle_core::backprop::GradStore,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some((var, act)) = self.grad_vars.get(&site) else {
            return Ok(None);
        };
        let g = grads.get(var.as_tensor()).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "{site}: no gradient reached this hook point (the loss does not depend on this forward pass's activation there)"
            )
        })?;
        Ok(Some((act.clone(), g)))
    }

    pub fn intervene(&mut self, iv: Intervention) {
        self.interventions.push(iv);
    }

    pub fn interventions(&self) -> &[Intervention] {
        &self.interventions
    }

    /// The last layer whose output anything depends on, or `None` when the whole model must run.
    pub fn stop_after_layer(&self) -> Option<usize> {
        if self.want_logits || self.capture.contains(&Site::Logits) || !self.grad_sites.is_empty() {
            return None;
        }
        self.capture.iter().map(|s| s.layer().unwrap_or(0)).max()
    }

    /// True when nothing after `site` in the forward pass is needed: the caller may stop there.
    pub fn done_after(&self, site: Site) -> bool {
        if self.want_logits || self.capture.contains(&Site::Logits) || !self.grad_sites.is_empty() {
            return false;
        }
        self.capture
            .iter()
            .next_back()
            .is_some_and(|last| *last <= site)
    }

    pub fn is_active(&self, site: Site) -> bool {
        self.capture.contains(&site)
            || self.grad_sites.contains(&site)
            || self.interventions.iter().any(|iv| iv.site == site)
            || self.router_input(site)
    }

    fn router_input(&self, site: Site) -> bool {
        self.interventions
            .iter()
            .any(|iv| matches!(&iv.op, Op::Route(Route { router: Some(r), .. }) if r.input == site))
    }

    /// Apply the interventions registered at `site`, then capture the result if asked.
    pub fn apply(&mut self, site: Site, x: Tensor) -> Result<Tensor> {
        if !self.is_active(site) {
            return Ok(x);
        }
        let mut x = x;
        for iv in self.interventions.iter().filter(|iv| iv.site == site) {
            x = match &iv.op {
                Op::Route(rt) => {
                    let input = match &rt.router {
                        Some(r) => Some(self.router_inputs.get(&r.input).ok_or_else(|| {
                            anyhow::anyhow!("{site}: router input {} not reached first", r.input)
                        })?),
                        None => None,
                    };
                    let new = route(&x, rt, input, site)?;
                    blend(&x, new, iv, self.position_offset)?
                }
                _ if x.rank() == 4 => apply_intervention_4d(&x, iv, self.position_offset)?,
                _ => apply_intervention(&x, iv, self.position_offset)?,
            };
        }
        if self.router_input(site) {
            self.router_inputs.insert(site, x.clone());
        }
        if self.grad_sites.contains(&site) {
            let var = Var::zeros(x.shape(), x.dtype(), x.device())?;
            let act = x.detach();
            x = (x + var.as_tensor())?;
            self.grad_vars.insert(site, (var, act));
        }
        if self.capture.contains(&site) {
            self.captured.insert(site, x.clone());
        }
        Ok(x)
    }

    pub fn get(&self, site: Site) -> Option<&Tensor> {
        self.captured.get(&site)
    }

    pub fn take(&mut self, site: Site) -> Option<Tensor> {
        self.captured.remove(&site)
    }

    pub fn take_all(&mut self) -> BTreeMap<Site, Tensor> {
        std::mem::take(&mut self.captured)
    }

    /// True when a hook or intervention needs the inside of layer `layer`'s attention (its q, k,
    /// v, scores, pattern, z or per-head result), which the fused attention kernels never
    /// materialize: the forward pass then runs that layer's attention through
    /// `attention_hooks`, unfused. Capturing, intervening on or tracking any `blocks.L.attn.*`
    /// site turns the fused path off for layer L only.
    pub fn needs_attention_internals(&self, layer: usize) -> bool {
        AttnHook::ALL
            .iter()
            .any(|&k| self.is_active(Site::Block(layer, SiteKind::Attn(k))))
    }
}

/// Attention-internal sites are 4-d; interventions see them as `[B, T, units]` with the token
/// (query) axis second and units = the flattened rest: `head·dim + i` for q/k/v/z/result,
/// `head·k_tokens + key` for scores and pattern. This is that view; `from_token_major` undoes it.
fn token_major(site: Site, x: &Tensor) -> Result<Tensor> {
    let (b, d1, d2, d3) = x.dims4()?;
    Ok(match site {
        Site::Block(_, SiteKind::Attn(h)) if h.is_pattern_like() => {
            x.transpose(1, 2)?.contiguous()?.reshape((b, d2, d1 * d3))?
        }
        _ => x.reshape((b, d1, d2 * d3))?,
    })
}

fn from_token_major(site: Site, y: &Tensor, like: &[usize]) -> Result<Tensor> {
    let (b, d1, d2, d3) = (like[0], like[1], like[2], like[3]);
    Ok(match site {
        Site::Block(_, SiteKind::Attn(h)) if h.is_pattern_like() => {
            y.reshape((b, d2, d1, d3))?.transpose(1, 2)?.contiguous()?
        }
        _ => y.reshape((b, d1, d2, d3))?,
    })
}

/// An intervention on a 4-d (attention-internal) site: in the token-major view, with a
/// replacement given in the site's own layout converted alike.
fn apply_intervention_4d(x: &Tensor, iv: &Intervention, offset: usize) -> Result<Tensor> {
    let view = token_major(iv.site, x)?;
    let y = match &iv.op {
        Op::Replace(r) => {
            if r.dims() != x.dims() {
                return Err(user_error(format!(
                    "{}: replacement has shape {:?} but the activation has {:?}",
                    iv.site,
                    r.dims(),
                    x.dims()
                )));
            }
            let iv = Intervention {
                op: Op::Replace(token_major(iv.site, r)?),
                ..iv.clone()
            };
            apply_intervention(&view, &iv, offset)?
        }
        _ => apply_intervention(&view, iv, offset)?,
    };
    from_token_major(iv.site, &y, x.dims())
}

/// A 0/1 mask [1, T, D] of the entries an intervention touches.
fn selection_mask(x: &Tensor, iv: &Intervention, offset: usize) -> Result<Option<Tensor>> {
    let (_, t, d) = x.dims3()?;
    if iv.units.is_none() && iv.positions.is_none() {
        return Ok(None);
    }
    let mut unit_sel = vec![iv.units.is_none() as u8 as f32; d];
    if let Some(units) = &iv.units {
        for &u in units {
            if u >= d {
                return Err(user_error(format!(
                    "{}: unit {u} out of range (the site has {d} units)",
                    iv.site
                )));
            }
            unit_sel[u] = 1.0;
        }
    }
    let mut pos_sel = vec![iv.positions.is_none() as u8 as f32; t];
    if let Some(positions) = &iv.positions {
        for &p in positions {
            // A position outside this pass simply selects nothing, as for a shorter prompt.
            if p >= offset && p - offset < t {
                pos_sel[p - offset] = 1.0;
            }
        }
    }
    let mask: Vec<f32> = pos_sel
        .iter()
        .flat_map(|p| unit_sel.iter().map(move |u| p * u))
        .collect();
    Ok(Some(
        Tensor::from_vec(mask, (1, t, d), x.device())?.to_dtype(x.dtype())?,
    ))
}

fn vector(x: &Tensor, v: &[f32], site: Site) -> Result<Tensor> {
    let d = x.dim(2)?;
    if v.len() != d {
        return Err(user_error(format!(
            "{site}: vector has {} values but the site has {d} units",
            v.len()
        )));
    }
    Ok(Tensor::from_slice(v, d, x.device())?.to_dtype(x.dtype())?)
}

/// Neuron Adjust on the selected units only: gather their columns, decide per entry which fitted
/// Gaussian is more likely (log-densities, so σ counts, not only the distance to the means), map
/// the forget-like values, and add the change back into those columns. Computed in f32 with σ
/// floored, so half-precision activations neither overflow nor touch any other unit.
fn adjust(x: &Tensor, iv: &Intervention, offset: usize, p: [&Vec<f32>; 4]) -> Result<Tensor> {
    let (_, t, d) = x.dims3()?;
    let units: Vec<u32> = match &iv.units {
        Some(u) => u.iter().map(|&u| u as u32).collect(),
        None => (0..d as u32).collect(),
    };
    if let Some(&u) = units.iter().find(|&&u| u as usize >= d) {
        return Err(user_error(format!(
            "{}: unit {u} out of range (the site has {d} units)",
            iv.site
        )));
    }
    if p.iter().any(|v| v.len() != units.len()) {
        return Err(user_error(format!(
            "{}: adjust has statistics for {} units but selects {}",
            iv.site,
            p[0].len(),
            units.len()
        )));
    }
    let dev = x.device();
    let idx = Tensor::new(units.as_slice(), dev)?;
    let h = x.index_select(&idx, 2)?.to_dtype(candle_core::DType::F32)?;
    let k = units.len();
    let v = |xs: &[f32]| Tensor::from_slice(xs, k, dev);
    let floor = |sd: &[f32]| -> Vec<f32> { sd.iter().map(|s| s.max(1e-6)).collect() };
    let (sd_f, sd_r) = (floor(p[1]), floor(p[3]));
    let (mu_f, mu_r) = (v(p[0])?, v(p[2])?);
    // log N(h; μ, σ) up to the shared constant: −(h − μ)²/(2σ²) − ln σ
    let log_density = |mu: &Tensor, sd: &[f32]| -> Result<Tensor> {
        let inv_var: Vec<f32> = sd.iter().map(|s| 0.5 / (s * s)).collect();
        let ln_sd: Vec<f32> = sd.iter().map(|s| s.ln()).collect();
        let z2 = h.broadcast_sub(mu)?.sqr()?.broadcast_mul(&v(&inv_var)?)?;
        Ok(z2.neg()?.broadcast_sub(&v(&ln_sd)?)?)
    };
    let forget_like = log_density(&mu_f, &sd_f)?.gt(&log_density(&mu_r, &sd_r)?)?;
    let ratio: Vec<f32> = sd_r.iter().zip(&sd_f).map(|(r, f)| r / f).collect();
    let moved = h
        .broadcast_sub(&mu_f)?
        .broadcast_mul(&v(&ratio)?)?
        .broadcast_add(&mu_r)?;
    let mut change = (forget_like.where_cond(&moved, &h)? - &h)?;
    if let Some(positions) = &iv.positions {
        let mut sel = vec![0f32; t];
        for &q in positions {
            if q >= offset && q - offset < t {
                sel[q - offset] = 1.0;
            }
        }
        change = change.broadcast_mul(&Tensor::from_vec(sel, (1, t, 1), dev)?)?;
    }
    Ok(x.index_add(&idx, &change.to_dtype(x.dtype())?, 2)?)
}

/// h' = h·(1−m) + m·f(h), which reduces to f(h) when everything is selected. Written with plain
/// tensor ops so gradients flow through interventions too.
pub fn apply_intervention(x: &Tensor, iv: &Intervention, position_offset: usize) -> Result<Tensor> {
    if let Op::Adjust {
        mu_f,
        sd_f,
        mu_r,
        sd_r,
    } = &iv.op
    {
        return adjust(x, iv, position_offset, [mu_f, sd_f, mu_r, sd_r]);
    }
    let new = match &iv.op {
        Op::Zero => x.zeros_like()?,
        Op::Scale(f) => (x * (*f as f64))?,
        Op::Set(v) => (x.zeros_like()? + (*v as f64))?,
        Op::Add(v) => (x + (*v as f64))?,
        Op::SetPerUnit(v) => vector(x, v, iv.site)?
            .broadcast_as(x.shape())?
            .contiguous()?,
        Op::AddVector(v) => x.broadcast_add(&vector(x, v, iv.site)?)?,
        Op::Adjust { .. } => unreachable!("handled by `adjust`"),
        Op::Replace(r) => {
            if r.dims() != x.dims() {
                return Err(user_error(format!(
                    "{}: replacement has shape {:?} but the activation has {:?}",
                    iv.site,
                    r.dims(),
                    x.dims()
                )));
            }
            r.to_dtype(x.dtype())?
        }
        Op::TopK(k) => {
            let d = x.dim(2)?;
            if *k >= d {
                x.clone()
            } else if *k == 0 {
                x.zeros_like()?
            } else {
                let xf = x.to_dtype(DType::F32)?.abs()?.contiguous()?;
                let (sorted, _) = xf.sort_last_dim(false)?;
                let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
                x.mul(&xf.broadcast_ge(&kth)?.to_dtype(x.dtype())?)?
            }
        }
        Op::StatTopK(z) => {
            let xf = x.to_dtype(DType::F32)?.abs()?;
            let mean = xf.mean_keepdim(D::Minus1)?;
            let sd = xf
                .broadcast_sub(&mean)?
                .sqr()?
                .mean_keepdim(D::Minus1)?
                .sqrt()?;
            let theta = (mean + (sd * (*z as f64))?)?;
            x.mul(&xf.broadcast_ge(&theta)?.to_dtype(x.dtype())?)?
        }
        Op::Route(rt) => {
            if rt.router.is_some() {
                return Err(user_error(format!(
                    "{}: a routed intervention with a router runs inside a forward pass",
                    iv.site
                )));
            }
            route(x, rt, None, iv.site)?
        }
    };
    blend(x, new, iv, position_offset)
}

/// MoEfication routing of x [batch, tokens, d]: score the experts per token (the squared norm of
/// their units, or the linear router on `input`), keep the units of the `r` best, zero the rest.
fn route(x: &Tensor, rt: &Route, input: Option<&Tensor>, site: Site) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let e = rt.n_experts;
    if rt.groups.len() != d || rt.groups.iter().any(|&g| g as usize >= e) {
        return Err(user_error(format!(
            "{site}: a routing of {} units into {e} experts, but the site has {d} units",
            rt.groups.len()
        )));
    }
    if rt.r >= e {
        return Ok(x.clone());
    }
    if rt.r == 0 {
        return Ok(x.zeros_like()?);
    }
    let dev = x.device();
    let mut onehot = vec![0f32; d * e];
    for (i, &g) in rt.groups.iter().enumerate() {
        onehot[i * e + g as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (d, e), dev)?;
    let scores = match (&rt.router, input) {
        (None, _) => x
            .to_dtype(DType::F32)?
            .sqr()?
            .reshape((b * t, d))?
            .matmul(&onehot)?,
        (Some(r), Some(inp)) => {
            let din = inp.dim(2)?;
            let inp = inp.to_dtype(DType::F32)?.reshape((b * t, din))?;
            let w = r.w.to_dtype(DType::F32)?;
            if w.dims() != [din + 1, e] {
                return Err(user_error(format!(
                    "{site}: router weights {:?}, expected [{}, {e}]",
                    w.dims(),
                    din + 1
                )));
            }
            inp.matmul(&w.narrow(0, 0, din)?)?
                .broadcast_add(&w.narrow(0, din, 1)?)?
        }
        (Some(r), None) => {
            return Err(user_error(format!(
                "{site}: router input {} missing",
                r.input
            )))
        }
    };
    let (sorted, _) = scores.contiguous()?.sort_last_dim(false)?;
    let rth = sorted.narrow(1, rt.r - 1, 1)?;
    let keep = scores.broadcast_ge(&rth)?.to_dtype(DType::F32)?;
    let mask = keep.matmul(&onehot.t()?)?.reshape((b, t, d))?;
    Ok(x.mul(&mask.to_dtype(x.dtype())?)?)
}

/// x where the intervention selects nothing, `new` where it selects (every entry when it names
/// neither units nor positions).
fn blend(x: &Tensor, new: Tensor, iv: &Intervention, position_offset: usize) -> Result<Tensor> {
    let mask = selection_mask(x, iv, position_offset)?;
    Ok(match mask {
        None => new,
        // −∞ (an expert switched off at its router logit) would make the blend below NaN
        Some(m) if matches!(iv.op, Op::Set(v) if !v.is_finite()) => {
            m.broadcast_as(x.shape())?.ne(0.0)?.where_cond(&new, x)?
        }
        Some(m) => {
            let keep = (1.0 - &m)?;
            (x.broadcast_mul(&keep)? + new.broadcast_mul(&m)?)?
        }
    })
}
