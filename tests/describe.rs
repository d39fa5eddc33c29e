//! `ftri describe` against a brute-force computation straight from the checkpoints' Hugging Face
//! tensors (so the loader's weight layout is checked too), `--all` tables against single-neuron
//! describe, and bad input giving exit code 2.

mod common;

use candle_core::Tensor;
use common::{fixture, load_tensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

fn run(args: &[&str]) -> (i32, String, String) {
    common::run_ftri(args)
}

fn describe_json(model: &str, neuron: &str, top: usize) -> Value {
    let dir = fixture(model);
    let (code, out, err) = run(&[
        "describe",
        "--model",
        dir.to_str().unwrap(),
        "--neuron",
        neuron,
        "--top",
        &top.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// matrix [n, d] · (gain ⊙ v) [d], every entry.
fn scores(matrix: &Tensor, gain: Option<&Tensor>, v: &Tensor) -> Vec<f32> {
    let v = match gain {
        Some(g) => (v * g).unwrap(),
        None => v.clone(),
    };
    vec1(&matrix.matmul(&v.unsqueeze(1).unwrap()).unwrap())
}

fn unit_rows(e: &Tensor) -> Tensor {
    let n = e.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    e.broadcast_div(&n).unwrap()
}

/// Check one JSON list against the full sort of `all`: same scores rank by rank; the same ids
/// except where two brute-force scores are a float-rounding tie.
fn check_list(what: &str, got: &Value, all: &[f32], largest: bool, tok: &tokenizers::Tokenizer) {
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| {
        let o = all[b].total_cmp(&all[a]);
        if largest {
            o
        } else {
            o.reverse()
        }
    });
    let got = got
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not a list"));
    assert!(!got.is_empty(), "{what}: empty");
    for (r, g) in got.iter().enumerate() {
        let id = g["id"].as_u64().unwrap() as usize;
        let score = g["score"].as_f64().unwrap() as f32;
        let want = all[order[r]];
        assert!(
            (score - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{what} rank {r}: score {score}, brute force {want}"
        );
        assert!(
            id == order[r] || (all[id] - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{what} rank {r}: id {id}, brute force {}",
            order[r]
        );
        assert_eq!(
            g["token"].as_str().unwrap(),
            tok.decode(&[id as u32], false).unwrap(),
            "{what} rank {r}: token text"
        );
    }
}

fn tokenizer(model: &str) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixture(model).join("tokenizer.json")).unwrap()
}

#[test]
fn gpt2_neurons_match_brute_force() {
    let w = load_tensors(&fixture("gpt2").join("model.safetensors"));
    let tok = tokenizer("gpt2");
    let wte = &w["transformer.wte.weight"];
    let ln_f = &w["transformer.ln_f.weight"];
    let basis = unit_rows(wte);
    for (l, i) in [(0usize, 0usize), (0, 17), (1, 100), (1, 255)] {
        let d = describe_json("gpt2", &format!("{l}.{i}"), 12);
        assert_eq!(d["neuron"], format!("{l}.{i}"));
        assert_eq!(d["unembed"], "lm head");
        // Conv1D stores [in, out]: c_proj [d_mlp, d_model] has neuron i's write vector as row i,
        // c_fc [d_model, d_mlp] its read vector as column i.
        let v = w[&format!("transformer.h.{l}.mlp.c_proj.weight")]
            .get(i)
            .unwrap();
        let s = scores(wte, Some(ln_f), &v);
        check_list("promotes", &d["promotes"], &s, true, &tok);
        check_list("suppresses", &d["suppresses"], &s, false, &tok);
        assert_eq!(d["promotes"].as_array().unwrap().len(), 12);
        let r = w[&format!("transformer.h.{l}.mlp.c_fc.weight")]
            .narrow(1, i, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let g_in = &w[&format!("transformer.h.{l}.ln_2.weight")];
        check_list(
            "reads",
            &d["reads"],
            &scores(&basis, Some(g_in), &r),
            true,
            &tok,
        );
        assert!(d.get("reads_up").is_none(), "gpt2 has no up projection");
    }
}

#[test]
fn llama_neurons_match_brute_force() {
    let w = load_tensors(&fixture("llama").join("model.safetensors"));
    let tok = tokenizer("llama");
    let lm_head = &w["lm_head.weight"];
    let norm = &w["model.norm.weight"];
    let basis = unit_rows(&w["model.embed_tokens.weight"]);
    for (l, i) in [(0usize, 3usize), (1, 64), (1, 127)] {
        let d = describe_json("llama", &format!("{l}.{i}"), 8);
        // nn.Linear stores [out, in]: down_proj [d_model, d_mlp] has the write vector as column i.
        let v = w[&format!("model.layers.{l}.mlp.down_proj.weight")]
            .narrow(1, i, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let s = scores(lm_head, Some(norm), &v);
        check_list("promotes", &d["promotes"], &s, true, &tok);
        check_list("suppresses", &d["suppresses"], &s, false, &tok);
        let g_in = &w[&format!("model.layers.{l}.post_attention_layernorm.weight")];
        let gate = w[&format!("model.layers.{l}.mlp.gate_proj.weight")]
            .get(i)
            .unwrap();
        check_list(
            "reads",
            &d["reads"],
            &scores(&basis, Some(g_in), &gate),
            true,
            &tok,
        );
        let up = w[&format!("model.layers.{l}.mlp.up_proj.weight")]
            .get(i)
            .unwrap();
        check_list(
            "reads_up",
            &d["reads_up"],
            &scores(&basis, Some(g_in), &up),
            true,
            &tok,
        );
    }
}

/// Gemma 2: every norm's gain is 1 + w, the MLP reads the output of `pre_feedforward_layernorm`
/// and its output passes `post_feedforward_layernorm` before the residual stream, whose gain is
/// folded into the write direction like the final norm's.
#[test]
fn gemma2_neurons_match_brute_force() {
    let w = load_tensors(&fixture("gemma2").join("model.safetensors"));
    let tok = tokenizer("gemma2");
    let plus_one = |name: &str| (&w[name] + 1.0).unwrap();
    let lm_head = &w["lm_head.weight"];
    let norm = plus_one("model.norm.weight");
    let basis = unit_rows(&w["model.embed_tokens.weight"]);
    for (l, i) in [(0usize, 3usize), (1, 50), (2, 95)] {
        let d = describe_json("gemma2", &format!("{l}.{i}"), 8);
        let p = format!("model.layers.{l}");
        let v = w[&format!("{p}.mlp.down_proj.weight")]
            .narrow(1, i, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let v = (v * plus_one(&format!("{p}.post_feedforward_layernorm.weight"))).unwrap();
        let s = scores(lm_head, Some(&norm), &v);
        check_list("promotes", &d["promotes"], &s, true, &tok);
        check_list("suppresses", &d["suppresses"], &s, false, &tok);
        let g_in = plus_one(&format!("{p}.pre_feedforward_layernorm.weight"));
        for (key, proj) in [("reads", "gate_proj"), ("reads_up", "up_proj")] {
            let r = w[&format!("{p}.mlp.{proj}.weight")].get(i).unwrap();
            check_list(key, &d[key], &scores(&basis, Some(&g_in), &r), true, &tok);
        }
    }
}

#[test]
fn bert_decodes_against_input_embeddings() {
    let w = load_tensors(&fixture("bert").join("model.safetensors"));
    let tok = tokenizer("bert");
    let emb = &w["embeddings.word_embeddings.weight"];
    let d = describe_json("bert", "1.5", 6);
    assert_eq!(d["unembed"], "input embeddings (model has no LM head)");
    let v = w["encoder.layer.1.output.dense.weight"]
        .narrow(1, 5, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let s = scores(emb, None, &v);
    check_list("promotes", &d["promotes"], &s, true, &tok);
    check_list("suppresses", &d["suppresses"], &s, false, &tok);
    // Post-LN: the MLP reads the attention sub-layer's LayerNorm output.
    let r = w["encoder.layer.1.intermediate.dense.weight"]
        .get(5)
        .unwrap();
    let g_in = &w["encoder.layer.1.attention.output.LayerNorm.weight"];
    check_list(
        "reads",
        &d["reads"],
        &scores(&unit_rows(emb), Some(g_in), &r),
        true,
        &tok,
    );
}

/// A minimal RFC 4180 reader: quoted fields may hold commas, doubled quotes and newlines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "CSV does not end with a newline"
    );
    rows
}

fn describe_all(model: &str, out: &Path, top: usize, chunk: usize) -> Value {
    let dir = fixture(model);
    let (code, stdout, err) = run(&[
        "describe",
        "--model",
        dir.to_str().unwrap(),
        "--all",
        "--out",
        out.to_str().unwrap(),
        "--top",
        &top.to_string(),
        "--chunk",
        &chunk.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn all_csv_agrees_with_single_neuron_describe() {
    for (model, layers, d_mlp, d_model) in [
        ("gpt2", 2usize, 256usize, 64usize),
        ("llama", 2, 128, 64),
        ("gemma2", 3, 96, 48),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("all.csv");
        // A chunk that does not divide d_mlp exercises the ragged last chunk.
        let summary = describe_all(model, &out, 7, 100);
        assert_eq!(summary["neurons"], layers * d_mlp);
        assert_eq!(summary["layers"], layers);
        assert_eq!(summary["vocab"], 350);
        let flops = 2.0 * 350.0 * d_model as f64 * (layers * d_mlp) as f64;
        assert!((summary["gflop"].as_f64().unwrap() * 1e9 - flops).abs() < 1.0);
        assert!(summary["product_gflops"].as_f64().unwrap() > 0.0);
        // Nothing left behind under a temporary name.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        let rows = parse_csv(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(
            rows[0],
            [
                "neuron",
                "layer",
                "index",
                "promotes",
                "promote_ids",
                "promote_scores",
                "suppresses",
                "suppress_ids",
                "suppress_scores"
            ]
        );
        assert_eq!(rows.len(), 1 + layers * d_mlp);
        let by_name: HashMap<&str, &Vec<String>> =
            rows[1..].iter().map(|r| (r[0].as_str(), r)).collect();
        assert_eq!(by_name.len(), layers * d_mlp, "duplicate neuron rows");
        for (l, i) in [
            (0, 0),
            (0, 99 % d_mlp),
            (0, 100 % d_mlp),
            (1, d_mlp - 1),
            (1, 37),
        ] {
            let name = format!("{l}.{i}");
            let row = by_name[name.as_str()];
            assert_eq!(
                (row[1].as_str(), row[2].as_str()),
                (l.to_string().as_str(), i.to_string().as_str())
            );
            let d = describe_json(model, &name, 7);
            for (list, cols) in [("promotes", 3), ("suppresses", 6)] {
                let toks: Vec<String> = serde_json::from_str(&row[cols]).unwrap();
                let ids: Vec<u32> = serde_json::from_str(&row[cols + 1]).unwrap();
                let scores: Vec<f32> = serde_json::from_str(&row[cols + 2]).unwrap();
                let single = d[list].as_array().unwrap();
                assert_eq!(ids.len(), 7);
                for r in 0..7 {
                    let s = single[r]["score"].as_f64().unwrap() as f32;
                    assert!(
                        (scores[r] - s).abs() <= 1e-4 * (1.0 + s.abs()),
                        "{name} {list} rank {r}"
                    );
                    if ids[r] != single[r]["id"].as_u64().unwrap() as u32 {
                        // Only a rounding-level tie may reorder (a different product kernel).
                        let tie = |j: usize| (scores[r] - scores[j]).abs() < 1e-5;
                        assert!(
                            (r > 0 && tie(r - 1)) || (r + 1 < 7 && tie(r + 1)) || r == 6,
                            "{name} {list} rank {r}: ids differ without a tie"
                        );
                    } else {
                        assert_eq!(toks[r], single[r]["token"].as_str().unwrap());
                    }
                }
            }
        }
    }
}

#[test]
fn all_parquet_holds_the_same_table_as_csv() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("all.csv");
    let pq = tmp.path().join("all.parquet");
    describe_all("gpt2", &csv, 5, 512);
    describe_all("gpt2", &pq, 5, 512);
    let rows = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&pq).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut n = 0;
    for batch in reader {
        let b = batch.unwrap();
        let neuron = b
            .column_by_name("neuron")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let toks = b
            .column_by_name("promotes")
            .unwrap()
            .as_list::<i32>()
            .clone();
        let ids = b
            .column_by_name("suppress_ids")
            .unwrap()
            .as_list::<i32>()
            .clone();
        let scores = b
            .column_by_name("promote_scores")
            .unwrap()
            .as_list::<i32>()
            .clone();
        for r in 0..b.num_rows() {
            let row = &rows[1 + n];
            assert_eq!(neuron.value(r), row[0]);
            let t: Vec<String> = serde_json::from_str(&row[3]).unwrap();
            let got_t: Vec<String> = toks
                .value(r)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect();
            assert_eq!(got_t, t);
            let s: Vec<f32> = serde_json::from_str(&row[5]).unwrap();
            assert_eq!(
                scores
                    .value(r)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec(),
                s
            );
            let i: Vec<u32> = serde_json::from_str(&row[7]).unwrap();
            assert_eq!(
                ids.value(r).as_primitive::<UInt32Type>().values().to_vec(),
                i
            );
            n += 1;
        }
    }
    assert_eq!(n, 2 * 256);
}

#[test]
fn bad_neurons_and_outputs_exit_2_with_one_line() {
    let gpt2 = fixture("gpt2");
    let m = gpt2.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let txt = tmp.path().join("all.txt");
    let missing_dir = tmp.path().join("no/such/dir/all.csv");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--neuron", "3"], "expected LAYER.INDEX"),
        (vec!["--neuron", "a.b"], "expected LAYER.INDEX"),
        (vec!["--neuron", "1.-2"], "expected LAYER.INDEX"),
        (vec!["--neuron", "2.0"], "layer 2 out of range"),
        (vec!["--neuron", "0.256"], "index 256 out of range"),
        (vec!["--neuron", "0.1", "--top", "0"], "--top"),
        (vec![], "--neuron"),
        (
            vec!["--all", "--out", txt.to_str().unwrap()],
            ".csv or .parquet",
        ),
        (
            vec!["--all", "--out", missing_dir.to_str().unwrap()],
            "does not exist",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["describe", "--model", m];
        args.extend(&extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: one line: {err}");
        assert!(
            err.contains(needle),
            "{extra:?}: `{needle}` missing from: {err}"
        );
    }
    // clap's own usage errors (--all without --out) also exit 2.
    let (code, _, err) = run(&["describe", "--model", m, "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(!txt.exists());
}

#[test]
fn human_table_lists_the_json_tokens() {
    let dir = fixture("llama");
    let (code, out, err) = run(&[
        "describe",
        "--model",
        dir.to_str().unwrap(),
        "--neuron",
        "1.9",
        "--top",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    let d = describe_json("llama", "1.9", 4);
    assert!(out.contains("neuron 1.9"), "{out}");
    for list in ["promotes", "suppresses", "reads", "reads_up"] {
        for t in d[list].as_array().unwrap() {
            let shown = format!("{:?}", t["token"].as_str().unwrap());
            assert!(out.contains(&shown), "{list}: {shown} missing from:\n{out}");
        }
    }
    // Sanity of the brute-force helper itself: argmax of a known vector.
    let m = Tensor::new(
        &[[1f32, 0.0], [0.0, 1.0], [2.0, 2.0]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let s = scores(
        &m,
        None,
        &Tensor::new(&[1f32, -1.0], &candle_core::Device::Cpu).unwrap(),
    );
    assert_eq!(s, vec![1.0, -1.0, 0.0]);
}
