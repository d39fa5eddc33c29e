//! The neuroscience instruments on planted ground truth: `tune` (tuning curves), `frequency`
//! (frequency tagging) and `align` (model–brain alignment).

mod common;

use common::planted::{planted, planted_dir, PLANTED};
use common::{fixture, run_ftri};
use ftri::analyze::align::{align_features, layer_features, AlignOptions, Brain, Features};
use ftri::analyze::frequency::{frequency, parse_levels, FrequencyRequest, FrequencyTagging};
use ftri::analyze::responses::{Method, Readout, Reduce};
use ftri::analyze::tune::{tune, TuneRequest, ValuedStimulus};
use ftri::corpus::matrix::read_array;
use ftri::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
use ftri::model::{LoadOptions, Model, SiteKind};
use ftri::rng::Rng;

fn readout() -> Readout {
    Readout {
        reduce: Reduce::Mean,
        method: Method::Contrast,
        include_special: false,
        batch: 16,
    }
}

/// Eight filler words with `k` of them replaced by trigger words.
fn with_triggers(k: usize, seed: usize) -> String {
    let mut words: Vec<String> = (0..8)
        .map(|j| format!("w{}", 10 + (seed * 37 + j * 11) % 250))
        .collect();
    for t in 0..k {
        words[(seed + t * 3) % 8] = if t % 2 == 0 { "dog" } else { "puppy" }.into();
    }
    words.join(" ")
}

