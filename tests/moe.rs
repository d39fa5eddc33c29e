//! Mixture-of-experts models: expert switch-off against transformers (router column forced to
//! −inf before the top-k, computed by scripts/make_fixtures.py), the routing it changes, key/value
//! cache generation with experts off, and the errors for bad expert ids.

mod common;

use common::{close, fixture, load_metadata, load_tensors};
use ftri::intervene::experts::{parse_expert_set, switch_off};
use ftri::model::{ExpertHook, HookSet, KvCache, LoadOptions, Model, Site, SiteKind};

const MOE: [&str; 4] = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"];

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn sparse_layers(m: &Model) -> Vec<usize> {
    (0..m.cfg.n_layers)
        .filter(|&l| m.cfg.is_moe_layer(l))
        .collect()
}

#[test]
fn switch_off_matches_transformers_with_the_router_column_at_minus_inf() {
    for name in MOE {
        let m = load(name);
        let path = fixture(name).join("switch_off_expected.safetensors");
        let want = load_tensors(&path);
        let meta = load_metadata(&path);
        let set = parse_expert_set(&meta["experts"], &m.cfg).unwrap();
        let ids = m.encode(&meta["text"]).unwrap();
        let mut hooks = HookSet::new();
        for iv in switch_off(&set, None) {
            hooks.intervene(iv);
        }
        let layers = sparse_layers(&m);
        for &l in &layers {
            hooks.capture(Site::Block(l, SiteKind::ExpertIndices));
            hooks.capture(Site::Block(l, SiteKind::ExpertWeights));
        }
        let logits = m
            .forward(&m.batch(&[ids]).unwrap(), &mut hooks)
            .unwrap()
            .unwrap();
        let (diff, tol, ok) = close(&logits.get(0).unwrap(), &want["logits"]);
        assert!(ok, "{name}: logits differ by {diff:.3e} > {tol:.3e}");
        for &l in &layers {
            for k in [SiteKind::ExpertIndices, SiteKind::ExpertWeights] {
                let site = Site::Block(l, k);
                let got = hooks.get(site).unwrap().get(0).unwrap();
                let (diff, tol, ok) = close(&got, &want[&site.to_string()]);
                assert!(ok, "{name} {site}: {diff:.3e} > {tol:.3e}");
            }
            let idx: Vec<f32> = hooks
                .get(Site::Block(l, SiteKind::ExpertIndices))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for e in set.iter().filter(|e| e.layer == l) {
                assert!(
                    !idx.contains(&(e.expert as f32)),
                    "{name}: {e} still chosen"
                );
            }
        }
        // and without the switch-off the expert was chosen somewhere, so it changed something
        let mut plain = HookSet::new();
        let e0 = set[0];
        plain.capture(Site::Block(e0.layer, SiteKind::ExpertIndices));
        let base = m
            .forward(
                &m.batch(&[m.encode(&meta["text"]).unwrap()]).unwrap(),
                &mut plain,
            )
            .unwrap()
            .unwrap();
        let idx: Vec<f32> = plain
            .get(Site::Block(e0.layer, SiteKind::ExpertIndices))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            idx.contains(&(e0.expert as f32)),
            "{name}: {e0} never chosen"
        );
        let (_, _, same) = close(&base, &logits);
        assert!(!same, "{name}: switching {e0} off changed nothing");
    }
}

/// Expert hooks are zero exactly at the tokens not routed to the expert, and the routed weights
/// times the experts' outputs sum to the block output.
#[test]
fn expert_hooks_are_zero_off_route() {
    let m = load("mixtral");
    let l = 1;
    let mut hooks = HookSet::capturing(m.sites());
    let ids = m.encode("Alice didn't pay $4.5 for 12 pears.").unwrap();
    m.forward(&m.batch(&[ids]).unwrap(), &mut hooks).unwrap();
    let idx: Vec<Vec<f32>> = hooks
        .get(Site::Block(l, SiteKind::ExpertIndices))
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for e in 0..5 {
        let post = hooks
            .get(Site::Block(l, SiteKind::Expert(e, ExpertHook::Post)))
            .unwrap()
            .get(0)
            .unwrap();
        let norms: Vec<f32> = post.abs().unwrap().sum(1).unwrap().to_vec1().unwrap();
        for (t, row) in idx.iter().enumerate() {
            let routed = row.contains(&(e as f32));
            assert_eq!(norms[t] > 0.0, routed, "expert {e} token {t}");
        }
    }
}

