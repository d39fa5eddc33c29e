//! Special tokens (here the llama fixture's <s>) never become an atlas's top examples unless
//! `--include-special`; their activations still count in the statistics.

mod common;

use common::fixture;
use ftri::atlas::Atlas;
use ftri::model::Tokenizer;
use std::path::Path;
use std::process::Command;

fn record(out: &Path, corpus: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_ftri"))
        .args(["record", "--model", fixture("llama").to_str().unwrap()])
        .args([
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--sites",
            "blocks.*.mlp.hook_post,blocks.*.hook_resid_post",
            "--top-k",
            "5",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// (units whose top examples include a special token, tokens counted at site 0)
fn special_examples(atlas: &Path) -> (usize, u64) {
    let a = Atlas::open(atlas).unwrap();
    let tok = Tokenizer::from_file(&a.tokenizer_path().unwrap()).unwrap();
    let before = a.manifest.settings.context_before;
    let mut with = 0;
    for (si, info) in a.manifest.sites.iter().enumerate() {
        for u in 0..info.units {
            let r = a.unit(si, u).unwrap();
            if r.top
                .iter()
                .any(|e| e.context[before].is_some_and(|id| tok.is_special(id)))
            {
                with += 1;
            }
        }
    }
    (with, a.unit(0, 0).unwrap().count)
}

#[test]
fn special_tokens_are_not_top_examples_unless_asked() {
    let root =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("special-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let corpus = root.join("c.txt");
    let words = ["hello", "world", "again", "the", "cat", "sat"];
    let lines: Vec<String> = (0..24)
        .map(|i| {
            (0..3 + i % 4)
                .map(|j| words[(i * 5 + j * 7) % 6])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    record(&root.join("default"), &corpus, &[]);
    record(&root.join("with"), &corpus, &["--include-special"]);
    let (none, n_default) = special_examples(&root.join("default"));
    let (some, n_with) = special_examples(&root.join("with"));
    assert_eq!(
        none, 0,
        "special tokens among the default atlas's top examples"
    );
    assert!(
        some > 0,
        "no unit has <s> among its top examples even when allowed"
    );
    // the statistics count every token either way
    assert_eq!(n_default, n_with);
    assert!(
        Atlas::open(&root.join("with"))
            .unwrap()
            .manifest
            .settings
            .special_examples
    );
    let _ = std::fs::remove_dir_all(&root);
}
