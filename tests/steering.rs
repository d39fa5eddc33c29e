//! `decompose --concept`: on a checkpoint with a planted neuron 1.5 (fires on dog/puppy, writes
//! bark), the component most aligned with the dog concept is the planted unit's direction, and
//! steering with it raises `bark` on held-out control prompts about as much as
//! difference-in-means steering does. Also writes F.json (what `serve --decomposition` reads).

mod common;

use common::planted::{planted_dir, stimuli};
use ftri::model::synth::SynthArch;
use serde_json::Value;

#[test]
fn the_planted_component_steers_like_difference_in_means() {
    let tmp = tempfile::tempdir().unwrap();
    let model = planted_dir(SynthArch::Gpt2);
    let corpus = tmp.path().join("c.txt");
    let mut lines = stimuli(80, true, 1);
    lines.extend(stimuli(80, false, 4));
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    // minimal pairs: the same filler words with and without a trigger
    let target = tmp.path().join("target.txt");
    let control = tmp.path().join("control.txt");
    std::fs::write(&target, stimuli(30, true, 7).join("\n")).unwrap();
    std::fs::write(&control, stimuli(40, false, 7).join("\n")).unwrap();
    let out = tmp.path().join("F.safetensors");
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let (code, stdout, err) = common::run_ftri(&[
        "decompose",
        "--model",
        &p(&model),
        "--corpus",
        &p(&corpus),
        "--ctx",
        "32",
        "--site",
        "blocks.1.mlp.hook_post",
        "--k",
        "8",
        "--concept",
        &p(&target),
        &p(&control),
        "--scales",
        "0.25,1",
        "--out",
        &p(&out),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let s = &r["steering"];
    eprintln!("{s}");
    let concept: Vec<&str> = s["concept_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(concept.contains(&"bark"), "{concept:?}");
    let cosine = s["cosine"].as_f64().unwrap();
    assert!(cosine > 0.8, "cosine {cosine}");
    // the chosen component is the planted one: it fires on the triggers and promotes bark
    let id = s["component"].as_str().unwrap();
    let c = r["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap();
    assert!(c["top"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["token"] == "dog" || t["token"] == "puppy"));
    let eff = |k: &str| -> Vec<f64> {
        s[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (ce, de) = (eff("component_effect"), eff("diff_means_effect"));
    // at scale 1 both raise the concept tokens by over half a nat, within a factor 2 of each other
    assert!(ce[1] > 0.5 && de[1] > 0.5, "{ce:?} {de:?}");
    assert!(ce[1] > 0.5 * de[1] && ce[1] < 2.0 * de[1], "{ce:?} {de:?}");
    // and more steering moves more
    assert!(ce[1] > ce[0] && de[1] > de[0], "{ce:?} {de:?}");
    // the report next to F, for serve --decomposition
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(j["components"].as_array().unwrap().len(), 8);
    assert_eq!(j["steering"]["component"], id);

    // bad input: exit 2 with one line
    for args in [
        vec!["--concept", "/nonexistent/t.txt", "/nonexistent/c.txt"],
        vec!["--component", "3"],
        vec!["--concept", &p(&target), &p(&control), "--component", "99"],
    ] {
        let mut a = vec![
            "decompose".to_string(),
            "--model".into(),
            p(&model),
            "--corpus".into(),
            p(&corpus),
            "--ctx".into(),
            "32".into(),
            "--max-tokens".into(),
            "400".into(),
            "--site".into(),
            "blocks.1.mlp.hook_post".into(),
            "--k".into(),
            "4".into(),
            "--out".into(),
            p(&tmp.path().join("G.safetensors")),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, _, err) = common::run_ftri(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
