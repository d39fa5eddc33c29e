//! Functional modules ("bricks", Configurable Foundation Models): MLP neurons of a layer that
//! fire together over a corpus. Pass 1 streams co-activation statistics per layer (the Gram
//! matrix of the `mlp.hook_post` activations grown by one matrix product per batch, plus sums for
//! centring: O(d_mlp²) memory per layer, no activation kept); their Pearson correlations, clipped
//! at 0 and raised to a power (WGCNA's soft threshold for co-expression modules, β = 6 by
//! default, so that a strong correlation counts far more than many weak ones), are the affinity
//! that spectral clustering cuts into k modules per layer (`--auto`: k by the largest eigengap).
//! Without the power, a neuron weakly correlated with every member of a tight group (r ≈ 0.3
//! with each) is pulled into it: the planted test groups then gain random members. Pass 2 runs the corpus again to find each module's top tokens by its
//! members' mean z-scored activation. What a module promotes is its members' write vectors, each
//! weighted by the neuron's standard deviation (its typical swing), through the unembedding, as
//! `describe` reads one neuron.
//!
//! Invariants: each neuron that varies over the corpus is in exactly one module of its layer;
//! neurons constant over the corpus (dead, or a constant bias) have no correlation and are in no
//! module (counted in `constant`). Module ids are global, layer by layer, and within a layer the
//! most cohesive module comes first. A module's JSON lists its neurons under `members`, which
//! `--neurons @module-7.json` reads.

use super::cluster::{is_constant, spectral, CoStats, KChoice};
use super::describe::{decoder, select, write_matrix, TokenScore};
use super::pass::{read_windows, run_batches, token_count, valid_rows, CorpusSpec, Win};
use crate::error::user_error;
use crate::model::{HookSet, Model, Site, SiteKind};
use crate::render;
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// What to cluster and how.
#[derive(Debug, Clone)]
pub struct ModulesRequest {
    pub corpus: CorpusSpec,
    pub layers: Vec<usize>,
    pub k: KChoice,
    /// Soft-threshold power β: affinity = max(r, 0)^β.
    pub power: f64,
    /// Top examples kept per module.
    pub top: usize,
    /// Promoted tokens listed per module.
    pub promotes: usize,
    pub seed: u64,
}