#[test]
fn tune_finds_the_planted_counting_unit_with_a_linear_fit() {
    let m = planted(SynthArch::Gpt2);
    let stimuli: Vec<ValuedStimulus> = (0..30)
        .map(|i| {
            let k = 1 + i % 6;
            ValuedStimulus {
                text: with_triggers(k, i),
                value: k as f64,
            }
        })
        .collect();
    let r = tune(
        &m,
        &TuneRequest {
            stimuli,
            site: SiteKind::MlpPost,
            layers: vec![0, 1],
            readout: readout(),
            folds: 5,
            top: 5,
        },
    )
    .unwrap();
    assert_eq!(r.n_stimuli, 30);
    assert_eq!(r.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(r.units_tested, 2 * m.cfg.d_mlp);
    let u = &r.units[0];
    assert_eq!(u.neuron, PLANTED, "{:?}", r.units[0]);
    // five stimuli share each value, so ties cap ρ below 1: the unit reaches that cap (its
    // responses are ordered exactly as the counts are)
    let values: Vec<f64> = (0..30).map(|i| (1 + i % 6) as f64).collect();
    let cap = ftri::analyze::numerics::spearman(
        &values,
        &values
            .iter()
            .enumerate()
            .map(|(i, v)| v * 100.0 + i as f64)
            .collect::<Vec<_>>(),
    )
    .0;
    assert!(
        u.rho > cap - 1e-9 && cap > 0.98 && u.q < 1e-6,
        "ρ {} (cap {cap}): {u:?}",
        u.rho
    );
    assert_eq!(u.best_fit, Some("linear"), "{:?}", u.fits);
    assert!(u.fits.linear.cv_r2 > 0.95, "{:?}", u.fits);
    assert_eq!(u.curve.len(), 6);
    assert!(
        u.curve.windows(2).all(|w| w[1].mean > w[0].mean),
        "{:?}",
        u.curve
    );
    // the population code carries the count too
    let d1 = r.decoding.iter().find(|d| d.layer == 1).unwrap();
    assert!(d1.r2_value > 0.9, "{:?}", r.decoding);
}

/// `n` streams of `len` filler words with the trigger `dog` at every position t ≡ 3 (mod 4); with
/// `shuffle`, the same words in a random order.
fn trigger_streams(n: usize, len: usize, shuffle: bool) -> Vec<String> {
    let mut rng = Rng::new(9);
    (0..n)
        .map(|_| {
            let mut words: Vec<String> = (0..len)
                .map(|t| {
                    if t % 4 == 3 {
                        // always the same trigger: alternating dog/puppy would add a period of 8
                        "dog".to_string()
                    } else {
                        format!("w{}", 10 + rng.below(250))
                    }
                })
                .collect();
            if shuffle {
                for i in (1..words.len()).rev() {
                    words.swap(i, rng.below(i + 1));
                }
            }
            words.join(" ")
        })
        .collect()
}

fn tag(m: &Model, streams: Vec<String>) -> FrequencyTagging {
    frequency(
        m,
        &FrequencyRequest {
            levels: parse_levels("syllable=1,word=2,phrase=4,sentence=8").unwrap(),
            streams: Some(streams),
            n_builtin: 0,
            cycles: 0,
            site: SiteKind::MlpPost,
            layers: vec![0, 1],
            batch: 8,
            fdr: 0.05,
            top: 0,
            seed: 1,
        },
    )
    .unwrap()
}

#[test]
fn frequency_tags_a_unit_firing_every_4_tokens_at_a_quarter_cycle_per_token() {
    let m = planted(SynthArch::Gpt2);
    let r = tag(&m, trigger_streams(16, 56, false));
    assert_eq!((r.n_streams, r.n_positions), (16, 56));
    let phrase = r
        .units
        .iter()
        .find(|u| u.neuron == PLANTED && u.level == "phrase")
        .unwrap_or_else(|| {
            panic!(
                "{PLANTED} not tagged at the phrase level: {:?}",
                &r.units[..r.units.len().min(5)]
            )
        });
    assert_eq!(phrase.frequency, 0.25);
    assert!(phrase.snr > 20.0 && phrase.control_snr < 4.0, "{phrase:?}");
    assert!(phrase.q < 1e-4, "{phrase:?}");
    // An impulse train every 4 tokens puts its power at 1/4 and its harmonic 1/2. At 1/8 there is
    // only what the fixed position embeddings make of the impulses' heights (the same positions
    // in every stream, so it can reach significance): orders of magnitude weaker.
    let word = r
        .units
        .iter()
        .find(|u| u.neuron == PLANTED && u.level == "word");
    assert!(word.is_some_and(|w| w.snr > 20.0), "{word:?}");
    if let Some(s) = r
        .units
        .iter()
        .find(|u| u.neuron == PLANTED && u.level == "sentence")
    {
        assert!(s.snr < phrase.snr / 100.0, "{s:?} vs {phrase:?}");
    }
    let l1 = r.layers.iter().find(|l| l.layer == 1).unwrap();
    assert!(l1.tagged["phrase"] > 0.0);
    assert!(!r.levels[0].testable);
    // the same tokens in shuffled order: the unit is not tagged
    let c = tag(&m, trigger_streams(16, 56, true));
    assert!(
        !c.units
            .iter()
            .any(|u| u.neuron == PLANTED && u.level == "phrase"),
        "{:?}",
        c.units
            .iter()
            .filter(|u| u.neuron == PLANTED)
            .collect::<Vec<_>>()
    );
}

fn npy(name: &str) -> (Vec<f32>, Vec<usize>) {
    let a = read_array(&fixture("align").join(name), None).unwrap();
    (a.data, a.shape)
}

#[test]
fn align_matches_scikit_learn_ridgecv_scipy_rsa_and_reference_cka() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("align").join("reference.json")).unwrap(),
    )
    .unwrap();
    let (y, ys) = npy("brain.npy");
    let (rep, rs) = npy("repeats.npy");
    let feats: Vec<Features> = ["x0.npy", "x1.npy"]
        .iter()
        .enumerate()
        .map(|(l, f)| {
            let (x, s) = npy(f);
            Features {
                layer: l,
                site: f.to_string(),
                p: s[1],
                x: x.iter().map(|v| *v as f64).collect(),
            }
        })
        .collect();
    let brain = Brain {
        n: ys[0],
        units: ys[1],
        data: y,
    };
    let o = AlignOptions {
        permutations: 200,
        ..AlignOptions::default()
    };
    let r = align_features(&feats, &brain, Some((&rep, rs[0])), &o).unwrap();
    let close = |a: f64, b: f64, tol: f64, what: &str| {
        assert!((a - b).abs() <= tol, "{what}: ftri {a} vs reference {b}");
    };
    for (l, want) in r.layers.iter().zip(reference["layers"].as_array().unwrap()) {
        let f64s = |k: &str| -> Vec<f64> {
            want[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        assert_eq!(
            l.ridge.as_ref().unwrap().alphas,
            f64s("alphas"),
            "layer {}",
            l.layer
        );
        for (u, (a, b)) in l.unit_r.iter().zip(f64s("r")).enumerate() {
            close(*a, b, 1e-8, &format!("layer {} unit {u} r", l.layer));
        }
        for (u, (a, b)) in l.unit_r2.iter().zip(f64s("r2")).enumerate() {
            close(*a, b, 1e-8, &format!("layer {} unit {u} R²", l.layer));
        }
        close(
            l.rsa.as_ref().unwrap().rho,
            want["rsa_rho"].as_f64().unwrap(),
            1e-10,
            "RSA rho",
        );
        close(l.cka.unwrap(), want["cka"].as_f64().unwrap(), 1e-10, "CKA");
    }
    for (a, b) in r
        .unit_ceiling
        .as_ref()
        .unwrap()
        .iter()
        .zip(reference["noise_ceiling"].as_array().unwrap())
    {
        close(*a, b.as_f64().unwrap(), 1e-6, "noise ceiling");
    }
    // the brain was made from x0
    assert_eq!(
        (r.best.ridge, r.best.rsa, r.best.cka),
        (Some(0), Some(0), Some(0))
    );
    assert!(r.layers[0].rsa.as_ref().unwrap().p < 0.01);
}

/// A 4-layer random GPT-2 of the planted kind's size, built once.
fn four_layers() -> Model {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("neuro-4l-{}", std::process::id()));
    if !dir.join("model.safetensors").exists() {
        let spec = SynthSpec {
            arch: SynthArch::Gpt2,
            n_layers: 4,
            d_model: 64,
            n_heads: 4,
            d_mlp: 256,
            n_ctx: 64,
            vocab: vocab_with(&[], 300),
            seed: 5,
        };
        write_checkpoint(&dir, &spec, &random_weights(&spec), &[]).unwrap();
    }
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

#[test]
fn align_ranks_the_layer_a_synthetic_brain_was_made_from_first() {
    let m = four_layers();
    let mut rng = Rng::new(11);
    let n = 600;
    let stimuli: Vec<String> = (0..n)
        .map(|_| {
            (0..8)
                .map(|_| format!("w{}", 1 + rng.below(290)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let feats =
        layer_features(&m, &stimuli, SiteKind::ResidPost, &[0, 1, 2, 3], &readout()).unwrap();
    let src = &feats[2];
    let (p, units) = (src.p, 30);
    let w: Vec<f64> = (0..p * units).map(|_| rng.normal(1.0) as f64).collect();
    let mut signal = vec![0.0f64; n * units];
    for i in 0..n {
        for u in 0..units {
            signal[i * units + u] = (0..p).map(|k| src.x[i * p + k] * w[k * units + u]).sum();
        }
    }
    // noise with the signal's variance per unit: the best possible R² is 0.5
    let mut data = vec![0f32; n * units];
    for u in 0..units {
        let col: Vec<f64> = (0..n).map(|i| signal[i * units + u]).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        for i in 0..n {
            let e = sd * (rng.normal(1.0) as f64);
            data[i * units + u] = (col[i] + e) as f32;
        }
    }
    let brain = Brain { n, units, data };
    let o = AlignOptions {
        permutations: 100,
        ..AlignOptions::default()
    };
    let r = align_features(&feats, &brain, None, &o).unwrap();
    assert_eq!(r.best.ridge, Some(2), "{:?}", r.layers);
    assert_eq!(r.best.rsa, Some(2), "{:?}", r.layers);
    // Expected held-out R² of least squares with p features on n_train rows and noise fraction
    // 1 − R²*: R²* − (1 − R²*)·p/(n_train − p − 1); ridge may do a little better, never beat R²*.
    let n_train = (n - n / 5) as f64;
    let expected = 0.5 - 0.5 * p as f64 / (n_train - p as f64 - 1.0);
    let got = r.layers[2].ridge.as_ref().unwrap().mean_r2;
    eprintln!(
        "synthetic brain from layer 2: mean held-out R² {got:.3}, expected ≈ {expected:.3}; mean r by layer {:?}; RSA ρ by layer {:?}",
        r.layers.iter().map(|l| l.ridge.as_ref().map(|x| (x.mean_r * 1000.0).round() / 1000.0)).collect::<Vec<_>>(),
        r.layers.iter().map(|l| l.rsa.as_ref().map(|x| (x.rho * 1000.0).round() / 1000.0)).collect::<Vec<_>>()
    );
    assert!(
        got > expected - 0.05 && got < 0.5 + 0.02,
        "mean held-out R² {got}, expected about {expected} (ceiling 0.5)"
    );
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_input_is_a_one_line_user_error() {
    let model = planted_dir(SynthArch::Gpt2);
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let stim = write(d, "s.txt", "w1 w2\nw3 w4\nw5 w6\nw7 w8\nw9 w10\n");
    let brain3 = write(d, "b.csv", "1,2\n3,4\n5,6\n");
    let nan = write(d, "n.csv", "1,2\n3,nan\n5,6\n7,8\n9,1\n");
    let empty = write(d, "e.jsonl", "");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec![
                "align",
                "--model",
                model,
                "--stimuli",
                &stim,
                "--brain",
                &brain3,
            ],
            vec!["3 rows", "5 stimuli", "b.csv", "s.txt"],
        ),
        (
            vec![
                "align",
                "--model",
                model,
                "--stimuli",
                &stim,
                "--brain",
                &nan,
            ],
            vec!["n.csv", "row 2, column 2"],
        ),
        (
            vec!["frequency", "--model", model, "--levels", "word=two"],
            vec!["--levels", "word=two"],
        ),
        (
            vec!["tune", "--model", model, "--stimuli", &empty],
            vec!["e.jsonl", "0 stimuli"],
        ),
        (
            vec!["tune", "--model", model, "--stimuli", "builtin:nope"],
            vec!["builtin:years"],
        ),
    ];
    for (args, needles) in cases {
        let (code, _, err) = run_ftri(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{n}` missing from {err}");
        }
    }
}
