//! `ftri serve`: the local web UI and JSON API over an atlas (see docs/serve.md).

use crate::atlas::Atlas;
use crate::error::user_error;
use crate::serve::{serve, AppState};
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
}

pub fn run(a: ServeArgs) -> Result<()> {
    let host: IpAddr = a
        .host
        .parse()
        .map_err(|_| user_error(format!("--host `{}` is not an IP address", a.host)))?;
    let atlas = Atlas::open(&a.atlas)?;
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
