//! The demo job: the main job end to end on a real model. Fetch the default model if absent
//! (SmolLM2-135M-Instruct, a GGUF decoder), record its atlas over a built-in corpus, localize
//! built-in concepts with their own matched target/control stimuli, say what each concept's best
//! neurons read and write, and — on a model with an LM head — lesion each concept's neurons on
//! its evaluation set against random same-layer sets, and generate with and without the French
//! neurons clamped. `ftri demo` prints the report and serves the atlas.
//!
//! Invariant: every number in the report comes from the library's jobs (record session,
//! `localize`, `describe_neuron`, `lesion`, `generate`); this file only orders them and words them.

pub mod causal;
pub mod data;
pub mod fetch;

use crate::analyze::describe::describe_neuron;
use crate::analyze::localize::{localize, Direction, LocalizeRequest};
use crate::analyze::responses::{Method, Readout, Reduce, Stimulus};
use crate::atlas::view::unit_view;
use crate::atlas::Atlas;
use crate::model::{LoadOptions, Model, SiteKind};
use crate::output::to_pretty_json;
use crate::record::session::{Ended, Event, RecordSession, RecordSettings};
use anyhow::Result;
use causal::{lesion_concept, steer, LesionReport, SteeringReport};
use data::{CONCEPTS, CORPUS, STEER_CONCEPT, STEER_PROMPT};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use fetch::{fetch_minilm, fetch_smollm2};

pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The encoder the demo also fetches by name (no lesion or generation: it has no LM head).
pub const MINILM_MODEL: &str = "models/all-MiniLM-L6-v2";

/// Neurons per concept that the lesion removes (its best by |t|).
pub const LESION_SIZE: usize = 30;
/// Random same-layer sets the lesion is compared with.
pub const RANDOM_SETS: usize = 10;
/// Neurons per concept that the steering clamps (its best by |t|), and how far it pushes them.
pub const STEER_SIZE: usize = 100;
pub const STEER_GAIN: f64 = 2.0;
/// Tokens generated with and without the clamp.
const STEER_TOKENS: usize = 24;

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
    /// Tokens its output weights promote most (through the LM head, or the input embeddings).
    pub promotes: Vec<String>,
    pub examples: Vec<ExampleReport>,
    /// What the numbers say, in words.
    pub summary: String,
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
    /// Neurons whose activity differs between target and control at q ≤ 0.05 (either way).
    pub significant: usize,
    /// The `top` neurons most selective for the concept (more active on target than control).
    pub units: Vec<UnitReport>,
    /// The concept's best `LESION_SIZE` neurons lesioned on its evaluation set (models with an LM
    /// head, concepts with an evaluation set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lesion: Option<LesionReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lesion_summary: Option<String>,
}

/// `ftri demo --json`, also written to `OUT/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub model: String,
    pub atlas: String,
    pub tokens: u64,
    pub concepts: Vec<ConceptReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steering: Option<SteeringReport>,
    /// Wall-clock seconds per step (record, localize, lesion, generate).
    pub seconds: Timings,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub record: f64,
    pub localize: f64,
    pub lesion: f64,
    pub generate: f64,
    pub total: f64,
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

/// Fetch the default model when it is what `model` names and it is absent.
fn ensure_model(model: &str) -> Result<()> {
    let p = PathBuf::from(model);
    if model == DEFAULT_MODEL && !p.exists() {
        fetch_smollm2(&p)?;
    } else if model == MINILM_MODEL && !p.join("model.safetensors").exists() {
        fetch_minilm(&p)?;
    }
    Ok(())
}

