//! `ftri celltypes`: functional cell types from an atlas's top examples (see
//! `analyze::celltypes`).

use crate::analyze::celltypes::{celltypes, CelltypesResult};
use crate::atlas::Atlas;
use crate::model::Tokenizer;
use crate::output::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CelltypesArgs {
    /// Atlas folder (from `ftri record`)
    #[arg(long)]
    pub atlas: PathBuf,
    /// Cell types
    #[arg(long, default_value_t = 12)]
    pub k: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CelltypesArgs) -> Result<()> {
    let r = compute(&a)?;
    if a.json {
        print_json(&r)
    } else {
        print_table(&r);
        Ok(())
    }
}

/// The job of `ftri celltypes` (the Python bindings call it too).
pub fn compute(a: &CelltypesArgs) -> Result<CelltypesResult> {
    let atlas = Atlas::open(&a.atlas)?;
    let tok = atlas
        .tokenizer_path()
        .and_then(|p| Tokenizer::from_file(&p).ok());
    celltypes(&atlas, tok.as_ref(), a.k)
}

fn print_table(r: &CelltypesResult) {
    println!(
        "{} types over {} units of {} ({} unassigned; {} iterations{})",
        r.k,
        r.units,
        r.sites.join(", "),
        r.unassigned,
        r.iterations,
        if r.converged {
            ", converged"
        } else {
            ", not converged"
        }
    );
    for t in &r.types {
        let st: Vec<String> = t
            .stimuli
            .iter()
            .map(|s| format!("{:?} ({:.3})", s.token, s.contrast))
            .collect();
        let sample: Vec<&str> = t.members.iter().take(6).map(|s| s.as_str()).collect();
        println!(
            "{:>3} {:>6}  {}  [{} …]",
            t.id,
            t.size,
            st.join(" "),
            sample.join(" ")
        );
    }
}
