//! The JSON endpoints under `/api/`: atlas reads (info, layers, map, a unit, its contexts,
//! search) and model runs (activations, intervene, localize). Each parses its request, calls the
//! library and serializes the library's typed result. Model use goes through `jobs`: `read` for
//! describe and promoters, `job` (queued, timed) for forward passes.

use super::api::{blocking, ApiError, ApiResult};
use super::jobs::{self, Wait};
use super::{runs, search, AppState, Shared, STATS};
use crate::analyze::localize::{self, Direction};
use crate::analyze::responses::{Method, Readout, Reduce, Stimulus};
use crate::atlas::unit_name;
use crate::atlas::view::unit_view;
use crate::intervene::{Neuron, OpSpec};
use crate::model::{Site, SiteKind};
use crate::render::separator;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) async fn info(State(s): State<Shared>) -> ApiResult {
    let m = &s.atlas.manifest;
    let jobs = s.jobs();
    Ok(Json(json!({
        "atlas": s.atlas.dir.display().to_string(),
        "complete": m.complete,
        "model": m.model,
        "corpus": m.corpus,
        "settings": m.settings,
        "sites": m.sites,
        "experts": m.experts,
        "shard": m.shard,
        "tokens": m.counts.tokens,
        "docs": m.counts.docs,
        "windows": m.counts.windows,
        "tokenizer": s.tok.is_some(),
        "loaded_model": s.model_id,
        "modules": s.extras.modules.is_some(),
        "components": s.extras.decomposition.is_some(),
        "limits": {
            "max_body_bytes": s.limits.max_body,
            "max_chars": s.limits.max_chars,
            "max_tokens": s.model_ctx,
            "max_stimuli": s.limits.max_stimuli,
            "max_results": s.limits.max_results,
            "max_jobs": s.limits.max_jobs.max(1),
            "max_queued": s.limits.max_queued,
            "job_timeout_s": s.limits.job_timeout.as_secs_f64(),
        },
        "jobs": {"running": jobs.running(), "waiting": jobs.waiting()},
        "stats": STATS,
    })))
}

pub(super) async fn layers(State(s): State<Shared>) -> ApiResult {
    let s2 = s.clone();
    Ok(Json(
        serde_json::to_value(
            blocking(move || crate::atlas::summary::summary(&s2.atlas, 10)).await?,
        )
        .map_err(anyhow::Error::from)?,
    ))
}

#[derive(Deserialize)]
pub(super) struct MapQuery {
    stat: Option<String>,
}

pub(super) async fn map(
    State(s): State<Shared>,
    q: Result<Query<MapQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let stat = q.stat.unwrap_or_else(|| "max".into());
    if !STATS.contains(&stat.as_str()) {
        return Err(ApiError::bad(format!(
            "unknown stat `{stat}` (one of {})",
            STATS.join(", ")
        )));
    }
    let sites: Vec<Value> = s
        .cols
        .iter()
        .map(|c| {
            json!({
                "site": c.name,
                "layer": c.layer,
                "units": c.units,
                "values": c.stat(&stat).unwrap_or(&[]),
            })
        })
        .collect();
    Ok(Json(json!({"stat": stat, "sites": sites})))
}

fn resolve(s: &AppState, id: &str) -> Result<(usize, usize), ApiError> {
    s.atlas
        .resolve(id)
        .map_err(|e| ApiError::not_found(e.to_string()))
}

pub(super) async fn neuron(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    if super::experts::is_expert_id(&id) {
        return super::experts::expert(&s, &id);
    }
    let (si, u) = resolve(&s, &id)?;
    let r = s.atlas.unit(si, u)?;
    let mut j = serde_json::to_value(unit_view(&s.atlas, &r, s.tok.as_ref()))
        .map_err(anyhow::Error::from)?;
    if s.model.is_some() {
        let layer = super::neuron_layer(&r.site);
        let d = match layer {
            Some(l) => jobs::read(&s, move |_, m| {
                Ok(serde_json::to_value(
                    crate::analyze::describe::describe_neuron(m, l, u, 10)?,
                )?)
            })
            .await
            .unwrap_or_else(|e| json!({"error": e.msg})),
            None => json!({"error": "describe covers MLP neurons (L.N) only"}),
        };
        j["describe"] = d;
    }
    Ok(Json(j))
}

