//! `ftri record` / `merge` / `show` / `atlas` against a brute-force computation that holds every
//! activation in memory, and the invariances the atlas promises (batch size, threads, shards,
//! resume, corpus format).

mod common;

use ftri::atlas::Atlas;
use ftri::model::{HookSet, LoadOptions, Model, Site};
use ftri::record::RecordState;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CTX: usize = 16;
const K: usize = 5;
const BEFORE: usize = 3;
const AFTER: usize = 2;
const SITES: &str = "blocks.*.mlp.hook_post,blocks.0.hook_resid_post";

fn run(args: &[&str]) -> (i32, String, String) {
    common::run_ftri(args)
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "ftri {args:?} failed: {err}");
    out
}

fn user_err(args: &[&str], needles: &[&str]) {
    let (code, _, err) = run(args);
    assert_eq!(code, 2, "exit code for {args:?}; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

/// A small random GPT-2 with the word-level tokenizer (`w1 w2 …`), shared by all tests.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ftri-record-test-model");
        let _ = std::fs::remove_dir_all(&dir);
        {
            ok(&[
                "plant",
                "--arch",
                "gpt2",
                "--layers",
                "2",
                "--d-model",
                "64",
                "--heads",
                "4",
                "--d-mlp",
                "128",
                "--vocab",
                "300",
                "--ctx",
                "64",
                "--seed",
                "7",
                "--out",
                dir.to_str().unwrap(),
            ]);
        }
        dir
    })
}

