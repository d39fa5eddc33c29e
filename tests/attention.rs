//! Attention internals as hook points and heads as units, beyond parity with transformers
//! (tests/parity.rs): interventions inside attention, padding, the differentiable path, the
//! key/value cache, and head lesions on a model with one head that copies the previous token
//! (built by tests/common/copy_head.rs).

mod common;

use candle_core::{DType, Device, Tensor};
use common::copy_head::{copy_head_model, COPY_HEAD};
use common::fixture;
use ftri::intervene::eval::EvalItem;
use ftri::intervene::heads::HeadId;
use ftri::intervene::lesion::{lesion, LesionRequest};
use ftri::intervene::OpSpec;
use ftri::model::{
    AttnHook, HookSet, Intervention, KvCache, LoadOptions, Model, Op, Site, SiteKind,
};
use std::path::Path;

fn load(dir: &Path) -> Model {
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn at(l: usize, h: AttnHook) -> Site {
    Site::Block(l, SiteKind::Attn(h))
}

/// max |a − b| over entries finite in both, after checking they are −∞ at the same places.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert_eq!(x.is_infinite(), y.is_infinite(), "{x} vs {y}");
            if x.is_infinite() {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(0f32, f32::max)
}

const TEXT: &str = "Alice didn't pay $4.5 for 12 pears.";

fn run(m: &Model, seqs: &[Vec<u32>], capture: &[Site], ivs: &[Intervention]) -> (HookSet, Tensor) {
    let mut h = HookSet::new();
    capture.iter().for_each(|s| h.capture(*s));
    ivs.iter().for_each(|iv| h.intervene(iv.clone()));
    let logits = m.forward(&m.batch(seqs).unwrap(), &mut h).unwrap().unwrap();
    (h, logits)
}

/// Zeroing one head's hook_z units removes exactly its hook_result and nothing of the other heads;
/// putting a run's own pattern back changes nothing; replacing hook_z with another run's moves
/// the logits to that run's.
#[test]
fn interventions_inside_attention() {
    for name in ["gpt2", "llama", "gemma2", "qwen3"] {
        let m = load(&fixture(name));
        let ids = m.encode(TEXT).unwrap();
        let dh = m.cfg.head_dim;
        let (z, res, pat) = (
            at(0, AttnHook::Z),
            at(0, AttnHook::Result),
            at(0, AttnHook::Pattern),
        );
        let (clean, clean_logits) = run(&m, std::slice::from_ref(&ids), &[z, res, pat], &[]);
        let (_, plain_logits) = run(&m, std::slice::from_ref(&ids), &[], &[]);
        let scale = max_diff(&plain_logits, &plain_logits.zeros_like().unwrap()).max(1.0);
        assert!(
            max_diff(&clean_logits, &plain_logits) <= 1e-5 * scale,
            "{name}: capturing inside attention changed the logits"
        );
        let head = 1;
        let zero = Intervention {
            site: z,
            units: Some((head * dh..(head + 1) * dh).collect()),
            positions: None,
            op: Op::Zero,
        };
        let (hit, hit_logits) = run(&m, std::slice::from_ref(&ids), &[z, res], &[zero]);
        let r_clean = clean.get(res).unwrap();
        let r_hit = hit.get(res).unwrap();
        for h in 0..m.cfg.n_heads {
            let d = max_diff(
                &r_hit.narrow(2, h, 1).unwrap(),
                &r_clean.narrow(2, h, 1).unwrap(),
            );
            let norm = max_diff(
                &r_hit.narrow(2, h, 1).unwrap(),
                &r_hit.narrow(2, h, 1).unwrap().zeros_like().unwrap(),
            );
            if h == head {
                assert_eq!(norm, 0.0, "{name}: the zeroed head still writes");
            } else {
                assert_eq!(
                    d, 0.0,
                    "{name}: head {h} changed when head {head} was zeroed"
                );
            }
        }
        assert!(
            max_diff(&hit_logits, &clean_logits) > 1e-4,
            "{name}: no effect"
        );

        // the run's own pattern put back: the same logits
        let same = Intervention {
            site: pat,
            units: None,
            positions: None,
            op: Op::Replace(clean.get(pat).unwrap().clone()),
        };
        let (_, same_logits) = run(&m, std::slice::from_ref(&ids), &[], &[same]);
        assert!(
            max_diff(&same_logits, &clean_logits) <= 1e-5 * scale,
            "{name}"
        );

        // the pattern of another text of the same length moves the logits; a wrong shape is a
        // user error
        let bad = Intervention {
            site: pat,
            units: None,
            positions: None,
            op: Op::Replace(Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap()),
        };
        let mut h = HookSet::new();
        h.intervene(bad);
        let err = m
            .forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut h)
            .unwrap_err();
        assert!(ftri::error::is_user_error(&err), "{err}");
        assert!(err.to_string().contains("replacement has shape"), "{err}");
    }
}

