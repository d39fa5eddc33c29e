//! Expert imaging and switch-off against ground truth: a small Mixtral with expert 1.e3 planted
//! (`plant_experts`: the router sends exactly `dog`/`puppy` to it, it raises `bark`). `experts`
//! must rank it first by either measure, switching it off must lower log p(bark | …dog) far more
//! than switching off any other expert of its layer, and bad input is one line with exit 2.

mod common;

use ftri::analyze::experts::{image_experts, ExpertsRequest, Measure};
use ftri::analyze::responses::Stimulus;
use ftri::intervene::eval::EvalItem;
use ftri::intervene::experts::ExpertId;
use ftri::intervene::lesion::{lesion, LesionRequest};
use ftri::intervene::OpSpec;
use ftri::model::plant_expert::{plant_experts, PlantedExpert};
use ftri::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
use ftri::model::{HookSet, LoadOptions, Model, Site, SiteKind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const LAYER: usize = 1;
const EXPERT: usize = 3;
const N_EXPERTS: usize = 8;

/// The planted checkpoint, built once per test binary.
fn planted_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("planted-mixtral-{}", std::process::id()));
        let words: Vec<String> = ["dog", "puppy", "bark"].map(String::from).to_vec();
        let spec = SynthSpec {
            arch: SynthArch::Mixtral {
                experts: N_EXPERTS,
                top_k: 2,
            },
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            d_mlp: 64,
            n_ctx: 64,
            vocab: vocab_with(&words, 300),
            seed: 5,
        };
        let mut w = random_weights(&spec);
        let planted = PlantedExpert {
            layer: LAYER,
            expert: EXPERT,
            routed: vec!["dog".into(), "puppy".into()],
            writes: "bark".into(),
        };
        let rec = plant_experts(&spec, &mut w, &[planted], 0).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let json = serde_json::to_string(&rec).unwrap();
        write_checkpoint(&dir, &spec, &w, &[("plant.json", json)]).unwrap();
        dir
    })
}

fn model() -> Model {
    Model::load(planted_dir().to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Sentences of 4–9 filler words; with `trigger`, one of them is `dog` or `puppy` (so routing
/// rates vary with the length).
fn sentences(n: usize, trigger: bool, seed: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let len = 4 + (i * 5 + seed) % 6;
            let mut w: Vec<String> = (0..len)
                .map(|j| format!("w{}", 10 + (i * 7 + j * 13 + seed * 31) % 250))
                .collect();
            if trigger {
                w[1 + i % (len - 1)] = ["dog", "puppy"][i % 2].into();
            }
            w.join(" ")
        })
        .collect()
}

fn stimuli(texts: Vec<String>) -> Vec<Stimulus> {
    texts
        .into_iter()
        .map(|text| Stimulus { text, target: None })
        .collect()
}

/// plant.json's claim, checked token by token at the routing hooks: the planted expert is the
/// first choice of every trigger token and no choice of any other token, with almost all the
/// weight at triggers.
#[test]
fn the_router_sends_exactly_the_triggers_to_the_planted_expert() {
    let m = model();
    let texts: Vec<String> = sentences(6, true, 1)
        .into_iter()
        .chain(sentences(6, false, 2))
        .collect();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode(t).unwrap())
        .collect();
    let idx_site = Site::Block(LAYER, SiteKind::ExpertIndices);
    let w_site = Site::Block(LAYER, SiteKind::ExpertWeights);
    let mut hooks = HookSet::capturing([idx_site, w_site]);
    m.forward(&m.batch(&ids).unwrap(), &mut hooks).unwrap();
    let idx: Vec<Vec<Vec<f32>>> = hooks.take(idx_site).unwrap().to_vec3().unwrap();
    let w: Vec<Vec<Vec<f32>>> = hooks.take(w_site).unwrap().to_vec3().unwrap();
    let (dog, puppy) = (
        m.tokenizer.encode("dog").unwrap()[0],
        m.tokenizer.encode("puppy").unwrap()[0],
    );
    let (mut triggers, mut others) = (0, 0);
    for (b, seq) in ids.iter().enumerate() {
        for (t, &tok) in seq.iter().enumerate() {
            let chosen = &idx[b][t];
            if tok == dog || tok == puppy {
                triggers += 1;
                assert_eq!(chosen[0], EXPERT as f32, "{}: token {t}", texts[b]);
                assert!(w[b][t][0] > 0.99, "weight {}", w[b][t][0]);
            } else {
                others += 1;
                assert!(
                    !chosen.contains(&(EXPERT as f32)),
                    "{}: token {t}",
                    texts[b]
                );
            }
        }
    }
    assert!(triggers == 6 && others > 30, "{triggers} {others}");
    let plant: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(planted_dir().join("plant.json")).unwrap())
            .unwrap();
    assert_eq!(plant[0]["expert"], "1.e3");
    assert_eq!(plant[0]["routed"], serde_json::json!(["dog", "puppy"]));
}