/// Run the demo into `out` (corpus copy, atlas, report.json) with the model `model` (fetched
/// first when it is a default one and absent), listing `top` neurons per concept.
/// `status` receives one line per step, `record_events` the recording's progress.
pub fn run_demo(
    model: &str,
    out: &Path,
    top: usize,
    status: &mut dyn FnMut(&str),
    record_events: &mut dyn FnMut(Event),
) -> Result<DemoReport> {
    let start = Instant::now();
    let mut seconds = Timings::default();
    ensure_model(model)?;
    std::fs::create_dir_all(out)
        .map_err(|e| crate::error::user_error(format!("{}: cannot create: {e}", out.display())))?;
    let corpus = out.join("corpus.txt");
    std::fs::write(&corpus, CORPUS)?;
    let atlas_dir = out.join("atlas");
    let m = Model::load(model, &LoadOptions::default())?;
    status(&format!(
        "recording every neuron of {model} over {} built-in sentences…",
        CORPUS.lines().count()
    ));
    let settings = RecordSettings {
        batch: 16,
        force: true,
        ..RecordSettings::default()
    };
    let t = Instant::now();
    let session = RecordSession::prepare(std::slice::from_ref(&corpus), &atlas_dir, &settings)?;
    if let Ended::Stopped { .. } = session.run(&m, record_events)? {
        anyhow::bail!("the demo's recording stopped early");
    }
    seconds.record = t.elapsed().as_secs_f64();
    let atlas = Atlas::open(&atlas_dir)?;
    let causal = m.cfg.has_lm_head();
    let mut concepts = Vec::new();
    let mut steering = None;
    for c in CONCEPTS {
        status(&format!("localizing `{}`…", c.name));
        let t = Instant::now();
        let r = localize(
            &m,
            &LocalizeRequest {
                target: stimuli(c.target),
                control: stimuli(c.control),
                site: SiteKind::MlpPost,
                layers: (0..m.cfg.n_layers).collect(),
                readout: Readout {
                    reduce: Reduce::Mean,
                    method: Method::Contrast,
                    include_special: false,
                    batch: 16,
                },
                // A concept's neurons are those whose activity it changes most, either way: in a
                // gated MLP a neuron pushed down by the concept carries it as much as one pushed up.
                direction: Direction::Both,
                // Each concept's target and control lines are written as matched pairs.
                paired: true,
                fdr: 0.05,
                top: top.max(LESION_SIZE).max(STEER_SIZE),
            },
        )?;
        seconds.localize += t.elapsed().as_secs_f64();
        // Shown: the neurons that respond to the concept (t > 0), the readable half of the list.
        let units = r
            .neurons
            .iter()
            .filter(|f| f.score > 0.0)
            .take(top)
            .map(|f| {
                let (site, unit) = atlas.resolve(&f.neuron)?;
                let v = unit_view(&atlas, &atlas.unit(site, unit)?, Some(&m.tokenizer));
                let promotes: Vec<String> = describe_neuron(&m, f.layer, f.index, 5)?
                    .promotes
                    .into_iter()
                    .map(|t| t.token)
                    .collect();
                let examples: Vec<ExampleReport> = v
                    .top
                    .into_iter()
                    .take(3)
                    .map(|e| ExampleReport {
                        activation: e.activation,
                        context: e.context,
                    })
                    .collect();
                let summary = unit_summary(c.name, f.score, f.auroc, &examples, &promotes);
                Ok(UnitReport {
                    neuron: f.neuron.clone(),
                    t: f.score,
                    d: f.effect_size,
                    auroc: f.auroc,
                    q: f.q,
                    fire_rate: v.fire_rate,
                    max: v.max,
                    promotes,
                    examples,
                    summary,
                })
            })
            .collect::<Result<_>>()?;
        let best = &r.neurons[..r.neurons.len().min(LESION_SIZE)];
        let lesion = match (causal, c.eval) {
            (true, Some(eval)) => {
                status(&format!(
                    "lesioning `{}`'s {} best neurons against {RANDOM_SETS} random sets…",
                    c.name,
                    best.len()
                ));
                let t = Instant::now();
                let l = lesion_concept(&m, &atlas_dir, best, eval, RANDOM_SETS)?;
                seconds.lesion += t.elapsed().as_secs_f64();
                Some(l)
            }
            _ => None,
        };
        if causal && c.name == STEER_CONCEPT {
            status(&format!(
                "generating with and without `{}`'s neurons clamped…",
                c.name
            ));
            let t = Instant::now();
            let steer_set = &r.neurons[..r.neurons.len().min(STEER_SIZE)];
            steering = Some(steer(
                &m,
                c.name,
                steer_set,
                STEER_GAIN,
                STEER_PROMPT,
                STEER_TOKENS,
            )?);
            seconds.generate += t.elapsed().as_secs_f64();
        }
        concepts.push(ConceptReport {
            concept: c.name.to_string(),
            n_target: r.n_target,
            n_control: r.n_control,
            significant: r.significant,
            units,
            lesion_summary: lesion.as_ref().map(|l| lesion_summary(c.name, l)),
            lesion,
        });
    }
    seconds.total = start.elapsed().as_secs_f64();
    let report = DemoReport {
        model: model.to_string(),
        atlas: atlas_dir.display().to_string(),
        tokens: atlas.manifest.counts.tokens,
        concepts,
        steering,
        seconds,
    };
    crate::output::write_atomic(&out.join("report.json"), |tmp| {
        Ok(std::fs::write(tmp, to_pretty_json(&report)?)?)
    })?;
    Ok(report)
}

fn quoted(tokens: &[String], n: usize) -> String {
    let q: Vec<String> = tokens.iter().take(n).map(|t| format!("{t:?}")).collect();
    q.join(", ")
}

/// One neuron in words: which way the concept moves it, where it fires, what it writes.
fn unit_summary(
    concept: &str,
    t: f64,
    auroc: f64,
    examples: &[ExampleReport],
    promotes: &[String],
) -> String {
    let way = if t > 0.0 { "more" } else { "less" };
    let sep = if auroc >= 0.95 || auroc <= 0.05 {
        "almost every matched pair"
    } else {
        "most matched pairs"
    };
    let mut s = format!("{way} active on {concept} than on the matched control ({sep}, t {t:.1})");
    if let Some(e) = examples.first() {
        s.push_str(&format!("; in the corpus it fires most on {}", e.context));
    }
    if !promotes.is_empty() {
        s.push_str(&format!("; its output promotes {}", quoted(promotes, 3)));
    }
    s
}

/// A lesion in words: the change against what random sets of the same layers do.
fn lesion_summary(concept: &str, l: &LesionReport) -> String {
    let sigmas = if l.random_sd > 0.0 {
        format!(
            ", {:.0} random-set SDs",
            (l.delta - l.random_mean).abs() / l.random_sd
        )
    } else {
        String::new()
    };
    let verdict = if l.beyond_every_random {
        format!(
            "further than every one of {} random same-layer sets",
            l.random_sets
        )
    } else {
        format!(
            "not beyond the random sets ({} of {} moved it as far)",
            l.as_extreme, l.random_sets
        )
    };
    format!(
        "removing these {} neurons (each held at its corpus mean) changed the log-probability of the {concept} continuations by {:+.2} nats{sigmas}, {verdict} (random: {:+.2} ± {:.2}); plain English continuations changed by {:+.2}",
        l.neurons.len(),
        l.delta,
        l.random_mean,
        l.random_sd,
        l.control_delta
    )
}