/// One of a module's strongest tokens.
#[derive(Debug, Clone, Serialize)]
pub struct TopExample {
    pub token: String,
    /// The context, the token marked «like this».
    pub context: String,
    /// The members' mean z-scored activation at this token.
    pub activation: f32,
    pub doc: u64,
    pub pos: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Module {
    pub id: usize,
    pub layer: usize,
    pub size: usize,
    /// Neuron ids `L.N`.
    pub members: Vec<String>,
    /// `within − between`.
    pub cohesion: f64,
    /// Mean correlation over pairs of members (0 for a single member).
    pub within: f64,
    /// Mean correlation of members with the layer's other clustered neurons.
    pub between: f64,
    pub top: Vec<TopExample>,
    pub promotes: Vec<TokenScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerModules {
    pub layer: usize,
    pub k: usize,
    /// Neurons constant over the corpus, left out of every module.
    pub constant: usize,
    /// Largest eigenvalues of the normalized affinity, largest first (what `--auto` cuts).
    pub eigenvalues: Vec<f64>,
}

/// Speed of the co-activation products against the machine's matmul.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    /// 2 · tokens · d_mlp² per layer.
    pub coactivation_gflop: f64,
    pub coactivation_seconds: f64,
    pub coactivation_gflops: f64,
    /// `ftri bench`'s matmul rate on this machine, measured at the end of the run.
    pub matmul_gflops: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModulesResult {
    /// Modules in all (the sum of the layers' k).
    pub k: usize,
    pub auto: bool,
    pub power: f64,
    pub layers: Vec<usize>,
    pub tokens: u64,
    pub per_layer: Vec<LayerModules>,
    pub modules: Vec<Module>,
    pub speed: Speed,
}

/// Progress: the stage, tokens done, tokens in the stage.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Find the modules.
pub fn modules(m: &Model, req: &ModulesRequest, progress: Progress) -> Result<ModulesResult> {
    let start = std::time::Instant::now();
    let sites: Vec<Site> = req
        .layers
        .iter()
        .map(|&l| Site::Block(l, SiteKind::MlpPost))
        .collect();
    let all = m.sites();
    if let Some(s) = sites.iter().find(|s| !all.contains(s)) {
        return Err(user_error(format!(
            "this model has no hook point {s} (a mixture-of-experts layer has no dense neurons)"
        )));
    }
    let d = m.cfg.d_mlp;
    if !(req.power.is_finite() && req.power > 0.0) {
        return Err(user_error(format!(
            "--power {}: must be positive",
            req.power
        )));
    }
    if let KChoice::Fixed(k) = req.k {
        if k == 0 || k > d {
            return Err(user_error(format!(
                "--k {k}: a layer has {d} neurons; choose 1..={d}"
            )));
        }
    }
    let wins = read_windows(m, &req.corpus)?;
    let total = token_count(&wins);

    // Pass 1: co-activation statistics.
    let mut stats: Vec<CoStats> = sites.iter().map(|_| CoStats::new(d)).collect();
    run_batches(
        m,
        &wins,
        req.corpus.batch,
        || Ok(HookSet::capturing(sites.iter().copied())),
        |chunk, hooks, _| {
            for (site, st) in sites.iter().zip(stats.iter_mut()) {
                let x = hooks
                    .take(*site)
                    .ok_or_else(|| anyhow!("{site} not captured"))?;
                st.add(&valid_rows(&x, chunk)?)?;
            }
            Ok(())
        },
        &mut |done| progress("co-activation", done, total),
    )?;

    // Clustering, per layer.
    struct Found {
        layer_pos: usize,
        members: Vec<usize>,
        within: f64,
        between: f64,
    }
    let mut per_layer = Vec::new();
    let mut found: Vec<Found> = Vec::new();
    let mut moments = Vec::new();
    for (li, (&layer, st)) in req.layers.iter().zip(&stats).enumerate() {
        let (mean, sd) = st.moments();
        let r = st.correlations();
        let active: Vec<usize> = (0..d).filter(|&i| !is_constant(sd[i])).collect();
        let n = active.len();
        if n == 0 {
            return Err(user_error(format!(
                "layer {layer}: no neuron varies over the corpus ({total} tokens); give more text"
            )));
        }
        let k = match req.k {
            KChoice::Fixed(k) if k > n => {
                return Err(user_error(format!(
                    "--k {k}: only {n} neurons of layer {layer} vary over the corpus"
                )))
            }
            k => k,
        };
        let aff: Vec<f64> = active
            .iter()
            .flat_map(|&i| active.iter().map(move |&j| (i, j)))
            .map(|(i, j)| r[i * d + j].max(0.0).powf(req.power))
            .collect();
        let sp = spectral(&aff, n, k, req.seed)?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); sp.clusters.k];
        for (p, &l) in sp.clusters.labels.iter().enumerate() {
            groups[l].push(active[p]);
        }
        let mut layer_found: Vec<Found> = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|g| {
                let (within, between) = cohesion(&r, d, &g, &active);
                Found {
                    layer_pos: li,
                    members: g,
                    within,
                    between,
                }
            })
            .collect();
        layer_found.sort_by(|a, b| {
            (b.within - b.between)
                .total_cmp(&(a.within - a.between))
                .then(a.members.cmp(&b.members))
        });
        per_layer.push(LayerModules {
            layer,
            k: layer_found.len(),
            constant: d - n,
            eigenvalues: sp
                .eigenvalues
                .iter()
                .take(sp.clusters.k + 8)
                .copied()
                .collect(),
        });
        found.extend(layer_found);
        moments.push((mean, sd));
    }
    let co_flops: f64 = stats.iter().map(|s| s.flops).sum();
    let co_secs: f64 = stats.iter().map(|s| s.seconds).sum();
    drop(stats);

    // Pass 2: each module's top tokens by its members' mean z-score, s = (x − μ) · w with
    // w_i = 1/(|M| σ_i) on the members: one [tokens, d] × [d, modules] product per layer.
    let mut weights = Vec::new();
    let mut offsets = Vec::new();
    for (li, (mean, sd)) in moments.iter().enumerate() {
        let mods: Vec<&Found> = found.iter().filter(|f| f.layer_pos == li).collect();
        let km = mods.len();
        let mut w = vec![0f32; d * km];
        let mut c = vec![0f32; km];
        for (j, f) in mods.iter().enumerate() {
            for &i in &f.members {
                let wi = 1.0 / (f.members.len() as f64 * sd[i]);
                w[i * km + j] = wi as f32;
                c[j] += (mean[i] * wi) as f32;
            }
        }
        weights.push(Tensor::from_vec(w, (d, km), m.device())?);
        offsets.push(c);
    }
    let mut tops: Vec<Vec<(f32, u64, usize, usize)>> = vec![Vec::new(); found.len()];
    let first_of_layer: Vec<usize> = (0..req.layers.len())
        .map(|li| found.iter().position(|f| f.layer_pos == li).unwrap_or(0))
        .collect();
    let mut win_base = 0usize;
    run_batches(
        m,
        &wins,
        req.corpus.batch,
        || Ok(HookSet::capturing(sites.iter().copied())),
        |chunk, hooks, _| {
            for (li, site) in sites.iter().enumerate() {
                let x = hooks
                    .take(*site)
                    .ok_or_else(|| anyhow!("{site} not captured"))?;
                let (b, t, _) = x.dims3()?;
                let s = x
                    .to_dtype(DType::F32)?
                    .reshape((b * t, d))?
                    .matmul(&weights[li])?;
                let km = offsets[li].len();
                let s: Vec<f32> = s.flatten_all()?.to_vec1()?;
                for (bi, w) in chunk.iter().enumerate() {
                    for p in 0..w.len {
                        for j in 0..km {
                            let v = s[(bi * t + p) * km + j] - offsets[li][j];
                            keep_top(
                                &mut tops[first_of_layer[li] + j],
                                req.top,
                                (v, w.doc, w.start + p, win_base + bi),
                            );
                        }
                    }
                }
            }
            win_base += chunk.len();
            Ok(())
        },
        &mut |done| progress("top tokens", done, total),
    )?;

    // What each module promotes.
    let (dec, _) = decoder(m)?;
    let mut modules = Vec::with_capacity(found.len());
    let mut writes: Vec<Option<Tensor>> = vec![None; req.layers.len()];
    for (id, f) in found.iter().enumerate() {
        let layer = req.layers[f.layer_pos];
        let w = match &writes[f.layer_pos] {
            Some(w) => w.clone(),
            None => {
                let w = write_matrix(m, layer)?.to_dtype(dec.dtype())?;
                writes[f.layer_pos] = Some(w.clone());
                w
            }
        };
        let sd = &moments[f.layer_pos].1;
        let mut scale = vec![0f32; d];
        f.members.iter().for_each(|&i| scale[i] = sd[i] as f32);
        let dir = Tensor::from_vec(scale, (1, d), m.device())?
            .to_dtype(w.dtype())?
            .matmul(&w)?
            .t()?;
        let scores: Vec<f32> = dec
            .matmul(&dir)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let promotes = select(&scores, req.promotes, true)
            .into_iter()
            .map(|s| TokenScore {
                token: m.tokenizer.token_text(s.id),
                id: s.id,
                score: s.score,
            })
            .collect();
        let mut top = std::mem::take(&mut tops[id]);
        top.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        modules.push(Module {
            id,
            layer,
            size: f.members.len(),
            members: f.members.iter().map(|i| format!("{layer}.{i}")).collect(),
            cohesion: f.within - f.between,
            within: f.within,
            between: f.between,
            top: top
                .iter()
                .map(|&(a, doc, pos, wi)| example(m, &wins[wi], doc, pos, a))
                .collect(),
            promotes,
        });
    }
    Ok(ModulesResult {
        k: modules.len(),
        auto: matches!(req.k, KChoice::Eigengap { .. }),
        power: req.power,
        layers: req.layers.clone(),
        tokens: total,
        per_layer,
        modules,
        speed: Speed {
            coactivation_gflop: co_flops / 1e9,
            coactivation_seconds: co_secs,
            coactivation_gflops: co_flops / co_secs.max(1e-12) / 1e9,
            matmul_gflops: crate::sys::matmul_gflops()?,
            seconds: start.elapsed().as_secs_f64(),
        },
    })
}

