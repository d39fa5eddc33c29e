//! `GET /api/neuron/L.hH/pattern`: where a recorded attention head looks on its top examples.
//! For each top example (the context the atlas kept), the head's attention pattern row at the
//! example token: one weight per context token, recomputed by running the loaded model on the
//! context alone. Needs `--model`; a unit that is not a head is a 404.

use super::api::{ApiError, ApiResult};
use super::jobs::{self, Wait};
use super::Shared;
use crate::model::{AttnHook, HookSet, Site, SiteKind, UnitId};
use axum::extract::{Path, State};
use axum::Json;
use serde_json::json;

pub(super) async fn pattern(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let Ok(UnitId::Head { layer, head }) = id.parse::<UnitId>() else {
        return Err(ApiError::not_found(format!("`{id}` is not a head (L.hH)")));
    };
    let (si, u) = s
        .atlas
        .resolve(&id)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    let r = s.atlas.unit(si, u)?;
    if s.model.is_none() {
        return Err(ApiError::not_found(
            "attention patterns need a model: start the server with --model".to_string(),
        ));
    }
    let before = s.atlas.manifest.settings.context_before;
    // each example's tokens (the kept context) and where the example token sits among them
    let seqs: Vec<(Vec<u32>, usize)> = r
        .top
        .iter()
        .map(|e| {
            let at = e.context[..before.min(e.context.len())]
                .iter()
                .filter(|t| t.is_some())
                .count();
            (e.context.iter().flatten().copied().collect(), at)
        })
        .collect();
    let rows = jobs::job(&s, "pattern run", Wait::Queue, move |_, m, _| {
        let site = Site::Block(layer, SiteKind::Attn(AttnHook::Pattern));
        let mut out = Vec::with_capacity(seqs.len());
        for (ids, at) in &seqs {
            if ids.is_empty() {
                out.push(json!(null));
                continue;
            }
            let mut hooks = HookSet::capturing([site]);
            m.forward(&m.batch(std::slice::from_ref(ids))?, &mut hooks)?;
            let p = hooks
                .take(site)
                .ok_or_else(|| anyhow::anyhow!("{site} was not captured"))?;
            let at = (*at).min(ids.len() - 1);
            let w: Vec<f32> = p
                .get(0)?
                .get(head)?
                .get(at)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            let tokens: Vec<String> = ids.iter().map(|&t| m.tokenizer.token_text(t)).collect();
            out.push(json!({"tokens": tokens, "at": at, "weights": w}));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(
        json!({"head": id, "layer": layer, "index": head, "examples": rows}),
    ))
}
