//! The experts of a mixture-of-experts atlas over HTTP: `/api/experts` (every MoE layer's routing
//! rates, most/least used expert and balance — the expert map) and `/api/neuron/L.eE` (one
//! expert: the same JSON as `ftri show --json --neuron L.eE`). Atlas reads only.

use super::api::{ApiError, ApiResult};
use super::{AppState, Shared};
use crate::atlas::experts::{expert_view, experts_summary};
use crate::model::UnitId;
use axum::extract::State;
use axum::Json;
use serde_json::json;

/// `L.eE`: an expert id (answered here rather than as a hook point's unit).
pub(super) fn is_expert_id(id: &str) -> bool {
    matches!(id.parse::<UnitId>(), Ok(UnitId::Expert { .. }))
}

/// One expert's routing and top tokens; 404 for an expert the atlas does not have.
pub(super) fn expert(s: &AppState, id: &str) -> ApiResult {
    let (xi, e) = s
        .atlas
        .resolve_expert(id)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    let r = s.atlas.expert(xi, e)?;
    let v = expert_view(&s.atlas, xi, e, &r, s.tok.as_ref());
    Ok(Json(serde_json::to_value(v).map_err(anyhow::Error::from)?))
}

/// The expert map: per MoE layer, each expert's routing count, rate and mean weight, with the
/// layer's balance. `layers` is empty for an atlas of a dense model.
pub(super) async fn experts(State(s): State<Shared>) -> ApiResult {
    let layers = experts_summary(&s.atlas)?;
    Ok(Json(json!({
        "tokens": s.atlas.manifest.counts.tokens,
        "layers": layers,
    })))
}
