//! Activation patching and causal tracing: where in the network does the difference between a
//! clean and a corrupted prompt live? Run both, then for every patched site (a per-block hook
//! point such as `hook_mlp_out`) × layer × token position, put the clean activation back into the
//! corrupted run and measure how much of the clean behaviour returns:
//!
//! `recovered = (patched − corrupt) / (clean − corrupt)`
//!
//! on a metric read at the last token: `logprob` (log p of the target's first token) or
//! `logit_diff` (logit of the target's first token − logit of a foil's: `--foil`, else the token
//! the corrupted run ranks first other than the target). 1 means the cell carries the whole
//! difference, 0 none of it.
//!
//! Corruptions: a second prompt (`Corruption::Prompt`), or the ROME variant
//! (`Corruption::Noise`): the clean prompt with Gaussian noise of σ = `sigma` × (standard
//! deviation of the token-embedding matrix, over all its entries) added to the subject tokens'
//! `hook_embed`, over several seeds (`crate::rng`, so the same seed gives the same numbers
//! everywhere). With noise the metrics are averaged over seeds first (the clean metric is one
//! run), then `recovered` is formed from the averages.
//!
//! Batching: a site × layer costs one forward pass (more only when the logits of all rows would
//! exceed `MAX_BATCH_LOGITS`): a batch of copies of the corrupted prompt in which copy i has the
//! clean activation at position i. The `Op::Replace` tensor is the captured corrupted activation
//! with a one-hot position mask blending in the clean row, so every other entry is the value the
//! corrupted run had there. `PatchRequest::batched = false` computes every cell with its own
//! forward pass through the hooks' position selection instead (the reference the tests compare
//! the batched result to).
//!
//! Positions: prompts of different token lengths are refused unless `Align` says how their
//! positions correspond: `Left` pairs position p with p (the shorter prompt's length is patched),
//! `Right` pairs the last tokens (p from the end with p from the end). Cells are indexed by the
//! clean prompt's positions (`tokens`).
//!
//! Attribution patching (`PatchMethod::Attribution`): one backward pass from the metric of each
//! corrupted run gives d(metric)/d(activation) at every patched site; a cell's estimate is
//! Σ_d grad[q, d] · (clean[p, d] − corrupt[q, d]), divided by (clean − corrupt) like `recovered`.
//! It is the first-order Taylor estimate of the exact value, so it is exact where the metric is
//! linear in the site and degrades with the curvature between the two runs; both are reported,
//! with their Pearson correlation over all cells.
//!
//! Heads (`--heads`, the site `z` = `blocks.L.attn.hook_z`, TransformerLens's short name for it):
//! one cell per layer × head × position, restoring only that head's clean output (its d_head
//! entries of hook_z at that position) into the corrupted run; the cell's `head` is H (null for
//! every other site). Batched like the others: one forward pass per layer holds a copy of the
//! corrupted run per head × position (split only by `MAX_BATCH_LOGITS`), the `[rows, T, H, 1]`
//! mask blending the clean head in; the per-cell reference selects the head's units
//! `H·d_head..(H+1)·d_head` of the token-major view. Patching every head of a layer at a
//! position is patching that layer's `attn_out` there (the output projection and any post-norm
//! are a function of that position's z alone, its bias the same in both runs). Attribution
//! sums gradient × difference over the head's d_head entries. Other attention-internal sites
//! (q, k, v, scores, pattern, result) are not patched: their positions are not the cells'.

use crate::error::user_error;
use crate::model::{AttnHook, HookSet, Intervention, Model, Op, Site, SiteKind};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

/// Most logits (rows × tokens × vocabulary) one batched forward pass may produce; beyond it a
/// site's positions are split over several passes (2^28 f32 = 1 GiB).
const MAX_BATCH_LOGITS: usize = 1 << 28;

