//! `ftri serve`: a local web UI and JSON API over an atlas (and, optionally, the model it was
//! recorded from).
//!
//! Everything the server reads is fixed when it starts: the atlas folder (memory-mapped) and the
//! front end, compiled into the binary (`assets`). No part of a request path or body ever names
//! a file.
//!
//! Concurrency: atlas reads (info, layers, map, a unit, its recorded contexts, search) never wait
//! for the model. The model is shared read-only (`Arc<Model>`, no lock): cheap reads of its
//! weights (describe, a search word's promoters) run on the blocking pool at once, and forward
//! passes (activations, intervene, localize, per-token contexts) are jobs in a bounded queue with
//! a time limit (`jobs`; the bounds are in `Limits`). See docs/serve.md.

pub mod api;
mod assets;
mod endpoints;
mod experts;
mod heads;
pub mod jobs;
pub mod modules;
mod patching;
pub mod runs;
pub mod search;

use crate::atlas::Atlas;
use crate::model::{Model, Tokenizer};
use anyhow::Result;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bounds on what a request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request body bytes (larger bodies get 413).
    pub max_body: usize,
    /// Characters of one prompt or stimulus.
    pub max_chars: usize,
    /// Stimuli per localizer set.
    pub max_stimuli: usize,
    /// Results of one search.
    pub max_results: usize,
    /// Model jobs (forward passes) that run at once (at least 1). The CPU kernels already use
    /// every core, so more mostly adds latency.
    pub max_jobs: usize,
    /// Model jobs that may wait for a slot; one more gets 503 with `Retry-After`.
    pub max_queued: usize,
    /// How long a model job may wait for a slot (then 503), and then run (then 504).
    pub job_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            max_chars: 2000,
            max_stimuli: 200,
            max_results: 500,
            max_jobs: 1,
            max_queued: 4,
            job_timeout: Duration::from_secs(120),
        }
    }
}

/// Per-unit statistics of one recorded hook point, for the map, search and sorting.
pub struct SiteCols {
    pub name: String,
    /// `Some(L)` for `blocks.L.mlp.hook_post` (units are neurons `L.N`).
    pub layer: Option<usize>,
    pub units: usize,
    pub fire_rate: Vec<f64>,
    pub max: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// max / std (0 where std is 0): how far the peak stands above the typical spread.
    pub selectivity: Vec<f64>,
    /// The median of the units' max (1 if not positive): the scale search compares activations to.
    pub typical_max: f64,
}

impl SiteCols {
    pub fn stat(&self, name: &str) -> Option<&[f64]> {
        Some(match name {
            "fire_rate" => &self.fire_rate,
            "max" => &self.max,
            "mean" => &self.mean,
            "std" => &self.std,
            "selectivity" => &self.selectivity,
            _ => return None,
        })
    }
}

pub const STATS: [&str; 5] = ["fire_rate", "max", "selectivity", "mean", "std"];

/// `blocks.L.mlp.hook_post` → L.
pub fn neuron_layer(site: &str) -> Option<usize> {
    match crate::model::Site::parse(site)? {
        crate::model::Site::Block(l, crate::model::SiteKind::MlpPost) => Some(l),
        _ => None,
    }
}

pub struct AppState {
    pub atlas: Atlas,
    /// The atlas's own tokenizer (renders contexts without the model).
    pub tok: Option<Tokenizer>,
    /// The model, shared read-only; its forward passes go through `jobs`.
    pub model: Option<Arc<Model>>,
    pub model_id: Option<String>,
    pub model_ctx: Option<usize>,
    pub cols: Vec<SiteCols>,
    /// Set before the state is shared; the job queue is sized from it on first use.
    pub limits: Limits,
    jobs: OnceLock<Arc<jobs::Jobs>>,
    /// Activating tokens of every unit's top examples, built on the first search.
    pub(crate) index: OnceLock<Arc<search::Index>>,
    /// Loopback-only Host headers (DNS-rebinding guard) when bound to a loopback address.
    pub loopback_only: bool,
    /// Modules and decomposition components loaded at start (`modules`).
    pub extras: modules::Extras,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(atlas: Atlas, model: Option<Model>) -> Result<Self> {
        if let Some(m) = &model {
            atlas.check_model(m, "serve --model must be the atlas's model")?;
        }
        let tok = atlas
            .tokenizer_path()
            .and_then(|p| Tokenizer::from_file(&p).ok());
        let mut cols = Vec::new();
        for (si, info) in atlas.manifest.sites.iter().enumerate() {
            let var = atlas.column_f64(si, crate::atlas::Field::Var)?;
            let max = atlas.column_f64(si, crate::atlas::Field::Max)?;
            let mean = atlas.column_f64(si, crate::atlas::Field::Mean)?;
            let std: Vec<f64> = var.iter().map(|v| v.max(0.0).sqrt()).collect();
            let fire_rate = atlas.fire_rates(si)?;
            let selectivity = atlas.selectivity(si)?;
            let mut sorted: Vec<f64> = max.iter().copied().filter(|x| x.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            let typical_max = sorted
                .get(sorted.len() / 2)
                .copied()
                .filter(|&m| m > 0.0)
                .unwrap_or(1.0);
            cols.push(SiteCols {
                name: info.name.clone(),
                layer: neuron_layer(&info.name),
                units: info.units,
                fire_rate,
                max,
                mean,
                std,
                selectivity,
                typical_max,
            });
        }
        Ok(Self {
            model_id: model.as_ref().map(|m| m.id.clone()),
            model_ctx: model.as_ref().map(|m| m.cfg.n_ctx),
            model: model.map(Arc::new),
            atlas,
            tok,
            cols,
            limits: Limits::default(),
            jobs: OnceLock::new(),
            index: OnceLock::new(),
            loopback_only: true,
            extras: modules::Extras::default(),
        })
    }

    /// The model job queue, sized from `limits`.
    pub fn jobs(&self) -> &Arc<jobs::Jobs> {
        self.jobs
            .get_or_init(|| Arc::new(jobs::Jobs::new(&self.limits)))
    }
}

/// The router: pages, embedded assets and the JSON API.
pub fn router(state: Shared) -> axum::Router {
    api::router(state)
}

/// Serve until Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
