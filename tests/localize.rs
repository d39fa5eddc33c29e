//! The localizer finds planted neurons, and attribution equals finite differences.

mod common;

use common::fixture;
use common::planted::{planted, stimuli, PLANTED};
use ftri::analyze::localize::{contrast, log_likelihood, unit_values, Method, Reduce, Stimulus};
use ftri::model::synth::SynthArch;
use ftri::model::{HookSet, Intervention, LoadOptions, Model, Op, Site, SiteKind};

fn stims(texts: Vec<String>) -> Vec<Stimulus> {
    texts
        .into_iter()
        .map(|text| Stimulus { text, target: None })
        .collect()
}

fn rank_of(
    m: &Model,
    target: &[Stimulus],
    control: &[Stimulus],
    method: Method,
) -> (usize, String) {
    let sites: Vec<Site> = (0..m.cfg.n_layers)
        .map(|l| Site::Block(l, SiteKind::MlpPost))
        .collect();
    let t = unit_values(m, target, &sites, Reduce::Mean, method, 5).unwrap();
    let c = unit_values(m, control, &sites, Reduce::Mean, method, 5).unwrap();
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, m.cfg.d_mlp)).collect();
    let f = contrast(&sized, &t, &c).unwrap();
    (
        f.iter().position(|x| x.neuron == PLANTED).unwrap(),
        f[0].neuron.clone(),
    )
}

#[test]
fn contrast_ranks_the_planted_neuron_first() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let (rank, top) = rank_of(
            &m,
            &stims(stimuli(16, true, 4)),
            &stims(stimuli(16, false, 5)),
            Method::Contrast,
        );
        assert_eq!(
            rank,
            0,
            "{arch:?}: planted neuron ranked {} (top: {top})",
            rank + 1
        );
    }
}

#[test]
fn attribution_ranks_the_planted_neuron_first() {
    // the metric is the log-likelihood of `bark` after the trigger: the planted neuron carries it
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let with_target = |texts: Vec<String>| -> Vec<Stimulus> {
            texts
                .into_iter()
                .map(|text| Stimulus {
                    text,
                    target: Some(" bark".into()),
                })
                .collect()
        };
        let triggers: Vec<String> = stimuli(16, false, 6)
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s} {}", ["dog", "puppy"][i % 2]))
            .collect();
        let (rank, top) = rank_of(
            &m,
            &with_target(triggers),
            &with_target(stimuli(16, false, 7)),
            Method::Attribution,
        );
        assert_eq!(
            rank,
            0,
            "{arch:?}: planted neuron ranked {} (top: {top})",
            rank + 1
        );
    }
}

/// d(log-likelihood)/d(activation) from backprop equals a central finite difference.
#[test]
fn attribution_gradient_matches_finite_differences() {
    for name in ["gpt2", "llama"] {
        let m = Model::load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap();
        let ids = m.encode("The dog was quiet.").unwrap();
        let chunk = vec![(ids.clone(), ids.len())];
        let site = Site::Block(0, SiteKind::MlpPost);
        let batch = m.batch(std::slice::from_ref(&ids)).unwrap();
        let mut h = HookSet::new();
        h.track_gradient(site);
        let logits = m.forward(&batch, &mut h).unwrap().unwrap();
        let grads = log_likelihood(&logits, &chunk).unwrap().backward().unwrap();
        let (_, g) = h.gradient(site, &grads).unwrap().unwrap();
        let g = g.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let metric_with = |delta: f32, unit: usize, pos: usize| -> f64 {
            let mut h = HookSet::new();
            h.intervene(Intervention {
                site,
                units: Some(vec![unit]),
                positions: Some(vec![pos]),
                op: Op::Add(delta),
            });
            h.differentiable = true; // same ops as the gradient pass
            let logits = m.forward(&batch, &mut h).unwrap().unwrap();
            log_likelihood(&logits, &chunk)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let eps = 1e-2f32;
        for (unit, pos) in [(3usize, 1usize), (10, 2), (40, 0), (7, ids.len() - 2)] {
            let fd =
                (metric_with(eps, unit, pos) - metric_with(-eps, unit, pos)) / (2.0 * eps as f64);
            let an = g[pos][unit] as f64;
            assert!(
                (fd - an).abs() < 2e-2 * an.abs().max(0.05),
                "{name} unit {unit} pos {pos}: backprop {an} vs finite difference {fd}"
            );
        }
    }
}
