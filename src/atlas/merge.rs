//! `ftri merge`: shards of one recording combined exactly into one atlas.

use super::{Atlas, Manifest, Shard};
use crate::error::user_error;
use crate::record::RecordState;
use anyhow::Result;
use std::path::PathBuf;

/// Combine shards of one recording into one atlas (manifest and state). Refuses atlases that
/// differ in model, settings or corpus, unfinished ones, and shards that overlap.
pub fn merge(paths: &[PathBuf]) -> Result<(Manifest, RecordState, Option<Vec<u8>>)> {
    if paths.len() < 2 {
        return Err(user_error("merge needs at least two atlases"));
    }
    let first = Atlas::open(&paths[0])?;
    let mut manifest = first.manifest.clone();
    let tokenizer = match first.tokenizer_path() {
        Some(p) => Some(
            std::fs::read(&p)
                .map_err(|e| user_error(format!("{}: cannot read: {e}", p.display())))?,
        ),
        None => None,
    };
    let check_complete = |a: &Atlas| {
        if a.manifest.complete {
            Ok(())
        } else {
            Err(user_error(format!(
                "{}: unfinished recording (a checkpoint); finish it with `ftri record --resume`",
                a.dir.display()
            )))
        }
    };
    check_complete(&first)?;
    let mut state = first.load_state()?;
    let top = manifest.settings.top();
    let mut covered: Option<Shard> = manifest.shard.clone();
    for p in &paths[1..] {
        let a = Atlas::open(p)?;
        check_complete(&a)?;
        if let Some(why) = manifest.incompatibility(&a.manifest) {
            return Err(user_error(format!(
                "cannot merge {} with {}: {why}",
                paths[0].display(),
                p.display()
            )));
        }
        let overlap = || {
            user_error(format!(
                "cannot merge {}: it overlaps the atlases before it (merge the shards i/n of one run, each once)",
                p.display()
            ))
        };
        covered = match (covered, &a.manifest.shard) {
            (Some(c), Some(s)) if c.count == s.count => {
                if s.indices.iter().any(|i| c.indices.contains(i)) {
                    return Err(overlap());
                }
                let mut indices = c.indices;
                indices.extend(&s.indices);
                indices.sort_unstable();
                Some(Shard {
                    count: c.count,
                    indices,
                })
            }
            (Some(c), Some(s)) => {
                return Err(user_error(format!(
                    "cannot merge {}: shard of {} runs, the others are of {}",
                    p.display(),
                    s.count,
                    c.count
                )))
            }
            _ => return Err(overlap()),
        };
        state.merge(&a.load_state()?, &top);
    }
    // All shards together are the whole corpus, exactly as one unsharded run.
    manifest.shard = covered.filter(|c| c.indices.len() < c.count);
    manifest.set_counts(&state);
    Ok((manifest, state, tokenizer))
}
