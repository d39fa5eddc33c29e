//! The tokenizer of a GGUF file, built from its metadata, against transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)`: token ids with and without the default
//! special tokens, which tokens are special or added, and the text of single tokens, for the
//! references in tests/fixtures/gguf_tokenizer/ (scripts/make_gguf_tokenizer_refs.py).
//!
//! The GGUF files come from scripts/fetch_gguf.sh. A test whose file is absent is skipped with a
//! NOTICE, unless `FTRI_REQUIRE_GGUF=1` (CI), which makes the absence a failure.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use ftri::error::is_user_error;
use ftri::model::gguf::tokenizer::from_metadata;
use ftri::model::Tokenizer;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn models_dir() -> PathBuf {
    std::env::var("FTRI_GGUF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// The metadata of GGUF `file`, or None (after a NOTICE) when it is absent and not required.
fn metadata(file: &str) -> Option<(PathBuf, HashMap<String, Value>)> {
    let path = models_dir().join(file);
    if !path.exists() {
        assert!(
            std::env::var("FTRI_REQUIRE_GGUF").as_deref() != Ok("1"),
            "FTRI_REQUIRE_GGUF=1 but {} is absent (run scripts/fetch_gguf.sh)",
            path.display()
        );
        eprintln!("NOTICE: skipping the GGUF tokenizer test of {file}: {} is absent (run scripts/fetch_gguf.sh; FTRI_REQUIRE_GGUF=1 makes this a failure)", path.display());
        return None;
    }
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{file}: {e}"));
    Some((path, content.metadata))
}

/// The metadata edits of a variant case, as the script applies them: rename the architecture
/// (and its `<arch>.*` keys), then set keys.
fn apply_variant(
    meta: &HashMap<String, Value>,
    case: &serde_json::Value,
) -> HashMap<String, Value> {
    let mut meta = meta.clone();
    if let Some(arch) = case["architecture"].as_str() {
        let Some(Value::String(old)) = meta.get("general.architecture").cloned() else {
            panic!("no general.architecture")
        };
        let prefix = format!("{old}.");
        meta = meta
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(&prefix) {
                Some(rest) => (format!("{arch}.{rest}"), v),
                None => (k, v),
            })
            .collect();
        meta.insert("general.architecture".into(), Value::String(arch.into()));
    }
    for (k, v) in case["set"].as_object().unwrap() {
        let v = match v {
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::String(s) => Value::String(s.clone()),
            other => panic!("unexpected value {other} for {k}"),
        };
        meta.insert(k.clone(), v);
    }
    meta
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// CPU time of this process, all threads.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Check every case of the references made from `file`.
fn check_cases_of(file: &str) {
    let Some((path, meta)) = metadata(file) else {
        return;
    };
    let dir = common::fixture("gguf_tokenizer");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut checked = 0;
    let mut failures = vec![];
    for ref_path in names {
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ref_path).unwrap()).unwrap();
        if case["file"] != file {
            continue;
        }
        let name = ref_path.file_stem().unwrap().to_string_lossy().to_string();
        let meta = apply_variant(&meta, &case);
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let inner = from_metadata(&meta, &path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // CPU time too: on a loaded machine the wall time says little (run with --test-threads=1)
        eprintln!(
            "{name}: tokenizer built in {:.0} ms ({:.0} ms of CPU)",
            start.elapsed().as_secs_f64() * 1e3,
            (cpu_seconds() - cpu) * 1e3
        );
        let tok = Tokenizer::from_tokenizer(inner);
        let mut fail = |what: String| failures.push(format!("{name}: {what}"));

        let texts = case["texts"].as_array().unwrap();
        for (i, text) in texts.iter().enumerate() {
            let text = text.as_str().unwrap();
            let want = ids(&case["ids"][i]);
            let got = tok.encode(text).unwrap();
            if got != want {
                fail(format!(
                    "{text:?} with specials: got {got:?}, want {want:?}"
                ));
            }
            let want = ids(&case["ids_plain"][i]);
            let got = tok.encode_plain(text).unwrap();
            if got != want {
                fail(format!("{text:?} plain: got {got:?}, want {want:?}"));
            }
        }

        let want: BTreeSet<u32> = ids(&case["special_ids"]).into_iter().collect();
        let got: BTreeSet<u32> = tok.special_ids().iter().copied().collect();
        if got != want {
            let extra: Vec<_> = got.difference(&want).take(10).collect();
            let missing: Vec<_> = want.difference(&got).take(10).collect();
            fail(format!(
                "special ids: {} vs {} (extra {extra:?}, missing {missing:?})",
                got.len(),
                want.len()
            ));
        }
        for id in ids(&case["added_ids"]) {
            if tok.is_special(id) {
                fail(format!("added token {id} is special"));
            }
        }
        // padding uses a special token of the vocabulary (Gemma's <pad> 0, SmolLM2's <|endoftext|> 0)
        if !tok.is_special(tok.pad_id()) {
            fail(format!("pad id {} is not a special token", tok.pad_id()));
        }
        let want_vocab = case["vocab_size"].as_u64().unwrap() as usize;
        if tok.vocab_size() != want_vocab {
            fail(format!("vocab size {} vs {want_vocab}", tok.vocab_size()));
        }

        for pair in case["decode"].as_array().unwrap() {
            let id = pair[0].as_u64().unwrap() as u32;
            let want = pair[1].as_str().unwrap();
            let got = tok.token_text(id);
            if got != want {
                fail(format!("decode of {id}: got {got:?}, want {want:?}"));
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no references for {file} in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} mismatches with transformers:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

#[test]
fn smollm2_matches_transformers() {
    check_cases_of("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_matches_transformers() {
    check_cases_of("gemma-3-270m-q4_k_m.gguf");
}

fn tiny_metadata(model: &str) -> HashMap<String, Value> {
    let tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab"];
    HashMap::from([
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String(model.into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                tokens
                    .iter()
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(
                [0.0, 0.0, 0.0, -1.0, -2.0, -3.0]
                    .iter()
                    .map(|&s| Value::F32(s))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array([2, 3, 3, 1, 1, 1].iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
    ])
}

#[test]
fn tiny_sentencepiece_vocabulary() {
    let tok = from_metadata(&tiny_metadata("llama"), Path::new("tiny.gguf")).unwrap();
    let tok = Tokenizer::from_tokenizer(tok);
    // BOS by default for a SentencePiece vocabulary; "ab" merges whole ("▁" is not in the vocabulary,
    // so the prefix falls back to bytes it lacks too and becomes <unk>)
    let ids = tok.encode("ab").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&5));
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2));
    assert!(!tok.is_special(3));
}

#[test]
fn missing_tokens_is_a_user_error_naming_the_file() {
    let mut meta = tiny_metadata("llama");
    meta.remove("tokenizer.ggml.tokens");
    let err = from_metadata(&meta, Path::new("/x/notok.gguf")).unwrap_err();
    assert!(is_user_error(&err), "{err:#}");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/x/notok.gguf") && msg.contains("tokenizer.ggml.tokens"),
        "{msg}"
    );
}

#[test]
fn unknown_tokenizer_model_is_a_user_error_naming_the_file() {
    for model in ["rwkv", ""] {
        let mut meta = tiny_metadata(model);
        if model.is_empty() {
            meta.remove("tokenizer.ggml.model");
        }
        let err = from_metadata(&meta, Path::new("/x/odd.gguf")).unwrap_err();
        assert!(is_user_error(&err), "{err:#}");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/x/odd.gguf") && msg.contains("unsupported tokenizer"),
            "{msg}"
        );
    }
}