/// Sequences of different lengths in one padded batch: each one's attention internals equal those
/// of running it alone (real positions; the pattern's padded key columns are 0, their scores −∞).
#[test]
fn padded_batch_attention_equals_alone() {
    for name in ["gpt2", "llama", "bert", "gemma2", "phi3"] {
        let m = load(&fixture(name));
        let seqs = vec![
            m.encode("The dog was quiet.").unwrap(),
            m.encode(TEXT).unwrap(),
        ];
        let sites: Vec<Site> = (0..m.cfg.n_layers)
            .flat_map(|l| {
                [
                    at(l, AttnHook::Scores),
                    at(l, AttnHook::Pattern),
                    at(l, AttnHook::Z),
                ]
            })
            .collect();
        let mut hooks = HookSet::capturing(sites.iter().copied());
        m.forward(&m.batch(&seqs).unwrap(), &mut hooks).unwrap();
        for (i, ids) in seqs.iter().enumerate() {
            let mut alone = HookSet::capturing(sites.iter().copied());
            m.forward(&m.batch(std::slice::from_ref(ids)).unwrap(), &mut alone)
                .unwrap();
            let n = ids.len();
            for s in &sites {
                let got = hooks.get(*s).unwrap().get(i).unwrap();
                let want = alone.get(*s).unwrap().get(0).unwrap();
                let got = match s {
                    Site::Block(_, SiteKind::Attn(AttnHook::Z)) => got.narrow(0, 0, n).unwrap(),
                    _ => {
                        let g = got.narrow(1, 0, n).unwrap();
                        if got.dim(2).unwrap() > n {
                            let pad = got
                                .narrow(1, 0, n)
                                .unwrap()
                                .narrow(2, n, got.dim(2).unwrap() - n)
                                .unwrap();
                            let v: Vec<f32> = pad.flatten_all().unwrap().to_vec1().unwrap();
                            let want_pad = match s {
                                Site::Block(_, SiteKind::Attn(AttnHook::Pattern)) => 0.0,
                                _ => f32::NEG_INFINITY,
                            };
                            assert!(v.iter().all(|x| *x == want_pad), "{name} {s}: padded keys");
                        }
                        g.narrow(2, 0, n).unwrap()
                    }
                };
                let d = max_diff(&got, &want);
                assert!(d <= 1e-5, "{name} item {i} {s}: {d}");
            }
        }
    }
}

/// The differentiable path (plain candle ops) gives the same internals, and gradients reach
/// hook_z.
#[test]
fn differentiable_attention_matches_and_carries_gradients() {
    for name in ["llama3", "gemma2", "gpt_neox"] {
        let m = load(&fixture(name));
        let ids = m.encode(TEXT).unwrap();
        let sites: Vec<Site> = m
            .sites()
            .into_iter()
            .filter(|s| matches!(s, Site::Block(_, SiteKind::Attn(_))))
            .collect();
        let batch = m.batch(std::slice::from_ref(&ids)).unwrap();
        let mut fast = HookSet::capturing(sites.iter().copied());
        m.forward(&batch, &mut fast).unwrap();
        let mut slow = HookSet::capturing(sites.iter().copied());
        slow.differentiable = true;
        slow.track_gradient(at(0, AttnHook::Z));
        let logits = m.forward(&batch, &mut slow).unwrap().unwrap();
        for s in &sites {
            let d = max_diff(fast.get(*s).unwrap(), slow.get(*s).unwrap());
            assert!(d < 1e-4, "{name} {s}: {d}");
        }
        let grads = logits.sum_all().unwrap().backward().unwrap();
        let (act, g) = slow.gradient(at(0, AttnHook::Z), &grads).unwrap().unwrap();
        assert_eq!(act.dims(), g.dims());
        assert!(
            max_diff(&g, &g.zeros_like().unwrap()) > 0.0,
            "{name}: zero gradient"
        );
    }
}

