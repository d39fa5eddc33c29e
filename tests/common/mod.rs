//! Shared helpers for the integration tests: fixture paths, safetensors reading, tolerances.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Whether a fetched real model at `path` is there. Its absence is a skip with a notice, unless the
/// environment variable `require` is `1` (CI), which makes it a failure; `fetch` names the script.
pub fn real_model_present(path: &Path, require: &str, fetch: &str) -> bool {
    if path.exists() {
        return true;
    }
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{require}=1 but {} is absent (run {fetch})",
        path.display()
    );
    eprintln!(
        "NOTICE: skipping: {} is absent (run {fetch}; {require}=1 makes this a failure)",
        path.display()
    );
    false
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A checkpoint folder with fixture `name`'s weights and tokenizer (linked) and its config.json
/// changed by `edit`: the same network under another configuration.
pub fn fixture_with_config(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let src = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "expected.safetensors",
    ] {
        std::os::unix::fs::symlink(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(tmp.path().join("config.json"), v.to_string()).unwrap();
    tmp
}

pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn load_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// The f32 parity tolerance, relative to the largest |value| of the expected tensor.
///
/// Measured on every hook of every fixture (scripts/make_fixtures.py, transformers eager f32) and
/// of the real all-MiniLM-L6-v2: max|a − e| / max|e| is at most 1.7e-6 (MiniLM
/// `blocks.3.hook_attn_out`; the tiny fixtures stay below 1.3e-6, their median hook ~4e-7).
/// 1e-5 leaves room for other CPUs' rounding while a wrong GELU, norm epsilon or rotary offset,
/// which move a hook by 1e-4 of its scale or more, fail.
pub const PARITY_REL_TOL: f32 = 1e-5;

/// max |a − e|, the tolerance `PARITY_REL_TOL`·max|e|, and whether the first is within the
/// second with every value finite (the parity criterion).
pub fn close(actual: &Tensor, expected: &Tensor) -> (f32, f32, bool) {
    close_within(actual, expected, PARITY_REL_TOL)
}

/// `close` with the tolerance `rel_tol`·max|e|.
pub fn close_within(actual: &Tensor, expected: &Tensor, rel_tol: f32) -> (f32, f32, bool) {
    assert_eq!(actual.dims(), expected.dims(), "shape");
    let a = actual
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let e = expected
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max_diff = a
        .iter()
        .zip(&e)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let max_e = e.iter().map(|x| x.abs()).fold(0f32, f32::max);
    let tol = rel_tol * max_e;
    (
        max_diff,
        tol,
        max_diff <= tol && a.iter().all(|x| x.is_finite()),
    )
}

pub mod copy_head;
pub mod http;
pub mod planted;

/// Run the ftri binary: (exit code, stdout, stderr). Fails the test if it panicked.
pub fn run_ftri(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(ftri_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

pub fn ftri_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ftri")
}

/// The model's hook points outside attention (those the GGUF references cover; the attention
/// internals are checked against transformers in `tests/parity.rs`).
pub fn sites_outside_attention(model: &ftri::model::Model) -> Vec<ftri::model::Site> {
    use ftri::model::{Site, SiteKind};
    model
        .sites()
        .into_iter()
        .filter(|s| !matches!(s, Site::Block(_, SiteKind::Attn(_))))
        .collect()
}
