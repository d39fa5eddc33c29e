//! `--model` accepts a local checkpoint directory, a GGUF file (or a folder holding exactly one
//! `.gguf` and no config.json or safetensors), or a Hugging Face hub id (`org/name[@revision]`).
//! Hub ids resolve through the standard cache layout shared with Python's `huggingface_hub`:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.

use crate::error::user_error;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or("");
    let parts: Vec<&str> = id.split('/').collect();
    !spec.starts_with('.')
        && !spec.starts_with('/')
        && (parts.len() == 1 || parts.len() == 2)
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Download the files ftri reads into the standard cache through Python's `huggingface_hub` (the
/// hub's own client: it handles authentication tokens, mirrors and resumable transfers), and return
/// the snapshot folder.
fn download(id: &str, revision: &str) -> std::result::Result<PathBuf, String> {
    const SCRIPT: &str = "import sys\nfrom huggingface_hub import snapshot_download\n\
print(snapshot_download(sys.argv[1], revision=sys.argv[2], allow_patterns=['config.json', \
'tokenizer.json', '*.safetensors', 'model.safetensors.index.json']))";
    eprintln!("downloading {id}@{revision} from the Hugging Face hub…");
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, id, revision])
        .output()
        .map_err(|e| format!("cannot run python3 ({e}); install huggingface_hub"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("unknown error");
        return Err(last.trim().to_string());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.join("config.json").exists() {
        Ok(dir)
    } else {
        Err(format!("{} has no config.json", dir.display()))
    }
}

/// What a local `--model` path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json).
    Dir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

fn is_gguf(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Classify an existing local path: a `.gguf` file; a folder with config.json or safetensors
/// (a checkpoint folder, whatever else it holds); a folder with exactly one `.gguf` and neither
/// (that file); any other folder is a checkpoint folder (whose loader names what is missing).
pub fn local_source(path: &Path) -> Result<Source> {
    if path.is_dir() {
        let entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| user_error(format!("{}: cannot list: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let hf = entries.iter().any(|p| {
            p.file_name().is_some_and(|n| n == "config.json")
                || p.extension().is_some_and(|e| e == "safetensors")
        });
        let ggufs: Vec<&PathBuf> = entries.iter().filter(|p| is_gguf(p)).collect();
        return Ok(match (hf, ggufs.as_slice()) {
            (false, [one]) => Source::Gguf(one.to_path_buf()),
            (false, [_, _, ..]) => {
                let mut names: Vec<String> = ggufs
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                names.sort();
                return Err(user_error(format!(
                    "{}: holds {} GGUF files ({}); pass the one to load",
                    path.display(),
                    names.len(),
                    names.join(", ")
                )));
            }
            _ => Source::Dir(path.to_path_buf()),
        });
    }
    if path.is_file() && is_gguf(path) {
        return Ok(Source::Gguf(path.to_path_buf()));
    }
    if path.exists() {
        return Err(user_error(format!(
            "{}: not a directory or a .gguf file (give the checkpoint folder that holds config.json, or a GGUF file)",
            path.display()
        )));
    }
    Err(user_error(format!(
        "{}: no such file or directory",
        path.display()
    )))
}

/// Resolve `spec`: a local path (see [`local_source`]) or a hub id (a checkpoint folder).
pub fn resolve_model(spec: &str) -> Result<Source> {
    let path = Path::new(spec);
    if path.exists() || !looks_like_hub_id(spec) {
        return local_source(path);
    }
    Ok(Source::Dir(resolve_model_dir(spec)?))
}

/// Resolve `spec` to a directory holding config.json, tokenizer.json and the safetensors files.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(user_error(format!(
            "{spec}: not a directory (give the checkpoint folder that holds config.json)"
        )));
    }
    if !looks_like_hub_id(spec) {
        return Err(user_error(format!("{spec}: no such directory")));
    }
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let cache = hub_cache_dir();
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(revision.to_string())
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision))
            .ok()
            .map(|s| s.trim().to_string())
    };
    if let Some(rev) = snapshot {
        let dir = repo.join("snapshots").join(rev);
        if dir.join("config.json").exists() {
            return Ok(dir);
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    let why = if offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download(id, revision) {
            Ok(dir) => return Ok(dir),
            Err(e) => format!("download failed: {e}"),
        }
    };
    Err(user_error(format!(
        "{spec}: not a local directory and not in the Hugging Face cache at {} ({why}); \
         download it first, e.g. `huggingface-cli download {id}`, or pass a local checkpoint folder",
        cache.display()
    )))
}
