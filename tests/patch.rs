//! `ftri patch` (activation patching, causal tracing, attribution patching) against ground truth:
//! a checkpoint with a planted neuron 1.5 that fires on `dog` and writes `bark`, invariants that
//! hold for any model, the batched computation against one forward pass per cell, and the
//! attribution estimate against exact patching where first order is exact enough; per-head
//! patching (`--heads`, site `z`) on the hand-built copy-head model, whose one working head must
//! carry the whole effect.

mod common;

use common::copy_head::{copy_head_model, COPY_HEAD};
use common::planted::{planted, planted_dir};
use ftri::analyze::patch::{
    patch, Align, Corruption, Metric, PatchMethod, PatchRequest, Patching, HEAD_SITE,
};
use ftri::model::synth::SynthArch;
use ftri::model::{AttnHook, HookSet, Intervention, LoadOptions, Model, Op, Site, SiteKind};

fn cell(r: &Patching, site: &str, layer: usize, pos: usize) -> f64 {
    r.cells
        .iter()
        .find(|c| c.site == site && c.layer == layer && c.position == pos)
        .unwrap_or_else(|| panic!("no cell {site} {layer} {pos}"))
        .recovered
}

fn dog_vs_cat(metric: Metric) -> PatchRequest {
    let mut req = PatchRequest::new("the dog", Corruption::Prompt("the cat".into()), " bark");
    req.metric = metric;
    req.sites = vec![
        SiteKind::ResidPre,
        SiteKind::AttnOut,
        SiteKind::MlpOut,
        SiteKind::ResidPost,
    ];
    req
}

#[test]
fn the_planted_neurons_layer_and_position_carry_the_effect() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        for metric in [Metric::LogProb, Metric::LogitDiff] {
            let r = patch(&m, &dog_vs_cat(metric)).unwrap();
            let tag = format!("{arch:?} {}", metric.name());
            assert_eq!(r.tokens.len(), 2, "{tag}: {:?}", r.tokens);
            assert!(
                r.clean_metric > r.corrupt_metric + 1.0,
                "{tag}: dog raises bark: clean {} corrupt {}",
                r.clean_metric,
                r.corrupt_metric
            );
            // the planted neuron is in layer 1 and fires on `dog` (position 1)
            let hit = cell(&r, "mlp_out", 1, 1);
            assert!(hit >= 0.8, "{tag}: mlp_out 1 @ dog recovers {hit}");
            for (l, p) in [(0, 0), (0, 1), (1, 0)] {
                let v = cell(&r, "mlp_out", l, p);
                assert!(v.abs() < 0.2, "{tag}: mlp_out {l} @ {p} recovers {v}");
            }
            // invariants of any causal model whose prompts differ at one position: the whole
            // residual stream there is the clean run's, so all of it comes back; the shared
            // position carries nothing (its activations are the same in both runs)
            for l in 0..2 {
                let v = cell(&r, "resid_pre", l, 1);
                assert!((v - 1.0).abs() < 1e-4, "{tag}: resid_pre {l} @ 1 = {v}");
                for site in ["resid_pre", "attn_out", "mlp_out", "resid_post"] {
                    let v = cell(&r, site, l, 0);
                    assert!(v.abs() < 1e-4, "{tag}: {site} {l} @ 0 = {v}");
                }
            }
            let v = cell(&r, "resid_post", 1, 1);
            assert!((v - 1.0).abs() < 1e-4, "{tag}: resid_post 1 @ 1 = {v}");
            assert_eq!(r.forwards, 8, "{tag}: one forward per site × layer");
            assert!(r.cells.iter().all(|c| c.head.is_none()));
        }
    }
}

fn assert_same(a: &Patching, b: &Patching, what: &str) {
    assert_eq!(a.cells.len(), b.cells.len(), "{what}");
    assert!((a.corrupt_metric - b.corrupt_metric).abs() < 1e-9, "{what}");
    let mut worst = 0f64;
    for (x, y) in a.cells.iter().zip(&b.cells) {
        assert_eq!(
            (&x.site, x.layer, x.position, x.head),
            (&y.site, y.layer, y.position, y.head),
            "{what}"
        );
        worst = worst.max((x.recovered - y.recovered).abs());
    }
    assert!(
        worst <= 1e-5,
        "{what}: batched and per-cell differ by {worst}"
    );
}