/// Each top example's context as tokens, with the unit's activation at every token when a model
/// is loaded (recomputed on the context alone), else only the recorded peak.
pub(super) async fn contexts(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let (si, u) = resolve(&s, &id)?;
    let r = s.atlas.unit(si, u)?;
    let before = s.atlas.manifest.settings.context_before;
    let text = |t: &u32| match &s.tok {
        Some(tk) => tk.token_text(*t),
        None => format!("<{t}>"),
    };
    let sep = r
        .top
        .first()
        .map(|e| separator(s.tok.as_ref(), &e.context))
        .unwrap_or("");
    let mut per_token: Option<Vec<Vec<f32>>> = None;
    let mut note =
        "activation known at the example token only (start with --model to shade every token)"
            .to_string();
    if s.model.is_some() && !r.top.is_empty() {
        let seqs: Vec<Vec<u32>> = r
            .top
            .iter()
            .map(|e| e.context.iter().flatten().copied().collect())
            .collect();
        let site_name = r.site.clone();
        // Shading is extra: taken only when a model slot is free now, never waited for.
        let res = jobs::job(&s, "contexts run", Wait::No, move |_, m, _| {
            let site = m.parse_site(&site_name)?;
            runs::unit_activations(m, &seqs, site, u)
        })
        .await;
        match res {
            Ok(v) => {
                per_token = Some(v);
                note = "activations recomputed by running the model on each context alone; they can differ from the recorded peak, which saw the whole document".into();
            }
            Err(e) if e.retry_after.is_some() => {
                note = "activation known at the example token only: the model is busy with another job (reload later to shade every token)".into()
            }
            Err(e) => note = format!("could not recompute activations: {}", e.msg),
        }
    }
    let examples: Vec<Value> = r
        .top
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let acts: Option<Vec<Option<f32>>> = per_token.as_ref().map(|pt| {
                let mut it = pt[i].iter();
                e.context
                    .iter()
                    .map(|t| t.and_then(|_| it.next().copied()))
                    .collect()
            });
            json!({
                "activation": e.activation,
                "doc": e.doc,
                "pos": e.pos,
                "at": before,
                "tokens": e.context.iter().map(|t| t.as_ref().map(text)).collect::<Vec<_>>(),
                "activations": acts,
            })
        })
        .collect();
    Ok(Json(json!({
        "neuron": unit_name(&r.site, u),
        "max": r.max,
        "separator": sep,
        "per_token": per_token.is_some(),
        "note": note,
        "examples": examples,
    })))
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    q: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn search_api(
    State(s): State<Shared>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let raw = q.q.unwrap_or_default();
    if raw.chars().count() > s.limits.max_chars {
        return Err(ApiError::bad(format!(
            "query longer than {} characters",
            s.limits.max_chars
        )));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, s.limits.max_results);
    let parsed = search::parse(&raw)?;
    let words = parsed.words.clone();
    let promoted = if s.model.is_some() && !words.is_empty() {
        jobs::read(&s, move |st, m| {
            let mut out = Vec::new();
            for w in &words {
                let ids = search::vocab_ids(&m.tokenizer, w);
                let list = runs::promoters(m, &ids, 20)?
                    .into_iter()
                    .filter_map(|(l, i, id, v)| {
                        let si = st.cols.iter().position(|c| c.layer == Some(l))?;
                        Some((si, i, m.tokenizer.token_text(id), v))
                    })
                    .collect();
                out.push((w.clone(), list));
            }
            Ok(out)
        })
        .await?
    } else {
        vec![]
    };
    let s2 = s.clone();
    let (hits, scanned) = blocking(move || {
        let idx = match s2.index.get() {
            Some(i) => i.clone(),
            None => {
                let built = Arc::new(search::build_index(&s2)?);
                s2.index.get_or_init(|| built).clone()
            }
        };
        Ok((
            search::run(&s2, &idx, &parsed, &promoted, limit),
            idx.units.len(),
        ))
    })
    .await?;
    let q2 = search::parse(&raw)?;
    Ok(Json(json!({
        "q": raw,
        "query": q2,
        "units_scanned": scanned,
        "promotes_searched": s.model.is_some(),
        "results": hits,
    })))
}