#[test]
fn experts_ranks_the_planted_expert_first_by_rate_and_by_weight() {
    let m = model();
    for measure in [Measure::Rate, Measure::Weight] {
        let r = image_experts(
            &m,
            &ExpertsRequest {
                target: stimuli(sentences(12, true, 3)),
                control: stimuli(sentences(12, false, 4)),
                measure,
                layers: None,
                fdr: 0.05,
                top: 100,
                batch: 5,
            },
        )
        .unwrap();
        assert_eq!(r.experts_tested, 2 * N_EXPERTS);
        let best = &r.experts[0];
        assert_eq!(best.expert, "1.e3", "{measure:?}: {:?}", r.experts);
        assert!(best.score > 5.0 && best.auroc == 1.0, "{best:?}");
        assert_eq!(best.control_mean, 0.0);
        // a trigger in each 4–9 token sentence, routed with weight ≈ 1
        assert!(
            best.target_mean > 0.1 && best.target_mean < 0.25 + 1e-3,
            "{best:?}"
        );
        assert!(r.significant >= 1);
        // sorted by t, every expert listed
        assert!(r.experts.windows(2).all(|p| p[0].score >= p[1].score));
        assert_eq!(r.experts.len(), 2 * N_EXPERTS);
    }
}

/// Routing rates of one stimulus and layer sum to top-k, weights to 1 (Mixtral renormalizes).
#[test]
fn rates_sum_to_top_k_and_weights_to_one() {
    let m = model();
    for (measure, total) in [(Measure::Rate, 2.0), (Measure::Weight, 1.0)] {
        let r = image_experts(
            &m,
            &ExpertsRequest {
                target: stimuli(sentences(5, true, 5)),
                control: stimuli(sentences(5, false, 6)),
                measure,
                layers: Some("0".into()),
                fdr: 0.05,
                top: 100,
                batch: 2,
            },
        )
        .unwrap();
        assert!(r.experts.iter().all(|f| f.layer == 0));
        let t: f64 = r.experts.iter().map(|f| f.target_mean).sum();
        let c: f64 = r.experts.iter().map(|f| f.control_mean).sum();
        assert!(
            (t - total).abs() < 1e-4 && (c - total).abs() < 1e-4,
            "{t} {c}"
        );
    }
}

#[test]
fn switching_off_the_planted_expert_removes_its_effect_unlike_any_other_expert() {
    let m = model();
    let eval: Vec<EvalItem> = sentences(8, true, 7)
        .into_iter()
        .map(|s| {
            // end each prompt on the trigger: log p(bark | … dog)
            let cut = s.find("dog").or_else(|| s.find("puppy")).unwrap();
            let end = s[cut..].find(' ').map_or(s.len(), |e| cut + e);
            EvalItem {
                prompt: s[..end].to_string(),
                target: " bark".into(),
            }
        })
        .collect();
    let run = |experts: Vec<ExpertId>, random: usize| {
        lesion(
            &m,
            &LesionRequest {
                neurons: vec![],
                experts,
                heads: vec![],
                op: OpSpec::parse("zero").unwrap(),
                positions: None,
                eval: eval.clone(),
                control_eval: None,
                random_baseline: random,
                seed: 1,
                atlas: None,
            },
        )
        .unwrap()
    };
    let id = |e| ExpertId {
        layer: LAYER,
        expert: e,
    };
    let planted = run(vec![id(EXPERT)], 20);
    let drop = planted.delta.mean_logprob;
    assert!(drop < -3.0, "planted expert off: {drop}");
    let b = planted.random_baseline.as_ref().unwrap();
    assert_eq!(b.as_extreme, 0, "{b:?}");
    // every other expert of the layer, one at a time: the exhaustive baseline
    for e in (0..N_EXPERTS).filter(|&e| e != EXPERT) {
        let other = run(vec![id(e)], 0).delta.mean_logprob;
        assert!(
            other.abs() * 20.0 < drop.abs(),
            "{}.e{e} off: {other} against {drop}",
            LAYER
        );
    }
}