#[test]
fn batched_equals_one_forward_per_cell() {
    let m = planted(SynthArch::Llama);
    let mut cases: Vec<(&str, PatchRequest)> = Vec::new();
    let mut eq = PatchRequest::new(
        "w5 dog w7 w9 w11",
        Corruption::Prompt("w6 w8 w7 w9 w12".into()),
        " bark",
    );
    eq.sites = vec![
        SiteKind::ResidPre,
        SiteKind::AttnOut,
        SiteKind::MlpOut,
        HEAD_SITE,
    ];
    cases.push(("equal lengths, logit_diff", eq.clone()));
    let mut lp = eq.clone();
    lp.metric = Metric::LogProb;
    cases.push(("equal lengths, logprob", lp));
    for align in [Align::Left, Align::Right] {
        let mut r = eq.clone();
        r.corruption = Corruption::Prompt("w3 w6 w8 w7 w9 w12".into());
        r.align = align;
        cases.push(("different lengths", r));
    }
    let mut noise = eq.clone();
    noise.corruption = Corruption::Noise {
        sigma: 3.0,
        subject: Some("dog".into()),
        seeds: 2,
        seed: 7,
    };
    cases.push(("noise", noise));
    for (what, req) in cases {
        let batched = patch(&m, &req).unwrap();
        let mut one = req.clone();
        one.batched = false;
        let per_cell = patch(&m, &one).unwrap();
        assert!(per_cell.forwards > batched.forwards, "{what}");
        assert_same(&batched, &per_cell, &format!("{what} {:?}", req.align));
    }
}

#[test]
fn alignment_pairs_positions_from_the_start_or_the_end() {
    let m = planted(SynthArch::Gpt2);
    let mut req = PatchRequest::new("w4 the dog", Corruption::Prompt("the cat".into()), " bark");
    req.sites = vec![SiteKind::ResidPre];
    let err = patch(&m, &req).unwrap_err();
    assert!(ftri::error::is_user_error(&err) && err.to_string().contains("--align"));
    req.align = Align::Right;
    let r = patch(&m, &req).unwrap();
    // the last two clean positions pair with the two corrupted ones; `dog` is clean position 2
    let positions: Vec<usize> = r
        .cells
        .iter()
        .filter(|c| c.layer == 0)
        .map(|c| c.position)
        .collect();
    assert_eq!(positions, vec![1, 2]);
    assert!(cell(&r, "resid_pre", 0, 2) > 0.8);
    req.align = Align::Left;
    let r = patch(&m, &req).unwrap();
    let positions: Vec<usize> = r
        .cells
        .iter()
        .filter(|c| c.layer == 0)
        .map(|c| c.position)
        .collect();
    assert_eq!(positions, vec![0, 1]);
}

#[test]
fn noise_tracing_finds_the_subject_and_is_deterministic() {
    let m = planted(SynthArch::Gpt2);
    let mut req = PatchRequest::new("w5 dog w7", Corruption::Prompt(String::new()), " bark");
    req.corruption = Corruption::Noise {
        sigma: 3.0,
        subject: Some("dog".into()),
        seeds: 3,
        seed: 0,
    };
    req.metric = Metric::LogProb;
    req.sites = vec![SiteKind::ResidPre, SiteKind::MlpOut];
    let a = patch(&m, &req).unwrap();
    let b = patch(&m, &req).unwrap();
    assert_eq!(a.noise.as_ref().unwrap().positions, vec![1]);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap(),
        "same seed, same numbers"
    );
    // restoring the noised subject's residual restores everything; elsewhere nothing
    let v = cell(&a, "resid_pre", 0, 1);
    assert!((v - 1.0).abs() < 1e-4, "resid_pre 0 @ subject = {v}");
    let v = cell(&a, "resid_pre", 0, 0);
    assert!(v.abs() < 1e-4, "resid_pre 0 @ 0 = {v}");
    req.corruption = Corruption::Noise {
        sigma: 3.0,
        subject: Some("cat".into()),
        seeds: 1,
        seed: 0,
    };
    let err = patch(&m, &req).unwrap_err();
    assert!(ftri::error::is_user_error(&err), "{err}");
}

