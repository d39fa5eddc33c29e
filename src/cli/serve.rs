//! `ftri serve`: the local web UI and JSON API over an atlas (see docs/serve.md).

use crate::atlas::Atlas;
use crate::error::user_error;
use crate::serve::modules::{load_decomposition, load_modules, modules_next_to, Extras};
use crate::serve::{serve, AppState, Limits};
use anyhow::Result;
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ServeArgs {
    /// Atlas folder written by `ftri record` or `ftri merge`
    #[arg(long)]
    pub atlas: PathBuf,
    /// The atlas's model (checkpoint folder or hub id): enables prompts, interventions,
    /// localize, describe and per-token shading of top examples
    #[arg(long, short)]
    pub model: Option<String>,
    /// Compute dtype for --model: f32, bf16, f16, f64
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Worker threads for the CPU (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Address to listen on; anything but loopback exposes the server to the network
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the address is printed on stderr)
    #[arg(long, default_value_t = 7878)]
    pub port: u16,
    /// Modules to show (`ftri modules --out DIR`); default ATLAS/modules when it exists
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Components to show: the F.safetensors of `ftri decompose --out` (reads F.json next to it)
    #[arg(long)]
    pub decomposition: Option<PathBuf>,
    #[command(flatten)]
    pub jobs: JobArgs,
}

/// Bounds on model jobs (forward passes: activations, intervene, localize).
#[derive(Args, Clone)]
pub struct JobArgs {
    /// Model jobs that run at once
    #[arg(long, default_value_t = Limits::default().max_jobs)]
    pub max_jobs: usize,
    /// Model jobs that may wait for a slot; more get 503 with Retry-After
    #[arg(long, default_value_t = Limits::default().max_queued)]
    pub max_queued: usize,
    /// Seconds a model job may wait for a slot (then 503), and then run (then 504)
    #[arg(long, default_value_t = Limits::default().job_timeout.as_secs_f64())]
    pub job_timeout: f64,
}

impl Default for JobArgs {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_jobs: l.max_jobs,
            max_queued: l.max_queued,
            job_timeout: l.job_timeout.as_secs_f64(),
        }
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let host: IpAddr = a
        .host
        .parse()
        .map_err(|_| user_error(format!("--host `{}` is not an IP address", a.host)))?;
    if a.jobs.max_jobs == 0 {
        return Err(user_error("--max-jobs must be at least 1"));
    }
    let job_timeout = std::time::Duration::try_from_secs_f64(a.jobs.job_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            user_error(format!(
                "--job-timeout `{}` is not a positive number of seconds",
                a.jobs.job_timeout
            ))
        })?;
    let atlas = Atlas::open(&a.atlas)?;
    // read before the model loads: a bad file is reported at once
    let extras = Extras {
        modules: match a.modules.clone().or_else(|| modules_next_to(&a.atlas)) {
            Some(d) => Some(load_modules(&d)?),
            None => None,
        },
        decomposition: match &a.decomposition {
            Some(f) => Some(load_decomposition(f)?),
            None => None,
        },
    };
    let model = match &a.model {
        Some(m) => Some(
            super::ModelArgs {
                model: m.clone(),
                dtype: a.dtype.clone(),
                device: a.device.clone(),
                threads: a.threads,
            }
            .load()?,
        ),
        None => None,
    };
    let mut state = AppState::new(atlas, model)?;
    state.loopback_only = host.is_loopback();
    state.extras = extras;
    state.limits = Limits {
        max_jobs: a.jobs.max_jobs,
        max_queued: a.jobs.max_queued,
        job_timeout,
        ..Limits::default()
    };
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, a.port))
            .await
            .map_err(|e| user_error(format!("cannot listen on {host}:{}: {e}", a.port)))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "ftri serve: http://{addr}/  (atlas {}{}; Ctrl-C to stop)",
            a.atlas.display(),
            a.model
                .as_deref()
                .map(|m| format!(", model {m}"))
                .unwrap_or_default()
        );
        if !host.is_loopback() {
            eprintln!("warning: listening on {host}, reachable from other machines");
        }
        serve(listener, state).await?;
        Ok(())
    })
}
