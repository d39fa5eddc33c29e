//! The main job's report on the real all-MiniLM-L6-v2: every built-in concept finds significant
//! target-preferring neurons, and negation's best neuron fires on "no"/"not". Skipped when the
//! model is absent, unless FTRI_REQUIRE_MINILM=1 (CI) makes that a failure.

use ftri::demo::run_demo;
use std::path::Path;

#[test]
fn the_demo_report_finds_each_concept() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").exists() {
        assert!(
            std::env::var("FTRI_REQUIRE_MINILM").as_deref() != Ok("1"),
            "FTRI_REQUIRE_MINILM=1 but {} is missing (run scripts/fetch_minilm.sh)",
            model.display()
        );
        eprintln!("skipping: {} not fetched", model.display());
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("demo-{}", std::process::id()));
    let r = run_demo(model.to_str().unwrap(), &out, 3, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(r.concepts.len(), 7);
    assert!(r.tokens > 5000, "{} tokens", r.tokens);
    for c in &r.concepts {
        assert!(c.significant >= 1, "{}: no significant neuron", c.concept);
        let best = &c.units[0];
        assert!(best.t > 0.0 && best.q <= 0.05, "{}: {best:?}", c.concept);
    }
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