#[test]
fn attribution_matches_exact_patching_to_first_order() {
    // In f64, with a small corruption the metric is linear between the runs up to O(σ²): the
    // gradient estimate must agree with exact patching; cells with identical activations in both
    // runs are exactly 0 in both.
    let m = Model::load(
        planted_dir(SynthArch::Gpt2).to_str().unwrap(),
        &LoadOptions {
            dtype: candle_core::DType::F64,
            ..Default::default()
        },
    )
    .unwrap();
    let mut req = PatchRequest::new("w5 dog w7", Corruption::Prompt(String::new()), " bark");
    req.corruption = Corruption::Noise {
        sigma: 1e-3,
        subject: None,
        seeds: 1,
        seed: 1,
    };
    req.method = PatchMethod::Attribution;
    req.sites = vec![
        SiteKind::ResidPre,
        SiteKind::AttnOut,
        SiteKind::MlpOut,
        HEAD_SITE,
    ];
    let r = patch(&m, &req).unwrap();
    assert_eq!(
        r.cells.iter().filter(|c| c.head.is_some()).count(),
        2 * 4 * 3
    );
    let worst = r
        .cells
        .iter()
        .map(|c| (c.attribution.unwrap() - c.recovered).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 0.01,
        "small corruption: max |attribution − exact| = {worst}"
    );
    assert!(r.correlation.unwrap() > 0.999, "{:?}", r.correlation);
    // the last token is not noised: its layer-0 residual is the same in both runs
    let last = r.tokens.len() - 1;
    let c = r
        .cells
        .iter()
        .find(|c| c.site == "resid_pre" && c.layer == 0 && c.position == last)
        .unwrap();
    // (exact: the same run in a batch of another size, so equal up to rounding)
    assert!(c.recovered.abs() < 1e-6, "{}", c.recovered);
    assert_eq!(c.attribution, Some(0.0));

    // A large corruption: still reported side by side, the estimate no longer exact.
    let m = planted(SynthArch::Gpt2);
    let mut big = dog_vs_cat(Metric::LogitDiff);
    big.method = PatchMethod::Attribution;
    let r = patch(&m, &big).unwrap();
    assert!(r.cells.iter().all(|c| c.attribution.is_some()));
    assert!(r.correlation.is_some());
}

#[test]
fn cli_json_csv_and_bad_input() {
    let dir = planted_dir(SynthArch::Gpt2);
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("cells.csv");
    let (code, out, err) = common::run_ftri(&[
        "patch",
        "--model",
        model,
        "--clean",
        "the dog",
        "--corrupt",
        "the cat",
        "--target",
        " bark",
        "--sites",
        "mlp_out",
        "--method",
        "attribution",
        "--json",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "metric",
        "target",
        "clean_metric",
        "corrupt_metric",
        "tokens",
        "cells",
    ] {
        assert!(v.get(k).is_some(), "JSON lacks {k}: {out}");
    }
    assert_eq!(v["metric"], "logit_diff");
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let c = &cells[0];
    assert_eq!(c["site"], "mlp_out");
    assert!(c["head"].is_null() && c["recovered"].is_number() && c["attribution"].is_number());
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "site,layer,position,head,recovered,attribution");
    assert_eq!(lines.len(), 5);
    assert!(lines[1].starts_with("mlp_out,0,0,,"));

    // the human table: a grid per site
    let (code, out, err) = common::run_ftri(&[
        "patch",
        "--model",
        model,
        "--clean",
        "the dog",
        "--corrupt",
        "the cat",
        "--target",
        " bark",
    ]);
    assert_eq!(code, 0, "{err}");
    for s in ["resid_pre", "attn_out", "mlp_out", "layer", "dog"] {
        assert!(out.contains(s), "`{s}` missing from:\n{out}");
    }

    let bad: &[(&[&str], &str)] = &[
        (
            &[
                "--clean",
                "the dog",
                "--corrupt",
                "a the cat",
                "--target",
                " bark",
            ],
            "--align",
        ),
        (
            &["--clean", "the dog", "--corrupt", "the cat", "--target", ""],
            "--target",
        ),
        (
            &[
                "--clean",
                "the dog",
                "--corrupt",
                "the cat",
                "--target",
                " bark",
                "--sites",
                "mlp_in",
            ],
            "mlp_in",
        ),
        (
            &[
                "--clean",
                "the dog",
                "--corrupt",
                "the cat",
                "--target",
                " bark",
                "--metric",
                "kl",
            ],
            "--metric",
        ),
        (
            &[
                "--clean",
                "the dog",
                "--corrupt",
                "the dog",
                "--target",
                " bark",
            ],
            "nothing to recover",
        ),
        (
            &[
                "--clean",
                "the dog",
                "--noise",
                "3",
                "--subject",
                "w9",
                "--target",
                " bark",
            ],
            "--subject",
        ),
        (
            &[
                "--clean",
                "the dog",
                "--corrupt",
                "the cat",
                "--target",
                " bark",
                "--layers",
                "5",
            ],
            "--layers",
        ),
    ];
    for (args, needle) in bad {
        let mut all = vec!["patch", "--model", model];
        all.extend_from_slice(args);
        let (code, _, err) = common::run_ftri(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: `{needle}` missing from {err}"
        );
    }
}