#[test]
fn cached_generation_with_experts_off_matches_full_forwards() {
    for name in MOE {
        let m = load(name);
        let l = sparse_layers(&m)[0];
        let set = parse_expert_set(&format!("{l}.e0,{l}.e2"), &m.cfg).unwrap();
        let ivs = switch_off(&set, None);
        let prompt = m.encode("Alice didn't pay").unwrap();
        let mut all = prompt.clone();
        all.extend([5u32, 17, 42, 8]);
        let mut h = HookSet::new();
        ivs.iter().for_each(|iv| h.intervene(iv.clone()));
        let want = m
            .forward(&m.batch(std::slice::from_ref(&all)).unwrap(), &mut h)
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap();
        let mut cache = KvCache::default();
        let mut pos = 0;
        for chunk in [
            prompt.clone(),
            all[prompt.len()..prompt.len() + 1].to_vec(),
            all[prompt.len() + 1..].to_vec(),
        ] {
            let mut h = HookSet::new();
            ivs.iter().for_each(|iv| h.intervene(iv.clone()));
            let got = m
                .net
                .forward_cached(
                    &m.batch(std::slice::from_ref(&chunk)).unwrap(),
                    &mut h,
                    Some(&mut cache),
                )
                .unwrap()
                .unwrap()
                .get(0)
                .unwrap();
            let w = want.narrow(0, pos, chunk.len()).unwrap();
            let d = (got - w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "{name}: positions {pos}..: max diff {d}");
            pos += chunk.len();
        }
    }
}