/// Documents of 1..40 words (so some span three --ctx 16 windows), with blank lines between.
fn docs() -> Vec<String> {
    let mut s: u64 = 12345;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    (0..24)
        .map(|i| {
            if i == 5 || i == 17 {
                return if i == 5 { String::new() } else { "   ".into() };
            }
            let n = 1 + next() % 40;
            (0..n)
                .map(|_| format!("w{}", 1 + next() % 299))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn write_text_corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.txt");
    std::fs::write(&p, docs().join("\n") + "\n").unwrap();
    p
}

fn record(corpus: &[&Path], out: &Path, extra: &[&str]) -> String {
    let k = K.to_string();
    let ctx = CTX.to_string();
    let (b, a) = (BEFORE.to_string(), AFTER.to_string());
    let mut args = vec![
        "record",
        "--model",
        model_dir().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sites",
        SITES,
        "--top-k",
        &k,
        "--ctx",
        &ctx,
        "--context-before",
        &b,
        "--context-after",
        &a,
        "--hist-bins",
        "16",
        "--hist-range=-2,2",
        "--corpus",
    ];
    args.extend(corpus.iter().map(|p| p.to_str().unwrap()));
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "record failed: {err}");
    err
}

fn load(dir: &Path) -> RecordState {
    Atlas::open(dir).unwrap().load_state().unwrap()
}

const TOL: f64 = 1e-4;

/// Two recordings of the same tokens agree: moments within float tolerance, counts exactly,
/// histograms and fire counts up to values sitting on a bin edge, and top-k ranks with equal
/// activations (the identities may differ only where two activations tie within tolerance).
fn assert_same(a: &RecordState, b: &RecordState) {
    assert_eq!(a.counts.tokens, b.counts.tokens, "tokens");
    assert_eq!(a.counts.docs, b.counts.docs, "docs");
    assert_eq!(a.sites.len(), b.sites.len());
    let mut identity_diffs = 0;
    for (x, y) in a.sites.iter().zip(&b.sites) {
        assert_eq!(x.name, y.name);
        for u in 0..x.units {
            assert_eq!(x.count[u], y.count[u], "{} {u} count", x.name);
            let close = |p: f64, q: f64| (p - q).abs() <= TOL * (1.0 + q.abs());
            assert!(
                close(x.mean[u], y.mean[u]),
                "{} {u} mean {} vs {}",
                x.name,
                x.mean[u],
                y.mean[u]
            );
            assert!(
                close(x.var(u), y.var(u)),
                "{} {u} var {} vs {}",
                x.name,
                x.var(u),
                y.var(u)
            );
            assert!(
                close(x.min[u] as f64, y.min[u] as f64),
                "{} {u} min",
                x.name
            );
            assert!(
                close(x.max[u] as f64, y.max[u] as f64),
                "{} {u} max",
                x.name
            );
            assert!(x.fire[u].abs_diff(y.fire[u]) <= 1, "{} {u} fire", x.name);
            let s = x.hist.len() / x.units;
            let l1: u64 = (0..s)
                .map(|i| x.hist[u * s + i].abs_diff(y.hist[u * s + i]))
                .sum();
            assert!(l1 <= 2, "{} {u} hist", x.name);
            for r in 0..K {
                let i = u * K + r;
                assert!(
                    close(x.top_act[i] as f64, y.top_act[i] as f64),
                    "{} {u} rank {r} act {} vs {}",
                    x.name,
                    x.top_act[i],
                    y.top_act[i]
                );
                if (x.top_doc[i], x.top_pos[i]) != (y.top_doc[i], y.top_pos[i]) {
                    identity_diffs += 1;
                }
            }
        }
    }
    // Ties within tolerance are vanishingly rare in a random network: almost all must match.
    assert!(
        identity_diffs <= 2,
        "{identity_diffs} top-k identities differ"
    );
}

/// Every activation of every unit, computed window by window with nothing streamed.
struct Brute {
    /// site → unit → (activation, doc, pos)
    acts: Vec<Vec<Vec<(f32, u64, usize)>>>,
    doc_tokens: Vec<Vec<u32>>,
}

fn brute_force() -> Brute {
    let m = Model::load(model_dir().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut sites: Vec<Site> = (0..2)
        .map(|l| Site::parse(&format!("blocks.{l}.mlp.hook_post")).unwrap())
        .collect();
    sites.insert(0, Site::parse("blocks.0.hook_resid_post").unwrap());
    sites.sort();
    let mut acts: Vec<Vec<Vec<(f32, u64, usize)>>> = sites
        .iter()
        .map(|s| vec![Vec::new(); m.site_dim(*s)])
        .collect();
    let mut doc_tokens = Vec::new();
    for (d, text) in docs().iter().enumerate() {
        let ids = if text.trim().is_empty() {
            vec![]
        } else {
            m.tokenizer.encode(text).unwrap()
        };
        for start in (0..ids.len()).step_by(CTX) {
            let w = ids[start..(start + CTX).min(ids.len())].to_vec();
            let batch = m.batch(std::slice::from_ref(&w)).unwrap();
            let mut hooks = HookSet::capturing(sites.iter().copied());
            m.forward(&batch, &mut hooks).unwrap();
            for (si, s) in sites.iter().enumerate() {
                let x = hooks
                    .take(*s)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for (t, row) in x.iter().enumerate() {
                    for (u, &v) in row.iter().enumerate() {
                        acts[si][u].push((v, d as u64, start + t));
                    }
                }
            }
        }
        doc_tokens.push(ids);
    }
    Brute { acts, doc_tokens }
}

#[test]
fn record_matches_brute_force() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let out = tmp.path().join("atlas");
    let err = record(&[&corpus], &out, &["--batch", "3"]);
    assert!(
        err.contains("skipped 2 empty"),
        "summary reports skips: {err}"
    );
    let atlas = Atlas::open(&out).unwrap();
    let st = atlas.load_state().unwrap();
    let bf = brute_force();
    let names: Vec<&str> = st.sites.iter().map(|s| s.name.as_str()).collect();
    // in the order the forward pass reaches them
    assert_eq!(
        names,
        [
            "blocks.0.mlp.hook_post",
            "blocks.0.hook_resid_post",
            "blocks.1.mlp.hook_post"
        ]
    );
    let n_tokens: usize = bf.doc_tokens.iter().map(|d| d.len()).sum();
    assert_eq!(st.counts.tokens as usize, n_tokens);
    assert_eq!(st.counts.docs, 22);
    let hist = atlas.manifest.settings.hist;
    for (s, units) in st.sites.iter().zip(&bf.acts) {
        for (u, all) in units.iter().enumerate() {
            let n = all.len() as f64;
            let mean = all.iter().map(|a| a.0 as f64).sum::<f64>() / n;
            let var = all.iter().map(|a| (a.0 as f64 - mean).powi(2)).sum::<f64>() / n;
            assert_eq!(s.count[u] as usize, all.len());
            assert!(
                (s.mean[u] - mean).abs() < 1e-4 * (1.0 + mean.abs()),
                "{} {u} mean",
                s.name
            );
            assert!(
                (s.var(u) - var).abs() < 1e-4 * (1.0 + var),
                "{} {u} var",
                s.name
            );
            let mn = all.iter().map(|a| a.0).fold(f32::INFINITY, f32::min);
            let mx = all.iter().map(|a| a.0).fold(f32::NEG_INFINITY, f32::max);
            assert!((s.min[u] - mn).abs() < 1e-4 && (s.max[u] - mx).abs() < 1e-4);
            let fire = all.iter().filter(|a| a.0 > 0.0).count() as u64;
            assert!(s.fire[u].abs_diff(fire) <= 1, "{} {u} fire", s.name);
            let slots = hist.bins + 2;
            let mut h = vec![0u64; slots];
            let w = (hist.hi - hist.lo) / hist.bins as f64;
            for a in all {
                let x = a.0 as f64;
                let i = if x < hist.lo {
                    0
                } else if x >= hist.hi {
                    slots - 1
                } else {
                    1 + ((x - hist.lo) / w) as usize
                };
                h[i] += 1;
            }
            let l1: u64 = (0..slots)
                .map(|i| h[i].abs_diff(s.hist[u * slots + i]))
                .sum();
            assert!(
                l1 <= 2,
                "{} {u} hist {:?} vs {:?}",
                s.name,
                &s.hist[u * slots..(u + 1) * slots],
                h
            );
            // top-k: sort everything, ties by earlier (doc, pos)
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            for (r, want) in sorted.iter().take(K).enumerate() {
                let i = u * K + r;
                let (act, doc, pos) = (s.top_act[i], s.top_doc[i] as u64, s.top_pos[i] as usize);
                assert!(
                    (act - want.0).abs() < 1e-4,
                    "{} {u} rank {r}: {act} vs {}",
                    s.name,
                    want.0
                );
                // the recorded example really has that activation
                let own = all.iter().find(|a| a.1 == doc && a.2 == pos).unwrap().0;
                assert!((own - act).abs() < 1e-4);
                // and its context is the document's tokens around it
                let toks = &bf.doc_tokens[doc as usize];
                let l = BEFORE + 1 + AFTER;
                for c in 0..l {
                    let p = pos as isize - BEFORE as isize + c as isize;
                    let want = if p >= 0 && (p as usize) < toks.len() {
                        toks[p as usize]
                    } else {
                        u32::MAX
                    };
                    assert_eq!(
                        s.top_ctx[i * l + c],
                        want,
                        "{} {u} rank {r} ctx {c}",
                        s.name
                    );
                }
            }
        }
    }
}

#[test]
fn batch_size_and_threads_do_not_change_the_atlas() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let base = tmp.path().join("b1");
    record(&[&corpus], &base, &["--batch", "1", "--threads", "1"]);
    let base = load(&base);
    for (b, t) in [("3", "2"), ("7", "1"), ("7", "2")] {
        let out = tmp.path().join(format!("b{b}t{t}"));
        record(&[&corpus], &out, &["--batch", b, "--threads", t]);
        assert_same(&base, &load(&out));
    }
}