/// Mean correlation within `g` (over pairs) and between `g` and the other `active` units.
fn cohesion(r: &[f64], d: usize, g: &[usize], active: &[usize]) -> (f64, f64) {
    let (mut w, mut nw) = (0.0, 0usize);
    for (a, &i) in g.iter().enumerate() {
        for &j in &g[a + 1..] {
            w += r[i * d + j];
            nw += 1;
        }
    }
    let inside: std::collections::HashSet<usize> = g.iter().copied().collect();
    let (mut b, mut nb) = (0.0, 0usize);
    for &i in g {
        for &j in active.iter().filter(|j| !inside.contains(j)) {
            b += r[i * d + j];
            nb += 1;
        }
    }
    (w / nw.max(1) as f64, b / nb.max(1) as f64)
}

/// Keep the `n` largest (value, doc, pos) entries; ties go to the earlier (doc, pos).
fn keep_top(top: &mut Vec<(f32, u64, usize, usize)>, n: usize, e: (f32, u64, usize, usize)) {
    if n == 0 || e.0.is_nan() {
        return;
    }
    if top.len() < n {
        top.push(e);
        return;
    }
    let worse = |a: &(f32, u64, usize, usize), b: &(f32, u64, usize, usize)| {
        a.0 < b.0 || (a.0 == b.0 && (a.1, a.2) > (b.1, b.2))
    };
    let (wi, worst) =
        top.iter().enumerate().fold(
            (0, top[0]),
            |acc, (i, x)| if worse(x, &acc.1) { (i, *x) } else { acc },
        );
    if worse(&worst, &e) {
        top[wi] = e;
    }
}

/// A top example with 8 tokens of context before and 4 after, within its document.
fn example(m: &Model, w: &Win, doc: u64, pos: usize, activation: f32) -> TopExample {
    let toks = &w.tokens;
    let lo = pos.saturating_sub(8);
    let hi = (pos + 5).min(toks.len());
    let ids: Vec<Option<u32>> = toks[lo..hi].iter().map(|&t| Some(t)).collect();
    let texts = render::token_texts(Some(&m.tokenizer), &ids);
    let sep = render::separator(Some(&m.tokenizer), &ids);
    TopExample {
        token: m.tokenizer.token_text(toks[pos]),
        context: render::marked(&texts, pos - lo, sep),
        activation,
        doc,
        pos,
    }
}
