//! Functional modules and decomposition components over HTTP, read from files fixed when the
//! server starts (never from a request): `--modules DIR` (what `ftri modules --out DIR` writes,
//! `DIR/modules.json`; `ATLAS/modules/` is used when the flag is absent and it exists) and
//! `--decomposition F.safetensors` (the report `F.json` that `ftri decompose --out F.safetensors`
//! writes next to it).
//!
//! `/api/modules` lists the modules (members, cohesion, top tokens, promotes) — 404 when none
//! were loaded; `/api/module/{id}` is one module; `/api/components` lists the components with the
//! fit's figures; `/api/component/{L.cK}` is one component, shown like a neuron (top contexts,
//! promotes). The files are parsed once, checked for the fields the UI reads, and kept as JSON.

use super::api::{ApiError, ApiResult};
use super::Shared;
use crate::error::user_error;
use anyhow::Result;
use axum::extract::{Path as UrlPath, State};
use axum::Json;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What `serve` loaded besides the atlas.
#[derive(Default)]
pub struct Extras {
    /// `modules.json` as written by `ftri modules`.
    pub modules: Option<Value>,
    /// `F.json` as written by `ftri decompose`.
    pub decomposition: Option<Value>,
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("{what} {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| user_error(format!("{what} {}: not JSON: {e}", path.display())))
}

/// Every entry of `v[key]` must be an object with string `id_key` (or a number) and array `arrays`.
fn check_list(v: &Value, key: &str, id_key: &str, arrays: &[&str], what: &str) -> Result<()> {
    let list = v[key]
        .as_array()
        .ok_or_else(|| user_error(format!("{what}: no `{key}` list")))?;
    for (i, e) in list.iter().enumerate() {
        if e[id_key].is_null() || arrays.iter().any(|a| !e[*a].is_array()) {
            return Err(user_error(format!(
                "{what}: {key}[{i}] lacks `{id_key}` or one of {arrays:?}"
            )));
        }
    }
    Ok(())
}

/// `DIR/modules.json` (DIR may also name the file itself).
pub fn load_modules(dir: &Path) -> Result<Value> {
    let file = if dir.is_dir() {
        dir.join("modules.json")
    } else {
        dir.to_path_buf()
    };
    let v = read_json(&file, "--modules")?;
    check_list(
        &v,
        "modules",
        "id",
        &["members", "top", "promotes"],
        "--modules",
    )?;
    Ok(v)
}

/// The modules folder found next to an atlas, if any.
pub fn modules_next_to(atlas: &Path) -> Option<PathBuf> {
    let d = atlas.join("modules");
    d.join("modules.json").is_file().then_some(d)
}

/// The report next to `F.safetensors` (`F.json`).
pub fn load_decomposition(f: &Path) -> Result<Value> {
    let file = f.with_extension("json");
    if !file.is_file() {
        return Err(user_error(format!(
            "--decomposition {}: no {} next to it (ftri decompose --out writes it)",
            f.display(),
            file.display()
        )));
    }
    let v = read_json(&file, "--decomposition")?;
    check_list(
        &v,
        "components",
        "id",
        &["top", "promotes"],
        "--decomposition",
    )?;
    Ok(v)
}

fn modules_of(s: &Shared) -> Result<&Value, ApiError> {
    s.extras.modules.as_ref().ok_or_else(|| {
        ApiError::not_found("no modules loaded: start the server with --modules DIR")
    })
}

fn decomposition_of(s: &Shared) -> Result<&Value, ApiError> {
    s.extras.decomposition.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "no decomposition loaded: start the server with --decomposition F.safetensors",
        )
    })
}

/// All modules, as `ftri modules` wrote them (without its timing figures).
pub(super) async fn modules(State(s): State<Shared>) -> ApiResult {
    let v = modules_of(&s)?;
    Ok(Json(json!({
        "k": v["k"],
        "layers": v["layers"],
        "tokens": v["tokens"],
        "modules": v["modules"],
    })))
}

/// One module by id.
pub(super) async fn module(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let v = modules_of(&s)?;
    v["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            // ids are numbers in modules.json; a string id is accepted too
            m["id"].as_u64().is_some_and(|n| id.parse() == Ok(n))
                || m["id"].as_str() == Some(id.as_str())
        })
        .map(|m| Json(m.clone()))
        .ok_or_else(|| ApiError::not_found(format!("no module `{id}`")))
}

/// The decomposition's figures and every component.
pub(super) async fn components(State(s): State<Shared>) -> ApiResult {
    Ok(Json(decomposition_of(&s)?.clone()))
}

/// One component `L.cK`, with the site it factors.
pub(super) async fn component(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let v = decomposition_of(&s)?;
    let c = v["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"].as_str() == Some(id.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("no component `{id}`")))?;
    let mut c = c.clone();
    c["site"] = v["site"].clone();
    c["k"] = v["k"].clone();
    if v["steering"]["component"].as_str() == Some(id.as_str()) {
        c["steering"] = v["steering"].clone();
    }
    Ok(Json(c))
}