/// Token by token with a key/value cache, hook_z of each new token equals the full run's, and the
/// pattern spans every key so far.
#[test]
fn cached_steps_expose_the_same_internals() {
    for name in ["llama", "gemma2"] {
        let m = load(&fixture(name));
        let ids = m.encode(TEXT).unwrap();
        let (z, pat) = (at(1, AttnHook::Z), at(1, AttnHook::Pattern));
        let mut full = HookSet::capturing([z, pat]);
        m.forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut full)
            .unwrap();
        let mut cache = KvCache::default();
        for (i, &tok) in ids.iter().enumerate() {
            let mut h = HookSet::capturing([z, pat]);
            h.want_logits = true;
            m.net
                .forward_cached(&m.batch(&[vec![tok]]).unwrap(), &mut h, Some(&mut cache))
                .unwrap();
            let want = full.get(z).unwrap().get(0).unwrap().get(i).unwrap();
            let got = h.get(z).unwrap().get(0).unwrap().get(0).unwrap();
            assert!(max_diff(&got, &want) <= 1e-5, "{name} step {i}");
            let p = h.get(pat).unwrap();
            assert_eq!(p.dims(), [1, m.cfg.n_heads, 1, i + 1], "{name}");
            let want_p = full
                .get(pat)
                .unwrap()
                .get(0)
                .unwrap()
                .narrow(1, i, 1)
                .unwrap()
                .narrow(2, 0, i + 1)
                .unwrap();
            assert!(
                max_diff(&p.get(0).unwrap(), &want_p) <= 1e-5,
                "{name} step {i}"
            );
        }
    }
}

/// Prompts whose last token should be followed by the token before it, as eval items.
fn copy_eval(m: &Model) -> Vec<EvalItem> {
    let texts = [
        "the dog was quiet",
        "Alice counted apples and pears",
        "a warm day in June",
        "the old ferry has become a museum",
        "people said it was the finest bridge",
        "Paris, London and Tokyo are large cities",
        "a long talk with neighbours",
        "the model reads the tokens",
    ];
    let mut out = vec![];
    for text in texts {
        let ids = m.encode(text).unwrap();
        if ids.len() < 2 || ids.len() >= 32 {
            continue;
        }
        let prev = ids[ids.len() - 2];
        let target = m.tokenizer.decode(&[prev]);
        // only targets that tokenize back to that one token
        if m.tokenizer.encode_plain(&target).unwrap() == vec![prev] {
            out.push(EvalItem {
                prompt: text.to_string(),
                target,
            });
        }
    }
    assert!(out.len() >= 5, "only {} usable prompts", out.len());
    out
}

#[test]
fn lesioning_the_copy_head_removes_copying_and_random_heads_do_not() {
    let dir = copy_head_model();
    let m = load(dir.path());
    let eval = copy_eval(&m);
    // the head attends to the previous token
    let ids = m.encode("the old ferry has become a museum").unwrap();
    let mut h = HookSet::capturing([at(0, AttnHook::Pattern)]);
    m.forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut h)
        .unwrap();
    let pat = h
        .get(at(0, AttnHook::Pattern))
        .unwrap()
        .get(0)
        .unwrap()
        .get(COPY_HEAD)
        .unwrap();
    for i in 1..ids.len() {
        let p: f32 = pat.get(i).unwrap().get(i - 1).unwrap().to_scalar().unwrap();
        assert!(p > 0.99, "query {i} attends its previous token with {p}");
    }
    for op in [OpSpec::Zero, OpSpec::Mean] {
        let r = lesion(
            &m,
            &LesionRequest {
                neurons: vec![],
                experts: vec![],
                heads: vec![HeadId {
                    layer: 0,
                    head: COPY_HEAD,
                }],
                op: op.clone(),
                positions: None,
                eval: eval.clone(),
                control_eval: None,
                random_baseline: 3,
                seed: 1,
                atlas: None,
            },
        )
        .unwrap();
        assert!(
            r.baseline.accuracy >= 0.99,
            "{op}: the model copies: {:?}",
            r.baseline
        );
        assert!(
            r.intervened.accuracy <= 0.2,
            "{op}: lesion left {:?}",
            r.intervened
        );
        assert!(r.delta.mean_logprob < -3.0, "{op}: {:?}", r.delta);
        let rb = r.random_baseline.unwrap();
        assert!(
            rb.mean_delta.mean_logprob.abs() < 1e-4 && rb.as_extreme == 0,
            "{op}: random heads of layer 0: {rb:?}"
        );
        assert_eq!(r.heads, vec![format!("0.h{COPY_HEAD}")]);
    }
}

