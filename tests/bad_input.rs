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

// ---------------------------------------------------------------------------------------------
// GGUF files

/// A metadata value for [`gguf_bytes`].
enum Kv {
    U32(u32),
    Str(&'static str),
    Strs(&'static [&'static str]),
}

/// A little GGUF v3 file: metadata `kv`, tensors `(name, GGUF dims, type id, data offset)`, then
/// `data` as the data section (alignment 32).
fn gguf_bytes(kv: &[(&str, Kv)], tensors: &[(&str, &[u64], u32, u64)], data: &[u8]) -> Vec<u8> {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        s(&mut b, k);
        match v {
            Kv::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::Str(x) => {
                b.extend(8u32.to_le_bytes());
                s(&mut b, x);
            }
            Kv::Strs(xs) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                for x in xs.iter() {
                    s(&mut b, x);
                }
            }
        }
    }
    for (name, dims, ty, off) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter() {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(data);
    b
}

/// The metadata of a 1-layer Llama (with or without its token list).
fn llama_kv(arch: &'static str, tokens: bool) -> Vec<(&'static str, Kv)> {
    let mut kv = vec![
        ("general.architecture", Kv::Str(arch)),
        ("llama.block_count", Kv::U32(1)),
        ("llama.embedding_length", Kv::U32(32)),
        ("llama.feed_forward_length", Kv::U32(64)),
        ("llama.attention.head_count", Kv::U32(4)),
        ("llama.context_length", Kv::U32(64)),
        ("llama.vocab_size", Kv::U32(3)),
    ];
    if tokens {
        kv.push(("tokenizer.ggml.model", Kv::Str("gpt2")));
        kv.push(("tokenizer.ggml.tokens", Kv::Strs(&["a", "b", "c"])));
    }
    kv
}

fn write_gguf(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

/// `trace` and `info` both fail with one line naming the file and `needles`, exit 2.
fn expect_gguf_error(bytes: &[u8], needles: &[&str]) {
    let (d, p) = write_gguf(bytes);
    expect_user_error(&p, "hello", &[&["model.gguf"], needles].concat());
    // the folder that holds it is read as the same file
    let (code, err) = run(&["info", "--model", d.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("model.gguf"), "{err}");
}

fn llama_fixture_gguf() -> Vec<u8> {
    std::fs::read(fixture("gguf/llama").join("model.gguf")).unwrap()
}

#[test]
fn gguf_truncated() {
    let bytes = llama_fixture_gguf();
    // in the tensor data, and in the metadata
    expect_gguf_error(&bytes[..bytes.len() - 100], &["truncated", "past the end"]);
    expect_gguf_error(&bytes[..200], &["truncated"]);
    expect_gguf_error(&bytes[..6], &["truncated"]);
}

#[test]
fn gguf_bad_magic_or_version() {
    let mut bytes = llama_fixture_gguf();
    bytes[..4].copy_from_slice(b"GGML");
    expect_gguf_error(&bytes, &["not a GGUF file"]);
    let mut bytes = llama_fixture_gguf();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    expect_gguf_error(&bytes, &["GGUF version 7 is not supported"]);
}

#[test]
fn gguf_absurd_counts_do_not_allocate() {
    let mut bytes = gguf_bytes(&llama_kv("llama", true), &[], &[]);
    // metadata count u64::MAX / 2
    bytes[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    expect_gguf_error(&bytes, &["metadata count"]);
}

#[test]
fn gguf_tensor_data_past_the_end() {
    let bytes = gguf_bytes(
        &llama_kv("llama", true),
        &[("token_embd.weight", &[32, 3], 0, 1 << 20)],
        &[0; 32 * 3 * 4],
    );
    expect_gguf_error(&bytes, &["token_embd.weight", "past the end"]);
}

#[test]
fn gguf_unsupported_quant_type() {
    // IQ2_XXS (type 16)
    let bytes = gguf_bytes(
        &llama_kv("llama", true),
        &[("blk.0.attn_q.weight", &[256, 32], 16, 0)],
        &[0; 4096],
    );
    expect_gguf_error(
        &bytes,
        &["blk.0.attn_q.weight", "IQ2_XXS", "cannot dequantize"],
    );
}

#[test]
fn gguf_unsupported_architecture() {
    let bytes = gguf_bytes(&llama_kv("mamba", true), &[], &[]);
    expect_gguf_error(
        &bytes,
        &[
            "unsupported GGUF architecture `mamba`",
            "llama, qwen2, gemma3",
        ],
    );
}

#[test]
fn gguf_missing_tokenizer_metadata() {
    let bytes = gguf_bytes(&llama_kv("llama", false), &[], &[]);
    expect_gguf_error(&bytes, &["tokenizer.ggml.tokens"]);
}

#[test]
fn gguf_missing_config_metadata() {
    let mut kv = llama_kv("llama", true);
    kv.retain(|(k, _)| *k != "llama.block_count");
    let bytes = gguf_bytes(&kv, &[], &[]);
    expect_gguf_error(&bytes, &["missing metadata `llama.block_count`"]);
}

#[test]
fn gguf_tensor_of_the_wrong_shape() {
    let mut bytes = llama_fixture_gguf();
    // claim 5 layers: the file has 2, so blk.2 is missing (named with the file)
    let at = bytes
        .windows(17)
        .position(|w| w == b"llama.block_count")
        .unwrap();
    // key, then type u32 (4), then the value
    let v = at + 17 + 4;
    bytes[v..v + 4].copy_from_slice(&5u32.to_le_bytes());
    expect_gguf_error(&bytes, &["missing tensor `model.layers.2"]);
    // claim a wider model: embeddings have the wrong shape
    let mut bytes = llama_fixture_gguf();
    let at = bytes
        .windows(22)
        .position(|w| w == b"llama.embedding_length")
        .unwrap();
    let v = at + 22 + 4;
    bytes[v..v + 4].copy_from_slice(&128u32.to_le_bytes());
    expect_gguf_error(&bytes, &["token_embd.weight", "has shape"]);
}
