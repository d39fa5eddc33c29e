//! Hook points as a library API: capture only what is asked, stop early, and intervene.

mod common;

use candle_core::{Tensor, D};
use common::fixture;
use ftri::model::{HookSet, Intervention, LoadOptions, Model, Op, Site, SiteKind};

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const TEXT: &str = "The dog was quiet.";

fn post(l: usize) -> Site {
    Site::Block(l, SiteKind::MlpPost)
}

#[test]
fn early_stop_gives_same_values_and_no_logits() {
    for name in ["gpt2", "llama", "bert"] {
        let m = load(name);
        let batch = m.batch(&[m.encode(TEXT).unwrap()]).unwrap();
        // outside attention: its internals would take layer 0 off the fused path (other rounding)
        let mut full = HookSet::capturing(common::sites_outside_attention(&m));
        let logits = m.forward(&batch, &mut full).unwrap();
        assert_eq!(logits.is_some(), m.net.unembed.is_some());
        let mut early = HookSet::capturing([post(0)]);
        assert_eq!(early.stop_after_layer(), Some(0));
        let none = m.forward(&batch, &mut early).unwrap();
        assert!(none.is_none(), "{name}: stopped early, so no logits");
        assert_eq!(
            max_abs_diff(early.get(post(0)).unwrap(), full.get(post(0)).unwrap()),
            0.0
        );
        assert!(
            early.get(Site::Block(1, SiteKind::ResidPre)).is_none(),
            "uncaptured sites are not kept"
        );
    }
}

#[test]
fn differentiable_path_matches_fast_path() {
    for name in [
        "gpt2",
        "llama3",
        "gpt_neox",
        "bert",
        "gemma2",
        "gemma3_text",
    ] {
        let m = load(name);
        let batch = m
            .batch(&[
                m.encode(TEXT).unwrap(),
                m.encode("In 1999, Riverton built a new bridge!").unwrap(),
            ])
            .unwrap();
        // outside attention: capturing its internals would take the unfused path in both
        let sites = common::sites_outside_attention(&m);
        let mut fast = HookSet::capturing(sites.iter().copied());
        m.forward(&batch, &mut fast).unwrap();
        let mut slow = HookSet::capturing(sites.iter().copied());
        slow.differentiable = true;
        m.forward(&batch, &mut slow).unwrap();
        for &s in &sites {
            let d = max_abs_diff(fast.get(s).unwrap(), slow.get(s).unwrap());
            assert!(
                d < 1e-4,
                "{name} {s}: fused and differentiable paths differ by {d}"
            );
        }
    }
}

fn run_with(m: &Model, ivs: Vec<Intervention>, capture: &[Site]) -> HookSet {
    let batch = m.batch(&[m.encode(TEXT).unwrap()]).unwrap();
    let mut h = HookSet::new();
    for s in capture {
        h.capture(*s);
    }
    for iv in ivs {
        h.intervene(iv);
    }
    m.forward(&batch, &mut h).unwrap();
    h
}

#[test]
fn interventions_touch_only_selected_units_and_positions() {
    let m = load("gpt2");
    let sites = [post(0), Site::Block(0, SiteKind::ResidPost), Site::Logits];
    let base = run_with(&m, vec![], &sites);
    let a0 = base.get(post(0)).unwrap().squeeze(0).unwrap();
    let t = a0.dim(0).unwrap();
    type Expected = Box<dyn Fn(f32) -> f32>;
    let cases: Vec<(Op, Expected)> = vec![
        (Op::Zero, Box::new(|_| 0.0)),
        (Op::Scale(3.0), Box::new(|x| 3.0 * x)),
        (Op::Set(5.5), Box::new(|_| 5.5)),
        (Op::Add(-1.25), Box::new(|x| x - 1.25)),
    ];
    for (op, f) in cases {
        let iv = Intervention {
            site: post(0),
            units: Some(vec![3, 17]),
            positions: Some(vec![1, t - 1]),
            op: op.clone(),
        };
        let h = run_with(&m, vec![iv], &sites);
        let a = h
            .get(post(0))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let a0v = a0.to_vec2::<f32>().unwrap();
        for (p, row) in a.iter().enumerate() {
            for (u, &x) in row.iter().enumerate() {
                let selected = [3, 17].contains(&u) && [1, t - 1].contains(&p);
                let want = if selected { f(a0v[p][u]) } else { a0v[p][u] };
                assert!(
                    (x - want).abs() < 1e-5,
                    "{op:?} at pos {p} unit {u}: {x} vs {want}"
                );
            }
        }
        // the change propagates downstream, and only from the first changed position on (causal)
        let r0 = base
            .get(Site::Block(0, SiteKind::ResidPost))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let r = h
            .get(Site::Block(0, SiteKind::ResidPost))
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_eq!(
            max_abs_diff(&r.get(0).unwrap(), &r0.get(0).unwrap()),
            0.0,
            "{op:?}: position 0 untouched"
        );
        assert!(
            max_abs_diff(&r.get(1).unwrap(), &r0.get(1).unwrap()) > 1e-4,
            "{op:?}: position 1 changed"
        );
    }
}

