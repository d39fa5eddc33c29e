//! The atlas side of mixture-of-experts imaging, on the four tiny MoE fixtures (mixtral,
//! qwen2_moe with a shared expert and a dense layer, olmoe, qwen3_moe with one MoE layer):
//! `record` keeps each expert's routing count, rate, mean weight and top tokens, equal to a hand
//! count over `hook_expert_indices`/`hook_expert_weights` captured one document at a time; expert
//! neurons are recorded over their routed tokens only; shards merge into one run exactly;
//! `show`, `atlas`, `info` and the server's API present the experts; an atlas without experts
//! (dense, or written before experts were recorded) still opens.

mod common;

use common::{fixture, run_ftri};
use ftri::atlas::Atlas;
use ftri::model::{ExpertHook, HookSet, LoadOptions, Model, Site, SiteKind};
use ftri::serve::AppState;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const MOE: [&str; 4] = ["mixtral", "qwen2_moe", "olmoe", "qwen3_moe"];
const TOP: usize = 4;

fn root() -> &'static PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let r = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("expert-atlas-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).unwrap();
        r
    })
}

/// 14 short documents of common words (each well inside the fixtures' 128-token context).
fn corpus() -> &'static PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "and", "it", "was",
            "red", "blue", "sky", "1999", "Paris", "not", "never",
        ];
        let mut s: u64 = 7;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        let docs: Vec<String> = (0..14)
            .map(|_| {
                (0..(3 + next() % 12))
                    .map(|_| words[next() % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let p = root().join("corpus.txt");
        std::fs::write(&p, docs.join("\n") + "\n").unwrap();
        p
    })
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run_ftri(args);
    assert_eq!(code, 0, "ftri {args:?}: {err}");
    out
}

fn record(model: &Path, out: &Path, extra: &[&str]) {
    let top = TOP.to_string();
    let mut args = vec![
        "record",
        "--model",
        model.to_str().unwrap(),
        "--corpus",
        corpus().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--top-k",
        &top,
        "--threads",
        "2",
    ];
    if !extra.contains(&"--batch") {
        args.extend_from_slice(&["--batch", "3"]);
    }
    args.extend_from_slice(extra);
    ok(&args);
}

/// The atlas of fixture `name` over the corpus with the default sites, made once.
fn atlas(name: &str) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    let mut m = made.lock().unwrap();
    m.entry(name.to_string())
        .or_insert_with(|| {
            let out = root().join(format!("atlas-{name}"));
            record(&fixture(name), &out, &[]);
            out
        })
        .clone()
}

/// Per MoE layer, per expert: tokens routed, summed routing weight, the largest weight; and per
/// expert the routed values of its `hook_post` neurons — captured one document at a time.
struct Hand {
    tokens: u64,
    count: HashMap<(usize, usize), u64>,
    weight: HashMap<(usize, usize), f64>,
    max_weight: HashMap<(usize, usize), f32>,
    /// (layer, expert) → per routed token, the expert's neurons
    post: HashMap<(usize, usize), Vec<Vec<f32>>>,
}