#[test]
fn merged_shards_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let single = tmp.path().join("single");
    record(&[&corpus], &single, &["--batch", "4"]);
    let mut shards = Vec::new();
    for i in 0..4 {
        let out = tmp.path().join(format!("shard{i}"));
        let spec = format!("{i}/4");
        record(&[&corpus], &out, &["--batch", "4", "--shard", &spec]);
        shards.push(out);
    }
    // Fewer than all shards: still marked as a shard set.
    let part = tmp.path().join("part");
    ok(&[
        "merge",
        shards[0].to_str().unwrap(),
        shards[2].to_str().unwrap(),
        "--out",
        part.to_str().unwrap(),
    ]);
    let pm = Atlas::open(&part).unwrap().manifest;
    assert_eq!(pm.shard.unwrap().indices, vec![0, 2]);

    let merged = tmp.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().rev().map(|p| p.to_str().unwrap()));
    args.extend(["--out", merged.to_str().unwrap()]);
    ok(&args);
    let m = Atlas::open(&merged).unwrap().manifest;
    assert!(m.shard.is_none() && m.complete);
    assert_same(&load(&single), &load(&merged));

    // the same shard twice would count its tokens twice
    let again = tmp.path().join("again");
    user_err(
        &[
            "merge",
            shards[1].to_str().unwrap(),
            shards[1].to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        &["overlaps"],
    );
    // different settings
    let other = tmp.path().join("other");
    ok(&[
        "record",
        "--model",
        model_dir().to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--sites",
        SITES,
        "--ctx",
        "16",
        "--shard",
        "1/4",
    ]);
    user_err(
        &[
            "merge",
            shards[0].to_str().unwrap(),
            other.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        &["cannot merge", "different settings"],
    );
    assert!(!again.exists());
}

#[test]
fn resume_after_interruption_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let full = tmp.path().join("full");
    record(&[&corpus], &full, &["--batch", "3"]);
    let out = tmp.path().join("resumed");
    let err = record(
        &[&corpus],
        &out,
        &["--batch", "3", "--stop-after-docs", "7"],
    );
    assert!(err.contains("--resume"), "{err}");
    assert!(
        !out.exists(),
        "an interrupted run leaves no finished-looking atlas"
    );
    let partial = tmp.path().join("resumed.partial");
    let cp = Atlas::open(&partial).unwrap();
    assert!(!cp.manifest.complete);
    assert_eq!(cp.manifest.counts.docs, 7);
    let err = record(&[&corpus], &out, &["--batch", "3", "--resume"]);
    assert!(err.contains("resuming"), "{err}");
    assert!(!partial.exists(), "checkpoint removed once finished");
    assert_same(&load(&full), &load(&out));
    // an unfinished checkpoint cannot be merged
    let out2 = tmp.path().join("r2");
    record(
        &[&corpus],
        &out2,
        &["--stop-after-docs", "3", "--shard", "0/2"],
    );
    let again = tmp.path().join("again");
    user_err(
        &[
            "merge",
            tmp.path().join("r2.partial").to_str().unwrap(),
            full.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        &["unfinished"],
    );
}

fn write_parquet(path: &Path, column: &str, texts: &[String]) {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let col: ArrayRef = Arc::new(StringArray::from(
        texts.iter().map(|s| Some(s.as_str())).collect::<Vec<_>>(),
    ));
    let ids: ArrayRef = Arc::new(Int64Array::from(
        (0..texts.len() as i64).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_from_iter([("id", ids), (column, col)]).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn every_corpus_format_gives_the_same_atlas() {
    let tmp = tempfile::tempdir().unwrap();
    let text = write_text_corpus(tmp.path());
    let docs = docs();
    // folder: one file per document, in name order
    let dir = tmp.path().join("docs");
    std::fs::create_dir(&dir).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:03}.txt")), d).unwrap();
    }
    std::fs::write(dir.join("ignored.md"), "w1 w2").unwrap();
    let jsonl = tmp.path().join("c.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({"id": 1, "body": d}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n\n").unwrap();
    let pq = tmp.path().join("c.parquet");
    write_parquet(&pq, "body", &docs);

    let base = tmp.path().join("a_text");
    record(&[&text], &base, &[]);
    let base = load(&base);
    for (name, input, extra) in [
        ("a_dir", &dir, vec![]),
        ("a_jsonl", &jsonl, vec!["--text-field", "body"]),
        ("a_parquet", &pq, vec!["--text-field", "body"]),
    ] {
        let out = tmp.path().join(name);
        record(&[input], &out, &extra);
        assert_same(&base, &load(&out));
    }
    // several inputs are read one after another, numbering documents on
    let two = tmp.path().join("two");
    record(&[&text, &jsonl], &two, &["--text-field", "body"]);
    let st = load(&two);
    assert_eq!(st.counts.docs, 2 * base.counts.docs);
    assert_eq!(st.counts.next_doc, 2 * docs.len() as u64);
    // wrong field names are reported with the file
    let out = tmp.path().join("bad");
    user_err(
        &[
            "record",
            "--model",
            model_dir().to_str().unwrap(),
            "--corpus",
            jsonl.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["c.jsonl:1", "no field `text`"],
    );
    user_err(
        &[
            "record",
            "--model",
            model_dir().to_str().unwrap(),
            "--corpus",
            pq.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["c.parquet", "no column `text`", "body"],
    );
}

#[test]
fn show_and_atlas_present_a_unit() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let out = tmp.path().join("atlas");
    record(&[&corpus], &out, &[]);
    let a = out.to_str().unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["show", "--atlas", a, "--neuron", "1.17", "--json"])).unwrap();
    assert_eq!(j["neuron"], "1.17");
    let st = load(&out);
    let s = &st.sites[2];
    assert_eq!(j["count"].as_u64().unwrap(), s.count[17]);
    assert!((j["mean"].as_f64().unwrap() - s.mean[17]).abs() < 1e-12);
    assert!((j["std"].as_f64().unwrap() - s.var(17).sqrt()).abs() < 1e-12);
    assert_eq!(
        j["fire_rate"].as_f64().unwrap(),
        s.fire[17] as f64 / s.count[17] as f64
    );
    assert_eq!(j["histogram"]["counts"].as_array().unwrap().len(), 16);
    let top = j["top"].as_array().unwrap();
    assert_eq!(top.len(), K);
    let acts: Vec<f64> = top
        .iter()
        .map(|t| t["activation"].as_f64().unwrap())
        .collect();
    assert!(acts.windows(2).all(|w| w[0] >= w[1]), "sorted: {acts:?}");
    // the marked token is the token at (doc, pos) of the corpus
    let d = top[0]["doc"].as_u64().unwrap() as usize;
    let p = top[0]["pos"].as_u64().unwrap() as usize;
    let word = docs()[d].split_whitespace().nth(p).unwrap().to_string();
    assert_eq!(top[0]["token"], word.as_str());
    assert!(top[0]["context"]
        .as_str()
        .unwrap()
        .contains(&format!("«{word}»")));
    // other hook points by HOOK:N
    let r: serde_json::Value = serde_json::from_str(&ok(&[
        "show",
        "--atlas",
        a,
        "--neuron",
        "blocks.0.hook_resid_post:3",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["count"].as_u64().unwrap(), st.counts.tokens);
    let text = ok(&["show", "--atlas", a, "--neuron", "0.5"]);
    assert!(
        text.contains("neuron 0.5") && text.contains("top 5 examples"),
        "{text}"
    );

    let sum: serde_json::Value =
        serde_json::from_str(&ok(&["atlas", "--atlas", a, "--json"])).unwrap();
    let sites = sum["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 3);
    let l1 = &sites[2];
    let rate: f64 = (0..s.units)
        .map(|u| s.fire[u] as f64 / s.count[u] as f64)
        .sum::<f64>()
        / s.units as f64;
    assert!((l1["mean_fire_rate"].as_f64().unwrap() - rate).abs() < 1e-12);
    assert_eq!(
        l1["dead"].as_u64().unwrap() as usize,
        s.fire.iter().filter(|&&f| f == 0).count()
    );
    let best = (0..s.units)
        .max_by(|&x, &y| {
            (s.max[x] as f64 / s.var(x).sqrt()).total_cmp(&(s.max[y] as f64 / s.var(y).sqrt()))
        })
        .unwrap();
    assert_eq!(l1["selective"][0]["neuron"], format!("1.{best}"));
    assert!(ok(&["atlas", "--atlas", a]).contains("blocks.1.mlp.hook_post"));

    // bad queries
    user_err(
        &["show", "--atlas", a, "--neuron", "1.128"],
        &["out of range", "128 units"],
    );
    user_err(
        &["show", "--atlas", a, "--neuron", "5.1"],
        &["blocks.5.mlp.hook_post", "not recorded"],
    );
    user_err(&["show", "--atlas", a, "--neuron", "x"], &["bad neuron"]);
    user_err(
        &[
            "show",
            "--atlas",
            tmp.path().join("nope").to_str().unwrap(),
            "--neuron",
            "1.1",
        ],
        &["nope"],
    );
}

#[test]
fn bad_record_input_is_one_line_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_dir().to_str().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let c = corpus.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n\n").unwrap();
    user_err(
        &[
            "record",
            "--model",
            m,
            "--corpus",
            empty.to_str().unwrap(),
            "--out",
            o,
        ],
        &["empty.txt", "no text", "3 empty"],
    );
    user_err(
        &[
            "record",
            "--model",
            m,
            "--corpus",
            "/no/such/file.txt",
            "--out",
            o,
        ],
        &["/no/such/file.txt"],
    );
    user_err(
        &[
            "record", "--model", m, "--corpus", c, "--out", o, "--shard", "4/4",
        ],
        &["--shard `4/4`"],
    );
    user_err(
        &[
            "record", "--model", m, "--corpus", c, "--out", o, "--shard", "x",
        ],
        &["--shard"],
    );
    user_err(
        &[
            "record", "--model", m, "--corpus", c, "--out", o, "--ctx", "65",
        ],
        &["--ctx 65"],
    );
    user_err(
        &[
            "record", "--model", m, "--corpus", c, "--out", o, "--sites", "nothing*",
        ],
        &["matches no hook point"],
    );
    let bad_json = tmp.path().join("bad.jsonl");
    std::fs::write(&bad_json, "{\"text\": \"w1\"}\n{oops\n").unwrap();
    user_err(
        &[
            "record",
            "--model",
            m,
            "--corpus",
            bad_json.to_str().unwrap(),
            "--out",
            o,
        ],
        &["bad.jsonl:2", "not valid JSON"],
    );
    let no_txt = tmp.path().join("folder");
    std::fs::create_dir(&no_txt).unwrap();
    user_err(
        &[
            "record",
            "--model",
            m,
            "--corpus",
            no_txt.to_str().unwrap(),
            "--out",
            o,
        ],
        &["no .txt files"],
    );
    assert!(!out.exists());
    // non-UTF-8 lines are skipped and counted
    let mixed = tmp.path().join("mixed.txt");
    std::fs::write(&mixed, b"w1 w2 w3\n\xff\xfe w4\nw5 w6\n").unwrap();
    let err = record(&[&mixed], &out, &[]);
    assert!(err.contains("1 non-UTF-8"), "{err}");
    let st = load(&out);
    assert_eq!(
        (st.counts.docs, st.counts.tokens, st.counts.skipped_not_utf8),
        (2, 5, 1)
    );
    // an existing atlas is not overwritten without --force
    user_err(
        &["record", "--model", m, "--corpus", c, "--out", o],
        &["already exists"],
    );
    record(&[&corpus], &out, &["--force"]);
    assert_eq!(load(&out).counts.docs, 22);
}

/// The test model with its token embeddings (tied to the unembedding) scaled by 1000, so that the
/// residual stream lies far outside the old fixed histogram range -4..12.
fn scaled_model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = model_dir();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ftri-record-test-model-x1000");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in st.tensors() {
            let mut data = t.data().to_vec();
            if name.contains("wte") {
                for c in data.chunks_exact_mut(4) {
                    let v = f32::from_le_bytes(c.try_into().unwrap()) * 1000.0;
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
            owned.push((name, t.dtype(), t.shape().to_vec(), data));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = owned
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        dir
    })
}

/// `ftri record` on the scaled model with automatic histogram ranges (no --hist-range).
fn record_auto(corpus: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "record",
        "--model",
        scaled_model_dir().to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sites",
        "blocks.*.mlp.hook_post,blocks.*.hook_resid_post",
        "--ctx",
        "16",
        "--top-k",
        "5",
        "--hist-bins",
        "16",
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "record failed: {err}");
    err
}

/// Per site: the fraction of tokens counted in the underflow and overflow bins.
fn tail_fractions(st: &RecordState) -> Vec<(String, f64)> {
    st.sites
        .iter()
        .map(|s| {
            let slots = s.hist.len() / s.units;
            let tails: u64 = (0..s.units)
                .map(|u| s.hist[u * slots] + s.hist[u * slots + slots - 1])
                .sum();
            let all: u64 = s.count.iter().sum();
            (s.name.clone(), tails as f64 / all as f64)
        })
        .collect()
}

#[test]
fn automatic_histogram_ranges_fit_each_site() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    // the old fixed range: the scaled residual stream falls mostly in the tails
    let fixed = tmp.path().join("fixed");
    record_auto(&corpus, &fixed, &["--hist-range=-4,12"]);
    let tails = tail_fractions(&load(&fixed));
    let resid = tails
        .iter()
        .find(|t| t.0 == "blocks.1.hook_resid_post")
        .unwrap();
    assert!(resid.1 > 0.5, "{tails:?}");

    let auto = tmp.path().join("auto");
    record_auto(&corpus, &auto, &[]);
    let atlas = Atlas::open(&auto).unwrap();
    let m = &atlas.manifest;
    assert!(m.settings.hist_auto);
    let st = atlas.load_state().unwrap();
    for (name, f) in tail_fractions(&st) {
        assert!(f < 0.005, "{name}: {f} of the tokens in the tails");
    }
    let mut ranges = Vec::new();
    for (si, s) in st.sites.iter().enumerate() {
        let h = atlas.hist_spec(si);
        assert_eq!(m.sites[si].hist, Some(h));
        assert_eq!(s.spec, h);
        assert_eq!(h.bins, 16);
        // the range covers most of what was seen, and is not much wider
        let lo = s.min.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        let hi = s.max.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        assert!(
            h.hi - h.lo < 4.0 * (hi - lo),
            "{}: {h:?} for {lo}..{hi}",
            s.name
        );
        ranges.push((s.name.clone(), h.lo, h.hi));
    }
    let r = |n: &str| ranges.iter().find(|r| r.0 == n).unwrap().clone();
    let resid = r("blocks.1.hook_resid_post");
    assert!(resid.1 < -4.0 || resid.2 > 12.0, "{ranges:?}");
    let mlp = r("blocks.1.mlp.hook_post");
    assert!(mlp.2 - mlp.1 < 4.0, "{ranges:?}");
    // `show` presents each unit against its site's bins
    let a = auto.to_str().unwrap();
    for (neuron, (_, lo, hi)) in [("1.3", mlp), ("blocks.1.hook_resid_post:3", resid)] {
        let j: serde_json::Value =
            serde_json::from_str(&ok(&["show", "--atlas", a, "--neuron", neuron, "--json"]))
                .unwrap();
        let edges: Vec<f64> = j["histogram"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_f64().unwrap())
            .collect();
        assert_eq!((edges.len(), edges[0], edges[16]), (17, lo, hi), "{neuron}");
        let text = ok(&["show", "--atlas", a, "--neuron", neuron]);
        assert!(text.contains(&format!("histogram [{lo}, {hi})")), "{text}");
    }
    // the ranges do not depend on the batch size
    let b1 = tmp.path().join("b1");
    record_auto(&corpus, &b1, &["--batch", "1"]);
    let b1 = Atlas::open(&b1).unwrap();
    for si in 0..st.sites.len() {
        assert_eq!(b1.hist_spec(si), atlas.hist_spec(si));
    }
    assert_same(&st, &b1.load_state().unwrap());
}

