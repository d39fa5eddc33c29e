//! `modules` against ground truth: a checkpoint with two planted groups of neurons, each group
//! sharing its trigger words, must come out as two modules (Jaccard ≥ 0.8), whose top tokens are
//! the triggers, and a module file must work as a lesion's neuron set.

mod common;

use ftri::analyze::cluster::{jaccard, KChoice};
use ftri::analyze::modules::{modules, ModulesRequest, ModulesResult};
use ftri::analyze::pass::CorpusSpec;
use ftri::intervene::parse_neuron_set;
use ftri::model::plant::{plant, PlantedNeuron};
use ftri::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
use ftri::model::{LoadOptions, Model};
use std::path::{Path, PathBuf};

const A: [usize; 4] = [10, 20, 30, 40];
const B: [usize; 4] = [50, 60, 70, 80];

/// Layer 1 holds group A (fires on dog/puppy) and group B (cat/kitten).
fn two_groups(dir: &Path) -> Model {
    let words: Vec<String> = [
        "dog", "puppy", "cat", "kitten", "bark", "howl", "yip", "woof", "meow", "purr", "hiss",
        "mew",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spec = SynthSpec {
        arch: SynthArch::Gpt2,
        n_layers: 2,
        d_model: 64,
        n_heads: 4,
        d_mlp: 128,
        n_ctx: 64,
        vocab: vocab_with(&words, 300),
        seed: 5,
    };
    let mut w = random_weights(&spec);
    let mut planted = Vec::new();
    for (k, &i) in A.iter().enumerate() {
        planted.push(PlantedNeuron {
            layer: 1,
            index: i,
            fires_on: vec!["dog".into(), "puppy".into()],
            writes: words[4 + k].clone(),
        });
    }
    for (k, &i) in B.iter().enumerate() {
        planted.push(PlantedNeuron {
            layer: 1,
            index: i,
            fires_on: vec!["cat".into(), "kitten".into()],
            writes: words[8 + k].clone(),
        });
    }
    plant(&spec, &mut w, &planted).unwrap();
    write_checkpoint(dir, &spec, &w, &[]).unwrap();
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Lines of filler words, about one word in eight a trigger of either group.
fn corpus(path: &Path, lines: usize) {
    let trig = ["dog", "puppy", "cat", "kitten"];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for _ in 0..lines {
        let mut words = Vec::new();
        for _ in 0..16 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) as usize;
            if r % 16 < 2 {
                words.push(trig[(r / 16) % 4].to_string());
            } else {
                words.push(format!("w{}", 1 + (r / 16) % 250));
            }
        }
        s.push_str(&words.join(" "));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn request(corpus: PathBuf, k: KChoice) -> ModulesRequest {
    ModulesRequest {
        corpus: CorpusSpec {
            paths: vec![corpus],
            text_field: "text".into(),
            ctx: 64,
            max_tokens: None,
            batch: 8,
        },
        layers: vec![1],
        k,
        power: 6.0,
        top: 5,
        promotes: 5,
        seed: 0,
    }
}

fn ids(group: &[usize]) -> Vec<String> {
    group.iter().map(|i| format!("1.{i}")).collect()
}

/// The module that best matches `group`, and its Jaccard index.
fn best<'a>(r: &'a ModulesResult, group: &[usize]) -> (&'a ftri::analyze::modules::Module, f64) {
    r.modules
        .iter()
        .map(|m| (m, jaccard(&m.members, &ids(group))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn two_planted_groups_become_two_modules() {
    let tmp = tempfile::tempdir().unwrap();
    let m = two_groups(&tmp.path().join("model"));
    let text = tmp.path().join("corpus.txt");
    corpus(&text, 300);
    for k in [KChoice::Fixed(8), KChoice::Eigengap { max: 16 }] {
        let r = modules(&m, &request(text.clone(), k), &mut |_, _, _| {}).unwrap();
        let (ma, ja) = best(&r, &A);
        let (mb, jb) = best(&r, &B);
        eprintln!(
            "{k:?}: k = {}, A → module {} {:?} (J = {ja:.2}), B → module {} {:?} (J = {jb:.2}); {:.1} GFLOP/s co-activation, matmul {:.0}",
            r.k, ma.id, ma.members, mb.id, mb.members, r.speed.coactivation_gflops, r.speed.matmul_gflops
        );
        if let KChoice::Fixed(_) = k {
            assert!(ja >= 0.8 && jb >= 0.8, "{k:?}: Jaccard {ja} / {jb}");
        } else {
            // --auto cuts at the largest eigengap (here after the two groups and the rest, k =
            // 3): every varying neuron must join some module, so a few random ones join the
            // groups', but neither group is split
            let a: Vec<String> = ids(&A);
            let b: Vec<String> = ids(&B);
            assert!(a.iter().all(|x| ma.members.contains(x)), "{k:?}");
            assert!(b.iter().all(|x| mb.members.contains(x)), "{k:?}");
        }
        assert_ne!(ma.id, mb.id);
        if let KChoice::Fixed(_) = k {
            // members of a group fire together and only together: the most cohesive modules
            assert!(
                ma.within > 0.99 && mb.within > 0.99,
                "{} {}",
                ma.within,
                mb.within
            );
            for t in &ma.top {
                assert!(["dog", "puppy"].contains(&t.token.as_str()), "{:?}", ma.top);
            }
            for t in &mb.top {
                assert!(
                    ["cat", "kitten"].contains(&t.token.as_str()),
                    "{:?}",
                    mb.top
                );
            }
            let promoted: Vec<&str> = ma.promotes.iter().map(|p| p.token.as_str()).collect();
            assert!(
                ["bark", "howl", "yip", "woof"]
                    .iter()
                    .all(|w| promoted[..4].contains(w)),
                "{promoted:?}"
            );
        }
        // every varying neuron of the layer in exactly one module
        let mut all: Vec<&String> = r.modules.iter().flat_map(|m| &m.members).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n + r.per_layer[0].constant, 128);
    }
}

#[test]
fn a_module_file_is_a_neuron_set_for_lesion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let m = two_groups(&dir);
    let text = tmp.path().join("corpus.txt");
    corpus(&text, 120);
    let out = tmp.path().join("mods");
    let (code, stdout, err) = common::run_ftri(&[
        "modules",
        "--model",
        dir.to_str().unwrap(),
        "--corpus",
        text.to_str().unwrap(),
        "--layers",
        "1",
        "--k",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mods = j["modules"].as_array().unwrap();
    assert_eq!(j["k"].as_u64().unwrap() as usize, mods.len());
    let a = mods
        .iter()
        .find(|md| {
            md["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "1.10")
        })
        .unwrap();
    let file = out.join(format!("module-{}.json", a["id"]));
    let set = parse_neuron_set(&format!("@{}", file.display()), &m.cfg).unwrap();
    let names: Vec<String> = set.iter().map(|n| n.to_string()).collect();
    let mut want: Vec<String> = a["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want);
    // and the CLI's lesion reads it: zeroing group A removes its promoted words
    let eval = tmp.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "{\"prompt\": \"w1 w2 dog\", \"target\": \" bark\"}\n{\"prompt\": \"w3 puppy\", \"target\": \" howl\"}\n",
    )
    .unwrap();
    let (code, stdout, err) = common::run_ftri(&[
        "lesion",
        "--model",
        dir.to_str().unwrap(),
        "--neurons",
        &format!("@{}", file.display()),
        "--eval",
        eval.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let l: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(l["delta"]["mean_logprob"].as_f64().unwrap() < -1.0, "{l}");
    // bad input: k above the layer's neurons, an empty corpus, a missing @file
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    for (corp, k) in [(&text, "999"), (&empty, "4")] {
        let (code, _, err) = common::run_ftri(&[
            "modules",
            "--model",
            dir.to_str().unwrap(),
            "--corpus",
            corp.to_str().unwrap(),
            "--k",
            k,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(parse_neuron_set("@/nonexistent/module-1.json", &m.cfg).is_err());
}

#[test]
fn decompose_beats_kmeans_keeps_g_non_negative_and_finds_the_planted_unit() {
    use ftri::analyze::decompose::{decompose, DecomposeRequest};
    use ftri::model::{Site, SiteKind};
    let tmp = tempfile::tempdir().unwrap();
    let m = common::planted::planted(SynthArch::Gpt2);
    let text = tmp.path().join("c.txt");
    let mut lines = common::planted::stimuli(80, true, 1);
    lines.extend(common::planted::stimuli(80, false, 4));
    std::fs::write(&text, lines.join("\n")).unwrap();
    let mut corpus = request(text, KChoice::Fixed(1)).corpus;
    corpus.ctx = 32;
    let r = decompose(
        &m,
        &DecomposeRequest {
            corpus,
            site: Site::Block(1, SiteKind::MlpPost),
            k: 8,
            max_iterations: 300,
            tolerance: 1e-5,
            top: 5,
            seed: 0,
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    eprintln!(
        "iterations {} converged {} fit R² {:.3} held-out {:.3} k-means {:.3} min G {}",
        r.iterations, r.converged, r.fit_r2, r.heldout_r2, r.kmeans_heldout_r2, r.min_coefficient
    );
    assert!(r.min_coefficient >= 0.0);
    assert!(
        r.heldout_r2 >= r.kmeans_heldout_r2,
        "{} < {}",
        r.heldout_r2,
        r.kmeans_heldout_r2
    );
    assert!(r.converged);
    let planted = r.components.iter().find(|c| {
        c.top.iter().all(|t| t.token == "dog" || t.token == "puppy")
            && c.promotes.iter().take(3).any(|p| p.token == "bark")
    });
    assert!(
        planted.is_some(),
        "{:?}",
        r.components
            .iter()
            .map(|c| (
                &c.id,
                c.top.iter().map(|t| &t.token).collect::<Vec<_>>(),
                &c.promotes[0].token
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn celltypes_define_each_planted_group_by_its_triggers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    two_groups(&dir);
    let text = tmp.path().join("corpus.txt");
    corpus(&text, 150);
    let atlas = tmp.path().join("atlas");
    let (code, _, err) = common::run_ftri(&[
        "record",
        "--model",
        dir.to_str().unwrap(),
        "--corpus",
        text.to_str().unwrap(),
        "--out",
        atlas.to_str().unwrap(),
        "--top-k",
        "8",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = common::run_ftri(&[
        "celltypes",
        "--atlas",
        atlas.to_str().unwrap(),
        "--k",
        "6",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let type_of = |unit: &str| {
        j["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["members"].as_array().unwrap().iter().any(|m| m == unit))
            .unwrap_or_else(|| panic!("{unit} has no type: {j}"))
            .clone()
    };
    for (group, triggers) in [(&A, ["dog", "puppy"]), (&B, ["cat", "kitten"])] {
        for unit in ids(group) {
            let t = type_of(&unit);
            let s = t["stimuli"][0]["token"].as_str().unwrap();
            assert!(triggers.contains(&s), "{unit}: type defined by {s}: {t}");
        }
    }
    let (code, _, err) =
        common::run_ftri(&["celltypes", "--atlas", atlas.to_str().unwrap(), "--k", "0"]);
    assert_eq!(code, 2, "{err}");
}