fn hand_count(name: &str) -> Hand {
    let m = Model::load(fixture(name).to_str().unwrap(), &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(corpus()).unwrap();
    let moe: Vec<(usize, usize, usize)> = m
        .net
        .blocks
        .iter()
        .enumerate()
        .filter_map(|(l, b)| b.moe.as_ref().map(|x| (l, x.n_experts(), x.top_k)))
        .collect();
    let specials = m.tokenizer.special_ids().clone();
    let mut h = Hand {
        tokens: 0,
        count: HashMap::new(),
        weight: HashMap::new(),
        max_weight: HashMap::new(),
        post: HashMap::new(),
    };
    for doc in text.lines() {
        let ids = m.encode(doc).unwrap();
        let b = m.batch(std::slice::from_ref(&ids)).unwrap();
        let mut sites = Vec::new();
        for &(l, e, _) in &moe {
            sites.push(Site::Block(l, SiteKind::ExpertIndices));
            sites.push(Site::Block(l, SiteKind::ExpertWeights));
            for x in 0..e {
                sites.push(Site::Block(l, SiteKind::Expert(x, ExpertHook::Post)));
            }
        }
        let mut hooks = HookSet::capturing(sites);
        m.forward(&b, &mut hooks).unwrap();
        h.tokens += ids.len() as u64;
        let grab = |hooks: &mut HookSet, s: Site| -> Vec<Vec<f32>> {
            hooks
                .take(s)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap()
        };
        for &(l, e, k) in &moe {
            let idx = grab(&mut hooks, Site::Block(l, SiteKind::ExpertIndices));
            let w = grab(&mut hooks, Site::Block(l, SiteKind::ExpertWeights));
            let posts: Vec<Vec<Vec<f32>>> = (0..e)
                .map(|x| {
                    grab(
                        &mut hooks,
                        Site::Block(l, SiteKind::Expert(x, ExpertHook::Post)),
                    )
                })
                .collect();
            for t in 0..ids.len() {
                for j in 0..k {
                    let x = idx[t][j] as usize;
                    *h.count.entry((l, x)).or_default() += 1;
                    *h.weight.entry((l, x)).or_default() += w[t][j] as f64;
                    if !specials.contains(&ids[t]) {
                        let mw = h.max_weight.entry((l, x)).or_insert(f32::NEG_INFINITY);
                        *mw = mw.max(w[t][j]);
                    }
                    h.post.entry((l, x)).or_default().push(posts[x][t].clone());
                }
            }
        }
    }
    h
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn routing_counts_equal_a_hand_count_on_every_moe_fixture() {
    for name in MOE {
        let a = Atlas::open(&atlas(name)).unwrap();
        let h = hand_count(name);
        let m = &a.manifest;
        assert_eq!(m.counts.tokens, h.tokens, "{name}: tokens");
        let info: Value = serde_json::from_str(&ok(&[
            "info",
            "--model",
            fixture(name).to_str().unwrap(),
            "--json",
        ]))
        .unwrap();
        let layers: Vec<usize> = m.experts.iter().map(|x| x.layer).collect();
        let want: Vec<usize> = info["moe"]["moe_layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            layers, want,
            "{name}: every MoE layer's routing is recorded"
        );
        let st = a.load_state().unwrap();
        for (xi, x) in m.experts.iter().enumerate() {
            let r = &st.experts[xi];
            assert_eq!(r.name, format!("blocks.{}.mlp.experts", x.layer));
            let counts = a.expert_counts(xi).unwrap();
            // rates sum to top_k: every token is routed to top_k distinct experts
            assert_eq!(
                counts.iter().sum::<u64>(),
                x.top_k as u64 * h.tokens,
                "{name} layer {}",
                x.layer
            );
            assert_eq!(counts.len(), x.experts);
            for (e, &got) in counts.iter().enumerate() {
                let key = (x.layer, e);
                let c = h.count.get(&key).copied().unwrap_or(0);
                assert_eq!(got, c, "{name} {}.e{e}: routed tokens", x.layer);
                let u = a.expert(xi, e).unwrap();
                if c > 0 {
                    let mean = h.weight[&key] / c as f64;
                    assert!(
                        close(u.mean, mean, 1e-5),
                        "{name} {}.e{e}: mean weight {} vs {mean}",
                        x.layer,
                        u.mean
                    );
                    // the best example is the routed token of highest weight
                    let best = u.top.first().map(|t| t.activation);
                    assert!(
                        best.is_some_and(|b| close(b as f64, h.max_weight[&key] as f64, 1e-5)),
                        "{name} {}.e{e}: top weight {best:?} vs {}",
                        x.layer,
                        h.max_weight[&key]
                    );
                    assert!(u.top.windows(2).all(|w| w[0].activation >= w[1].activation));
                    assert!(u.top.len() <= TOP && u.top.len() as u64 <= c);
                } else {
                    assert!(u.top.is_empty());
                }
                // expert neurons: recorded over the routed tokens only
                let post = Site::Block(x.layer, SiteKind::Expert(e, ExpertHook::Post));
                let si = a
                    .site_index(post)
                    .unwrap_or_else(|| panic!("{name}: {post} recorded by default"));
                let vals = h.post.get(&key).cloned().unwrap_or_default();
                for n in [0, a.manifest.sites[si].units - 1] {
                    let v = a.unit(si, n).unwrap();
                    assert_eq!(v.count, c, "{name} {post}:{n} counts routed tokens only");
                    if c > 0 {
                        let mean = vals.iter().map(|r| r[n] as f64).sum::<f64>() / c as f64;
                        let max = vals.iter().map(|r| r[n]).fold(f32::NEG_INFINITY, f32::max);
                        assert!(
                            close(v.mean, mean, 1e-4),
                            "{name} {post}:{n}: mean {} vs {mean}",
                            v.mean
                        );
                        assert!(close(v.max as f64, max as f64, 1e-4));
                        assert_eq!(v.hist.iter().sum::<u64>(), c);
                    }
                }
            }
        }
    }
}

/// The routing states of two atlases: counts, top-k identities exactly; weights to float noise.
fn assert_same_experts(a: &Atlas, b: &Atlas) {
    let (x, y) = (a.load_state().unwrap(), b.load_state().unwrap());
    assert_eq!(a.manifest.experts, b.manifest.experts);
    assert_eq!(x.counts.tokens, y.counts.tokens);
    assert!(!x.experts.is_empty());
    for (p, q) in x.experts.iter().zip(&y.experts) {
        assert_eq!(p.name, q.name);
        assert_eq!(p.count, q.count, "{}: counts", p.name);
        assert_eq!(p.hist, q.hist, "{}: weight histograms", p.name);
        assert_eq!(p.top_doc, q.top_doc, "{}: top docs", p.name);
        assert_eq!(p.top_pos, q.top_pos, "{}: top positions", p.name);
        assert_eq!(p.top_ctx, q.top_ctx, "{}: top contexts", p.name);
        for u in 0..p.units {
            assert!(close(p.mean[u], q.mean[u], 1e-6), "{} {u} mean", p.name);
            assert!(close(p.var(u), q.var(u), 1e-5), "{} {u} var", p.name);
            assert!(close(p.max[u] as f64, q.max[u] as f64, 1e-6));
        }
    }
    // expert neurons see the same routed tokens
    for (p, q) in x.sites.iter().zip(&y.sites) {
        assert_eq!(p.count, q.count, "{}: counts", p.name);
    }
}

#[test]
fn shards_merge_into_one_run_for_the_experts() {
    let name = "qwen2_moe";
    let whole = atlas(name);
    let dir = root().join("shards");
    std::fs::create_dir_all(&dir).unwrap();
    let (s0, s1, merged) = (dir.join("s0"), dir.join("s1"), dir.join("merged"));
    record(&fixture(name), &s0, &["--shard", "0/2", "--batch", "2"]);
    record(&fixture(name), &s1, &["--shard", "1/2", "--batch", "5"]);
    ok(&[
        "merge",
        s1.to_str().unwrap(),
        s0.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let (a, b) = (Atlas::open(&merged).unwrap(), Atlas::open(&whole).unwrap());
    assert!(a.manifest.shard.is_none());
    assert_same_experts(&a, &b);
    // a shard alone routed fewer tokens
    let half = Atlas::open(&s0).unwrap();
    assert!(
        half.expert_counts(0).unwrap().iter().sum::<u64>()
            < b.expert_counts(0).unwrap().iter().sum::<u64>()
    );
}

#[test]
fn show_and_atlas_present_an_expert() {
    let dir = atlas("mixtral");
    let d = dir.to_str().unwrap();
    let j: Value =
        serde_json::from_str(&ok(&["show", "--atlas", d, "--neuron", "1.e2", "--json"])).unwrap();
    let a = Atlas::open(&dir).unwrap();
    let tokens = a.manifest.counts.tokens;
    assert_eq!(j["expert"], "1.e2");
    assert_eq!(
        (j["layer"].as_u64(), j["index"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (j["experts"].as_u64(), j["top_k"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(j["tokens"].as_u64(), Some(tokens));
    let count = j["count"].as_u64().unwrap();
    assert_eq!(count, a.expert_counts(1).unwrap()[2]);
    assert!(close(
        j["rate"].as_f64().unwrap(),
        count as f64 / tokens as f64,
        1e-12
    ));
    assert!(close(j["even_rate"].as_f64().unwrap(), 0.4, 1e-12));
    let mw = j["mean_weight"].as_f64().unwrap();
    assert!(mw > 0.0 && mw <= 1.0, "{mw}");
    assert_eq!(
        j["weight_histogram"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>()
            + j["weight_histogram"]["overflow"].as_u64().unwrap(),
        count
    );
    let top = j["top"].as_array().unwrap();
    assert!(!top.is_empty() && top[0]["context"].as_str().unwrap().contains('«'));
    assert_eq!(j["neurons"]["site"], "blocks.1.mlp.experts.2.hook_post");
    let text = ok(&["show", "--atlas", d, "--neuron", "1.e2"]);
    assert!(
        text.starts_with("expert 1.e2 (layer 1, expert 2 of 5, top-2)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("routed {count} of {tokens} tokens")),
        "{text}"
    );
    // an expert neuron is a unit of its hook point, over the routed tokens
    let n: Value = serde_json::from_str(&ok(&[
        "show",
        "--atlas",
        d,
        "--neuron",
        "blocks.1.mlp.experts.2.hook_post:3",
        "--json",
    ]))
    .unwrap();
    assert_eq!(n["count"].as_u64(), Some(count));

    // the summary: per layer, rates summing to top_k, most/least used, balance
    let s: Value = serde_json::from_str(&ok(&["atlas", "--atlas", d, "--json"])).unwrap();
    let xs = s["experts"].as_array().unwrap();
    assert_eq!(xs.len(), 3);
    for x in xs {
        let rates: Vec<f64> = x["rates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert!(close(rates.iter().sum::<f64>(), 2.0, 1e-12));
        let most = rates.iter().cloned().fold(f64::MIN, f64::max);
        let least = rates.iter().cloned().fold(f64::MAX, f64::min);
        assert_eq!(x["most_used"]["rate"].as_f64(), Some(most));
        assert_eq!(x["least_used"]["rate"].as_f64(), Some(least));
        let b = x["balance"].as_f64().unwrap();
        assert!(b > 0.0 && b <= 1.0, "{b}");
        assert!(x["max_over_mean"].as_f64().unwrap() >= 1.0);
    }
    let text = ok(&["atlas", "--atlas", d]);
    assert!(
        text.contains("most used") && text.contains("blocks.2.mlp.experts"),
        "{text}"
    );

    // bad expert ids: one line, exit 2
    for (id, says) in [
        ("9.e0", "layer 9 has no experts"),
        ("0.e5", "out of range"),
        ("0.ex", "bad"),
    ] {
        let (code, _, err) = run_ftri(&["show", "--atlas", d, "--neuron", id]);
        assert_eq!(code, 2, "{id}: {err}");
        assert!(
            err.contains(says) && err.trim().lines().count() == 1,
            "{id}: {err}"
        );
    }
}

#[test]
fn info_counts_expert_neurons() {
    let j: Value = serde_json::from_str(&ok(&[
        "info",
        "--model",
        fixture("qwen2_moe").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    // layer 1 dense (40), layers 0 and 2: 6 experts × 20 and a shared expert of 28
    assert_eq!(j["total_neurons"].as_u64(), Some(40 + 2 * 6 * 20 + 2 * 28));
    assert_eq!(j["moe"]["expert_neurons"].as_u64(), Some(240));
    let text = ok(&["info", "--model", fixture("mixtral").to_str().unwrap()]);
    assert!(
        text.contains("neurons       540 in all: 540 in experts"),
        "{text}"
    );
}

#[test]
fn atlases_without_experts_still_open() {
    // a dense model's atlas: no `experts` in its manifest, no expert to show
    let dense = root().join("atlas-llama");
    record(&fixture("llama"), &dense, &[]);
    let text = std::fs::read_to_string(dense.join("manifest.json")).unwrap();
    assert!(!text.contains("\"experts\""));
    let (code, _, err) = run_ftri(&[
        "show",
        "--atlas",
        dense.to_str().unwrap(),
        "--neuron",
        "0.e1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("this atlas has no experts"), "{err}");
    let s: Value = serde_json::from_str(&ok(&[
        "atlas",
        "--atlas",
        dense.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert!(s.get("experts").is_none());
    // an MoE atlas written before experts were recorded: its manifest has no `experts`
    let old = root().join("atlas-old");
    let src = atlas("olmoe");
    std::fs::create_dir_all(&old).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, old.join(f.file_name().unwrap())).unwrap();
    }
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(old.join("manifest.json")).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("experts");
    std::fs::write(old.join("manifest.json"), m.to_string()).unwrap();
    let a = Atlas::open(&old).unwrap();
    assert!(a.manifest.experts.is_empty());
    let o = old.to_str().unwrap();
    ok(&[
        "show",
        "--atlas",
        o,
        "--neuron",
        "blocks.0.mlp.experts.1.hook_post:0",
    ]);
    ok(&["atlas", "--atlas", o]);
}

// ---------- the server ----------

fn serve(dir: &Path) -> SocketAddr {
    let state = Arc::new(AppState::new(Atlas::open(dir).unwrap(), None).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            ftri::serve::serve(l, state).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// GET `path`: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = common::http::get(addr, path);
    (r.status, r.text())
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (st, body) = get(addr, path);
    (
        st,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

#[test]
fn the_api_serves_the_expert_map_and_pages() {
    let dir = atlas("qwen3_moe");
    let d = dir.to_str().unwrap();
    let addr = serve(&dir);
    let (st, info) = get_json(addr, "/api/info");
    assert_eq!(st, 200);
    assert_eq!(info["experts"][0]["layer"].as_u64(), Some(1));
    // the map = `ftri atlas --json`'s experts
    let (st, map) = get_json(addr, "/api/experts");
    assert_eq!(st, 200);
    let summary: Value = serde_json::from_str(&ok(&["atlas", "--atlas", d, "--json"])).unwrap();
    assert_eq!(map["layers"], summary["experts"]);
    assert_eq!(map["tokens"], summary["tokens"]);
    // an expert = `ftri show --json`
    let (st, e) = get_json(addr, "/api/neuron/1.e3");
    assert_eq!(st, 200);
    let show: Value =
        serde_json::from_str(&ok(&["show", "--atlas", d, "--neuron", "1.e3", "--json"])).unwrap();
    assert_eq!(e, show);
    for bad in [
        "/api/neuron/0.e1",
        "/api/neuron/1.e7",
        "/api/neuron/1.e99999999999999999999",
    ] {
        let (st, j) = get_json(addr, bad);
        assert!(st == 404 || st == 400, "{bad}: {st}");
        assert!(
            j["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {j}"
        );
    }
    // an expert has no per-token contexts endpoint: a clear 404, not "bad neuron"
    let (st, j) = get_json(addr, "/api/neuron/1.e3/contexts");
    assert_eq!(st, 404);
    assert!(j["error"].as_str().unwrap().contains("is an expert"), "{j}");
    // the pages and the script behind them
    for page in ["/experts", "/expert/1.e3", "/"] {
        let (st, html) = get(addr, page);
        assert_eq!(st, 200, "{page}");
        assert!(html.contains("/assets/experts.js"), "{page}");
    }
    let (st, js) = get(addr, "/assets/experts.js");
    assert_eq!(st, 200);
    assert!(js.contains("function expertMapPage"));
    // a dense atlas has an empty map
    let dense = root().join("atlas-llama-api");
    record(&fixture("llama"), &dense, &["--max-tokens", "20"]);
    let (st, map) = get_json(serve(&dense), "/api/experts");
    assert_eq!(st, 200);
    assert_eq!(map["layers"].as_array().map(Vec::len), Some(0));
}