/// One HTTP/1.1 request: (status, body).
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let r = common::http::raw(addr, method, path, "127.0.0.1", body.map(str::as_bytes));
    (r.status, r.text())
}

#[test]
fn the_server_runs_patch_jobs_and_serves_the_page() {
    let dir = planted_dir(SynthArch::Gpt2);
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "w1 dog w2 w3\nw4 puppy w5\nw6 w7 w8 w9\n").unwrap();
    let atlas = tmp.path().join("atlas");
    let (code, _, err) = common::run_ftri(&[
        "record",
        "--model",
        dir.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        atlas.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let model = planted(SynthArch::Gpt2);
    let mut req = dog_vs_cat(Metric::LogitDiff);
    req.sites = vec![SiteKind::MlpOut];
    let expected = serde_json::to_value(patch(&model, &req).unwrap()).unwrap();
    let state =
        ftri::serve::AppState::new(ftri::atlas::Atlas::open(&atlas).unwrap(), Some(model)).unwrap();
    let state = std::sync::Arc::new(state);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            ftri::serve::serve(l, state).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    let body = serde_json::json!({
        "clean": "the dog", "corrupt": "the cat", "target": " bark", "sites": "mlp_out"
    });
    let (status, text) = http(addr, "POST", "/api/patch", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got, expected, "/api/patch = the library's result");
    let body = serde_json::json!({
        "clean": "the dog", "corrupt": "the cat", "target": " bark", "sites": "mlp_out",
        "heads": true
    });
    let (status, text) = http(addr, "POST", "/api/patch", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    let heads = got["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["site"] == "z" && c["head"].is_u64())
        .count();
    assert_eq!(heads, 2 * 4 * 2, "heads: true adds the per-head cells");
    let (status, text) = http(
        addr,
        "POST",
        "/api/patch",
        Some(r#"{"clean": "the dog", "corrupt": "a the cat", "target": " bark"}"#),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("--align"), "{text}");
    let (status, text) = http(addr, "GET", "/patch", None);
    assert_eq!(status, 200);
    assert!(text.contains("/assets/patch.js"));
    let (status, text) = http(addr, "GET", "/assets/patch.js", None);
    assert_eq!(status, 200);
    assert!(text.contains("function patchPage"));
}

#[test]
fn a_12_layer_32_position_grid_costs_12_batched_forwards() {
    use ftri::model::synth::{random_weights, vocab_with, write_checkpoint, SynthSpec};
    let spec = SynthSpec {
        arch: SynthArch::Gpt2,
        n_layers: 12,
        d_model: 64,
        n_heads: 4,
        d_mlp: 256,
        n_ctx: 64,
        vocab: vocab_with(&[], 300),
        seed: 5,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_checkpoint(&dir, &spec, &random_weights(&spec), &[]).unwrap();
    let m = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let words = |swap: usize| -> String {
        (0..32)
            .map(|i| format!("w{}", if i == 9 { swap } else { 20 + i }))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut req = PatchRequest::new(&words(7), Corruption::Prompt(words(8)), " w3");
    req.sites = vec![SiteKind::MlpOut];
    let t = std::time::Instant::now();
    let batched = patch(&m, &req).unwrap();
    let tb = t.elapsed();
    assert_eq!(batched.cells.len(), 12 * 32);
    assert_eq!(batched.forwards, 12, "one batched forward per layer");
    req.batched = false;
    let t = std::time::Instant::now();
    let per_cell = patch(&m, &req).unwrap();
    let tc = t.elapsed();
    assert_eq!(per_cell.forwards, 12 * 32);
    assert_same(&batched, &per_cell, "12 × 32 grid");
    eprintln!(
        "12 × 32 grid: batched {} forwards in {:.3} s, per cell {} forwards in {:.3} s",
        batched.forwards,
        tb.as_secs_f64(),
        per_cell.forwards,
        tc.as_secs_f64()
    );
}

fn head_cell(r: &Patching, layer: usize, head: usize, pos: usize) -> f64 {
    r.cells
        .iter()
        .find(|c| c.site == "z" && c.layer == layer && c.head == Some(head) && c.position == pos)
        .unwrap_or_else(|| panic!("no head cell {layer}.h{head} @ {pos}"))
        .recovered
}

/// log p(target) at the last token of a forward pass with `ivs`.
fn logprob(m: &Model, ids: &[u32], ivs: Vec<Intervention>, target: u32) -> f64 {
    let mut h = HookSet::new();
    ivs.into_iter().for_each(|iv| h.intervene(iv));
    let logits = m
        .forward(&m.batch(&[ids.to_vec()]).unwrap(), &mut h)
        .unwrap()
        .unwrap();
    let row: Vec<f64> = logits
        .narrow(1, ids.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
    row[target as usize] - lse
}

/// Per-head cells on the planted models: shape, the shared position carries nothing, and
/// restoring every head of a layer's hook_z at a position (done here by hand) recovers exactly
/// what restoring that layer's attn_out there does: the output projection, its bias (the same
/// in both runs) and any post-norm see that position's z only.
#[test]
fn all_heads_of_a_layer_are_its_attn_out() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let mut req = dog_vs_cat(Metric::LogProb);
        req.sites = vec![SiteKind::AttnOut, HEAD_SITE];
        let r = patch(&m, &req).unwrap();
        let tag = format!("{arch:?}");
        let (layers, heads) = (m.cfg.n_layers, m.cfg.n_heads);
        let z: Vec<_> = r.cells.iter().filter(|c| c.site == "z").collect();
        assert_eq!(z.len(), layers * heads * 2, "{tag}");
        assert!(z.iter().all(|c| c.head.is_some_and(|h| h < heads)), "{tag}");
        assert!(r
            .cells
            .iter()
            .filter(|c| c.site != "z")
            .all(|c| c.head.is_none()));
        // attn_out: one pass per layer; z: heads × positions batched, one pass per layer
        assert_eq!(r.forwards, 2 * layers, "{tag}");
        let ids_clean = m.encode("the dog").unwrap();
        let ids_corrupt = m.encode("the cat").unwrap();
        let target = m.tokenizer.encode_plain(" bark").unwrap()[0];
        for l in 0..layers {
            let site = Site::Block(l, SiteKind::Attn(AttnHook::Z));
            let mut h = HookSet::capturing([site]);
            m.forward(&m.batch(std::slice::from_ref(&ids_clean)).unwrap(), &mut h)
                .unwrap();
            let clean_z = h.take(site).unwrap();
            for p in 0..2 {
                for hd in 0..heads {
                    if p == 0 {
                        let v = head_cell(&r, l, hd, p);
                        assert!(v.abs() < 1e-5, "{tag}: {l}.h{hd} @ 0 = {v}");
                    }
                }
                let all = Intervention {
                    site,
                    units: None,
                    positions: Some(vec![p]),
                    op: Op::Replace(clean_z.clone()),
                };
                let got = logprob(&m, &ids_corrupt, vec![all], target);
                let all_heads = (got - r.corrupt_metric) / (r.clean_metric - r.corrupt_metric);
                let attn_out = cell(&r, "attn_out", l, p);
                assert!(
                    (all_heads - attn_out).abs() < 1e-4,
                    "{tag}: layer {l} @ {p}: all heads {all_heads} vs attn_out {attn_out}"
                );
            }
        }
    }
}

/// The hand-built model where head COPY_HEAD of layer 0 copies the previous token: with clean
/// "the model was it" and corrupted "the model and it" (target " was", foil " and"), restoring
/// that head's output at the last token recovers everything (the residual there is then the
/// clean one); every other head cell nothing (silent heads write 0 in both runs, the copy head's
/// output elsewhere reads the same tokens in both); batched equals per-cell.
#[test]
fn the_copy_head_carries_the_effect() {
    let dir = copy_head_model();
    let m = Model::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (clean, corrupt) = ("the model was it", "the model and it");
    let n = m.encode(clean).unwrap().len();
    assert_eq!(n, m.encode(corrupt).unwrap().len(), "equal token lengths");
    let mut req = PatchRequest::new(clean, Corruption::Prompt(corrupt.into()), " was");
    req.foil = Some(" and".into());
    req.sites = vec![SiteKind::AttnOut, HEAD_SITE];
    req.method = PatchMethod::Attribution;
    let r = patch(&m, &req).unwrap();
    assert!(
        r.clean_metric > r.corrupt_metric + 1.0,
        "the model copies: clean {} corrupt {}",
        r.clean_metric,
        r.corrupt_metric
    );
    let last = n - 1;
    let hit = head_cell(&r, 0, COPY_HEAD, last);
    assert!(hit > 0.99, "0.h{COPY_HEAD} @ last recovers {hit}");
    let mut worst_other = 0f64;
    for c in r.cells.iter().filter(|c| c.site == "z") {
        if c.head == Some(COPY_HEAD) && c.position == last {
            continue;
        }
        worst_other = worst_other.max(c.recovered.abs());
    }
    assert!(
        worst_other < 1e-4,
        "other head cells recover up to {worst_other}"
    );
    eprintln!(
        "copy head: 0.h{COPY_HEAD} @ last recovers {hit:.6}; other head cells at most \
         {worst_other:.2e}; attribution correlation {:?}",
        r.correlation
    );
    // the silent heads write nothing: all of attn_out there is the copy head
    let ao = cell(&r, "attn_out", 0, last);
    assert!(
        (ao - hit).abs() < 1e-4,
        "attn_out {ao} vs the copy head {hit}"
    );
    // attribution: the copy head's cell is the largest estimate too
    let best = r
        .cells
        .iter()
        .filter(|c| c.site == "z")
        .max_by(|a, b| a.attribution.unwrap().total_cmp(&b.attribution.unwrap()))
        .unwrap();
    assert_eq!((best.head, best.position), (Some(COPY_HEAD), last));
    let mut one = req.clone();
    one.batched = false;
    one.method = PatchMethod::Exact;
    let mut batched = req.clone();
    batched.method = PatchMethod::Exact;
    let (b, c) = (patch(&m, &batched).unwrap(), patch(&m, &one).unwrap());
    assert_eq!(b.forwards, 2, "one pass per site × layer");
    assert_eq!(c.forwards, n + 4 * n);
    assert_same(&b, &c, "copy head: batched vs per cell");
}

#[test]
fn heads_on_the_command_line() {
    let dir = copy_head_model();
    let model = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("heads.csv");
    let base = [
        "patch",
        "--model",
        model,
        "--clean",
        "the model was it",
        "--corrupt",
        "the model and it",
        "--target",
        " was",
        "--foil",
        " and",
    ];
    let mut args = base.to_vec();
    args.extend(["--sites", "mlp_out", "--heads", "--json", "--out"]);
    args.push(csv.to_str().unwrap());
    let (code, out, err) = common::run_ftri(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cells = v["cells"].as_array().unwrap();
    let n = v["tokens"].as_array().unwrap().len();
    assert_eq!(
        cells.len(),
        n + 4 * n,
        "mlp_out then 4 heads × {n} positions"
    );
    let z: Vec<_> = cells.iter().filter(|c| c["site"] == "z").collect();
    assert_eq!(z.len(), 4 * n);
    assert!(z.iter().all(|c| c["head"].is_u64()));
    assert_eq!(z[0]["head"], 0);
    assert_eq!(z[n]["head"], 1, "layer, head, then position");
    let text = std::fs::read_to_string(&csv).unwrap();
    let row = format!("z,0,{},{COPY_HEAD},", n - 1);
    assert!(text.lines().any(|l| l.starts_with(&row)), "{text}");

    // the table: a head × position grid per layer
    let mut args = base.to_vec();
    args.extend(["--sites", "z"]);
    let (code, out, err) = common::run_ftri(&args);
    assert_eq!(code, 0, "{err}");
    for s in [
        "z (heads) · layer 0",
        "0.h0",
        &format!("0.h{COPY_HEAD}"),
        "head",
    ] {
        assert!(out.contains(s), "`{s}` missing from:\n{out}");
    }

    // attention internals other than hook_z have no per-position cells
    for bad in ["attn.hook_pattern", "attn.hook_q"] {
        let mut args = base.to_vec();
        args.extend(["--sites", bad, "--heads"]);
        let (code, _, err) = common::run_ftri(&args);
        assert_eq!(code, 2, "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: one line: {err}");
        assert!(err.contains("--heads"), "{bad}: {err}");
    }
}