/// The quantity read at the last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// logit(target) − logit(foil).
    LogitDiff,
    /// log p(target).
    LogProb,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "logit_diff" => Ok(Metric::LogitDiff),
            "logprob" => Ok(Metric::LogProb),
            o => Err(user_error(format!(
                "unknown --metric `{o}` (logit_diff, logprob)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Metric::LogitDiff => "logit_diff",
            Metric::LogProb => "logprob",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchMethod {
    /// Exact patching only.
    Exact,
    /// Exact patching and, beside it, the attribution-patching estimate of every cell.
    Attribution,
}

impl PatchMethod {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(PatchMethod::Exact),
            "attribution" => Ok(PatchMethod::Attribution),
            o => Err(user_error(format!(
                "unknown --method `{o}` (exact, attribution)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            PatchMethod::Exact => "exact",
            PatchMethod::Attribution => "attribution",
        }
    }
}

/// How the positions of prompts of different token lengths correspond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Equal lengths required; position p ↔ p.
    Strict,
    /// Position p ↔ p over the shorter length (the prompts share their beginning).
    Left,
    /// The k-th token from the end ↔ the k-th from the end (the prompts share their ending).
    Right,
}

impl Align {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" | "strict" => Ok(Align::Strict),
            "left" => Ok(Align::Left),
            "right" => Ok(Align::Right),
            o => Err(user_error(format!(
                "unknown --align `{o}` (left, right, none)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Align::Strict => "none",
            Align::Left => "left",
            Align::Right => "right",
        }
    }
}

/// What the clean prompt is compared with.
#[derive(Debug, Clone)]
pub enum Corruption {
    /// Another prompt.
    Prompt(String),
    /// ROME's causal tracing: the clean prompt with noise on the subject's token embeddings.
    Noise {
        /// Noise σ in units of the token-embedding matrix's standard deviation (ROME: 3).
        sigma: f64,
        /// The subject's text, found as a token span of the clean prompt; `None`: every token but
        /// the last (and but special tokens).
        subject: Option<String>,
        /// Noise draws averaged.
        seeds: usize,
        /// Seed of the first draw (draw k uses seed + k).
        seed: u64,
    },
}

/// The site of per-head cells: each head's output `blocks.L.attn.hook_z`, short name `z`.
pub const HEAD_SITE: SiteKind = SiteKind::Attn(AttnHook::Z);

/// Per-block hook points `patch` accepts, by short name (`mlp_out`, `z` for the per-head
/// `attn.hook_z`) or TransformerLens suffix (`hook_mlp_out`, `mlp.hook_post`).
pub fn parse_sites(spec: &str) -> Result<Vec<SiteKind>> {
    let mut out = Vec::new();
    for s in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let k = match s {
            "z" | "attn_z" => Some(HEAD_SITE),
            "resid_pre" => Some(SiteKind::ResidPre),
            "resid_mid" => Some(SiteKind::ResidMid),
            "resid_post" => Some(SiteKind::ResidPost),
            "attn_out" => Some(SiteKind::AttnOut),
            "mlp_out" => Some(SiteKind::MlpOut),
            "mlp_post" => Some(SiteKind::MlpPost),
            other => SiteKind::from_suffix(other),
        }
        .ok_or_else(|| {
            user_error(format!(
                "--sites: unknown site `{s}` (resid_pre, attn_out, mlp_out, resid_mid, resid_post, \
                 mlp_post, or a hook suffix such as mlp.hook_pre)"
            ))
        })?;
        if let SiteKind::Attn(h) = k {
            if k != HEAD_SITE {
                return Err(user_error(format!(
                    "--sites: {} cannot be patched by position (patch attention per head \
                     through hook_z: --heads, or the site z)",
                    h.suffix()
                )));
            }
        }
        if !out.contains(&k) {
            out.push(k);
        }
    }
    if out.is_empty() {
        return Err(user_error("--sites is empty"));
    }
    Ok(out)
}

/// The short name a cell's `site` carries.
pub fn site_name(k: SiteKind) -> String {
    match k {
        SiteKind::ResidPre => "resid_pre".into(),
        SiteKind::ResidMid => "resid_mid".into(),
        SiteKind::ResidPost => "resid_post".into(),
        SiteKind::AttnOut => "attn_out".into(),
        SiteKind::MlpOut => "mlp_out".into(),
        SiteKind::MlpPost => "mlp_post".into(),
        HEAD_SITE => "z".into(),
        other => other.suffix().into_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct PatchRequest {
    pub clean: String,
    pub corruption: Corruption,
    /// The continuation whose first token the metric reads (e.g. " Paris").
    pub target: String,
    /// logit_diff's other token; `None`: the corrupted run's top token other than the target.
    pub foil: Option<String>,
    pub sites: Vec<SiteKind>,
    /// Layers patched (`None`: all).
    pub layers: Option<Vec<usize>>,
    pub metric: Metric,
    pub method: PatchMethod,
    pub align: Align,
    /// One forward pass per site × layer (true), or one per cell (false: the reference).
    pub batched: bool,
}

impl PatchRequest {
    /// A request with the defaults of `ftri patch`: resid_pre, attn_out, mlp_out; all layers;
    /// logit_diff; exact; equal lengths; batched.
    pub fn new(clean: &str, corruption: Corruption, target: &str) -> Self {
        Self {
            clean: clean.to_string(),
            corruption,
            target: target.to_string(),
            foil: None,
            sites: vec![SiteKind::ResidPre, SiteKind::AttnOut, SiteKind::MlpOut],
            layers: None,
            metric: Metric::LogitDiff,
            method: PatchMethod::Exact,
            align: Align::Strict,
            batched: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PatchCell {
    /// `resid_pre`, `attn_out`, `mlp_out`, … (see `site_name`).
    pub site: String,
    pub layer: usize,
    /// Position in the clean prompt (an index into `tokens`).
    pub position: usize,
    /// The attention head of a per-head cell (site `z`); null for every other site.
    pub head: Option<usize>,
    /// (patched − corrupt) / (clean − corrupt).
    pub recovered: f64,
    /// The attribution-patching estimate of `recovered` (`--method attribution`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoiseInfo {
    pub sigma: f64,
    /// The noise's standard deviation in activation units: sigma × the embeddings' std.
    pub std: f64,
    /// Clean-prompt positions that received noise.
    pub positions: Vec<usize>,
    pub seeds: usize,
    pub seed: u64,
}

/// `ftri patch --json` and the server's `/api/patch`.
#[derive(Debug, Clone, Serialize)]
pub struct Patching {
    pub metric: &'static str,
    pub target: String,
    /// logit_diff's second token (null for logprob).
    pub foil: Option<String>,
    pub clean_metric: f64,
    /// The corrupted run's metric (the mean over noise seeds).
    pub corrupt_metric: f64,
    /// The clean prompt's tokens; cells' positions index them.
    pub tokens: Vec<String>,
    /// The corrupted prompt's tokens (the clean ones under noise).
    pub corrupt_tokens: Vec<String>,
    /// `none`, `left` or `right`.
    pub align: &'static str,
    /// `exact` or `attribution`.
    pub method: &'static str,
    /// Present under `--noise`.
    pub noise: Option<NoiseInfo>,
    /// Pearson correlation of `recovered` and `attribution` over all cells (`--method
    /// attribution`; null when either is constant).
    pub correlation: Option<f64>,
    /// Forward passes spent on the patched runs (not counting the clean and corrupted ones).
    pub forwards: usize,
    /// Site by site (in the requested order), layer, then position; for `z` layer, head, then
    /// position.
    pub cells: Vec<PatchCell>,
}

/// One corrupted run: its input, activations and metric.
struct Instance {
    ids: Vec<u32>,
    /// The `hook_embed` replacement of a noised run.
    embed: Option<Tensor>,
    /// Captured activation per patched site: [1, T, D], hook_z [1, T, H, Dh].
    acts: Vec<Tensor>,
    metric: f64,
}

/// The first token of `text` as a continuation.
fn first_token(model: &Model, text: &str, what: &str) -> Result<u32> {
    if text.is_empty() {
        return Err(user_error(format!("{what} is empty")));
    }
    model
        .tokenizer
        .encode_plain(text)?
        .first()
        .copied()
        .ok_or_else(|| user_error(format!("{what} {text:?} has no tokens")))
}

fn encode_prompt(model: &Model, text: &str, what: &str) -> Result<Vec<u32>> {
    let ids = model.encode(text)?;
    if ids.is_empty() {
        return Err(user_error(format!(
            "the {what} prompt {text:?} has no tokens"
        )));
    }
    Ok(ids)
}

/// The metric of each row of `logits` [B, T, V] at position `at`.
fn metrics(logits: &Tensor, at: usize, metric: Metric, target: u32, foil: u32) -> Result<Vec<f64>> {
    let rows = logits
        .narrow(1, at, 1)?
        .squeeze(1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    Ok(rows
        .iter()
        .map(|r| match metric {
            Metric::LogitDiff => r[target as usize] - r[foil as usize],
            Metric::LogProb => {
                let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                r[target as usize] - lse
            }
        })
        .collect())
}

/// The same metric as a differentiable scalar (row 0 of `logits` at `at`), for backward.
fn metric_tensor(
    logits: &Tensor,
    at: usize,
    metric: Metric,
    target: u32,
    foil: u32,
) -> Result<Tensor> {
    let last = logits.narrow(1, at, 1)?.squeeze(1)?.to_dtype(DType::F32)?; // [1, V]
    let pick = |t: &Tensor, i: u32| t.narrow(1, i as usize, 1);
    Ok(match metric {
        Metric::LogitDiff => (pick(&last, target)? - pick(&last, foil)?)?.sum_all()?,
        Metric::LogProb => {
            let lp = candle_nn::ops::log_softmax(&last, D::Minus1)?;
            pick(&lp, target)?.sum_all()?
        }
    })
}

/// Pairs (clean position, corrupted position) that are patched.
fn position_pairs(tc: usize, tk: usize, align: Align) -> Vec<(usize, usize)> {
    let n = tc.min(tk);
    match align {
        Align::Strict | Align::Left => (0..n).map(|p| (p, p)).collect(),
        Align::Right => (0..n).rev().map(|i| (tc - 1 - i, tk - 1 - i)).collect(),
    }
}

/// Where `subject` lies in `ids`: the first occurrence of its tokens (as written, or after a
/// space, as a word inside a sentence is tokenized).
fn subject_span(model: &Model, ids: &[u32], subject: &str) -> Result<Vec<usize>> {
    let trimmed = subject.trim();
    if trimmed.is_empty() {
        return Err(user_error("--subject is empty"));
    }
    let mut candidates = vec![
        model.tokenizer.encode_plain(subject)?,
        model.tokenizer.encode_plain(&format!(" {trimmed}"))?,
        model.tokenizer.encode_plain(trimmed)?,
    ];
    candidates.retain(|c| !c.is_empty());
    for c in &candidates {
        if let Some(start) = ids.windows(c.len()).position(|w| w == c.as_slice()) {
            return Ok((start..start + c.len()).collect());
        }
    }
    let toks: Vec<String> = ids
        .iter()
        .map(|&i| format!("{:?}", model.tokenizer.token_text(i)))
        .collect();
    Err(user_error(format!(
        "--subject {subject:?} is not a token span of the clean prompt (its tokens: {})",
        toks.join(" ")
    )))
}

/// Standard deviation of the token embeddings as `hook_embed` sees them (Gemma's scale applied),
/// over all entries; summed in f64 a block of rows at a time (a 262k-token vocabulary would need
/// gigabytes as one f64 copy).
fn embedding_std(model: &Model) -> Result<f64> {
    let e = &model.net.embed.tok;
    let rows = e.dim(0)?;
    let (mut n, mut sum, mut sumsq) = (0f64, 0f64, 0f64);
    for start in (0..rows).step_by(4096) {
        let block = e
            .narrow(0, start, 4096.min(rows - start))?
            .to_dtype(DType::F64)?;
        n += block.elem_count() as f64;
        sum += block.sum_all()?.to_scalar::<f64>()?;
        sumsq += block.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let mean = sum / n.max(1.0);
    let var = (sumsq / n.max(1.0) - mean * mean).max(0.0);
    Ok(var.sqrt() * model.net.embed.scale.unwrap_or(1.0).abs())
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    if a.len() < 2 {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    let r = sab / (saa * sbb).sqrt();
    r.is_finite().then_some(r)
}

/// Run the patching experiment.
pub fn patch(model: &Model, r: &PatchRequest) -> Result<Patching> {
    patch_until(model, r, &|| Ok(()))
}

/// `patch`, calling `keep_going` before each forward pass: an error from it (a cancelled server
/// job) stops the run there.
pub fn patch_until(
    model: &Model,
    r: &PatchRequest,
    keep_going: &dyn Fn() -> Result<()>,
) -> Result<Patching> {
    if model.net.unembed.is_none() {
        return Err(user_error(format!(
            "{} has no LM head: patching reads the next-token logits",
            model.id
        )));
    }
    let target = first_token(model, &r.target, "--target")?;
    let clean_ids = encode_prompt(model, &r.clean, "clean")?;
    let n_layers = model.cfg.n_layers;
    let layers: Vec<usize> = match &r.layers {
        Some(l) => l.clone(),
        None => (0..n_layers).collect(),
    };
    if let Some(&l) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(user_error(format!(
            "layer {l} is outside the model's layers 0-{}",
            n_layers.saturating_sub(1)
        )));
    }
    if r.sites.is_empty() || layers.is_empty() {
        return Err(user_error("nothing to patch: no sites or no layers"));
    }
    // (kind, layer, site), in the order cells are reported
    let mut plan: Vec<(SiteKind, usize, Site)> = Vec::new();
    for &k in &r.sites {
        for &l in &layers {
            let site = Site::Block(l, k);
            model.parse_site(&site.to_string())?;
            plan.push((k, l, site));
        }
    }
    let dev = model.device().clone();

    // The clean run: its activations at every patched site (and its embeddings, for noise).
    keep_going()?;
    let mut hooks = HookSet::new();
    plan.iter().for_each(|p| hooks.capture(p.2));
    hooks.capture(Site::Embed);
    let clean_logits = model
        .forward(&model.batch(std::slice::from_ref(&clean_ids))?, &mut hooks)?
        .ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
    let clean_acts = take_all(&mut hooks, &plan)?;
    let clean_embed = hooks
        .take(Site::Embed)
        .ok_or_else(|| anyhow::anyhow!("hook_embed was not captured"))?;

    // The corrupted input(s).
    let (corrupt_ids, noise_embeds, noise_info) = match &r.corruption {
        Corruption::Prompt(text) => {
            let ids = encode_prompt(model, text, "corrupted")?;
            if ids.len() != clean_ids.len() && r.align == Align::Strict {
                return Err(user_error(format!(
                    "the clean prompt has {} tokens and the corrupted one {}: patching pairs \
                     positions, so give prompts of equal token length or say how to pair them \
                     with --align left (shared beginning) or --align right (shared ending)",
                    clean_ids.len(),
                    ids.len()
                )));
            }
            (ids, vec![None], None)
        }
        Corruption::Noise {
            sigma,
            subject,
            seeds,
            seed,
        } => {
            if *seeds == 0 {
                return Err(user_error("--seeds must be at least 1"));
            }
            if !(sigma.is_finite() && *sigma > 0.0) {
                return Err(user_error(format!(
                    "--noise must be a positive number, not {sigma}"
                )));
            }
            let positions = match subject {
                Some(s) => subject_span(model, &clean_ids, s)?,
                None => (0..clean_ids.len() - 1)
                    .filter(|&i| !model.tokenizer.is_special(clean_ids[i]))
                    .collect(),
            };
            if positions.is_empty() {
                return Err(user_error(
                    "--noise: no token to corrupt (the prompt's only ordinary token is the last; \
                     name the tokens with --subject)",
                ));
            }
            let std = sigma * embedding_std(model)?;
            let (t, d) = (clean_ids.len(), model.cfg.d_model);
            let mut embeds = Vec::with_capacity(*seeds);
            for k in 0..*seeds {
                let mut rng = crate::rng::Rng::new(seed.wrapping_add(k as u64));
                let mut noise = vec![0f32; t * d];
                for &p in &positions {
                    for x in &mut noise[p * d..(p + 1) * d] {
                        *x = rng.normal(std as f32);
                    }
                }
                let noise =
                    Tensor::from_vec(noise, (1, t, d), &dev)?.to_dtype(clean_embed.dtype())?;
                embeds.push(Some((&clean_embed + noise)?));
            }
            let info = NoiseInfo {
                sigma: *sigma,
                std,
                positions,
                seeds: *seeds,
                seed: *seed,
            };
            (clean_ids.clone(), embeds, Some(info))
        }
    };
    let pairs = position_pairs(clean_ids.len(), corrupt_ids.len(), r.align);
    let last = corrupt_ids.len() - 1;
    let clean_last = clean_ids.len() - 1;

    // The corrupted runs (one per noise seed).
    let mut instances = Vec::new();
    let mut corrupt_logits0 = None;
    for embed in noise_embeds {
        keep_going()?;
        let mut hooks = HookSet::new();
        plan.iter().for_each(|p| hooks.capture(p.2));
        if let Some(e) = &embed {
            hooks.intervene(replace(Site::Embed, e.clone(), None));
        }
        let logits = model
            .forward(
                &model.batch(std::slice::from_ref(&corrupt_ids))?,
                &mut hooks,
            )?
            .ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
        let acts = take_all(&mut hooks, &plan)?;
        if corrupt_logits0.is_none() {
            corrupt_logits0 = Some(logits.clone());
        }
        instances.push((
            Instance {
                ids: corrupt_ids.clone(),
                embed,
                acts,
                metric: 0.0,
            },
            logits,
        ));
    }

    // The foil: named, or what the corrupted run prefers instead of the target.
    let foil = match (r.metric, &r.foil) {
        (Metric::LogProb, _) => None,
        (Metric::LogitDiff, Some(f)) => Some(first_token(model, f, "--foil")?),
        (Metric::LogitDiff, None) => {
            let row = corrupt_logits0
                .as_ref()
                .expect("at least one corrupted run")
                .narrow(1, last, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            let best = row
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != target as usize)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .ok_or_else(|| user_error("the vocabulary has no token besides the target"))?;
            Some(best)
        }
    };
    if foil == Some(target) {
        return Err(user_error(
            "--foil has the same first token as --target: their logit difference is always 0",
        ));
    }
    let foil_id = foil.unwrap_or(target);
    let clean_metric = metrics(&clean_logits, clean_last, r.metric, target, foil_id)?[0];
    let instances: Vec<Instance> = instances
        .into_iter()
        .map(|(mut inst, logits)| {
            inst.metric = metrics(&logits, last, r.metric, target, foil_id)?[0];
            Ok(inst)
        })
        .collect::<Result<_>>()?;
    let n_inst = instances.len() as f64;
    let corrupt_metric = instances.iter().map(|i| i.metric).sum::<f64>() / n_inst;
    let denom = clean_metric - corrupt_metric;
    if denom.is_nan() || denom.abs() <= 1e-9 {
        return Err(user_error(format!(
            "the clean and corrupted runs give the same {} ({clean_metric:.6}): there is nothing \
             to recover; choose prompts (or more noise) that change the target",
            r.metric.name()
        )));
    }

    // Exact patching. Rows of a site × layer: (head, pair index), heads only for `z`.
    let n_heads = model.cfg.n_heads;
    let d_head = model.cfg.head_dim;
    let vocab = model.cfg.vocab_size.max(1);
    let rows_per_pass = (MAX_BATCH_LOGITS / (corrupt_ids.len() * vocab)).max(1);
    let mut forwards = 0;
    let mut cells = Vec::new();
    // index of each plan entry's first cell (attribution fills the same cells)
    let mut first_cell = Vec::with_capacity(plan.len());
    for (si, &(kind, layer, site)) in plan.iter().enumerate() {
        let heads: Vec<Option<usize>> = if kind == HEAD_SITE {
            (0..n_heads).map(Some).collect()
        } else {
            vec![None]
        };
        let rows: Vec<(Option<usize>, usize)> = heads
            .iter()
            .flat_map(|&h| (0..pairs.len()).map(move |j| (h, j)))
            .collect();
        let mut sum = vec![0f64; rows.len()];
        for inst in &instances {
            let aligned = clean_on_corrupt(&clean_acts[si], &inst.acts[si], &pairs)?;
            let patched = if r.batched {
                let mut out = Vec::with_capacity(rows.len());
                for chunk in rows.chunks(rows_per_pass) {
                    keep_going()?;
                    let chunk: Vec<(Option<usize>, usize)> =
                        chunk.iter().map(|&(h, j)| (h, pairs[j].1)).collect();
                    out.extend(batched_pass(
                        model,
                        inst,
                        site,
                        &inst.acts[si],
                        &aligned,
                        &chunk,
                        r,
                        target,
                        foil_id,
                    )?);
                    forwards += 1;
                }
                out
            } else {
                let mut out = Vec::with_capacity(rows.len());
                for &(h, j) in &rows {
                    keep_going()?;
                    let mut hooks = HookSet::new();
                    if let Some(e) = &inst.embed {
                        hooks.intervene(replace(Site::Embed, e.clone(), None));
                    }
                    let mut iv = replace(site, aligned.clone(), Some(vec![pairs[j].1]));
                    // a head is its d_head units of hook_z's token-major view
                    iv.units = h.map(|h| (h * d_head..(h + 1) * d_head).collect());
                    hooks.intervene(iv);
                    let logits = model
                        .forward(&model.batch(std::slice::from_ref(&inst.ids))?, &mut hooks)?
                        .ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
                    out.push(metrics(&logits, last, r.metric, target, foil_id)?[0]);
                    forwards += 1;
                }
                out
            };
            for (s, m) in sum.iter_mut().zip(patched) {
                *s += m;
            }
        }
        first_cell.push(cells.len());
        for (&(head, j), s) in rows.iter().zip(sum) {
            cells.push(PatchCell {
                site: site_name(kind),
                layer,
                position: pairs[j].0,
                head,
                recovered: (s / n_inst - corrupt_metric) / denom,
                attribution: None,
            });
        }
    }

    // Attribution patching: one backward pass per corrupted run.
    let mut correlation = None;
    if r.method == PatchMethod::Attribution {
        let mut est = vec![0f64; cells.len()];
        for inst in &instances {
            keep_going()?;
            let mut hooks = HookSet::new();
            plan.iter().for_each(|p| hooks.track_gradient(p.2));
            if let Some(e) = &inst.embed {
                hooks.intervene(replace(Site::Embed, e.clone(), None));
            }
            let logits = model
                .forward(&model.batch(std::slice::from_ref(&inst.ids))?, &mut hooks)?
                .ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
            let grads = metric_tensor(&logits, last, r.metric, target, foil_id)?.backward()?;
            for (si, &(kind, _, site)) in plan.iter().enumerate() {
                let Some((act, g)) = hooks.gradient(site, &grads)? else {
                    anyhow::bail!("{site}: the differentiable pass did not reach it");
                };
                let aligned = clean_on_corrupt(&clean_acts[si], &act, &pairs)?;
                // per corrupted position q (and head): Σ_d grad · (clean − corrupt) over the
                // last axis, which for hook_z [1, T, H, Dh] is the head's d_head entries
                let prod = ((aligned - &act)? * g)?
                    .to_dtype(DType::F64)?
                    .sum(D::Minus1)?
                    .squeeze(0)?;
                let per_pos: Vec<Vec<f64>> = if kind == HEAD_SITE {
                    prod.to_vec2::<f64>()?
                } else {
                    prod.to_vec1::<f64>()?
                        .into_iter()
                        .map(|x| vec![x])
                        .collect()
                };
                let n_h = per_pos.first().map_or(1, Vec::len);
                for h in 0..n_h {
                    for (j, &(_, q)) in pairs.iter().enumerate() {
                        est[first_cell[si] + h * pairs.len() + j] += per_pos[q][h];
                    }
                }
            }
        }
        for (c, e) in cells.iter_mut().zip(&est) {
            c.attribution = Some(e / n_inst / denom);
        }
        let exact: Vec<f64> = cells.iter().map(|c| c.recovered).collect();
        let estimate: Vec<f64> = cells.iter().filter_map(|c| c.attribution).collect();
        correlation = pearson(&exact, &estimate);
    }

    let text = |ids: &[u32]| -> Vec<String> {
        ids.iter().map(|&i| model.tokenizer.token_text(i)).collect()
    };
    Ok(Patching {
        metric: r.metric.name(),
        target: r.target.clone(),
        foil: foil.map(|f| model.tokenizer.token_text(f)),
        clean_metric,
        corrupt_metric,
        tokens: text(&clean_ids),
        corrupt_tokens: text(&corrupt_ids),
        align: r.align.name(),
        method: r.method.name(),
        noise: noise_info,
        correlation,
        forwards,
        cells,
    })
}

fn replace(site: Site, value: Tensor, positions: Option<Vec<usize>>) -> Intervention {
    Intervention {
        site,
        units: None,
        positions,
        op: Op::Replace(value),
    }
}

fn take_all(hooks: &mut HookSet, plan: &[(SiteKind, usize, Site)]) -> Result<Vec<Tensor>> {
    plan.iter()
        .map(|p| {
            hooks
                .take(p.2)
                .ok_or_else(|| anyhow::anyhow!("{} was not captured", p.2))
        })
        .collect()
}

/// [1, Tk, D]: at each patched corrupted position q the clean activation of its paired clean
/// position, elsewhere the corrupted activation itself.
fn clean_on_corrupt(clean: &Tensor, corrupt: &Tensor, pairs: &[(usize, usize)]) -> Result<Tensor> {
    let tc = clean.dim(1)?;
    let tk = corrupt.dim(1)?;
    let mut idx: Vec<u32> = (0..tk as u32).map(|q| (tc as u32) + q).collect();
    for &(p, q) in pairs {
        idx[q] = p as u32;
    }
    let both = Tensor::cat(
        &[
            clean.squeeze(0)?,
            corrupt.squeeze(0)?.to_dtype(clean.dtype())?,
        ],
        0,
    )?;
    let idx = Tensor::from_vec(idx, tk, both.device())?;
    Ok(both.index_select(&idx, 0)?.unsqueeze(0)?)
}

/// One forward pass over copies of the corrupted run, copy i patched at `chunk[i]`'s corrupted
/// position (and only in its head, for hook_z `[1, T, H, Dh]`): the metric of each copy.
#[allow(clippy::too_many_arguments)]
fn batched_pass(
    model: &Model,
    inst: &Instance,
    site: Site,
    corrupt: &Tensor,
    aligned: &Tensor,
    chunk: &[(Option<usize>, usize)],
    r: &PatchRequest,
    target: u32,
    foil: u32,
) -> Result<Vec<f64>> {
    let rows = chunk.len();
    let dims = corrupt.dims().to_vec();
    let t = dims[1];
    // heads per token in the mask: 1 for a [1, T, D] site (the whole row), H for hook_z
    let nh = if dims.len() == 4 { dims[2] } else { 1 };
    let mut mask = vec![0f32; rows * t * nh];
    for (i, &(h, q)) in chunk.iter().enumerate() {
        let h = h.unwrap_or(0);
        mask[(i * t + q) * nh + h] = 1.0;
    }
    let dev: &Device = corrupt.device();
    let mshape: Vec<usize> = if dims.len() == 4 {
        vec![rows, t, nh, 1]
    } else {
        vec![rows, t, 1]
    };
    let m = Tensor::from_vec(mask, mshape, dev)?.to_dtype(corrupt.dtype())?;
    let keep = (1.0 - &m)?;
    // copy i: the corrupted activation everywhere but at its cell, the clean one there
    let value = (corrupt.broadcast_mul(&keep)? + aligned.broadcast_mul(&m)?)?;
    let mut full = dims.clone();
    full[0] = rows;
    let value = value.broadcast_as(full)?.contiguous()?;
    let mut hooks = HookSet::new();
    if let Some(e) = &inst.embed {
        let e = e.broadcast_as((rows, t, e.dim(2)?))?.contiguous()?;
        hooks.intervene(replace(Site::Embed, e, None));
    }
    hooks.intervene(replace(site, value, None));
    let seqs = vec![inst.ids.clone(); rows];
    let logits = model
        .forward(&model.batch(&seqs)?, &mut hooks)?
        .ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
    metrics(&logits, inst.ids.len() - 1, r.metric, target, foil)
}
