//! Generation with a key/value cache gives the same logits as running the whole sequence.

mod common;

use candle_core::Tensor;
use common::fixture;
use ftri::model::generate::{generate, GenerateOptions};
use ftri::model::{HookSet, Intervention, KvCache, LoadOptions, Model, Op, Site, SiteKind};

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn full_logits(m: &Model, ids: &[u32], ivs: &[Intervention]) -> Tensor {
    let mut h = HookSet::new();
    for iv in ivs {
        h.intervene(iv.clone());
    }
    m.forward(&m.batch(&[ids.to_vec()]).unwrap(), &mut h)
        .unwrap()
        .unwrap()
        .get(0)
        .unwrap()
}

#[test]
fn cached_steps_match_full_forward() {
    // sliding windows too: Mistral on every layer, Qwen2 from `max_window_layers` on
    let mistral_w = common::fixture_with_config("mistral", |c| {
        c.insert("sliding_window".into(), 3.into());
    });
    let qwen2_w = common::fixture_with_config("qwen2", |c| {
        c.insert("use_sliding_window".into(), true.into());
        c.insert("sliding_window".into(), 2.into());
        c.insert("max_window_layers".into(), 1.into());
        c.remove("layer_types");
    });
    // gemma2 / gemma3_text: window 4 on their sliding layers, soft-capping (gemma2), two rotary
    // bases (gemma3_text); the prompt and its continuation run past the window
    let mut models: Vec<(String, Model)> = [
        "gpt2",
        "llama3",
        "qwen2",
        "gpt_neox",
        "mistral",
        "gemma",
        "gemma2",
        "gemma3_text",
        "qwen3",
        "olmo2",
        "phi3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
    ]
    .iter()
    .map(|n| (n.to_string(), load(n)))
    .collect();
    for (n, d) in [("mistral+window", &mistral_w), ("qwen2+window", &qwen2_w)] {
        let m = Model::load(d.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert!(m.cfg.sliding_window.is_some(), "{n}");
        models.push((n.to_string(), m));
    }
    for (name, m) in &models {
        let prompt = m.encode("Alice didn't pay").unwrap();
        let extra: Vec<u32> = vec![5, 17, 42, 8];
        // an intervention at an absolute position inside the generated part
        let iv = Intervention {
            site: Site::Block(0, SiteKind::MlpPost),
            units: Some(vec![1, 2]),
            positions: Some(vec![prompt.len() + 1]),
            op: Op::Set(3.0),
        };
        let mut all = prompt.clone();
        all.extend(&extra);
        let want = full_logits(m, &all, std::slice::from_ref(&iv));
        let mut cache = KvCache::default();
        let mut pos = 0;
        for chunk in [
            prompt.clone(),
            extra[..1].to_vec(),
            extra[1..3].to_vec(),
            extra[3..].to_vec(),
        ] {
            let mut h = HookSet::new();
            h.intervene(iv.clone());
            let got = m
                .net
                .forward_cached(
                    &m.batch(std::slice::from_ref(&chunk)).unwrap(),
                    &mut h,
                    Some(&mut cache),
                )
                .unwrap()
                .unwrap();
            let got = got.get(0).unwrap();
            let w = want.narrow(0, pos, chunk.len()).unwrap();
            let d = (got - w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                d < 1e-4,
                "{name}: positions {pos}..{}: max diff {d}",
                pos + chunk.len()
            );
            pos += chunk.len();
        }
        assert_eq!(cache.len, all.len());
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Gemma 2/3 over a text 40 times their window (4): fed to the key/value cache in uneven
/// chunks, one token at a time near the end, every position's logits equal the full forward's,
/// and greedy generation continues from there past the window as the full forwards do.
#[test]
fn gemma_cache_over_a_long_text_matches_full_forwards() {
    let text = "In 1999 the small town of Riverton built a new bridge across the river. It \
                cost $4.5 million and took 18 months to finish. People said it was the finest \
                bridge in the county! Today more than 2,000 cars cross it every day.";
    for name in ["gemma2", "gemma3_text"] {
        let m = load(name);
        let w = m.cfg.sliding_window.as_ref().unwrap().size;
        let ids = m.encode(text).unwrap();
        assert!(ids.len() > 10 * w, "{name}: {} tokens", ids.len());
        let want = full_logits(&m, &ids, &[]);
        let scale = max_diff(&want, &want.zeros_like().unwrap());
        let mut cache = KvCache::default();
        let n = ids.len();
        let cuts = [0, 3, 4, 9, 30, n - 3, n - 2, n - 1, n];
        let mut worst = 0f32;
        for c in cuts.windows(2) {
            let chunk = ids[c[0]..c[1]].to_vec();
            let mut h = HookSet::new();
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
            worst = worst.max(max_diff(&got, &want.narrow(0, c[0], chunk.len()).unwrap()));
        }
        assert_eq!(cache.len, n);
        assert!(
            worst < 1e-5 * scale.max(1.0),
            "{name}: cached vs full logits differ by {worst} (max |logit| {scale})"
        );
        eprintln!("{name}: {n} tokens, window {w}: cached vs full max|diff| {worst:.2e}");

        // greedy generation with the cache = the argmax of full forwards, step by step
        let opts = GenerateOptions {
            max_new_tokens: 8,
            temperature: 0.0,
            seed: 0,
        };
        let out = generate(&m, &ids, &[], &opts).unwrap();
        let mut seq = ids.clone();
        for &tok in &out {
            let logits = full_logits(&m, &seq, &[]);
            let argmax = logits
                .get(seq.len() - 1)
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            assert_eq!(tok, argmax, "{name}: step {}", seq.len() - ids.len());
            seq.push(tok);
        }
    }
}

#[test]
fn greedy_generation_follows_the_argmax() {
    let m = load("llama");
    let prompt = m.encode("The dog was").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        temperature: 0.0,
        seed: 0,
    };
    let out = generate(&m, &prompt, &[], &opts).unwrap();
    assert!(!out.is_empty());
    let mut seq = prompt.clone();
    for &tok in &out {
        let logits = full_logits(&m, &seq, &[]);
        let argmax = logits
            .get(seq.len() - 1)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(tok, argmax);
        seq.push(tok);
    }
    // sampling is reproducible for a seed
    let s = GenerateOptions {
        max_new_tokens: 6,
        temperature: 1.0,
        seed: 7,
    };
    assert_eq!(
        generate(&m, &prompt, &[], &s).unwrap(),
        generate(&m, &prompt, &[], &s).unwrap()
    );
}

/// Entropy (nats) of a distribution given as counts or probabilities.
fn entropy(weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .filter(|w| **w > 0.0)
        .map(|w| {
            let p = w / total;
            -p * p.ln()
        })
        .sum()
}

#[test]
fn lower_temperature_samples_lower_entropy() {
    let m = load("gpt2");
    let prompt = m.encode("The dog was").unwrap();
    let logits: Vec<f32> = full_logits(&m, &prompt, &[])
        .get(prompt.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    const N: u64 = 1500;
    let mut measured = vec![];
    for t in [0.5f32, 2.0] {
        let mut counts = vec![0f64; m.cfg.vocab_size];
        for seed in 0..N {
            let opts = GenerateOptions {
                max_new_tokens: 1,
                temperature: t,
                seed,
            };
            let next = generate(&m, &prompt, &[], &opts).unwrap();
            counts[next[0] as usize] += 1.0;
        }
        // the distribution sampled from: softmax(logits / T)
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let p: Vec<f64> = logits
            .iter()
            .map(|&l| (((l - max) / t) as f64).exp())
            .collect();
        let (h_samples, h_exact) = (entropy(&counts), entropy(&p));
        eprintln!(
            "T={t}: entropy of {N} samples {h_samples:.3} nats, of softmax(logits/T) {h_exact:.3}"
        );
        assert!(
            (h_samples - h_exact).abs() < 0.5,
            "T={t}: the samples follow softmax(logits/T)"
        );
        measured.push((h_samples, h_exact));
    }
    let ((h_cold, e_cold), (h_hot, e_hot)) = (measured[0], measured[1]);
    assert!(e_cold < e_hot, "exact entropies {e_cold} vs {e_hot}");
    assert!(
        h_cold + 0.5 < h_hot,
        "samples at T=0.5 ({h_cold:.3} nats) should be clearly less spread than at T=2 ({h_hot:.3})"
    );
}