fn write(dir: &Path, name: &str, lines: &[String]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n")).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn the_cli_prints_the_documented_json() {
    let tmp = tempfile::tempdir().unwrap();
    let t = write(tmp.path(), "t.txt", &sentences(8, true, 8));
    let c = write(tmp.path(), "c.txt", &sentences(8, false, 9));
    let model = planted_dir().to_str().unwrap();
    let (code, out, err) = common::run_ftri(&[
        "experts",
        "--model",
        model,
        "--target",
        &t,
        "--control",
        &c,
        "--measure",
        "weight",
        "--top",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "experts",
            "experts_tested",
            "measure",
            "n_control",
            "n_target",
            "significant"
        ]
        .map(String::from)
    );
    assert_eq!(v["measure"], "weight");
    assert_eq!(v["experts"].as_array().unwrap().len(), 3);
    assert_eq!(v["experts"][0]["expert"], "1.e3");
    assert_eq!(
        keys(&v["experts"][0]),
        [
            "auroc",
            "control_mean",
            "effect_size",
            "expert",
            "index",
            "layer",
            "p",
            "q",
            "score",
            "target_mean"
        ]
        .map(String::from)
    );
    // the table names the planted expert first too
    let (code, out, _) =
        common::run_ftri(&["experts", "--model", model, "--target", &t, "--control", &c]);
    assert_eq!(code, 0);
    let first = out.lines().nth(2).unwrap();
    assert!(first.contains("1.e3"), "{out}");
}

/// Exit code 2 and one line naming the problem.
fn user_error(args: &[&str], needle: &str) {
    let (code, _, err) = common::run_ftri(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let t = write(tmp.path(), "t.txt", &sentences(4, true, 1));
    let c = write(tmp.path(), "c.txt", &sentences(4, false, 2));
    let empty = write(tmp.path(), "empty.txt", &[]);
    let eval = write(
        tmp.path(),
        "eval.jsonl",
        &["{\"prompt\": \"w1 dog\", \"target\": \" bark\"}".to_string()],
    );
    let moe = planted_dir().to_str().unwrap().to_string();
    let dense = common::fixture("llama");
    let dense = dense.to_str().unwrap();
    let experts = |model: &str, extra: &[&str], needle: &str| {
        let mut a = vec!["experts", "--model", model, "--target", &t, "--control", &c];
        a.extend_from_slice(extra);
        user_error(&a, needle);
    };
    experts(
        &moe,
        &["--measure", "foo"],
        "unknown --measure `foo` (rate, weight)",
    );
    experts(dense, &[], "has no mixture-of-experts layers");
    experts(&moe, &["--layers", "2"], "outside the model's layers 0-1");
    user_error(
        &[
            "experts",
            "--model",
            &moe,
            "--target",
            &empty,
            "--control",
            &c,
        ],
        "0 stimuli",
    );
    // unknown, out-of-range and dense-model expert ids
    for (spec, model, needle) in [
        (
            "1.e8",
            moe.as_str(),
            "expert 8 out of range (layers have 8 experts)",
        ),
        ("2.e0", moe.as_str(), "layer 2 out of range"),
        ("1.x3", moe.as_str(), "is not an expert id"),
        ("0.e1", dense, "has no mixture-of-experts layers"),
    ] {
        user_error(
            &[
                "lesion",
                "--model",
                model,
                "--experts",
                spec,
                "--eval",
                &eval,
            ],
            needle,
        );
    }
    // planting: an expert outside the model, on a dense architecture, or misspelt
    let out = tmp.path().join("p");
    let out = out.to_str().unwrap();
    let plant = |extra: &[&str], needle: &str| {
        let mut a = vec!["plant", "--out", out];
        a.extend_from_slice(extra);
        user_error(&a, needle);
        assert!(!Path::new(out).exists());
    };
    plant(
        &["--arch", "mixtral", "--expert", "1.e8:dog:bark"],
        "planted expert 1.e8 is outside the model",
    );
    plant(
        &["--arch", "llama", "--expert", "1.e3:dog:bark"],
        "--arch mixtral",
    );
    plant(
        &["--arch", "mixtral", "--expert", "1.3:dog:bark"],
        "expected L.eE",
    );
    plant(
        &["--arch", "mixtral", "--num-experts", "2", "--top-k", "3"],
        "top-k at most the experts",
    );
    // a config whose top-k exceeds its expert count
    let cfg_dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(planted_dir().join(f), cfg_dir.path().join(f)).unwrap();
    }
    let p = cfg_dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["num_experts_per_tok"] = 9.into();
    std::fs::write(&p, v.to_string()).unwrap();
    user_error(
        &["info", "--model", cfg_dir.path().to_str().unwrap()],
        "top-k 9 of 8 experts",
    );
}
