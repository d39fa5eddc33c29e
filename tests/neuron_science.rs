//! Ground truth for the neuron verbs: checkpoints with a planted neuron of known layer and index.

mod common;

use common::planted::{planted, planted_dir, stimuli, PLANTED};
use ftri::intervene::eval::{score, tokenize, EvalItem};
use ftri::intervene::{interventions, parse_neuron_set, random_like, OpSpec};
use ftri::model::generate::{generate, GenerateOptions};
use ftri::model::synth::SynthArch;
use ftri::model::Model;
use ftri::rng::Rng;

fn items(prompts: &[String]) -> Vec<EvalItem> {
    prompts
        .iter()
        .map(|p| EvalItem {
            prompt: p.clone(),
            target: " bark".into(),
        })
        .collect()
}

fn ending_with_trigger(n: usize) -> Vec<String> {
    stimuli(n, false, 1)
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s} {}", if i % 2 == 0 { "dog" } else { "puppy" }))
        .collect()
}

fn no_means(_: usize) -> anyhow::Result<Vec<f32>> {
    unreachable!("no mean op here")
}

fn ivs(m: &Model, set: &str, op: &str) -> Vec<ftri::model::Intervention> {
    let set = parse_neuron_set(set, &m.cfg).unwrap();
    interventions(
        &set,
        &OpSpec::parse(op).unwrap(),
        None,
        m.cfg.d_mlp,
        &no_means,
    )
    .unwrap()
}

#[test]
fn zeroing_the_planted_neuron_removes_its_effect_and_a_random_one_does_not() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let seqs = tokenize(&m, &items(&ending_with_trigger(12))).unwrap();
        let base = score(&m, &seqs, &[]).unwrap();
        assert!(
            base.accuracy > 0.9 && base.mean_logprob > -0.5,
            "{arch:?}: the planted effect is there: {base:?}"
        );
        let lesioned = score(&m, &seqs, &ivs(&m, PLANTED, "zero")).unwrap();
        assert!(
            lesioned.mean_logprob - base.mean_logprob < -3.0,
            "{arch:?}: {base:?} → {lesioned:?}"
        );
        let planted_set = parse_neuron_set(PLANTED, &m.cfg).unwrap();
        let mut rng = Rng::new(9);
        for _ in 0..5 {
            let r = random_like(&planted_set, m.cfg.d_mlp, &mut rng);
            let rivs = interventions(&r, &OpSpec::Zero, None, m.cfg.d_mlp, &no_means).unwrap();
            let d = score(&m, &seqs, &rivs).unwrap().mean_logprob - base.mean_logprob;
            assert!(
                d.abs() < 0.3,
                "{arch:?}: random neuron {:?} moved log p by {d}",
                r
            );
        }
    }
}

#[test]
fn clamping_the_planted_neuron_creates_its_effect_on_control_prompts() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let seqs = tokenize(&m, &items(&stimuli(12, false, 2))).unwrap();
        let base = score(&m, &seqs, &[]).unwrap();
        let clamped = score(&m, &seqs, &ivs(&m, PLANTED, "set=5")).unwrap();
        assert!(
            base.mean_logprob < -3.0,
            "{arch:?}: control prompts do not predict bark: {base:?}"
        );
        assert!(
            clamped.mean_logprob - base.mean_logprob > 3.0 && clamped.accuracy > 0.9,
            "{arch:?}: {base:?} → {clamped:?}"
        );
    }
}

#[test]
fn generation_with_the_clamp_produces_the_planted_token() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let bark = m.tokenizer.token_to_id("bark").unwrap();
        let prompt = m.encode("w15 w40 w77 w3").unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 4,
            temperature: 0.0,
            seed: 0,
        };
        let free = generate(&m, &prompt, &[], &opts).unwrap();
        let held = generate(&m, &prompt, &ivs(&m, PLANTED, "set=5"), &opts).unwrap();
        assert_eq!(held, vec![bark; 4], "{arch:?}");
        assert_ne!(
            free, held,
            "{arch:?}: without the clamp the model says something else"
        );
    }
}

fn ftri(args: &[&str]) -> (i32, String, String) {
    common::run_ftri(args)
}