#[test]
fn bad_expert_ids_are_one_line_user_errors() {
    let moe = load("qwen2_moe");
    let dense = load("llama");
    let cases: [(&Model, &str, &str); 6] = [
        (&dense, "0.e1", "has no mixture-of-experts layers"),
        (
            &moe,
            "0.e6",
            "expert 6 out of range (layers have 6 experts)",
        ),
        (
            &moe,
            "3.e0",
            "layer 3 out of range (the model has 3 layers)",
        ),
        (&moe, "1.e0", "layer 1 has a dense MLP"),
        (&moe, "0.e0,0.e1,0.e2,0.e3,0.e4", "leave fewer than the 2"),
        (&moe, "0.17", "is not an expert id"),
    ];
    for (m, spec, needle) in cases {
        let e = parse_expert_set(spec, &m.cfg).unwrap_err();
        assert!(ftri::error::is_user_error(&e), "{spec}: {e}");
        assert!(e.to_string().contains(needle), "{spec}: {e}");
    }
    // through the CLI: exit 2, one line
    let eval = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        eval.path(),
        "{\"prompt\": \"Alice\", \"target\": \" pay\"}\n",
    )
    .unwrap();
    let dir = fixture("qwen2_moe");
    for spec in ["0.e9", "1.e0"] {
        let (code, _, err) = common::run_ftri(&[
            "lesion",
            "--model",
            dir.to_str().unwrap(),
            "--experts",
            spec,
            "--eval",
            eval.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{spec}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // a neuron id on a mixture-of-experts layer names the expert spelling
    let (code, _, err) = common::run_ftri(&[
        "lesion",
        "--model",
        dir.to_str().unwrap(),
        "--neurons",
        "0.3",
        "--eval",
        eval.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mixture of experts"), "{err}");
}

/// Gradients flow through the routing weights and the scatter of expert outputs (attribution on
/// expert neurons): d(logit sum)/d(expert neurons) is nonzero only at routed tokens.
#[test]
fn gradients_reach_expert_neurons_at_routed_tokens() {
    let m = load("olmoe");
    let site = Site::Block(0, SiteKind::Expert(2, ExpertHook::Post));
    let mut hooks = HookSet::new();
    hooks.track_gradient(site);
    hooks.capture(Site::Block(0, SiteKind::ExpertIndices));
    let ids = m.encode("Alice didn't pay $4.5 for 12 pears.").unwrap();
    let logits = m
        .forward(&m.batch(&[ids]).unwrap(), &mut hooks)
        .unwrap()
        .unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let (_, g) = hooks.gradient(site, &grads).unwrap().unwrap();
    let g: Vec<f32> = g
        .get(0)
        .unwrap()
        .abs()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let idx: Vec<Vec<f32>> = hooks
        .get(Site::Block(0, SiteKind::ExpertIndices))
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!(idx.iter().any(|r| r.contains(&2.0)), "expert 2 unused");
    for (t, row) in idx.iter().enumerate() {
        assert_eq!(
            g[t] > 0.0,
            row.contains(&2.0),
            "token {t}: gradient {}",
            g[t]
        );
    }
}

/// transformers 5's in-memory layout, experts fused into 3-D tensors (`experts.gate_up_proj`
/// [E, 2I, d] with the gate rows first, `experts.down_proj` [E, d, I]), loads to the same model.
#[test]
fn fused_expert_tensors_load_to_the_same_model() {
    let src = fixture("olmoe");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut ts =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let m = load("olmoe");
    let n = m.cfg.moe.as_ref().unwrap().n_experts;
    for l in 0..m.cfg.n_layers {
        let p = format!("model.layers.{l}.mlp.experts");
        let take =
            |ts: &mut std::collections::HashMap<String, candle_core::Tensor>, e: usize, w: &str| {
                ts.remove(&format!("{p}.{e}.{w}.weight")).unwrap()
            };
        let (mut gu, mut down) = (vec![], vec![]);
        for e in 0..n {
            let g = take(&mut ts, e, "gate_proj");
            let u = take(&mut ts, e, "up_proj");
            gu.push(candle_core::Tensor::cat(&[g, u], 0).unwrap());
            down.push(take(&mut ts, e, "down_proj"));
        }
        ts.insert(
            format!("{p}.gate_up_proj"),
            candle_core::Tensor::stack(&gu, 0).unwrap(),
        );
        ts.insert(
            format!("{p}.down_proj"),
            candle_core::Tensor::stack(&down, 0).unwrap(),
        );
    }
    candle_core::safetensors::save(&ts, tmp.path().join("model.safetensors")).unwrap();
    let fused = Model::load(tmp.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let ids = m.encode("Alice didn't pay").unwrap();
    let run = |m: &Model| {
        m.forward(
            &m.batch(std::slice::from_ref(&ids)).unwrap(),
            &mut HookSet::new(),
        )
        .unwrap()
        .unwrap()
    };
    let (diff, tol, ok) = close(&run(&fused), &run(&m));
    assert!(ok, "fused vs per-expert: {diff:.3e} > {tol:.3e}");
}

/// The default `blocks.*.mlp.hook_post` finds nothing in an all-MoE model: the error says where its
/// neurons are, and recording them gives an atlas of expert neurons.
#[test]
fn an_all_moe_model_points_record_at_its_expert_neurons() {
    let m = load("mixtral");
    let err = ftri::model::hooks::select_sites(&m.sites(), "blocks.*.mlp.hook_post")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("matches no hook point") && err.contains("blocks.*.mlp.experts.*.hook_post"),
        "{err}"
    );
    let experts =
        ftri::model::hooks::select_sites(&m.sites(), "blocks.*.mlp.experts.*.hook_post").unwrap();
    let n_experts = m.cfg.moe.as_ref().unwrap().n_experts;
    assert_eq!(experts.len(), sparse_layers(&m).len() * n_experts);
    // a dense model's miss carries no expert hint
    let dense = load("llama");
    let err = ftri::model::hooks::select_sites(&dense.sites(), "blocks.*.nothing")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("experts"), "{err}");
}
