//! Routes: the UI pages (one embedded shell; `app.js` renders by path), embedded assets, and the
//! JSON API under `/api/`. Every error is `{"error": "..."}` with a 4xx (bad input) or 500 status.

use super::{assets, runs, search, AppState, Shared, STATS};
use crate::analyze::localize::Reduce;
use crate::atlas::unit_name;
use crate::atlas::view::unit_view;
use crate::error::is_user_error;
use crate::intervene::{Neuron, OpSpec};
use crate::model::{Model, Site};
use crate::render::separator;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.msg}))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if is_user_error(&e) {
            Self::bad(e.to_string())
        } else {
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::new(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(r.status(), r.body_text())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

pub fn router(state: Shared) -> Router {
    let limit = state.limits.max_body;
    let api = Router::new()
        .route("/info", get(info))
        .route("/layers", get(layers))
        .route("/map", get(map))
        .route("/neuron/{id}", get(neuron))
        .route("/neuron/{id}/contexts", get(contexts))
        .route("/search", get(search_api))
        .route("/activations", post(activations))
        .route("/intervene", post(intervene))
        .route("/localize", post(localize))
        .fallback(not_found);
    Router::new()
        .route("/", get(page))
        .route("/neuron/{id}", get(page))
        .route("/search", get(page))
        .route("/localize", get(page))
        .route("/assets/{*path}", get(asset))
        .nest("/api", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Host-header check against DNS rebinding (when bound to loopback) and security headers.
async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => n,
            _ => host,
        };
        if !["localhost", "127.0.0.1", "[::1]", ""].contains(&name) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("host `{host}` not allowed: this server answers only to localhost"),
            )
            .into_response();
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such page or endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        assets::INDEX,
    )
        .into_response()
}

async fn asset(Path(path): Path<String>) -> Response {
    match assets::get(&path) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::not_found("no such asset").into_response(),
    }
}

/// Run `f` on the blocking pool (model runs and atlas scans must not stall the async workers).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )),
    }
}

/// Run `f` with the model (one run at a time), or 400 when the server has none.
async fn with_model<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&AppState, &Model) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    if s.model.is_none() {
        return Err(ApiError::bad(
            "this server has no model: start it with `ftri serve --model M`",
        ));
    }
    let s = s.clone();
    blocking(move || {
        let m = s.model.as_ref().expect("checked above");
        let guard = m.lock().unwrap_or_else(|e| e.into_inner());
        f(&s, &guard)
    })
    .await
}

async fn info(State(s): State<Shared>) -> ApiResult {
    let m = &s.atlas.manifest;
    Ok(Json(json!({
        "atlas": s.atlas.dir.display().to_string(),
        "complete": m.complete,
        "model": m.model,
        "corpus": m.corpus,
        "settings": m.settings,
        "sites": m.sites,
        "shard": m.shard,
        "tokens": m.tokens,
        "docs": m.docs,
        "windows": m.windows,
        "tokenizer": s.tok.is_some(),
        "loaded_model": s.model_id,
        "limits": {
            "max_body_bytes": s.limits.max_body,
            "max_chars": s.limits.max_chars,
            "max_tokens": s.model_ctx,
            "max_stimuli": s.limits.max_stimuli,
            "max_results": s.limits.max_results,
        },
        "stats": STATS,
    })))
}

async fn layers(State(s): State<Shared>) -> ApiResult {
    let s2 = s.clone();
    Ok(Json(
        blocking(move || crate::cli::atlas::summary(&s2.atlas, 10)).await?,
    ))
}

#[derive(Deserialize)]
struct MapQuery {
    stat: Option<String>,
}

async fn map(State(s): State<Shared>, q: Result<Query<MapQuery>, QueryRejection>) -> ApiResult {
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

async fn neuron(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let (si, u) = resolve(&s, &id)?;
    let r = s.atlas.unit(si, u)?;
    let mut j = serde_json::to_value(unit_view(&s.atlas, &r, s.tok.as_ref()))
        .map_err(anyhow::Error::from)?;
    if s.model.is_some() {
        let layer = super::neuron_layer(&r.site);
        let d = match layer {
            Some(l) => with_model(&s, move |_, m| {
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
async fn contexts(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
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
        let res = with_model(&s, move |_, m| {
            let site = m.parse_site(&site_name)?;
            runs::unit_activations(m, &seqs, site, u)
        })
        .await;
        match res {
            Ok(v) => {
                per_token = Some(v);
                note = "activations recomputed by running the model on each context alone; they can differ from the recorded peak, which saw the whole document".into();
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
struct SearchQuery {
    q: Option<String>,
    limit: Option<usize>,
}

async fn search_api(
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
        with_model(&s, move |st, m| {
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
struct ActivationsReq {
    text: String,
    neuron: String,
}

async fn activations(
    State(s): State<Shared>,
    body: Result<Json<ActivationsReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    check_text(&s, &req.text, "text")?;
    with_model(&s, move |_, m| {
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
struct InterveneReq {
    text: String,
    neuron: String,
    #[serde(default = "zero")]
    op: String,
}

fn zero() -> String {
    "zero".into()
}

async fn intervene(
    State(s): State<Shared>,
    body: Result<Json<InterveneReq>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    check_text(&s, &req.text, "text")?;
    let op = OpSpec::parse(&req.op)?;
    with_model(&s, move |st, m| {
        // Neuron::parse reads only the string (a neuron *set* may name a file; this may not).
        let n = Neuron::parse(&req.neuron, &m.cfg)?;
        let ids = m.encode(&req.text)?;
        let c = runs::compare(m, &st.atlas, &ids, n, &op)?;
        Ok(serde_json::to_value(c)?)
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
struct LocalizeReq {
    target: Vec<String>,
    control: Vec<String>,
    reduce: Option<String>,
    top: Option<usize>,
}

async fn localize(
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
    let top = req.top.unwrap_or(50).clamp(1, s.limits.max_results);
    let (nt, nc) = (target.len(), control.len());
    let findings = with_model(&s, move |_, m| runs::localize(m, &target, &control, reduce)).await?;
    let significant = findings.iter().filter(|f| f.q <= 0.05).count();
    Ok(Json(json!({
        "method": "contrast",
        "reduce": reduce.name(),
        "n_target": nt,
        "n_control": nc,
        "units_tested": findings.len(),
        "fdr": 0.05,
        "significant": significant,
        "neurons": &findings[..top.min(findings.len())],
    })))
}
