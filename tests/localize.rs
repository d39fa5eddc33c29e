//! The localizer finds planted neurons, and attribution equals finite differences.

mod common;

use common::fixture;
use common::planted::{planted, stimuli, PLANTED};
use ftri::analyze::localize::{contrast, localize, rank, Direction, LocalizeRequest};
use ftri::analyze::responses::{log_likelihood, unit_values, Method, Readout, Reduce, Stimulus};
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
    let r = Readout {
        reduce: Reduce::Mean,
        method,
        include_special: false,
        batch: 5,
    };
    let t = unit_values(m, target, &sites, &r).unwrap();
    let c = unit_values(m, control, &sites, &r).unwrap();
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, m.cfg.d_mlp)).collect();
    let f = rank(contrast(&sized, &t, &c, false).unwrap(), Direction::Target);
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

fn request(target: Vec<String>, control: Vec<String>, direction: Direction) -> LocalizeRequest {
    LocalizeRequest {
        target: stims(target),
        control: stims(control),
        site: SiteKind::MlpPost,
        layers: vec![0, 1],
        readout: Readout {
            reduce: Reduce::Mean,
            method: Method::Contrast,
            include_special: false,
            batch: 8,
        },
        direction,
        paired: false,
        fdr: 0.05,
        top: 20,
    }
}

#[test]
fn results_are_signed_and_swapping_the_sets_swaps_the_lists() {
    let m = planted(SynthArch::Gpt2);
    let (with, without) = (stimuli(16, true, 4), stimuli(16, false, 5));
    let r = localize(
        &m,
        &request(with.clone(), without.clone(), Direction::Target),
    )
    .unwrap();
    assert_eq!(r.direction, "target");
    assert_eq!(r.neurons[0].neuron, PLANTED);
    assert!(
        r.neurons.iter().all(|f| f.score > 0.0),
        "target lists t > 0 only"
    );
    assert!(r.neurons[0].q <= 0.05 && r.neurons[0].q >= r.neurons[0].p);
    assert!(r.significant >= 1 && r.significant <= r.units_tested);
    // a stricter FDR never finds more
    let mut strict = request(with.clone(), without.clone(), Direction::Target);
    strict.fdr = 1e-30;
    let rs = localize(&m, &strict).unwrap();
    assert!(rs.significant <= r.significant);
    assert_eq!(rs.fdr, 1e-30);

    // swapped: the planted neuron prefers the control now, so it leaves the target list...
    let swapped = localize(
        &m,
        &request(without.clone(), with.clone(), Direction::Target),
    )
    .unwrap();
    assert!(
        swapped.neurons.iter().all(|f| f.neuron != PLANTED),
        "planted neuron still listed as target-preferring"
    );
    // ...and heads the control list, with t of the opposite sign
    let ctl = localize(&m, &request(without, with, Direction::Control)).unwrap();
    assert_eq!(ctl.neurons[0].neuron, PLANTED);
    assert!((ctl.neurons[0].score + r.neurons[0].score).abs() < 1e-6 * r.neurons[0].score.abs());
    assert!(ctl.neurons.iter().all(|f| f.score < 0.0));
    assert!(ctl.significant >= 1);
}

#[test]
fn paired_designs_use_the_paired_tests() {
    let m = planted(SynthArch::Llama);
    // pair i: the same filler words, with and without the trigger
    let control = stimuli(12, false, 6);
    let target: Vec<String> = control
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut w: Vec<&str> = s.split(' ').collect();
            w[2] = if i % 2 == 0 { "dog" } else { "puppy" };
            w.join(" ")
        })
        .collect();
    let mut req = request(target.clone(), control.clone(), Direction::Target);
    req.paired = true;
    let r = localize(&m, &req).unwrap();
    assert_eq!(r.test, "paired");
    assert_eq!(r.neurons[0].neuron, PLANTED);
    // every pair moves the planted neuron up: the signed-rank test's smallest two-sided p, 2/2^12
    let w = r.neurons[0].wilcoxon_p.unwrap();
    assert!((w - 2.0 / 4096.0).abs() < 1e-12, "Wilcoxon p {w}");
    // independent sets of different sizes cannot be paired
    req.control.pop();
    assert!(localize(&m, &req).is_err());
}

#[test]
fn special_tokens_stay_out_of_reductions_unless_asked() {
    // the llama fixture's tokenizer adds <s>, which is the same for every stimulus
    let m = Model::load(fixture("llama").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let text = "hello world again";
    let ids = m.encode(text).unwrap();
    assert!(m.tokenizer.is_special(ids[0]) && !m.tokenizer.is_special(ids[1]));
    let site = Site::Block(1, SiteKind::MlpPost);
    let mut hooks = HookSet::capturing([site]);
    m.forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut hooks)
        .unwrap();
    let acts = hooks.take(site).unwrap().squeeze(0).unwrap();
    let by_hand = |from: usize| -> Vec<f32> {
        acts.narrow(0, from, ids.len() - from)
            .unwrap()
            .mean(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for (include_special, from) in [(false, 1), (true, 0)] {
        let r = Readout {
            reduce: Reduce::Mean,
            method: Method::Contrast,
            include_special,
            batch: 1,
        };
        let got = unit_values(&m, &stims(vec![text.into()]), &[site], &r).unwrap();
        let want = by_hand(from);
        let diff = got[0]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "include_special={include_special}: {diff}");
    }
}