#[test]
fn patching_in_the_same_activation_changes_nothing() {
    let m = load("llama");
    let site = Site::Block(1, SiteKind::ResidPre);
    let base = run_with(&m, vec![], &[site, Site::Logits]);
    let act = base.get(site).unwrap().clone();
    let patched = run_with(
        &m,
        vec![Intervention {
            site,
            units: None,
            positions: None,
            op: Op::Replace(act),
        }],
        &[Site::Logits],
    );
    assert_eq!(
        max_abs_diff(
            base.get(Site::Logits).unwrap(),
            patched.get(Site::Logits).unwrap()
        ),
        0.0
    );
}

#[test]
fn zeroing_every_mlp_output_equals_removing_the_mlps_contribution() {
    // With every hook_mlp_out zeroed, resid_post = resid_mid exactly (sequential blocks).
    let m = load("gpt2");
    let ivs = (0..m.cfg.n_layers)
        .map(|l| Intervention {
            site: Site::Block(l, SiteKind::MlpOut),
            units: None,
            positions: None,
            op: Op::Zero,
        })
        .collect();
    let sites: Vec<Site> = (0..m.cfg.n_layers)
        .flat_map(|l| {
            [
                Site::Block(l, SiteKind::ResidMid),
                Site::Block(l, SiteKind::ResidPost),
            ]
        })
        .collect();
    let h = run_with(&m, ivs, &sites);
    for l in 0..m.cfg.n_layers {
        let d = max_abs_diff(
            h.get(Site::Block(l, SiteKind::ResidMid)).unwrap(),
            h.get(Site::Block(l, SiteKind::ResidPost)).unwrap(),
        );
        assert_eq!(d, 0.0, "layer {l}");
    }
}

#[test]
fn steering_vector_moves_logits_along_its_unembedding() {
    // Adding a multiple of token k's unembedding row to the last residual raises logit k most.
    let m = load("gpt2");
    let last = m.cfg.n_layers - 1;
    let k = 42usize;
    let row: Vec<f32> = m
        .net
        .unembed
        .as_ref()
        .unwrap()
        .get(k)
        .unwrap()
        .to_vec1()
        .unwrap();
    let vec: Vec<f32> = row.iter().map(|x| x * 50.0).collect();
    let iv = Intervention {
        site: Site::Block(last, SiteKind::ResidPost),
        units: None,
        positions: None,
        op: Op::AddVector(vec),
    };
    let h = run_with(&m, vec![iv], &[Site::Logits]);
    let top = h
        .get(Site::Logits)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert!(
        top.iter().all(|&t| t as usize == k),
        "argmax per position: {top:?}"
    );
}