#[test]
fn lesion_cli_reports_delta_and_random_baseline() {
    let dir = planted_dir(SynthArch::Gpt2);
    let tmp = tempfile::tempdir().unwrap();
    let eval = tmp.path().join("eval.jsonl");
    let lines: Vec<String> = ending_with_trigger(8)
        .iter()
        .map(|p| serde_json::json!({"prompt": p, "target": " bark"}).to_string())
        .collect();
    std::fs::write(&eval, lines.join("\n")).unwrap();
    let (code, out, err) = ftri(&[
        "lesion",
        "--model",
        dir.to_str().unwrap(),
        "--neurons",
        PLANTED,
        "--op",
        "zero",
        "--eval",
        eval.to_str().unwrap(),
        "--random-baseline",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["neurons"][0], PLANTED);
    assert!(v["delta"]["mean_logprob"].as_f64().unwrap() < -3.0, "{v}");
    assert_eq!(v["random_baseline"]["sets"], 4);
    assert!(
        v["random_baseline"]["mean_delta"]["mean_logprob"]
            .as_f64()
            .unwrap()
            .abs()
            < 0.3,
        "{v}"
    );
    assert_eq!(v["random_baseline"]["as_extreme"], 0);
}

#[test]
fn neuron_verbs_reject_bad_input_with_exit_2() {
    let dir = planted_dir(SynthArch::Gpt2);
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let no_target = tmp.path().join("bad.jsonl");
    std::fs::write(&no_target, "{\"prompt\": \"w1 dog\"}\n").unwrap();
    let good = tmp.path().join("good.jsonl");
    std::fs::write(&good, "{\"prompt\": \"w1 dog\", \"target\": \" bark\"}\n").unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let (g, e) = (good.to_str().unwrap(), empty.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["lesion", "--model", d, "--neurons", "1.9999", "--eval", g],
            "out of range",
        ),
        (
            vec!["lesion", "--model", d, "--neurons", "7.1", "--eval", g],
            "layer 7 out of range",
        ),
        (
            vec![
                "lesion",
                "--model",
                d,
                "--neurons",
                "1.5",
                "--eval",
                no_target.to_str().unwrap(),
            ],
            "missing string field `target`",
        ),
        (
            vec![
                "lesion",
                "--model",
                d,
                "--neurons",
                "1.5",
                "--op",
                "mean",
                "--eval",
                g,
            ],
            "needs --atlas",
        ),
        (
            vec![
                "lesion",
                "--model",
                d,
                "--neurons",
                "1.5",
                "--op",
                "boil",
                "--eval",
                g,
            ],
            "unknown --op",
        ),
        (
            vec![
                "generate",
                "--model",
                d,
                "--prompt",
                "w1",
                "--neurons",
                "x.y",
            ],
            "not a neuron id",
        ),
        (
            vec!["localize", "--model", d, "--target", e, "--control", g],
            "stimuli",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, err) = ftri(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
    }
}

/// Neuron Adjust (skill unlearning): pre-activation statistics recorded on forget-skill text and on
/// retain text; adjusting the planted neuron removes `bark` after triggers, and leaves other text be.
#[test]
fn neuron_adjust_unlearns_the_planted_skill() {
    let dir = planted_dir(SynthArch::Gpt2);
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("forget.txt"), stimuli(40, true, 11).join("\n")).unwrap();
    std::fs::write(p("retain.txt"), stimuli(40, false, 12).join("\n")).unwrap();
    for name in ["forget", "retain"] {
        let (code, _, err) = ftri(&[
            "record",
            "--model",
            d,
            "--corpus",
            &p(&format!("{name}.txt")),
            "--out",
            &p(name),
            "--sites",
            "blocks.*.mlp.hook_pre",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let eval_lines = |prompts: Vec<String>, target: &str| -> String {
        prompts
            .iter()
            .map(|q| serde_json::json!({"prompt": q, "target": target}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(
        p("eval.jsonl"),
        eval_lines(ending_with_trigger(10), " bark"),
    )
    .unwrap();
    std::fs::write(p("ctl.jsonl"), eval_lines(stimuli(10, false, 13), " w20")).unwrap();
    let op = format!("adjust={}", p("retain"));
    let (code, out, err) = ftri(&[
        "lesion",
        "--model",
        d,
        "--neurons",
        PLANTED,
        "--op",
        &op,
        "--atlas",
        &p("forget"),
        "--eval",
        &p("eval.jsonl"),
        "--control-eval",
        &p("ctl.jsonl"),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["delta"]["mean_logprob"].as_f64().unwrap() < -3.0, "{v}");
    assert!(
        v["control"]["delta"]["mean_logprob"]
            .as_f64()
            .unwrap()
            .abs()
            < 0.1,
        "{v}"
    );
    // an atlas without hook_pre statistics is refused clearly
    let (code, _, err) = ftri(&[
        "lesion",
        "--model",
        d,
        "--neurons",
        PLANTED,
        "--op",
        &op,
        "--eval",
        &p("eval.jsonl"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs --atlas"), "{err}");
}

fn adjust_op(mu_f: f32, sd_f: f32, mu_r: f32, sd_r: f32) -> ftri::model::Op {
    ftri::model::Op::Adjust {
        mu_f: vec![mu_f],
        sd_f: vec![sd_f],
        mu_r: vec![mu_r],
        sd_r: vec![sd_r],
    }
}

#[test]
fn neuron_adjust_decides_by_likelihood_and_leaves_other_units_alone() {
    use candle_core::{DType, Device, Tensor};
    use ftri::model::hooks::apply_intervention;
    use ftri::model::{Intervention, Site, SiteKind};
    let site = Site::Block(0, SiteKind::MlpPre);
    // unit 1: forget N(0, 10), retain N(1, 0.1). h = 3 is nearer the retain mean but far more
    // likely under the wide forget Gaussian, so it moves to μr + (h − μf)·σr/σf = 1.03; h = 1.05
    // is retain-like and passes. Unit 0 holds values that would overflow any map, unit 2 a NaN-free
    // huge number: neither is selected, so both must come back bit for bit.
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let x = Tensor::new(
            &[[[6.0e4f32, 3.0, 6.0e4], [-6.0e4, 1.05, 1.0]]],
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        let iv = Intervention {
            site,
            units: Some(vec![1]),
            positions: None,
            op: adjust_op(0.0, 10.0, 1.0, 0.1),
        };
        let y = apply_intervention(&x, &iv, 0).unwrap();
        let (xv, yv): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (
            x.to_dtype(DType::F32)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap(),
            y.to_dtype(DType::F32)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap(),
        );
        let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        assert!((yv[0][1] - 1.03).abs() < tol, "{dtype:?}: {}", yv[0][1]);
        assert_eq!(yv[1][1], xv[1][1], "{dtype:?}: retain-like value moved");
        for r in 0..2 {
            for u in [0, 2] {
                assert_eq!(
                    yv[r][u].to_bits(),
                    xv[r][u].to_bits(),
                    "{dtype:?}: unit {u} touched"
                );
            }
        }
        assert!(
            yv.iter().flatten().all(|v| v.is_finite()),
            "{dtype:?}: {yv:?}"
        );
        // a zero σ is floored, never a division by zero
        let iv0 = Intervention {
            op: adjust_op(3.0, 0.0, 1.0, 0.0),
            ..iv.clone()
        };
        let y0 = apply_intervention(&x, &iv0, 0).unwrap();
        assert!(y0
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
        // positions restrict it too: only position 1 may change, and there h = 1.05 stays
        let ivp = Intervention {
            positions: Some(vec![1]),
            ..iv.clone()
        };
        let yp: Vec<Vec<f32>> = apply_intervention(&x, &ivp, 0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(yp, xv, "{dtype:?}");
    }
}

/// The neuron verbs run on a Gemma 3 checkpoint (q/k norms, sandwich norms, two rotary bases,
/// windows): info, describe, lesion with random baselines, attribution, clamped generation.
#[test]
fn gemma3_text_runs_through_the_neuron_verbs() {
    let dir = common::fixture("gemma3_text");
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let (code, out, err) = ftri(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let info = json(&["info", "--model", model, "--json"]);
    assert_eq!(info["architecture"], "gemma3_text");
    assert_eq!(info["head_dim"], 20);

    let d = json(&["describe", "--model", model, "--neuron", "2.5", "--json"]);
    assert_eq!(d["promotes"].as_array().unwrap().len(), 20);
    assert!(d["reads_up"].is_array());

    let eval = tmp.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "{\"prompt\": \"The dog was\", \"target\": \" quiet.\"}\n\
         {\"prompt\": \"Alice counted\", \"target\": \" 3 apples.\"}\n",
    )
    .unwrap();
    let l = json(&[
        "lesion",
        "--model",
        model,
        "--neurons",
        "1.3,2.7",
        "--eval",
        eval.to_str().unwrap(),
        "--random-baseline",
        "3",
        "--json",
    ]);
    let delta = l["delta"]["mean_logprob"].as_f64().unwrap();
    assert!(
        delta.is_finite() && delta != 0.0,
        "lesion changed nothing: {l}"
    );
    assert_eq!(l["random_baseline"]["sets"], 3);

    let (target, control) = (tmp.path().join("t.txt"), tmp.path().join("c.txt"));
    std::fs::write(&target, "The dog was quiet.\nThe garden was quiet.\n").unwrap();
    std::fs::write(
        &control,
        "In 1999 the bridge cost $4.5 million.\nAlice counted 3 apples.\n",
    )
    .unwrap();
    let a = json(&[
        "localize",
        "--model",
        model,
        "--target",
        target.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--method",
        "attribution",
        "--top",
        "5",
        "--json",
    ]);
    let units = a["neurons"].as_array().unwrap();
    assert_eq!(units.len(), 5);
    assert!(units
        .iter()
        .all(|u| u["score"].as_f64().unwrap().is_finite()));

    let (code, out, err) = ftri(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "Alice didn't pay",
        "--neurons",
        "0.3",
        "--op",
        "set=4",
        "--max-new-tokens",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Alice"), "{out}");
}
