//! Bad input never panics: each case gives one clear line naming the file and the problem, exit 2.

mod common;

use common::{fixture, ftri_bin};
use std::path::Path;
use std::process::Command;

/// A writable copy of the gpt2 fixture's checkpoint.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

fn run(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::run_ftri(args);
    (code, err)
}

fn expect_user_error(dir: &Path, text: &str, needles: &[&str]) {
    let out = dir.join("out.safetensors");
    let (code, err) = run(&[
        "trace",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        text,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "exit code; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    assert!(!out.exists(), "no output file on error");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = copy_fixture("gpt2");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_user_error(d.path(), "hello", &["model.safetensors", "truncated"]);
}

#[test]
fn garbage_safetensors() {
    let d = copy_fixture("gpt2");
    std::fs::write(
        d.path().join("model.safetensors"),
        b"this is not a safetensors file at all",
    )
    .unwrap();
    expect_user_error(d.path(), "hello", &["model.safetensors", "corrupt"]);
}

#[test]
fn missing_tensor() {
    let d = copy_fixture("gpt2");
    let p = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    let victim = tensors
        .keys()
        .find(|k| k.ends_with("h.1.mlp.c_fc.weight"))
        .unwrap()
        .clone();
    tensors.remove(&victim);
    candle_core::safetensors::save(&tensors, &p).unwrap();
    expect_user_error(
        d.path(),
        "hello",
        &["missing tensor", "h.1.mlp.c_fc.weight", "model.safetensors"],
    );
}

#[test]
fn shape_disagrees_with_config() {
    let d = copy_fixture("gpt2");
    edit_config(d.path(), |c| {
        c.insert("n_inner".into(), 100.into());
    });
    expect_user_error(
        d.path(),
        "hello",
        &["model.safetensors", "shape", "config.json"],
    );
}

#[test]
fn config_missing_field() {
    let d = copy_fixture("llama");
    edit_config(d.path(), |c| {
        c.remove("num_hidden_layers");
    });
    expect_user_error(
        d.path(),
        "hello",
        &["config.json", "missing field", "num_hidden_layers"],
    );
}

#[test]
fn missing_tokenizer() {
    let d = copy_fixture("gpt2");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    expect_user_error(d.path(), "hello", &["tokenizer.json", "missing"]);
}

#[test]
fn unknown_model_type() {
    let d = copy_fixture("gpt2");
    edit_config(d.path(), |c| {
        c.insert("model_type".into(), "t5".into());
    });
    expect_user_error(
        d.path(),
        "hello",
        &["config.json", "unsupported model_type `t5`", "gpt2, llama"],
    );
}

#[test]
fn text_longer_than_context() {
    let d = copy_fixture("gpt2");
    let long = "the cat sat on the mat. ".repeat(200);
    expect_user_error(d.path(), &long, &["context", "64"]);
}

#[test]
fn missing_model_dir() {
    let (code, err) = run(&["info", "--model", "/nonexistent/model/dir"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/model/dir"), "{err}");
}

#[test]
fn hub_id_not_cached_offline() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(ftri_bin())
        .args(["info", "--model", "openai-community/gpt2"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("openai-community/gpt2") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn hub_id_resolves_from_cache() {
    // the standard cache layout: models--org--name/refs/main → snapshots/<rev>/
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--gpt2");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("gpt2").join(f), snap.join(f)).unwrap();
    }
    let out = Command::new(ftri_bin())
        .args(["info", "--model", "tiny/gpt2", "--json"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "gpt2");
    assert_eq!(v["layers"], 2);
}

#[test]
fn unknown_hook_glob() {
    let d = copy_fixture("gpt2");
    let out = d.path().join("o.safetensors");
    let (code, err) = run(&[
        "trace",
        "--model",
        d.path().to_str().unwrap(),
        "--text",
        "hi",
        "--out",
        out.to_str().unwrap(),
        "--hooks",
        "blocks.9.*",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("matches no hook point"), "{err}");
}