#[test]
fn out_of_range_unit_is_a_clear_error() {
    let m = load("gpt2");
    let batch = m.batch(&[m.encode(TEXT).unwrap()]).unwrap();
    let mut h = HookSet::new();
    h.intervene(Intervention {
        site: post(0),
        units: Some(vec![m.cfg.d_mlp]),
        positions: None,
        op: Op::Zero,
    });
    let err = m.forward(&batch, &mut h).unwrap_err();
    assert!(ftri::error::is_user_error(&err));
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn stopping_at_the_last_neurons_skips_the_rest() {
    let m = load("gpt2");
    let last = m.cfg.n_layers - 1;
    let h = HookSet::capturing([post(0), post(last)]);
    assert!(h.done_after(post(last)));
    assert!(!h.done_after(Site::Block(last, SiteKind::MlpPre)));
    assert!(!h.done_after(post(0)));
    let mut with_logits = HookSet::capturing([post(0)]);
    with_logits.capture(Site::Logits);
    assert!(!with_logits.done_after(post(last)));
}

#[test]
fn replacing_an_activation_carries_the_other_texts_computation() {
    // resid_pre of layer 1 is all that layers 1.. read, so putting text B's there makes text A's
    // pass give B's logits at every replaced position, and leaves earlier positions alone
    for name in ["llama", "gpt2"] {
        let m = load(name);
        let a = m.encode("The dog was quiet and the cat slept.").unwrap();
        let b = m.encode("In 1999, Riverton built a new bridge!").unwrap();
        let n = a.len().min(b.len());
        let (a, b) = (a[..n].to_vec(), b[..n].to_vec());
        assert_ne!(a, b);
        let site = Site::Block(1, SiteKind::ResidPre);
        let run = |ids: &[u32], ivs: Vec<Intervention>| {
            let mut h = HookSet::capturing([site, Site::Logits]);
            for iv in ivs {
                h.intervene(iv);
            }
            m.forward(&m.batch(&[ids.to_vec()]).unwrap(), &mut h)
                .unwrap();
            h
        };
        let (ha, hb) = (run(&a, vec![]), run(&b, vec![]));
        let (la, lb) = (
            ha.get(Site::Logits).unwrap().squeeze(0).unwrap(),
            hb.get(Site::Logits).unwrap().squeeze(0).unwrap(),
        );
        let from_b = |positions: Option<Vec<usize>>| Intervention {
            site,
            units: None,
            positions,
            op: Op::Replace(hb.get(site).unwrap().clone()),
        };
        // every position replaced: B's logits everywhere
        let all = run(&a, vec![from_b(None)]);
        let l = all.get(Site::Logits).unwrap().squeeze(0).unwrap();
        assert!(max_abs_diff(&la, &lb) > 1e-2, "{name}: the texts differ");
        assert!(
            max_abs_diff(&l, &lb) < 1e-6,
            "{name}: replaced pass = B's pass"
        );
        // from position p on: A's logits before p, B's hidden state from p on, so position p
        // (which attends A's earlier positions) is neither
        let p = n / 2;
        let part = run(&a, vec![from_b(Some((p..n).collect()))]);
        let l = part.get(Site::Logits).unwrap().squeeze(0).unwrap();
        let r = part.get(site).unwrap().squeeze(0).unwrap();
        let rb = hb.get(site).unwrap().squeeze(0).unwrap();
        for i in 0..n {
            let (li, lai) = (l.get(i).unwrap(), la.get(i).unwrap());
            if i < p {
                assert_eq!(
                    max_abs_diff(&li, &lai),
                    0.0,
                    "{name}: position {i} untouched"
                );
            } else {
                assert_eq!(
                    max_abs_diff(&r.get(i).unwrap(), &rb.get(i).unwrap()),
                    0.0,
                    "{name}: position {i} holds B's activation"
                );
                assert!(
                    max_abs_diff(&li, &lai) > 1e-3,
                    "{name}: position {i} changed"
                );
            }
        }
    }
}

#[test]
fn gradients_are_returned_or_their_absence_is_an_error() {
    let m = load("llama");
    let batch = m.batch(&[m.encode(TEXT).unwrap()]).unwrap();
    let tracked = Site::Block(1, SiteKind::MlpPost);
    let mut h = HookSet::new();
    h.track_gradient(tracked);
    let logits = m.forward(&batch, &mut h).unwrap().unwrap();
    // a loss that depends on the tracked site: its gradient comes back
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let (act, g) = h.gradient(tracked, &grads).unwrap().unwrap();
    assert_eq!(act.dims(), g.dims());
    assert!(
        g.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // a site that was never tracked (so never reached as one): None
    assert!(h
        .gradient(Site::Block(0, SiteKind::MlpPost), &grads)
        .unwrap()
        .is_none());
    // a loss the tracked site does not feed: an error, not zeros
    let unrelated = candle_core::Var::new(&[1f32, 2.0], m.device()).unwrap();
    let other = unrelated
        .as_tensor()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let err = h.gradient(tracked, &other).unwrap_err();
    assert!(err.to_string().contains("no gradient"), "{err}");
}
