//! Writing atlases: a finished one atomically (a temporary folder renamed when complete), and the
//! checkpoints of a running recording beside it.

use super::layout::{Field, MANIFEST, SHARED_HIST_EDGES, STATS, TOKENIZER, TOPK};
use super::tensors::{self, Raw};
use super::Manifest;
use crate::error::user_error;
use crate::record::state::TopSpec;
use crate::record::RecordState;
use anyhow::Result;
use std::path::{Path, PathBuf};

fn stats_tensors(state: &RecordState) -> Vec<(String, Raw)> {
    let mut t = Vec::new();
    // The shared edges, as format 1 wrote them, when every site has the same range (routing
    // states, `blocks.L.mlp.experts`, have their own fixed [0, 1] and their own edges).
    if let Some(first) = state.sites.first() {
        if state.sites.iter().all(|s| s.spec == first.spec) {
            let h = first.spec;
            t.push((
                SHARED_HIST_EDGES.to_string(),
                Raw::new(&h.edges(), &[h.bins + 1]),
            ));
        }
    }
    for s in state.sites.iter().chain(&state.experts) {
        let hist = &s.spec;
        let u = s.units;
        let count: Vec<i64> = s.count.iter().map(|&c| c as i64).collect();
        let var: Vec<f64> = (0..u).map(|i| s.var(i)).collect();
        let fire: Vec<i64> = s.fire.iter().map(|&c| c as i64).collect();
        let hist_v: Vec<i64> = s.hist.iter().map(|&c| c as i64).collect();
        let n = &s.name;
        t.push((Field::Count.key(n), Raw::new(&count, &[u])));
        t.push((Field::Mean.key(n), Raw::new(&s.mean, &[u])));
        t.push((Field::Var.key(n), Raw::new(&var, &[u])));
        t.push((Field::Min.key(n), Raw::new(&s.min, &[u])));
        t.push((Field::Max.key(n), Raw::new(&s.max, &[u])));
        t.push((Field::Fire.key(n), Raw::new(&fire, &[u])));
        t.push((Field::Hist.key(n), Raw::new(&hist_v, &[u, hist.slots()])));
        t.push((
            Field::HistEdges.key(n),
            Raw::new(&hist.edges(), &[hist.bins + 1]),
        ));
    }
    t
}

fn topk_tensors(state: &RecordState, top: &TopSpec) -> Vec<(String, Raw)> {
    let mut t = Vec::new();
    for s in state.sites.iter().chain(&state.experts) {
        let (u, k, n) = (s.units, top.k, &s.name);
        t.push((Field::TopAct.key(n), Raw::new(&s.top_act, &[u, k])));
        t.push((Field::TopDoc.key(n), Raw::new(&s.top_doc, &[u, k])));
        t.push((Field::TopPos.key(n), Raw::new(&s.top_pos, &[u, k])));
        t.push((
            Field::TopCtx.key(n),
            Raw::new(&s.top_ctx, &[u, k, top.ctx_len()]),
        ));
    }
    t
}

/// Write the atlas files into the existing, empty folder `dir`.
fn write_files(
    dir: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&[u8]>,
) -> Result<()> {
    let io =
        |p: &Path, e: std::io::Error| user_error(format!("{}: cannot write: {e}", p.display()));
    tensors::write(&dir.join(STATS), &stats_tensors(state))?;
    tensors::write(
        &dir.join(TOPK),
        &topk_tensors(state, &manifest.settings.top()),
    )?;
    if let Some(json) = tokenizer {
        std::fs::write(dir.join(TOKENIZER), json).map_err(|e| io(&dir.join(TOKENIZER), e))?;
    }
    // The manifest goes last: a folder without one is never mistaken for an atlas.
    let p = dir.join(MANIFEST);
    std::fs::write(&p, serde_json::to_string_pretty(manifest)?).map_err(|e| io(&p, e))?;
    Ok(())
}

/// Write a finished atlas at `out` (a temporary folder, renamed when complete).
pub fn write(
    out: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&[u8]>,
) -> Result<()> {
    if out.exists() {
        return Err(user_error(format!(
            "{}: already exists (remove it or choose another --out)",
            out.display()
        )));
    }
    crate::output::write_atomic(out, |tmp| {
        std::fs::create_dir(tmp)
            .map_err(|e| user_error(format!("{}: cannot create: {e}", tmp.display())))?;
        write_files(tmp, manifest, state, tokenizer)
    })
}

/// Where the checkpoints of a run writing `out` live.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn checkpoint_staging(out: &Path) -> PathBuf {
    let mut s = checkpoint_dir(out).into_os_string();
    s.push(".new");
    PathBuf::from(s)
}

/// Replace the checkpoint of `out`. Written beside it and swapped in, so a kill at any moment
/// leaves one complete checkpoint (the old or the new one).
pub fn write_checkpoint(
    out: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&[u8]>,
) -> Result<()> {
    let dir = checkpoint_dir(out);
    let staging = checkpoint_staging(out);
    let io = |p: &Path, e: std::io::Error| user_error(format!("{}: {e}", p.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| io(&staging, e))?;
    write_files(&staging, manifest, state, tokenizer)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&staging, &dir).map_err(|e| io(&dir, e))?;
    Ok(())
}

/// The newest complete checkpoint of a run writing `out`, if any.
pub fn find_checkpoint(out: &Path) -> Option<PathBuf> {
    [checkpoint_dir(out), checkpoint_staging(out)]
        .into_iter()
        .find(|d| d.join(MANIFEST).is_file())
}

pub fn remove_checkpoints(out: &Path) {
    let _ = std::fs::remove_dir_all(checkpoint_dir(out));
    let _ = std::fs::remove_dir_all(checkpoint_staging(out));
}