fn check_text(s: &AppState, text: &str, what: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad(format!("{what} is empty")));
    }
    if text.chars().count() > s.limits.max_chars {
        return Err(ApiError::bad(format!(
            "{what} is longer than {} characters",
            s.limits.max_chars
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct ActivationsReq {
    text: String,
    neuron: String,
}

pub(super) async fn activations(
    State(s): State<Shared>,
    body: Result<Json<ActivationsReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    check_text(&s, &req.text, "text")?;
    jobs::job(&s, "activations run", Wait::Queue, move |_, m, _| {
        let (site, unit): (Site, usize) = runs::model_unit(m, &req.neuron)?;
        let ids = m.encode(&req.text)?;
        let acts = runs::unit_activations(m, std::slice::from_ref(&ids), site, unit)?;
        let acts = acts.into_iter().next().unwrap_or_default();
        let max = acts.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sep = separator(
            Some(&m.tokenizer),
            &ids.iter().map(|&i| Some(i)).collect::<Vec<_>>(),
        );
        Ok(json!({
            "neuron": req.neuron,
            "site": site.to_string(),
            "unit": unit,
            "tokens": ids.iter().map(|&i| m.tokenizer.token_text(i)).collect::<Vec<_>>(),
            "ids": ids,
            "activations": acts,
            "max": max,
            "separator": sep,
        }))
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
pub(super) struct InterveneReq {
    text: String,
    neuron: String,
    #[serde(default = "zero")]
    op: String,
}

fn zero() -> String {
    "zero".into()
}

pub(super) async fn intervene(
    State(s): State<Shared>,
    body: Result<Json<InterveneReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    check_text(&s, &req.text, "text")?;
    let op = OpSpec::parse(&req.op)?;
    jobs::job(&s, "intervention", Wait::Queue, move |st, m, cancel| {
        // Neuron::parse reads only the string (a neuron *set* may name a file; this may not).
        let n = Neuron::parse(&req.neuron, &m.cfg)?;
        let ids = m.encode(&req.text)?;
        let c = runs::compare(m, &st.atlas, &ids, n, &op, cancel)?;
        Ok(serde_json::to_value(c)?)
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
pub(super) struct LocalizeReq {
    target: Vec<String>,
    control: Vec<String>,
    reduce: Option<String>,
    top: Option<usize>,
    /// `target` (default), `control` or `both`.
    direction: Option<String>,
    /// Target i and control i are a matched pair.
    #[serde(default)]
    paired: bool,
}

pub(super) async fn localize(
    State(s): State<Shared>,
    body: Result<Json<LocalizeReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let clean = |v: Vec<String>, what: &str| -> Result<Vec<String>, ApiError> {
        let v: Vec<String> = v
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if v.len() < 2 || v.len() > s.limits.max_stimuli {
            return Err(ApiError::bad(format!(
                "{what}: {} stimuli; give 2 to {}",
                v.len(),
                s.limits.max_stimuli
            )));
        }
        for t in &v {
            check_text(&s, t, what)?;
        }
        Ok(v)
    };
    let target = clean(req.target, "target")?;
    let control = clean(req.control, "control")?;
    let reduce = Reduce::parse(req.reduce.as_deref().unwrap_or("mean"))?;
    let direction = Direction::parse(req.direction.as_deref().unwrap_or("target"))?;
    let paired = req.paired;
    let top = req.top.unwrap_or(50).clamp(1, s.limits.max_results);
    let stimuli = |v: Vec<String>| -> Vec<Stimulus> {
        v.into_iter()
            .map(|text| Stimulus { text, target: None })
            .collect()
    };
    let (target, control) = (stimuli(target), stimuli(control));
    let r = jobs::job(&s, "localize", Wait::Queue, move |_, m, cancel| {
        localize::localize_until(
            m,
            &localize::LocalizeRequest {
                target,
                control,
                site: SiteKind::MlpPost,
                layers: (0..m.cfg.n_layers).collect(),
                readout: Readout {
                    reduce,
                    method: Method::Contrast,
                    include_special: false,
                    batch: 16,
                },
                direction,
                paired,
                fdr: 0.05,
                top,
            },
            &|| cancel.check(),
        )
    })
    .await?;
    Ok(Json(serde_json::to_value(r).map_err(anyhow::Error::from)?))
}
