//! How requests use the model. The weights are read-only during a forward pass, so the model is
//! shared (`Arc<Model>`, no lock) and two kinds of use are told apart:
//!
//! - cheap reads of the weights (describe of one neuron, the promoters of a search word): run on
//!   the blocking pool at once ([`read`]), never behind a long job;
//! - model jobs (forward passes: activations, intervene, localize, per-token contexts): at most
//!   `Limits::max_jobs` run at once and at most `Limits::max_queued` wait for a slot; beyond that
//!   a request gets 503 with `Retry-After` ([`job`]). A job waits at most `Limits::job_timeout`
//!   for its slot (then 503) and may run for as long again (then 504). The request is answered
//!   on time, but a forward pass cannot be interrupted: the job is told to stop ([`Cancel`]; the
//!   localizer checks it between batches) and keeps its slot until its code returns, so the
//!   bound on concurrent runs holds even for abandoned jobs.
//!
//! Atlas reads never come here.

use super::api::{blocking, ApiError};
use super::{AppState, Limits, Shared};
use crate::model::Model;
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

// Shared by every request thread without a lock: candle tensors are Arc-backed and immutable.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
};

/// Set when nobody waits for a job's answer any more (its time limit passed, or the client went
/// away). Long jobs check it between steps and stop early.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// An error once the job is cancelled (nobody reads it: the request has been answered).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_set() {
            anyhow::bail!("job cancelled");
        }
        Ok(())
    }
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// Cancels the job when the request's future ends without its answer (time limit, or dropped
/// because the client disconnected).
struct CancelOnDrop(Option<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.set();
        }
    }
}

/// The queue of model jobs: a semaphore of `max_jobs` slots and a count of admitted jobs
/// (running or waiting) bounded by `max_jobs + max_queued`.
pub struct Jobs {
    slots: Arc<Semaphore>,
    max_jobs: usize,
    max_queued: usize,
    timeout: Duration,
    admitted: AtomicUsize,
    running: AtomicUsize,
    /// Run time of recent jobs, ms (exponential moving average), for `Retry-After`.
    recent_ms: AtomicU64,
}

/// A place in the queue (running or waiting); released on drop.
struct Ticket(Arc<Jobs>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job on a slot; counts it as running and records its run time on drop.
struct Running {
    jobs: Arc<Jobs>,
    since: Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.jobs.running.fetch_sub(1, Ordering::SeqCst);
        let ms = self.since.elapsed().as_millis().min(u64::MAX as u128) as u64;
        let _ = self
            .jobs
            .recent_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some((old * 3 + ms) / 4)
            });
    }
}

impl Jobs {
    pub fn new(limits: &Limits) -> Self {
        let max_jobs = limits.max_jobs.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_jobs)),
            max_jobs,
            max_queued: limits.max_queued,
            timeout: limits.job_timeout,
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            recent_ms: AtomicU64::new(1000),
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Jobs waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.admitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.running())
    }

    /// Seconds after which a retry has a fair chance: the recent run time times the rounds of
    /// jobs ahead, 1 to the time limit.
    fn retry_after(&self) -> u64 {
        let rounds = 1 + self.waiting() / self.max_jobs;
        let ms = self.recent_ms.load(Ordering::Relaxed) * rounds as u64;
        ms.div_ceil(1000)
            .clamp(1, self.timeout.as_secs_f64().ceil().max(1.0) as u64)
    }

    fn busy(&self, msg: String) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(self.retry_after())
    }

    fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        let cap = self.max_jobs + self.max_queued;
        match self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            }) {
            Ok(_) => Ok(Ticket(self.clone())),
            Err(_) => Err(self.busy(format!(
                "the server is busy: {} model job(s) running and {} waiting, the most it takes \
                 ({} + {}); try again later",
                self.running(),
                self.waiting(),
                self.max_jobs,
                self.max_queued
            ))),
        }
    }

    fn start(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running {
            jobs: self.clone(),
            since: Instant::now(),
        }
    }
}

fn no_model() -> ApiError {
    ApiError::bad("this server has no model: start it with `ftri serve --model M`")
}

fn model(s: &Shared) -> Result<Arc<Model>, ApiError> {
    s.model.clone().ok_or_else(no_model)
}

/// A cheap read of the weights (one neuron's describe, a word's promoters): on the blocking pool
/// at once, beside any running job. 400 when the server has no model.
pub async fn read<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&AppState, &Model) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let m = model(s)?;
    let s = s.clone();
    blocking(move || f(&s, &m)).await
}

/// Whether a job waits for a free slot or gives up at once when none is free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Queue,
    No,
}

/// Run `f` as a model job (`what` names it in errors): admitted to the queue or 503, a slot
/// within the time limit or 503, its answer within the time limit or 504. 400 without a model.
pub async fn job<T: Send + 'static>(
    s: &Shared,
    what: &str,
    wait: Wait,
    f: impl FnOnce(&AppState, &Model, &Cancel) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let m = model(s)?;
    let jobs = s.jobs();
    let ticket = jobs.admit()?;
    let secs = jobs.timeout.as_secs_f64();
    let permit: OwnedSemaphorePermit = match wait {
        Wait::No => jobs.slots.clone().try_acquire_owned().map_err(|_| {
            jobs.busy(format!(
                "the model is busy: {} job(s) running",
                jobs.running()
            ))
        })?,
        Wait::Queue => {
            match tokio::time::timeout(jobs.timeout, jobs.slots.clone().acquire_owned()).await {
                Ok(p) => p.map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("job queue: {e}"))
                })?,
                Err(_) => {
                    return Err(jobs.busy(format!(
                        "the server is busy: the {what} waited {secs} s for a free model slot \
                         (the time limit); try again later"
                    )))
                }
            }
        }
    };
    let running = jobs.start();
    let cancel = Cancel::default();
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let s2 = s.clone();
    let run = blocking(move || {
        // the slot and the place in the queue are held until the job's code returns
        let _held = (ticket, permit, running);
        f(&s2, &m, &cancel)
    });
    match tokio::time::timeout(jobs.timeout, run).await {
        Ok(r) => {
            guard.0 = None;
            r
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the {what} ran past the server's time limit of {secs} s and was abandoned \
                 (`ftri serve --job-timeout`); ask for less (fewer or shorter texts)"
            ),
        )),
    }
}
