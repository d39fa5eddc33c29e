//! An atlas knows the model it was recorded on: the same config with other weights (a fine-tune,
//! another revision), another compute dtype or another --max-tokens are refused by merge and
//! --resume, and other weights by lesion --atlas and serve --model. One line, exit 2.

use ftri::atlas::Atlas;
use ftri::model::{LoadOptions, Model};
use ftri::serve::AppState;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ftri(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftri"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) {
    let o = ftri(args);
    assert!(
        o.status.success(),
        "ftri {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Exit code 2 with one error line that contains `what`.
fn refused(args: &[&str], what: &str) {
    let o = ftri(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "ftri {args:?}: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(what),
        "ftri {args:?}: {err}"
    );
}

fn root() -> PathBuf {
    let r = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&r);
    std::fs::create_dir_all(&r).unwrap();
    r
}

#[test]
fn atlases_refuse_other_weights_dtypes_and_token_limits() {
    let r = root();
    let p = |n: &str| r.join(n).to_str().unwrap().to_string();
    // two checkpoints with byte-identical config.json and tokenizer.json, different weights
    for (name, seed) in [("a", "1"), ("b", "2")] {
        ok(&[
            "plant",
            "--out",
            &p(name),
            "--seed",
            seed,
            "--neuron",
            "1.5:dog:bark",
        ]);
    }
    for f in ["config.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(r.join("a").join(f)).unwrap(),
            std::fs::read(r.join("b").join(f)).unwrap()
        );
    }
    let corpus = r.join("corpus.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| format!("w{} dog w{} w{}", i + 3, i + 50, i + 90))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let c = corpus.to_str().unwrap();
    let rec = |model: &str, out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "record",
            "--model",
            &p(model),
            "--corpus",
            c,
            "--out",
            &p(out),
            "--ctx",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    run(rec("a", "a0", &["--shard", "0/2"]));
    run(rec("b", "b1", &["--shard", "1/2"]));
    run(rec("a", "a1", &["--shard", "1/2"]));
    run(rec("a", "a1bf", &["--shard", "1/2", "--dtype", "bf16"]));
    run(rec("a", "a1max", &["--shard", "1/2", "--max-tokens", "40"]));
    // the same model merges; other weights, another dtype or token limit do not
    ok(&["merge", &p("a0"), &p("a1"), "--out", &p("whole")]);
    refused(
        &["merge", &p("a0"), &p("b1"), "--out", &p("m1")],
        "different weights",
    );
    refused(
        &["merge", &p("a0"), &p("a1bf"), "--out", &p("m2")],
        "different compute dtypes",
    );
    refused(
        &["merge", &p("a0"), &p("a1max"), "--out", &p("m3")],
        "different settings",
    );
    let m = Atlas::open(&r.join("whole")).unwrap().manifest;
    assert!(m
        .model
        .weights_fingerprint
        .as_deref()
        .unwrap()
        .starts_with("sha256-sampled:"));
    assert_eq!(m.model.dtype, "f32");

    // resume: a checkpoint of model a, resumed with model b
    let o = ftri(
        &rec("a", "part", &["--stop-after-docs", "10"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success());
    refused(
        &rec("b", "part", &["--resume"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "different weights",
    );

    // lesion --op mean with model a's atlas on model b
    let eval = r.join("eval.jsonl");
    std::fs::write(&eval, "{\"prompt\": \"w3 dog\", \"target\": \" bark\"}\n").unwrap();
    let ev = eval.to_str().unwrap().to_string();
    let lesion = |model: &str| -> Vec<String> {
        let (m, a) = (p(model), p("whole"));
        [
            "lesion",
            "--model",
            &m,
            "--neurons",
            "1.5",
            "--op",
            "mean",
            "--atlas",
            &a,
            "--eval",
            &ev,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (la, lb) = (lesion("a"), lesion("b"));
    ok(&la.iter().map(String::as_str).collect::<Vec<_>>());
    refused(
        &lb.iter().map(String::as_str).collect::<Vec<_>>(),
        "recorded on other weights",
    );

    // serve --model b over model a's atlas
    let load = |n: &str| Model::load(&p(n), &LoadOptions::default()).unwrap();
    assert!(AppState::new(Atlas::open(&r.join("whole")).unwrap(), Some(load("a"))).is_ok());
    let e = AppState::new(Atlas::open(&r.join("whole")).unwrap(), Some(load("b")))
        .err()
        .expect("serve accepted other weights");
    assert!(
        ftri::error::is_user_error(&e) && e.to_string().contains("other weights"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&r);
}
