//! MoEfication and sparsity against ground truth: the routing and top-k ops against brute force
//! on the dense activations, all experts = the dense model exactly, 100 % kept = dense loss.

mod common;

use common::planted::{planted, stimuli};
use ftri::analyze::moefy::{moefy, routing, Method, MoefyRequest};
use ftri::analyze::pass::CorpusSpec;
use ftri::analyze::sparsity::{normal_quantile, sparsity, SparsityRequest};
use ftri::model::synth::SynthArch;
use ftri::model::{HookSet, Intervention, Model, Op, Router, Site, SiteKind};
use std::path::{Path, PathBuf};

fn corpus(dir: &Path, n: usize, triggers: bool) -> PathBuf {
    let p = dir.join(format!("corpus-{n}-{triggers}.txt"));
    let mut lines = stimuli(n, triggers, 2);
    lines.extend(stimuli(n, false, 5));
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn spec(p: PathBuf) -> CorpusSpec {
    CorpusSpec {
        paths: vec![p],
        text_field: "text".into(),
        ctx: 32,
        max_tokens: None,
        batch: 8,
    }
}

fn batch(m: &Model) -> ftri::model::Batch {
    let seqs: Vec<Vec<u32>> = stimuli(6, true, 9)
        .iter()
        .map(|s| m.encode(s).unwrap())
        .collect();
    m.batch(&seqs).unwrap()
}

/// Logits and layer-1 `mlp.hook_post` with these interventions.
fn run(m: &Model, ivs: &[Intervention]) -> (Vec<f32>, Vec<f32>) {
    let mut h = HookSet::new();
    let post = Site::Block(1, SiteKind::MlpPost);
    h.capture(post);
    h.capture(Site::Logits);
    ivs.iter().for_each(|iv| h.intervene(iv.clone()));
    let logits = m.forward(&batch(m), &mut h).unwrap().unwrap();
    let v = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (v(&logits), v(h.get(post).unwrap()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn routing_all_experts_is_the_dense_model_and_one_expert_keeps_the_largest_norm() {
    for arch in [SynthArch::Gpt2, SynthArch::Llama] {
        let m = planted(arch);
        let d = m.cfg.d_mlp;
        let k = 8;
        let groups: Vec<u32> = (0..d).map(|i| ((i * 5) % k) as u32).collect();
        let parts: Vec<(Site, Vec<u32>)> = (0..m.cfg.n_layers)
            .map(|l| (Site::Block(l, SiteKind::MlpPost), groups.clone()))
            .collect();
        let (dense, dense_post) = run(&m, &[]);
        // any router: with r = K nothing is zeroed
        let din = m.cfg.d_model;
        let routers: Vec<Router> = (0..m.cfg.n_layers)
            .map(|l| Router {
                input: Site::Block(l, SiteKind::ResidMid),
                w: candle_core::Tensor::randn(0f32, 1.0, (din + 1, k), m.device()).unwrap(),
            })
            .collect();
        for rs in [None, Some(routers.as_slice())] {
            let (all, _) = run(&m, &routing(&parts, k, k, rs));
            assert!(max_diff(&all, &dense) <= 1e-4, "{arch:?}");
            assert_eq!(all, dense, "{arch:?}: bit for bit");
        }
        // r = 1 at layer 1 only: each token keeps exactly its largest-norm expert
        let (_, post) = run(&m, &routing(&parts[1..], k, 1, None));
        for (row, drow) in post.chunks(d).zip(dense_post.chunks(d)) {
            let norms: Vec<f32> = (0..k)
                .map(|e| {
                    (0..d)
                        .filter(|&i| groups[i] == e as u32)
                        .map(|i| drow[i] * drow[i])
                        .sum()
                })
                .collect();
            let best = (0..k)
                .max_by(|&a, &b| norms[a].total_cmp(&norms[b]))
                .unwrap();
            for i in 0..d {
                let want = if groups[i] == best as u32 {
                    drow[i]
                } else {
                    0.0
                };
                assert_eq!(row[i], want);
            }
        }
    }
}

#[test]
fn top_k_ops_keep_what_brute_force_keeps() {
    let m = planted(SynthArch::Gpt2);
    let d = m.cfg.d_mlp;
    let post = Site::Block(1, SiteKind::MlpPost);
    let (_, dense) = run(&m, &[]);
    let iv = |op| Intervention {
        site: post,
        units: None,
        positions: None,
        op,
    };
    let k = 20;
    let (_, top) = run(&m, &[iv(Op::TopK(k))]);
    let z = normal_quantile(0.9) as f32;
    let (_, stat) = run(&m, &[iv(Op::StatTopK(z))]);
    for ((row, srow), drow) in top.chunks(d).zip(stat.chunks(d)).zip(dense.chunks(d)) {
        // both rules rank magnitudes
        let mut sorted: Vec<f32> = drow.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let n = drow.len() as f32;
        let mean = drow.iter().map(|v| v.abs()).sum::<f32>() / n;
        let sd = (drow.iter().map(|v| (v.abs() - mean).powi(2)).sum::<f32>() / n).sqrt();
        let theta = mean + z * sd;
        for i in 0..d {
            let keep = drow[i].abs() >= sorted[k - 1];
            assert_eq!(row[i], if keep { drow[i] } else { 0.0 });
            // the threshold is computed in a different order: skip values within rounding of it
            if (drow[i].abs() - theta).abs() > 1e-4 {
                assert_eq!(srow[i], if drow[i].abs() >= theta { drow[i] } else { 0.0 });
            }
        }
        assert_eq!(row.iter().filter(|v| **v != 0.0).count(), k);
    }
}

#[test]
fn moefy_with_all_experts_matches_dense_and_fewer_cost_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 60, true);
    let m = planted(SynthArch::Llama);
    for method in [Method::Keys, Method::Coactivation] {
        let r = moefy(
            &m,
            &MoefyRequest {
                corpus: spec(text.clone()),
                layers: vec![0, 1],
                experts: 4,
                method,
                r_values: None,
                seed: 0,
            },
            &mut |_, _, _| {},
        )
        .unwrap();
        eprintln!("{method:?}: dense {:.4} {:?}", r.dense_loss, r.curve);
        assert_eq!(r.curve.len(), 8);
        for p in &r.curve {
            assert!((p.active_fraction - p.r as f64 / 4.0).abs() < 1e-12);
            if p.r == 4 {
                assert_eq!(p.loss, r.dense_loss, "{method:?} {}", p.router);
            }
        }
        let oracle = |r_: usize| {
            r.curve
                .iter()
                .find(|p| p.r == r_ && p.router == "oracle")
                .unwrap()
                .loss
        };
        assert!(
            (oracle(1) - r.dense_loss).abs() > 1e-6,
            "one expert of four changes the output"
        );
        for l in &r.partition {
            assert!(l.experts.iter().all(|e| e.len() == m.cfg.d_mlp / 4));
        }
        if method == Method::Keys {
            // the experts group similar keys: cosine within an expert above cosine across
            let w = m.net.blocks[1].mlp.pre.w.t().unwrap().contiguous().unwrap();
            let keys: Vec<Vec<f32>> = (0..m.cfg.d_mlp)
                .map(|i| w.get(i).unwrap().to_vec1::<f32>().unwrap())
                .collect();
            let cos = |a: &[f32], b: &[f32]| {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                dot / (n(a) * n(b))
            };
            let expert_of: Vec<usize> = {
                let mut e = vec![0; m.cfg.d_mlp];
                for (x, members) in r.partition[1].experts.iter().enumerate() {
                    for id in members {
                        e[id.split('.').nth(1).unwrap().parse::<usize>().unwrap()] = x;
                    }
                }
                e
            };
            let (mut within, mut nw, mut across, mut na) = (0.0, 0, 0.0, 0);
            for i in 0..m.cfg.d_mlp {
                for j in i + 1..m.cfg.d_mlp {
                    let c = cos(&keys[i], &keys[j]);
                    if expert_of[i] == expert_of[j] {
                        within += c;
                        nw += 1;
                    } else {
                        across += c;
                        na += 1;
                    }
                }
            }
            let (within, across) = (within / nw as f32, across / na as f32);
            assert!(within > across + 0.02, "within {within} across {across}");
        }
    }
}

#[test]
fn sparsity_keeping_everything_is_dense_and_counts_are_fractions() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 30, false);
    let m = planted(SynthArch::Gpt2);
    let r = sparsity(
        &m,
        &SparsityRequest {
            corpus: spec(text),
            layers: vec![0, 1],
            eps: 0.01,
            keep_percent: vec![10.0, 100.0],
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    let dense = r.dense_loss.unwrap();
    let all = r.topk.iter().find(|t| t.keep_percent == 100.0).unwrap();
    assert_eq!(all.exact_loss, dense);
    assert!((all.overlap - 1.0).abs() < 1e-12);
    let ten = r.topk.iter().find(|t| t.keep_percent == 10.0).unwrap();
    assert_eq!(ten.k, (m.cfg.d_mlp as f64 * 0.1).round() as usize);
    assert!((ten.exact_loss - dense).abs() > 1e-6 && ten.overlap > 0.0 && ten.overlap <= 1.0);
    for l in &r.layers {
        let a = &l.active;
        assert!(
            0.0 <= a.min
                && a.min <= a.p10
                && a.p10 <= a.p50
                && a.p50 <= a.p90
                && a.p90 <= a.max
                && a.max <= 1.0
        );
        assert!(l.never_active <= m.cfg.d_mlp && l.never_active_eps <= m.cfg.d_mlp);
    }
    // no trigger in the corpus: the planted neuron 1.5 (GELU of a strongly negative input) is
    // never above 0
    assert!(r.layers[1].never_active >= 1);
}
