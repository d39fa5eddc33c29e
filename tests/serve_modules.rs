//! `ftri serve --modules DIR --decomposition F.safetensors`: the modules and components API and
//! pages, in-process on 127.0.0.1:0, against an atlas, modules and a decomposition made here from
//! a checkpoint with a planted neuron 1.5 (fires on dog/puppy, writes bark). Also: the flags'
//! bad input is a one-line user error (exit 2), and a server without them answers 404 JSON.

mod common;

use common::http::get;
use ftri::atlas::Atlas;
use ftri::serve::modules::{load_decomposition, load_modules, Extras};
use ftri::serve::{AppState, Limits};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

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

struct Fixture {
    atlas: PathBuf,
    modules: PathBuf,
    f: PathBuf,
}

/// Model, atlas, modules and decomposition, built once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("serve-modules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let model = root.join("model");
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
            &s(&model),
        ]);
        let lines: Vec<String> = (0..60)
            .map(|i| {
                (0..12)
                    .map(|j| match (i * 7 + j * 5) % 9 {
                        0 => "dog".to_string(),
                        1 => "puppy".to_string(),
                        _ => format!("w{}", 1 + (i * 13 + j * 31) % 250),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let corpus = root.join("corpus.txt");
        std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
        let atlas = root.join("atlas");
        ftri(&[
            "record",
            "--model",
            &s(&model),
            "--corpus",
            &s(&corpus),
            "--out",
            &s(&atlas),
            "--top-k",
            "8",
        ]);
        let modules = root.join("modules");
        ftri(&[
            "modules",
            "--model",
            &s(&model),
            "--corpus",
            &s(&corpus),
            "--layers",
            "1",
            "--k",
            "4",
            "--out",
            &s(&modules),
        ]);
        let f = root.join("F.safetensors");
        ftri(&[
            "decompose",
            "--model",
            &s(&model),
            "--corpus",
            &s(&corpus),
            "--site",
            "blocks.1.mlp.hook_post",
            "--k",
            "6",
            "--out",
            &s(&f),
        ]);
        Fixture { atlas, modules, f }
    })
}

fn start(extras: bool) -> SocketAddr {
    let fx = fixture();
    let mut state = AppState::new(Atlas::open(&fx.atlas).unwrap(), None).unwrap();
    state.limits = Limits::default();
    if extras {
        state.extras = Extras {
            modules: Some(load_modules(&fx.modules).unwrap()),
            decomposition: Some(load_decomposition(&fx.f).unwrap()),
        };
    }
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

fn server(extras: bool) -> SocketAddr {
    static WITH: OnceLock<SocketAddr> = OnceLock::new();
    static WITHOUT: OnceLock<SocketAddr> = OnceLock::new();
    if extras {
        *WITH.get_or_init(|| start(true))
    } else {
        *WITHOUT.get_or_init(|| start(false))
    }
}

#[test]
fn modules_list_members_cohesion_top_tokens_and_promotes() {
    let a = server(true);
    let info = get(a, "/api/info").json();
    assert_eq!(info["modules"], true);
    assert_eq!(info["components"], true);
    let r = get(a, "/api/modules");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let mods = j["modules"].as_array().unwrap();
    assert_eq!(mods.len(), 4);
    // the same modules `ftri modules` wrote
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().modules.join("modules.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(&j["modules"], &file["modules"]);
    let planted = mods
        .iter()
        .find(|m| m["members"].as_array().unwrap().iter().any(|n| n == "1.5"))
        .expect("1.5 in a module");
    for key in ["cohesion", "top", "promotes", "members"] {
        assert!(!planted[key].is_null(), "{key}: {planted}");
    }
    // one module by id, and its members are neurons of the atlas
    let id = planted["id"].to_string();
    let one = get(a, &format!("/api/module/{id}")).json();
    assert_eq!(&one, planted);
    for n in one["members"].as_array().unwrap().iter().take(3) {
        let r = get(a, &format!("/api/neuron/{}", n.as_str().unwrap()));
        assert_eq!(r.status, 200, "{n}: {}", r.text());
    }
    assert_eq!(get(a, "/api/module/999").status, 404);
}

#[test]
fn components_are_shown_like_neurons() {
    let a = server(true);
    let j = get(a, "/api/components").json();
    assert_eq!(j["k"], 6);
    assert_eq!(j["site"], "blocks.1.mlp.hook_post");
    let comps = j["components"].as_array().unwrap();
    assert_eq!(comps.len(), 6);
    // the planted unit's component: top contexts on the triggers, promotes bark
    let planted = comps
        .iter()
        .find(|c| {
            c["top"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["token"] == "dog" || t["token"] == "puppy")
                && c["promotes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .take(3)
                    .any(|p| p["token"] == "bark")
        })
        .unwrap_or_else(|| panic!("no planted component: {j}"));
    let id = planted["id"].as_str().unwrap();
    let c = get(a, &format!("/api/component/{id}")).json();
    assert_eq!(c["id"], id);
    assert_eq!(c["site"], "blocks.1.mlp.hook_post");
    assert!(c["top"][0]["context"]
        .as_str()
        .unwrap()
        .contains(c["top"][0]["token"].as_str().unwrap()));
    assert_eq!(get(a, "/api/component/1.c99").status, 404);
    assert_eq!(get(a, "/api/component/..%2F..%2Fetc%2Fpasswd").status, 404);
}

#[test]
fn pages_and_script_are_served() {
    let a = server(true);
    for p in ["/modules", "/module/0", "/components", "/component/1.c0"] {
        let r = get(a, p);
        assert_eq!(r.status, 200, "{p}");
        assert!(r.text().contains("/assets/modules.js"), "{p}");
    }
    let js = get(a, "/assets/modules.js");
    assert_eq!(js.status, 200);
    assert!(js.text().contains("function modulesPage"));
}

#[test]
fn without_the_flags_the_endpoints_answer_404_json() {
    let a = server(false);
    let info = get(a, "/api/info").json();
    assert_eq!(info["modules"], false);
    for p in [
        "/api/modules",
        "/api/module/0",
        "/api/components",
        "/api/component/1.c0",
    ] {
        let r = get(a, p);
        assert_eq!(r.status, 404, "{p}");
        assert!(
            r.json()["error"].as_str().is_some_and(|e| e.contains("--")),
            "{p}"
        );
    }
}

#[test]
fn bad_flags_are_one_line_user_errors() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{\"modules\": 3}").unwrap();
    let lone = tmp.path().join("lone.safetensors");
    std::fs::write(&lone, b"x").unwrap();
    let atlas = fx.atlas.to_str().unwrap();
    for extra in [
        vec!["--modules", "/nonexistent/dir"],
        vec!["--modules", junk.to_str().unwrap()],
        vec!["--decomposition", lone.to_str().unwrap()],
    ] {
        let mut args = vec!["serve", "--atlas", atlas, "--port", "0"];
        args.extend(extra.iter().copied());
        let out = Command::new(env!("CARGO_BIN_EXE_ftri"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