#[test]
fn automatic_ranges_merge_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let single = tmp.path().join("single");
    record_auto(&corpus, &single, &["--batch", "4"]);
    let mut shards = Vec::new();
    for i in 0..3 {
        let out = tmp.path().join(format!("shard{i}"));
        let spec = format!("{i}/3");
        record_auto(&corpus, &out, &["--batch", "4", "--shard", &spec]);
        shards.push(out);
    }
    // every shard chose its ranges from the corpus's first windows, not from its own documents
    let one = Atlas::open(&single).unwrap();
    for p in &shards {
        assert_eq!(Atlas::open(p).unwrap().manifest.sites, one.manifest.sites);
    }
    let merged = tmp.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", merged.to_str().unwrap()]);
    ok(&args);
    let (a, b) = (load(&single), load(&merged));
    assert_same(&a, &b);
    for (x, y) in a.sites.iter().zip(&b.sites) {
        assert_eq!(x.spec, y.spec);
        assert_eq!(x.hist, y.hist, "{}: histograms differ", x.name);
    }
    assert_eq!(
        Atlas::open(&merged).unwrap().manifest.sites,
        one.manifest.sites
    );

    // resume keeps the checkpoint's ranges
    let out = tmp.path().join("resumed");
    record_auto(&corpus, &out, &["--batch", "4", "--stop-after-docs", "7"]);
    let cp = Atlas::open(&tmp.path().join("resumed.partial")).unwrap();
    assert_eq!(cp.manifest.sites, one.manifest.sites);
    let err = record_auto(&corpus, &out, &["--batch", "4", "--resume"]);
    assert!(err.contains("resuming"), "{err}");
    let r = load(&out);
    assert_same(&a, &r);
    for (x, y) in a.sites.iter().zip(&r.sites) {
        assert_eq!(x.spec, y.spec);
        assert_eq!(x.hist, y.hist, "{}: histograms differ", x.name);
    }
    // a checkpoint of a forced range is not resumed with automatic ranges
    let forced = tmp.path().join("forced");
    record_auto(
        &corpus,
        &forced,
        &["--stop-after-docs", "3", "--hist-range=-4,12"],
    );
    let m = scaled_model_dir().to_str().unwrap();
    user_err(
        &[
            "record",
            "--model",
            m,
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            forced.to_str().unwrap(),
            "--sites",
            "blocks.*.mlp.hook_post,blocks.*.hook_resid_post",
            "--ctx",
            "16",
            "--top-k",
            "5",
            "--hist-bins",
            "16",
            "--resume",
        ],
        &["cannot resume", "different settings"],
    );

    // shards of different forced ranges, or of forced and automatic ranges, do not merge
    let lo = tmp.path().join("lo");
    let hi = tmp.path().join("hi");
    record_auto(&corpus, &lo, &["--shard", "0/2", "--hist-range=-2,2"]);
    record_auto(&corpus, &hi, &["--shard", "1/2", "--hist-range=-3,3"]);
    let again = tmp.path().join("again");
    let merge = |x: &Path, y: &Path| {
        [
            "merge".to_string(),
            x.display().to_string(),
            y.display().to_string(),
            "--out".into(),
            again.display().to_string(),
        ]
    };
    let args = merge(&lo, &hi);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    user_err(
        &args,
        &["cannot merge", "different histogram ranges", "[-2, 2)"],
    );
    let args = merge(&lo, &shards[1]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    user_err(&args, &["cannot merge", "different settings"]);
    assert!(!again.exists());
}

