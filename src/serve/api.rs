//! Routes: the UI pages (one embedded shell; `app.js` renders by path), embedded assets, and the
//! JSON API under `/api/`. Every error is `{"error": "..."}` with a 4xx (bad input), 503 (busy:
//! with `Retry-After`), 504 (a model job past its time limit) or 500 status.

use super::{assets, Shared};
use crate::error::is_user_error;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
    /// Seconds for a `Retry-After` header (503 busy).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.msg}))).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
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

pub type ApiResult = Result<Json<Value>, ApiError>;

pub fn router(state: Shared) -> Router {
    use super::endpoints::*;
    let limit = state.limits.max_body;
    let api = Router::new()
        .route("/info", get(info))
        .route("/layers", get(layers))
        .route("/map", get(map))
        .route("/neuron/{id}", get(neuron))
        .route("/neuron/{id}/contexts", get(contexts))
        .route("/neuron/{id}/pattern", get(super::heads::pattern))
        .route("/experts", get(super::experts::experts))
        .route("/modules", get(super::modules::modules))
        .route("/module/{id}", get(super::modules::module))
        .route("/components", get(super::modules::components))
        .route("/component/{id}", get(super::modules::component))
        .route("/search", get(search_api))
        .route("/activations", post(activations))
        .route("/intervene", post(intervene))
        .route("/localize", post(localize))
        .route("/patch", post(super::patching::patch))
        .fallback(not_found);
    Router::new()
        .route("/", get(page))
        .route("/neuron/{id}", get(page))
        .route("/search", get(page))
        .route("/localize", get(page))
        .route("/neuro", get(page))
        .route("/patch", get(page))
        .route("/experts", get(page))
        .route("/expert/{id}", get(page))
        .route("/modules", get(page))
        .route("/module/{id}", get(page))
        .route("/components", get(page))
        .route("/component/{id}", get(page))
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
/// Model use goes through `super::jobs` instead.
pub async fn blocking<T: Send + 'static>(
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
