//! GGUF checkpoints: dequantization equals gguf-py's (what transformers uses) on every type ftri
//! supports, and a tiny Llama written the way llama.cpp writes it gives transformers' activations
//! at every hook point (fixtures: scripts/make_gguf_fixtures.py).

mod common;

use common::{close, fixture, load_tensors, PARITY_REL_TOL};
use ftri::model::gguf::reader::GgufFile;
use ftri::model::{HookSet, LoadOptions, Model, ModelConfig, Site};
use std::path::Path;

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

#[test]
fn dequantization_matches_gguf_py_on_every_type() {
    let dir = fixture("gguf/quants");
    let expected = load_tensors(&dir.join("expected.safetensors"));
    for ty in TYPES {
        let g = GgufFile::open(&dir.join(format!("{ty}.gguf"))).unwrap();
        let t = g.tensor("t").unwrap();
        assert_eq!(t.shape(), [4, 256], "{ty}: PyTorch order");
        let got = g.dequantize(t).unwrap();
        let want = &expected[ty];
        let a = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max_e = e.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_d = a
            .iter()
            .zip(&e)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let unequal = a.iter().zip(&e).filter(|(x, y)| x != y).count();
        eprintln!(
            "{ty}: max|diff| {max_d:.2e} (max|e| {max_e:.2e}), {unequal} of {} differ",
            e.len()
        );
        // f32 rounding of the same products in another order at most
        assert!(max_d <= 1e-6 * max_e, "{ty}: {max_d} vs {max_e}");
    }
}

fn llama_gguf() -> std::path::PathBuf {
    fixture("gguf/llama").join("model.gguf")
}

/// The metadata gives the config the Llama fixture's config.json gives (the file was written
/// from it).
#[test]
fn llama_config_from_metadata_is_the_fixtures() {
    let g = GgufFile::open(&llama_gguf()).unwrap();
    let json = ftri::model::gguf::config::hf_config(&g).unwrap();
    let got = ModelConfig::from_json(&json, &llama_gguf()).unwrap();
    let mut want = ModelConfig::from_file(&fixture("llama").join("config.json")).unwrap();
    // GGUF stores the epsilon as f32 (transformers reads it so too)
    want.norm_eps = 1e-5f32 as f64;
    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{json}");
}

/// transformers loading the same .gguf gives these activations at every hook point.
#[test]
fn llama_gguf_parity_with_transformers() {
    let expected = load_tensors(&fixture("gguf/llama").join("expected.safetensors"));
    // the file, and a folder that holds only it, load the same model
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(llama_gguf(), tmp.path().join("tiny.gguf")).unwrap();
    for spec in [llama_gguf(), tmp.path().to_path_buf()] {
        let model = Model::load(spec.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(model.cfg.arch.name(), "llama");
        let ids: Vec<u32> = expected["input_ids"]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&i| i as u32)
            .collect();
        let mut hooks = HookSet::capturing(common::sites_outside_attention(&model));
        let batch = model.batch(&[ids]).unwrap();
        model.forward(&batch, &mut hooks).unwrap();
        let mut failures = vec![];
        let mut checked = 0;
        for (name, want) in &expected {
            if name == "input_ids" {
                continue;
            }
            let site = Site::parse(name).unwrap();
            let got = hooks.get(site).unwrap().squeeze(0).unwrap();
            let (diff, tol, ok) = close(&got, want);
            if !ok {
                failures.push(format!("{name}: {diff:.3e} > {tol:.3e}"));
            }
            checked += 1;
        }
        assert_eq!(checked, common::sites_outside_attention(&model).len());
        assert!(
            failures.is_empty(),
            "{} (tol {PARITY_REL_TOL}):\n{}",
            spec.display(),
            failures.join("\n")
        );
    }
}

/// The GGUF fingerprint: the free function's (file or folder) is the loaded model's, and a
/// changed weight byte changes it.
#[test]
fn gguf_fingerprint() {
    let m = Model::load(llama_gguf().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let f = ftri::model::fingerprint(&llama_gguf()).unwrap();
    assert_eq!(m.fingerprint, f);
    assert_eq!(m.dir, fixture("gguf/llama"));
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("m.gguf");
    let mut bytes = std::fs::read(llama_gguf()).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    assert_eq!(ftri::model::fingerprint(&copy).unwrap(), f);
    assert_eq!(
        ftri::model::fingerprint(tmp.path()).unwrap(),
        f,
        "the folder"
    );
    let g = GgufFile::open(&copy).unwrap();
    let last = g.tensors.iter().max_by_key(|t| t.start).unwrap();
    let at = last.start + last.len - 1;
    drop(g);
    bytes[at] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    assert_ne!(ftri::model::fingerprint(&copy).unwrap(), f);
    assert!(Path::new(&copy).exists());
}

/// The config of the real Gemma 3 270M GGUF (when present) is what transformers 5.24 builds from
/// it (`AutoConfig.from_pretrained("models", gguf_file=...)`, printed once and copied here).
#[test]
fn gemma3_config_matches_transformers() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf");
    if !file.exists() {
        return;
    }
    let g = GgufFile::open(&file).unwrap();
    let c = ftri::model::gguf::config::hf_config(&g).unwrap();
    let want = serde_json::json!({
        "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
        "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768, "rms_norm_eps": 9.999999974752427e-07,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "unk_token_id": 3,
        "tie_word_embeddings": true,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
        "query_pre_attn_scalar": 256, "sliding_window": 512,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
            "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
            "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "sliding_attention", "full_attention"],
        "final_logit_softcapping": null, "attn_logit_softcapping": null,
    });
    assert_eq!(c, want);
}

