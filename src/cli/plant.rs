//! `ftri plant`: write a synthetic checkpoint (Hugging Face layout, random weights), optionally
//! with planted neurons or (in a Mixtral) planted experts of known behaviour (ground truth for
//! interpretability methods), recorded in plant.json.

use crate::error::user_error;
use crate::model::plant::{plant, PlantedNeuron};
use crate::model::plant_expert::{plant_experts, PlantedExpert};
use crate::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
use crate::model::UnitId;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PlantArgs {
    /// Output checkpoint folder
    #[arg(long)]
    pub out: PathBuf,
    /// gpt2, llama or mixtral
    #[arg(long, default_value = "gpt2")]
    pub arch: String,
    /// Shape preset: gpt2-small (12 layers, 768 wide, 3072 neurons per layer, 50257 tokens) or
    /// mixtral-small (8 layers, 512 wide, 8 experts of 1024 neurons, top-2, 32000 tokens)
    #[arg(long)]
    pub preset: Option<String>,
    /// An expert to plant (--arch mixtral), `L.eE:TRIGGER[,TRIGGER…]:TARGET` — the router sends
    /// exactly the trigger words to it and it raises the target word's logit (repeatable)
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    /// Experts per layer (--arch mixtral)
    #[arg(long = "num-experts", default_value_t = 8)]
    pub n_experts: usize,
    /// Experts chosen per token (--arch mixtral)
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// A neuron to plant, `L.N:TRIGGER[,TRIGGER…]:TARGET` — fires on the trigger words and raises
    /// the target word's logit (repeatable). Words join the vocabulary.
    #[arg(long = "neuron")]
    pub neurons: Vec<String>,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 256)]
    pub d_mlp: usize,
    #[arg(long, default_value_t = 1000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn parse_planted(spec: &str) -> Result<PlantedNeuron> {
    let bad = || {
        user_error(format!(
            "--neuron `{spec}`: expected L.N:TRIGGER[,TRIGGER…]:TARGET, e.g. 1.7:dog,puppy:bark"
        ))
    };
    let (id, fires_on, writes) = parse_unit_words("--neuron", spec, &bad)?;
    let (l, n) = id.split_once('.').ok_or_else(bad)?;
    Ok(PlantedNeuron {
        layer: l.parse().map_err(|_| bad())?,
        index: n.parse().map_err(|_| bad())?,
        fires_on,
        writes,
    })
}

pub fn parse_planted_expert(spec: &str) -> Result<PlantedExpert> {
    let bad = || {
        user_error(format!(
            "--expert `{spec}`: expected L.eE:TRIGGER[,TRIGGER…]:TARGET, e.g. 1.e3:dog,puppy:bark"
        ))
    };
    let (id, routed, writes) = parse_unit_words("--expert", spec, &bad)?;
    let Ok(UnitId::Expert { layer, expert }) = id.parse::<UnitId>() else {
        return Err(bad());
    };
    Ok(PlantedExpert {
        layer,
        expert,
        routed,
        writes,
    })
}

/// `ID:TRIGGER[,TRIGGER…]:TARGET` → (ID, triggers, target), the words checked.
fn parse_unit_words(
    flag: &str,
    spec: &str,
    bad: &dyn Fn() -> anyhow::Error,
) -> Result<(String, Vec<String>, String)> {
    let mut parts = spec.split(':');
    let (id, trig, target) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    if parts.next().is_some() {
        return Err(bad());
    }
    let fires_on: Vec<String> = trig
        .split(',')
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let valid = |w: &str| {
        !w.is_empty()
            && !w
                .chars()
                .any(|c| c.is_whitespace() || c.is_ascii_punctuation())
    };
    if fires_on.is_empty() || !fires_on.iter().all(|w| valid(w)) || !valid(target.trim()) {
        return Err(user_error(format!(
            "{flag} `{spec}`: trigger and target words must be single words without punctuation"
        )));
    }
    Ok((id.to_string(), fires_on, target.trim().to_string()))
}

pub fn run(a: PlantArgs) -> Result<()> {
    let planted: Vec<PlantedNeuron> = a
        .neurons
        .iter()
        .map(|s| parse_planted(s))
        .collect::<Result<_>>()?;
    let experts: Vec<PlantedExpert> = a
        .experts
        .iter()
        .map(|s| parse_planted_expert(s))
        .collect::<Result<_>>()?;
    let words: Vec<String> = planted
        .iter()
        .map(|p| (&p.fires_on, &p.writes))
        .chain(experts.iter().map(|x| (&x.routed, &x.writes)))
        .flat_map(|(t, w)| t.iter().cloned().chain(std::iter::once(w.clone())))
        .collect();
    let mut spec = match a.preset.as_deref() {
        Some("gpt2-small") => SynthSpec {
            seed: a.seed,
            ..SynthSpec::gpt2_small()
        },
        Some("mixtral-small") => SynthSpec {
            seed: a.seed,
            ..SynthSpec::mixtral_small()
        },
        Some(other) => {
            return Err(user_error(format!(
                "unknown preset `{other}` (available: gpt2-small, mixtral-small)"
            )))
        }
        None => SynthSpec {
            arch: match a.arch.as_str() {
                "gpt2" => SynthArch::Gpt2,
                "llama" => SynthArch::Llama,
                "mixtral" => SynthArch::Mixtral {
                    experts: a.n_experts,
                    top_k: a.top_k,
                },
                other => {
                    return Err(user_error(format!(
                        "unknown --arch `{other}` (choose gpt2, llama or mixtral)"
                    )))
                }
            },
            n_layers: a.layers,
            d_model: a.d_model,
            n_heads: a.heads,
            d_mlp: a.d_mlp,
            n_ctx: a.ctx,
            vocab: Vec::new(),
            seed: a.seed,
        },
    };
    let n_vocab = if spec.vocab.is_empty() {
        a.vocab
    } else {
        spec.vocab.len()
    };
    spec.vocab = vocab_with(&words, n_vocab.max(words.len() + 2));
    if spec.n_layers == 0 || spec.d_mlp == 0 || spec.heads_invalid() {
        return Err(user_error(format!(
            "--layers and --d-mlp must be positive and --d-model {} a multiple of --heads {}",
            spec.d_model, spec.n_heads
        )));
    }
    if let SynthArch::Mixtral { experts, top_k } = spec.arch {
        if experts == 0 || top_k == 0 || top_k > experts {
            return Err(user_error(format!(
                "--top-k {top_k} of --num-experts {experts}: both must be positive, top-k at most the experts"
            )));
        }
    }
    if a.out.exists() {
        return Err(user_error(format!("{}: already exists", a.out.display())));
    }
    let mut weights = random_weights(&spec);
    let records = plant(&spec, &mut weights, &planted)?;
    let expert_records = plant_experts(&spec, &mut weights, &experts, records.len())?;
    // plant.json: one list, planted neurons (`neuron`) then planted experts (`expert`)
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for r in &records {
        entries.push(serde_json::to_value(r)?);
    }
    for r in &expert_records {
        entries.push(serde_json::to_value(r)?);
    }
    let extra = if entries.is_empty() {
        vec![]
    } else {
        vec![("plant.json", serde_json::to_string_pretty(&entries)?)]
    };
    write_checkpoint(&a.out, &spec, &weights, &extra)?;
    for r in &records {
        eprintln!(
            "planted {}: fires on {} → writes {}",
            r.neuron,
            r.fires_on.join(", "),
            r.writes
        );
    }
    for r in &expert_records {
        eprintln!(
            "planted {}: routed {} → writes {}",
            r.expert,
            r.routed.join(", "),
            r.writes
        );
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