/// `--heads` and localize's head units through the command line, and its errors (exit 2).
#[test]
fn heads_on_the_command_line() {
    let dir = copy_head_model();
    let model = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let eval = tmp.path().join("eval.jsonl");
    let m = load(dir.path());
    let lines: Vec<String> = copy_eval(&m)
        .iter()
        .map(|e| serde_json::json!({"prompt": e.prompt, "target": e.target}).to_string())
        .collect();
    std::fs::write(&eval, lines.join("\n")).unwrap();
    let ev = eval.to_str().unwrap();
    let (code, out, err) = common::run_ftri(&[
        "lesion",
        "--model",
        model,
        "--heads",
        &format!("0.h{COPY_HEAD}"),
        "--eval",
        ev,
        "--random-baseline",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["heads"][0], format!("0.h{COPY_HEAD}"));
    assert!(j["delta"]["mean_logprob"].as_f64().unwrap() < -3.0, "{j}");
    for (bad, says) in [
        ("3.h0", "layer 3 out of range"),
        ("0.h9", "head 9 out of range"),
        ("0.9", "not a head id"),
    ] {
        let (code, _, err) =
            common::run_ftri(&["lesion", "--model", model, "--heads", bad, "--eval", ev]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    let (code, _, err) = common::run_ftri(&[
        "lesion", "--model", model, "--heads", "0.h1", "--op", "scale=2", "--eval", ev,
    ]);
    assert_eq!(code, 2, "{err}");

    // trace saves the attention hook points in TransformerLens's layouts
    let out = tmp.path().join("t.safetensors");
    let (code, _, err) = common::run_ftri(&[
        "trace",
        "--model",
        model,
        "--text",
        "the dog was quiet",
        "--out",
        out.to_str().unwrap(),
        "--hooks",
        "blocks.0.attn.*",
    ]);
    assert_eq!(code, 0, "{err}");
    let t = common::load_tensors(&out);
    let n = m.encode("the dog was quiet").unwrap().len();
    assert_eq!(t["blocks.0.attn.hook_z"].dims(), [n, 4, 32]);
    assert_eq!(t["blocks.0.attn.hook_pattern"].dims(), [4, n, n]);
    assert_eq!(t["blocks.0.attn.hook_result"].dims(), [n, 4, 128]);
    assert!(
        !t.contains_key("blocks.0.attn.hook_rot_q"),
        "no rotary, no hook_rot_q"
    );

    // localize over heads: units are L.hH
    let (target, control) = (tmp.path().join("t.txt"), tmp.path().join("c.txt"));
    std::fs::write(
        &target,
        "the dog was quiet\na warm day in June\nthe model reads\n",
    )
    .unwrap();
    std::fs::write(
        &control,
        "Paris, London\nin 1999 the town\n12 pears and 250\n",
    )
    .unwrap();
    let (code, out, err) = common::run_ftri(&[
        "localize",
        "--model",
        model,
        "--target",
        target.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--site",
        "attn.hook_z",
        "--direction",
        "both",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["units_tested"], 4);
    assert!(
        j["neurons"][0]["neuron"]
            .as_str()
            .unwrap()
            .starts_with("0.h"),
        "{j}"
    );
    let (code, _, err) = common::run_ftri(&[
        "localize",
        "--model",
        model,
        "--target",
        target.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--site",
        "attn.hook_pattern",
    ]);
    assert_eq!(code, 2, "{err}");
}

/// `record --sites 'blocks.*.attn.hook_z'`: one unit per head (its output norm), top examples,
/// `show --neuron L.hH`; scores and pattern are refused.
#[test]
fn record_heads() {
    let dir = copy_head_model();
    let model = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("c.txt");
    std::fs::write(
        &corpus,
        "the dog was quiet\na warm day in June\nthe model reads the tokens\nPeople said it was fine\n",
    )
    .unwrap();
    let atlas = tmp.path().join("atlas");
    let (code, _, err) = common::run_ftri(&[
        "record",
        "--model",
        model,
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        atlas.to_str().unwrap(),
        "--sites",
        "blocks.*.attn.hook_z",
        "--top-k",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(atlas.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["sites"][0]["name"], "blocks.0.attn.hook_z");
    assert_eq!(manifest["sites"][0]["units"], 4);
    let (code, out, err) = common::run_ftri(&[
        "show",
        "--atlas",
        atlas.to_str().unwrap(),
        "--neuron",
        &format!("0.h{COPY_HEAD}"),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["neuron"], format!("0.h{COPY_HEAD}"));
    // the copy head writes ≈ 1.6·‖e_prev‖ at every token after the first; the silent heads 0
    assert!(j["max"].as_f64().unwrap() > 1.0, "{j}");
    assert_eq!(j["top"].as_array().unwrap().len(), 3);
    let (_, out, _) = common::run_ftri(&[
        "show",
        "--atlas",
        atlas.to_str().unwrap(),
        "--neuron",
        "0.h0",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["max"].as_f64().unwrap(), 0.0, "{j}");
    let (code, _, err) = common::run_ftri(&[
        "record",
        "--model",
        model,
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        tmp.path().join("a2").to_str().unwrap(),
        "--sites",
        "blocks.0.attn.hook_pattern",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be recorded"), "{err}");
}