/// The real SmolLM2 GGUF's config (when present) is transformers'.
#[test]
fn smollm2_config_matches_transformers() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !file.exists() {
        return;
    }
    let g = GgufFile::open(&file).unwrap();
    let c = ftri::model::gguf::config::hf_config(&g).unwrap();
    let want = serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 9.999999747378752e-06, "pad_token_id": 2, "bos_token_id": 1,
        "eos_token_id": 2, "unk_token_id": 0, "tie_word_embeddings": true,
        "rope_theta": 100000.0, "head_dim": 64,
    });
    assert_eq!(c, want);
}

/// A GGUF with `metadata` (the `{arch}.` keys as written), a 10 × 64 `token_embd` and, unless
/// `tied`, an `output` matrix, written with candle's GGUF writer.
fn tiny_gguf(dir: &Path, arch: &str, metadata: &[(&str, u32)], tied: bool) -> std::path::PathBuf {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String("tiny".into())),
        (format!("{arch}.block_count"), Value::U32(2)),
        (format!("{arch}.embedding_length"), Value::U32(64)),
        (format!("{arch}.feed_forward_length"), Value::U32(96)),
        (format!("{arch}.attention.head_count"), Value::U32(4)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(1e6)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    for (k, v) in metadata {
        md.push((format!("{arch}.{k}"), Value::U32(*v)));
    }
    let m = QTensor::quantize(
        &Tensor::zeros((10, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut tensors = vec![("token_embd.weight", &m)];
    if !tied {
        tensors.push(("output.weight", &m));
    }
    let path = dir.join(format!("{arch}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write(&mut f, &md, &tensors).unwrap();
    path
}

/// Qwen3 and Phi-3 GGUF metadata give the config transformers 5.24 builds from the same
/// metadata (`load_gguf_checkpoint(path)["config"]`, printed once and copied here, less
/// `_model_name_or_path`): no head_dim from `rope.dimension_count` or `attention.key_length`
/// (Qwen3Config's 128 and Phi-3's d_model / heads apply), `vocab_size` from `token_embd` where
/// transformers falls back to the class default, and the class's `max_position_embeddings` when
/// `context_length` is absent.
#[test]
fn qwen3_and_phi3_gguf_configs_follow_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let common = serde_json::json!({
        "bos_token_id": 1, "eos_token_id": 2, "hidden_size": 64, "intermediate_size": 96,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 9.999999974752427e-07, "rope_theta": 1000000.0, "vocab_size": 10,
    });
    let with = |extra: serde_json::Value| {
        let mut v = common.clone();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let qwen3 = tiny_gguf(
        dir.path(),
        "qwen3",
        &[
            ("context_length", 40960),
            ("attention.key_length", 16),
            ("attention.value_length", 16),
            ("rope.dimension_count", 16),
        ],
        true,
    );
    let g = GgufFile::open(&qwen3).unwrap();
    let c = ftri::model::gguf::config::hf_config(&g).unwrap();
    assert_eq!(
        c,
        with(
            serde_json::json!({"model_type": "qwen3", "max_position_embeddings": 40960,
                                "tie_word_embeddings": true})
        )
    );
    let cfg = ModelConfig::from_json(&c, &qwen3).unwrap();
    assert_eq!((cfg.head_dim, cfg.n_ctx, cfg.qkv_bias), (128, 40960, false));

    let phi3 = tiny_gguf(dir.path(), "phi3", &[("rope.dimension_count", 16)], false);
    let g = GgufFile::open(&phi3).unwrap();
    let c = ftri::model::gguf::config::hf_config(&g).unwrap();
    assert_eq!(
        c,
        with(
            serde_json::json!({"model_type": "phi3", "max_position_embeddings": 4096,
                                "tie_word_embeddings": false})
        )
    );
    let cfg = ModelConfig::from_json(&c, &phi3).unwrap();
    assert_eq!((cfg.head_dim, cfg.n_ctx), (16, 4096));
    assert_eq!(cfg.rope.as_ref().unwrap().rotary_dims, 16);
    assert!(!cfg.tie_embeddings);
}
