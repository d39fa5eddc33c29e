//! The main job's report on real models.
//! - all-MiniLM-L6-v2 (an encoder): every built-in concept finds significant neurons, and
//!   negation's best neuron fires on "no"/"not"; no lesion or generation (no LM head).
//! - SmolLM2-135M-Instruct (the default, a GGUF decoder): lesioning the negation and French
//!   neurons lowers their continuations' log-probability further than every random same-layer
//!   set, plain English barely moves, and driving the French neurons changes the generation.
//!
//! Each is skipped when its model is absent, unless FTRI_REQUIRE_MINILM=1 / FTRI_REQUIRE_GGUF=1
//! (CI) makes that a failure.

mod common;

use common::real_model_present as present;
use ftri::demo::run_demo;
use std::path::{Path, PathBuf};

fn out_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

#[test]
fn the_demo_report_finds_each_concept() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    if !present(
        &model.join("model.safetensors"),
        "FTRI_REQUIRE_MINILM",
        "scripts/fetch_minilm.sh",
    ) {
        return;
    }
    let out = out_dir("demo-minilm");
    let r = run_demo(model.to_str().unwrap(), &out, 3, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(r.concepts.len(), 7);
    assert!(r.tokens > 5000, "{} tokens", r.tokens);
    for c in &r.concepts {
        assert!(c.significant >= 1, "{}: no significant neuron", c.concept);
        let best = &c.units[0];
        assert!(
            best.t.abs() > 0.0 && best.q <= 0.05,
            "{}: {best:?}",
            c.concept
        );
        assert!(
            c.lesion.is_none(),
            "an encoder has no continuations to lesion"
        );
    }
    assert!(r.steering.is_none(), "an encoder cannot generate");
    let negation = r.concepts.iter().find(|c| c.concept == "negation").unwrap();
    let marked: Vec<&str> = negation.units[0]
        .examples
        .iter()
        .map(|e| e.context.as_str())
        .collect();
    assert!(
        marked
            .iter()
            .any(|c| c.contains("«no»") || c.contains("«not»")),
        "negation's best neuron fires on {marked:?}"
    );
    assert!(out.join("report.json").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn on_smollm2_lesions_beat_every_random_set_and_the_clamp_steers() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(ftri::demo::DEFAULT_MODEL);
    if !present(&model, "FTRI_REQUIRE_GGUF", "scripts/fetch_gguf.sh") {
        return;
    }
    let out = out_dir("demo-smollm2");
    let r = run_demo(model.to_str().unwrap(), &out, 3, &mut |_| {}, &mut |_| {}).unwrap();
    for name in ["negation", "french"] {
        let c = r.concepts.iter().find(|c| c.concept == name).unwrap();
        let l = c
            .lesion
            .as_ref()
            .expect("a decoder's concept with an eval set is lesioned");
        assert_eq!(l.neurons.len(), ftri::demo::LESION_SIZE);
        assert!(l.beyond_every_random, "{name}: {l:?}");
        // well beyond: more than 5 random-set SDs below the random mean
        assert!(
            l.delta < l.random_mean - 5.0 * l.random_sd,
            "{name}: delta {} vs random {} ± {}",
            l.delta,
            l.random_mean,
            l.random_sd
        );
        assert!(
            l.control_delta.abs() < l.delta.abs() / 4.0,
            "{name}: plain English moved {} against {}",
            l.control_delta,
            l.delta
        );
        assert!(c
            .lesion_summary
            .as_ref()
            .unwrap()
            .contains("further than every"));
    }
    let s = r.steering.as_ref().expect("a decoder generates");
    assert!(!s.plain.is_empty() && s.plain != s.clamped, "{s:?}");
    let _ = std::fs::remove_dir_all(&out);
}
