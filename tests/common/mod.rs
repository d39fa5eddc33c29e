//! Shared helpers for the integration tests: fixture paths, safetensors reading, tolerances.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// max |a − e|, and whether it is within 1e-4 + 1e-3·max|e| (the parity criterion).
pub fn close(actual: &Tensor, expected: &Tensor) -> (f32, f32, bool) {
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
    let tol = 1e-4 + 1e-3 * max_e;
    (
        max_diff,
        tol,
        max_diff <= tol && a.iter().all(|x| x.is_finite()),
    )
}

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