#[test]
fn format_1_atlases_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_text_corpus(tmp.path());
    let out = tmp.path().join("atlas");
    record(&[&corpus], &out, &[]);
    // what format 1 wrote: one range in settings.hist, none per site, no hist_auto
    let mp = out.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m["format_version"] = 1.into();
    m["settings"].as_object_mut().unwrap().remove("hist_auto");
    for s in m["sites"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("hist");
    }
    std::fs::write(&mp, m.to_string()).unwrap();
    let a = Atlas::open(&out).unwrap();
    assert!(!a.manifest.settings.hist_auto);
    let h = a.hist_spec(2);
    assert_eq!((h.lo, h.hi, h.bins), (-2.0, 2.0, 16));
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "show",
        "--atlas",
        out.to_str().unwrap(),
        "--neuron",
        "1.17",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["histogram"]["edges"][0], -2.0);
    assert_eq!(j["histogram"]["edges"][16], 2.0);
    // and merge with a format 2 shard of the same range
    let s0 = tmp.path().join("s0");
    let s1 = tmp.path().join("s1");
    record(&[&corpus], &s0, &["--shard", "0/2"]);
    record(&[&corpus], &s1, &["--shard", "1/2"]);
    std::fs::write(
        s0.join("manifest.json"),
        std::fs::read_to_string(s0.join("manifest.json"))
            .unwrap()
            .replace("\"format_version\": 2", "\"format_version\": 1"),
    )
    .unwrap();
    let merged = tmp.path().join("merged");
    ok(&[
        "merge",
        s0.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_same(&load(&out), &load(&merged));
}
