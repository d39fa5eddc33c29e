//! POST `/api/patch`: `ftri patch` as a server job (queued, timed, cancelled between forward
//! passes like localize). The body names the prompts and options as the CLI flags do; the answer
//! is the JSON of `ftri patch --json`.

use super::api::{ApiError, ApiResult};
use super::jobs::{self, Wait};
use super::Shared;
use crate::analyze::localize::parse_layers;
use crate::analyze::patch::{
    parse_sites, patch_until, Align, Corruption, Metric, PatchMethod, PatchRequest, HEAD_SITE,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// Noise draws one request may ask for: each costs a corrupted run per site × layer.
const MAX_SEEDS: usize = 20;

#[derive(Deserialize)]
pub(super) struct PatchReq {
    clean: String,
    /// The corrupted prompt; absent or empty with `noise`.
    corrupt: Option<String>,
    target: String,
    foil: Option<String>,
    /// Comma list, as `--sites` (default resid_pre,attn_out,mlp_out).
    sites: Option<String>,
    /// As `--heads`: also patch every head's hook_z (cells of site `z` with `head`).
    heads: Option<bool>,
    /// As `--layers` (default all).
    layers: Option<String>,
    metric: Option<String>,
    method: Option<String>,
    align: Option<String>,
    noise: Option<f64>,
    subject: Option<String>,
    seeds: Option<usize>,
    seed: Option<u64>,
}

pub(super) async fn patch(
    State(s): State<Shared>,
    body: Result<Json<PatchReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let max = s.limits.max_chars;
    let long = |t: &str| t.chars().count() > max;
    if req.clean.trim().is_empty() {
        return Err(ApiError::bad("clean is empty"));
    }
    let texts = [
        Some(&req.clean),
        req.corrupt.as_ref(),
        Some(&req.target),
        req.foil.as_ref(),
        req.subject.as_ref(),
    ];
    if texts.into_iter().flatten().any(|t| long(t.as_str())) {
        return Err(ApiError::bad(format!(
            "a text is longer than {max} characters"
        )));
    }
    let corrupt = req.corrupt.filter(|c| !c.trim().is_empty());
    let corruption = match (corrupt, req.noise) {
        (Some(c), None) => Corruption::Prompt(c),
        (None, Some(sigma)) => {
            let seeds = req.seeds.unwrap_or(5);
            if seeds > MAX_SEEDS {
                return Err(ApiError::bad(format!("seeds: at most {MAX_SEEDS}")));
            }
            Corruption::Noise {
                sigma,
                subject: req.subject.filter(|s| !s.trim().is_empty()),
                seeds,
                seed: req.seed.unwrap_or(0),
            }
        }
        _ => return Err(ApiError::bad("give either corrupt or noise")),
    };
    let mut sites = parse_sites(req.sites.as_deref().unwrap_or("resid_pre,attn_out,mlp_out"))?;
    if req.heads == Some(true) && !sites.contains(&HEAD_SITE) {
        sites.push(HEAD_SITE);
    }
    let metric = Metric::parse(req.metric.as_deref().unwrap_or("logit_diff"))?;
    let method = PatchMethod::parse(req.method.as_deref().unwrap_or("exact"))?;
    let align = match req.align.as_deref() {
        None | Some("") => Align::Strict,
        Some(a) => Align::parse(a)?,
    };
    let r = jobs::job(&s, "patching", Wait::Queue, move |_, m, cancel| {
        let layers = req
            .layers
            .as_deref()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_layers(Some(l), m.cfg.n_layers))
            .transpose()?;
        let mut pr = PatchRequest::new(&req.clean, corruption, &req.target);
        pr.foil = req.foil.filter(|f| !f.is_empty());
        pr.sites = sites;
        pr.layers = layers;
        pr.metric = metric;
        pr.method = method;
        pr.align = align;
        patch_until(m, &pr, &|| cancel.check())
    })
    .await?;
    Ok(Json(serde_json::to_value(r).map_err(anyhow::Error::from)?))
}
