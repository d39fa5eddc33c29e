//! `ftri serve`: the JSON API and the embedded front end, served in-process on 127.0.0.1:0
//! against a small atlas recorded here from a checkpoint with a planted neuron 1.5 that fires on
//! `dog`/`puppy` and promotes `bark`. Requests go over a raw TCP socket so that paths reach the
//! server exactly as written (no client-side normalization of `..`).

mod common;

use common::http::{get, post, raw, Resp};
use ftri::atlas::Atlas;
use ftri::model::{LoadOptions, Model};
use ftri::serve::{AppState, Limits};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn ftri(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ftri"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ftri {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (model dir, atlas dir), built once per test binary.
fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let root =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let model = root.join("model");
        let atlas = root.join("atlas");
        ftri(&[
            "plant",
            "--arch",
            "gpt2",
            "--layers",
            "2",
            "--d-model",
            "64",
            "--heads",
            "4",
            "--d-mlp",
            "256",
            "--vocab",
            "300",
            "--neuron",
            "1.5:dog,puppy:bark",
            "--out",
            model.to_str().unwrap(),
        ]);
        // filler words with a dog or puppy now and then
        let mut s: u64 = 99;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        let docs: Vec<String> = (0..40)
            .map(|_| {
                (0..(8 + next() % 20))
                    .map(|_| match next() % 12 {
                        0 => "dog".to_string(),
                        1 => "puppy".to_string(),
                        _ => format!("w{}", 1 + next() % 250),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let corpus = root.join("corpus.txt");
        std::fs::write(&corpus, docs.join("\n") + "\n").unwrap();
        ftri(&[
            "record",
            "--model",
            model.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            atlas.to_str().unwrap(),
            "--top-k",
            "8",
        ]);
        (model, atlas)
    })
}

/// Start a server in-process on a free port; it runs until the test binary exits.
fn start(with_model: bool, limits: Limits) -> SocketAddr {
    let (model_dir, atlas_dir) = fixture();
    let atlas = Atlas::open(atlas_dir).unwrap();
    let model = with_model
        .then(|| Model::load(model_dir.to_str().unwrap(), &LoadOptions::default()).unwrap());
    let mut state = AppState::new(atlas, model).unwrap();
    state.limits = limits;
    let state = Arc::new(state);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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

fn server(with_model: bool) -> SocketAddr {
    static PLAIN: OnceLock<SocketAddr> = OnceLock::new();
    static MODEL: OnceLock<SocketAddr> = OnceLock::new();
    // the tests run in parallel and share these: room for all their model jobs at once
    let limits = || Limits {
        max_jobs: 8,
        max_queued: 16,
        ..Limits::default()
    };
    if with_model {
        *MODEL.get_or_init(|| start(true, limits()))
    } else {
        *PLAIN.get_or_init(|| start(false, limits()))
    }
}

fn assert_json_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    let j = r.json();
    assert!(
        j["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message: {j}"
    );
}

#[test]
fn info_and_layers_describe_the_atlas() {
    let a = server(false);
    let r = get(a, "/api/info");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["model"]["n_layers"], 2);
    assert_eq!(j["model"]["d_mlp"], 256);
    assert_eq!(j["sites"].as_array().unwrap().len(), 2);
    assert!(j["tokens"].as_u64().unwrap() > 100);
    assert_eq!(j["loaded_model"], Value::Null);
    assert_eq!(j["limits"]["max_body_bytes"], 64 * 1024);
    assert_eq!(j["limits"]["max_jobs"], 8);
    assert_eq!(j["limits"]["max_queued"], 16);
    assert_eq!(j["limits"]["job_timeout_s"], 120.0);
    assert_eq!(j["jobs"], json!({"running": 0, "waiting": 0}));
    // /api/layers is `ftri atlas --top 10 --json`
    let expected: Value = serde_json::from_str(&ftri(&[
        "atlas",
        "--atlas",
        fixture().1.to_str().unwrap(),
        "--top",
        "10",
        "--json",
    ]))
    .unwrap();
    assert_eq!(get(a, "/api/layers").json(), expected);
    // the map: one row per site, one value per unit
    let m = get(a, "/api/map?stat=fire_rate").json();
    assert_eq!(m["sites"][1]["values"].as_array().unwrap().len(), 256);
    assert_json_error(&get(a, "/api/map?stat=nonsense"), 400);
}

#[test]
fn neuron_equals_show_json() {
    let a = server(false);
    let r = get(a, "/api/neuron/1.5");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let expected: Value = serde_json::from_str(&ftri(&[
        "show",
        "--atlas",
        fixture().1.to_str().unwrap(),
        "--neuron",
        "1.5",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r.json(), expected);
    // the planted neuron's best example is on dog or puppy
    let tok = expected["top"][0]["token"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    assert!(tok == "dog" || tok == "puppy", "{tok}");
    // the same through the HOOK:N spelling
    assert_eq!(
        get(a, "/api/neuron/blocks.1.mlp.hook_post:5").json(),
        expected
    );
}

#[test]
fn contexts_without_a_model_mark_the_example_token() {
    let a = server(false);
    let j = get(a, "/api/neuron/1.5/contexts").json();
    assert_eq!(j["per_token"], false);
    let ex = &j["examples"][0];
    let at = ex["at"].as_u64().unwrap() as usize;
    assert!(
        ex["tokens"][at].as_str().unwrap().contains("dog")
            || ex["tokens"][at].as_str().unwrap().contains("puppy")
    );
    assert_eq!(ex["activations"], Value::Null);
    assert_eq!(j["separator"], " ");
}

#[test]
fn search_finds_the_planted_neuron() {
    let a = server(false);
    let j = get(a, "/api/search?q=dog").json();
    let first = &j["results"][0];
    assert_eq!(first["neuron"], "1.5", "{j}");
    assert_eq!(first["matches"][0]["kind"], "activates");
    let j = get(a, "/api/search?q=PUPPY").json();
    assert_eq!(j["results"][0]["neuron"], "1.5", "case-insensitive: {j}");
    // layer filter and sort: every hit in layer 0, sorted by fire rate
    let j = get(a, "/api/search?q=layer:0%20sort:fire_rate&limit=20").json();
    let rows = j["results"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r["layer"] == 0));
    let rates: Vec<f64> = rows
        .iter()
        .map(|r| r["fire_rate"].as_f64().unwrap())
        .collect();
    assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
    // a word found nowhere
    assert_eq!(get(a, "/api/search?q=zebra").json()["results"], json!([]));
    assert_json_error(&get(a, "/api/search?q=sort:bogus"), 400);
    assert_json_error(&get(a, "/api/search?q=layer:x"), 400);
}

#[test]
fn unknown_routes_and_neurons_get_json_4xx() {
    let a = server(false);
    assert_json_error(&get(a, "/nope"), 404);
    assert_json_error(&get(a, "/api/nope"), 404);
    assert_json_error(&get(a, "/api/neuron/1.256"), 404);
    assert_json_error(&get(a, "/api/neuron/9.1"), 404);
    assert_json_error(&get(a, "/api/neuron/banana"), 404);
    assert_json_error(&get(a, "/api/neuron/1.5/contexts/x"), 404);
    assert_json_error(&raw(a, "DELETE", "/api/info", "127.0.0.1", None), 405);
    // model endpoints without a model: 400, saying what to do
    let r = post(
        a,
        "/api/activations",
        &json!({"text": "dog", "neuron": "1.5"}),
    );
    assert_json_error(&r, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("--model"));
}

#[test]
fn paths_never_reach_the_filesystem() {
    let a = server(false);
    for p in [
        "/assets/../../etc/passwd",
        "/assets/../Cargo.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/assets/..%2f..%2fCargo.toml",
        "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/assets//etc/passwd",
        "/api/neuron/..%2f..%2fetc%2fpasswd",
        "/../../etc/passwd",
        "/manifest.json",
        "/stats.safetensors",
    ] {
        let r = get(a, p);
        assert!(r.status == 404 || r.status == 400, "{p}: {}", r.status);
        let t = r.text();
        assert!(
            !t.contains("root:") && !t.contains("[package]") && !t.contains("ftri-atlas"),
            "{p}: {t}"
        );
    }
    // the real assets are there
    let r = get(a, "/assets/app.js");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(get(a, "/assets/style.css").status, 200);
}

#[test]
fn pages_serve_the_embedded_shell() {
    let a = server(false);
    for p in ["/", "/neuron/1.5", "/search?q=dog", "/localize"] {
        let r = get(a, p);
        assert_eq!(r.status, 200, "{p}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text().contains("/assets/app.js"), "{p}");
    }
}

#[test]
fn bodies_and_prompts_are_bounded() {
    let a = server(true);
    let big = format!(
        "{{\"text\": \"{}\", \"neuron\": \"1.5\"}}",
        "w1 ".repeat(40_000)
    );
    let r = raw(
        a,
        "POST",
        "/api/activations",
        "127.0.0.1",
        Some(big.as_bytes()),
    );
    assert_json_error(&r, 413);
    let long = "w1 ".repeat(1000);
    assert_json_error(
        &post(
            a,
            "/api/activations",
            &json!({"text": long, "neuron": "1.5"}),
        ),
        400,
    );
    assert_json_error(
        &post(a, "/api/activations", &json!({"text": "", "neuron": "1.5"})),
        400,
    );
    let r = raw(
        a,
        "POST",
        "/api/activations",
        "127.0.0.1",
        Some(b"{not json"),
    );
    assert!(r.status == 400 || r.status == 422, "{}", r.status);
    assert_json_error(&r, r.status);
    assert_json_error(&post(a, "/api/activations", &json!({"text": "dog"})), 422);
    assert_json_error(
        &post(
            a,
            "/api/activations",
            &json!({"text": "dog", "neuron": "1.999"}),
        ),
        400,
    );
    assert_json_error(
        &post(
            a,
            "/api/activations",
            &json!({"text": "dog", "neuron": "/etc/passwd"}),
        ),
        400,
    );
    assert_json_error(
        &post(
            a,
            "/api/intervene",
            &json!({"text": "dog", "neuron": "1.5", "op": "explode"}),
        ),
        400,
    );
    // a Host header other than localhost is refused (DNS rebinding)
    assert_json_error(&raw(a, "GET", "/api/info", "evil.example", None), 403);
    assert_eq!(
        raw(a, "GET", "/api/info", "localhost:7878", None).status,
        200
    );
}

#[test]
fn activations_follow_the_planted_neuron() {
    let a = server(true);
    let r = post(
        a,
        "/api/activations",
        &json!({"text": "w3 w7 dog w9 puppy w2", "neuron": "1.5"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let toks: Vec<String> = j["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().trim().to_string())
        .collect();
    let acts: Vec<f64> = j["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(toks.len(), acts.len());
    let dog = toks.iter().position(|t| t == "dog").unwrap();
    let puppy = toks.iter().position(|t| t == "puppy").unwrap();
    for (i, &x) in acts.iter().enumerate() {
        if i != dog && i != puppy {
            assert!(acts[dog] > x && acts[puppy] > x, "{toks:?} {acts:?}");
        }
    }
    assert!(acts[dog] > 0.0);
}

#[test]
fn model_pages_shade_contexts_and_describe() {
    let a = server(true);
    let j = get(a, "/api/neuron/1.5/contexts").json();
    assert_eq!(j["per_token"], true, "{j}");
    let ex = &j["examples"][0];
    let at = ex["at"].as_u64().unwrap() as usize;
    let acts: Vec<Option<f64>> = ex["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64())
        .collect();
    let peak = acts[at].unwrap();
    assert!(peak > 0.0);
    // it fires on the triggers of its context, and on nothing else there
    let toks: Vec<Option<&str>> = ex["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str())
        .collect();
    for (t, x) in toks.iter().zip(&acts) {
        if let (Some(t), Some(x)) = (t, x) {
            let trigger = matches!(t.trim(), "dog" | "puppy");
            assert_eq!(trigger, *x > 0.5 * peak, "{toks:?} {acts:?}");
        }
    }
    // /api/neuron with a model: show's JSON plus `describe`
    let mut n = get(a, "/api/neuron/1.5").json();
    let d = n
        .as_object_mut()
        .unwrap()
        .remove("describe")
        .expect("describe field");
    let expected: Value = serde_json::from_str(&ftri(&[
        "show",
        "--atlas",
        fixture().1.to_str().unwrap(),
        "--neuron",
        "1.5",
        "--json",
    ]))
    .unwrap();
    assert_eq!(n, expected);
    assert_eq!(
        d["promotes"][0]["token"].as_str().unwrap().trim(),
        "bark",
        "{d}"
    );
    // search by promoted token
    let s = get(a, "/api/search?q=bark").json();
    assert_eq!(s["results"][0]["neuron"], "1.5", "{s}");
    assert_eq!(s["results"][0]["matches"][0]["kind"], "promotes");
}

#[test]
fn lesion_changes_the_next_token() {
    let a = server(true);
    let r = post(
        a,
        "/api/intervene",
        &json!({"text": "w5 w8 dog", "neuron": "1.5", "op": "zero"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["before"].as_array().unwrap().len(), 10);
    assert_eq!(j["after"].as_array().unwrap().len(), 10);
    assert_eq!(
        j["before"][0]["token"].as_str().unwrap().trim(),
        "bark",
        "{j}"
    );
    let before = j["before"][0]["p"].as_f64().unwrap();
    let after = j["after_of_before"][0].as_f64().unwrap();
    assert!(
        after < before,
        "zeroing 1.5 should lower p(bark): {before} -> {after}"
    );
    assert!(j["kl"].as_f64().unwrap() > 0.0);
    // clamping it high on a text without dog raises p(bark)
    let base = post(
        a,
        "/api/intervene",
        &json!({"text": "w5 w8 w9", "neuron": "1.5", "op": "set=20"}),
    )
    .json();
    let bark_after = base["after"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["token"].as_str().unwrap().trim() == "bark");
    assert!(bark_after.is_some(), "{base}");
}

#[test]
fn localize_ranks_the_planted_neuron_first() {
    let a = server(true);
    let target = json!([
        "w1 dog w2",
        "w3 puppy w4",
        "dog w5 w6",
        "w7 w8 puppy",
        "w9 dog w10"
    ]);
    let control = json!([
        "w1 w11 w2",
        "w3 w12 w4",
        "w13 w5 w6",
        "w7 w8 w14",
        "w9 w15 w10"
    ]);
    let r = post(
        a,
        "/api/localize",
        &json!({"target": target, "control": control, "reduce": "max", "top": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["neurons"][0]["neuron"], "1.5", "{j}");
    assert_eq!(j["neurons"].as_array().unwrap().len(), 5);
    // the server's cancellable localize is exactly `ftri localize --json`
    let dir = fixture().0.parent().unwrap();
    let lines = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string() + "\n")
            .collect::<String>()
    };
    let (tf, cf) = (dir.join("target.txt"), dir.join("control.txt"));
    std::fs::write(&tf, lines(&target)).unwrap();
    std::fs::write(&cf, lines(&control)).unwrap();
    let cli: Value = serde_json::from_str(&ftri(&[
        "localize",
        "--model",
        fixture().0.to_str().unwrap(),
        "--target",
        tf.to_str().unwrap(),
        "--control",
        cf.to_str().unwrap(),
        "--reduce",
        "max",
        "--top",
        "5",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j, cli);
    assert_json_error(
        &post(
            a,
            "/api/localize",
            &json!({"target": ["dog"], "control": ["w1", "w2"]}),
        ),
        400,
    );
}

/// A localize of `n` target and `n` control stimuli of `words` words each (one token a word; the
/// planted model's context is 256): several seconds on the planted model for n = 300.
fn long_localize(n: usize, words: usize) -> Value {
    let set = |trigger: &str| -> Vec<String> {
        (0..n)
            .map(|i| {
                (0..words)
                    .map(|j| match j % 9 {
                        4 => trigger.to_string(),
                        _ => format!("w{}", 1 + (i * 31 + j * 17) % 250),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    json!({"target": set("dog"), "control": set("w251"), "reduce": "max", "top": 5})
}

/// Room for long localizer sets.
fn big_sets() -> Limits {
    Limits {
        max_stimuli: 1000,
        max_body: 16 << 20,
        ..Limits::default()
    }
}

/// Start `body` as a localize in a background thread; wait until the server reports it running.
/// Returns the thread (its status and time) and a flag set when it has answered.
fn start_long_job(
    a: SocketAddr,
    body: Value,
) -> (std::thread::JoinHandle<(Resp, Duration)>, Arc<AtomicBool>) {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let t0 = Instant::now();
    let job = std::thread::spawn(move || {
        let r = post(a, "/api/localize", &body);
        d.store(true, Ordering::SeqCst);
        (r, t0.elapsed())
    });
    loop {
        let j = get(a, "/api/info").json();
        if j["jobs"]["running"] == 1 {
            break;
        }
        assert!(
            !done.load(Ordering::SeqCst),
            "the job ended before it was seen running"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (job, done)
}

#[test]
fn atlas_reads_and_describe_never_wait_for_a_model_job() {
    let a = start(true, big_sets());
    let (job, done) = start_long_job(a, long_localize(300, 250));
    let mut took = vec![];
    for p in [
        "/api/info",
        "/api/map",
        "/api/neuron/1.5",
        "/api/search?q=bark",
        "/api/neuron/1.5/contexts",
    ] {
        let t = Instant::now();
        let r = get(a, p);
        let dt = t.elapsed();
        assert!(
            !done.load(Ordering::SeqCst),
            "{p}: the localize ended first; make it longer"
        );
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        assert!(dt < Duration::from_secs(1), "{p} took {dt:?} during a job");
        let j = r.json();
        match p {
            "/api/info" => assert_eq!(j["jobs"]["running"], 1, "{j}"),
            "/api/neuron/1.5" => assert_eq!(
                j["describe"]["promotes"][0]["token"]
                    .as_str()
                    .unwrap()
                    .trim(),
                "bark",
                "{j}"
            ),
            "/api/search?q=bark" => {
                assert_eq!(j["results"][0]["matches"][0]["kind"], "promotes", "{j}")
            }
            // shading waits for no job: the recorded peaks, and a note saying why
            "/api/neuron/1.5/contexts" => {
                assert_eq!(j["per_token"], false, "{j}");
                assert!(j["note"].as_str().unwrap().contains("busy"), "{j}");
            }
            _ => {}
        }
        took.push(format!("{p} {dt:?}"));
    }
    let (r, total) = job.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["neurons"][0]["neuron"], "1.5");
    eprintln!("during a {total:?} localize: {}", took.join(", "));
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let a = start(
        true,
        Limits {
            max_jobs: 1,
            max_queued: 0,
            ..big_sets()
        },
    );
    let (job, done) = start_long_job(a, long_localize(150, 250));
    for (path, body) in [
        ("/api/localize", long_localize(2, 5)),
        (
            "/api/activations",
            json!({"text": "w1 dog", "neuron": "1.5"}),
        ),
        (
            "/api/intervene",
            json!({"text": "w1 dog", "neuron": "1.5", "op": "zero"}),
        ),
    ] {
        let r = post(a, path, &body);
        assert!(!done.load(Ordering::SeqCst), "the first job ended first");
        assert_json_error(&r, 503);
        let secs: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=120).contains(&secs), "{secs}");
        assert!(r.json()["error"].as_str().unwrap().contains("busy"));
    }
    // atlas reads are not queued
    assert_eq!(get(a, "/api/map").status, 200);
    let (r, _) = job.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // the slot is free again
    let r = post(
        a,
        "/api/activations",
        &json!({"text": "w1 dog", "neuron": "1.5"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_job_past_its_time_limit_is_answered_and_stopped() {
    let a = start(
        true,
        Limits {
            max_jobs: 1,
            max_queued: 0,
            job_timeout: Duration::from_millis(300),
            ..big_sets()
        },
    );
    assert_eq!(get(a, "/api/info").json()["limits"]["job_timeout_s"], 0.3);
    let t = Instant::now();
    let r = post(a, "/api/localize", &long_localize(300, 250));
    let dt = t.elapsed();
    assert_json_error(&r, 504);
    assert!(
        r.json()["error"].as_str().unwrap().contains("time limit"),
        "{}",
        r.text()
    );
    assert!(dt < Duration::from_secs(3), "answered after {dt:?}");
    // the localizer stops at its next batch and gives its slot back
    let t = Instant::now();
    while get(a, "/api/info").json()["jobs"]["running"] != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the abandoned localize still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(
        a,
        "/api/activations",
        &json!({"text": "w1 dog", "neuron": "1.5"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_dropped_request_cancels_its_job() {
    let a = start(true, big_sets());
    let body = long_localize(300, 250).to_string();
    let mut s = TcpStream::connect(a).unwrap();
    let req = format!(
        "POST /api/localize HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let t = Instant::now();
    while get(a, "/api/info").json()["jobs"]["running"] != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    let t = Instant::now();
    while get(a, "/api/info").json()["jobs"]["running"] != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the localize runs on for its closed connection"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
