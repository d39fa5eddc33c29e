//! `ftri generate`: text generation, optionally with neurons held at a value, heads ablated or
//! experts switched off on every step.

use super::lesion::parse_positions;
use super::ModelArgs;
use crate::intervene::experts::{parse_expert_set, switch_off};
use crate::intervene::heads::{eval_means, head_interventions, parse_head_set};
use crate::intervene::lesion::{build, open_atlas};
use crate::intervene::{parse_neuron_set, OpSpec};
use crate::model::generate::{generate, GenerateOptions};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// Neurons to intervene on while generating (`3.17,5.2040` or a file)
    #[arg(long)]
    pub neurons: Option<String>,
    /// Experts to switch off while generating (mixture-of-experts models): `3.e5,7.e1`
    #[arg(long)]
    pub experts: Option<String>,
    /// Attention heads to ablate while generating: `3.h5,7.h1` (`--op zero`, or `mean`: each
    /// head's mean hook_z over the prompt's tokens)
    #[arg(long)]
    pub heads: Option<String>,
    /// zero, mean (needs --atlas), scale=F, set=V, add=V
    #[arg(long, default_value = "zero")]
    pub op: String,
    /// Token positions to intervene at (default all, prompt and generated)
    #[arg(long)]
    pub positions: Option<String>,
    #[arg(long)]
    pub atlas: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let op = OpSpec::parse(&a.op)?;
    let positions = parse_positions(a.positions.as_deref())?;
    let model = a.model.load()?;
    let mut ivs = match &a.neurons {
        Some(spec) => {
            let set = parse_neuron_set(spec, &model.cfg)?;
            let atlas = open_atlas(a.atlas.as_deref(), &model, &op)?;
            build(&model, &set, &op, positions.as_deref(), atlas.as_ref())?
        }
        None => vec![],
    };
    if let Some(spec) = &a.experts {
        let set = parse_expert_set(spec, &model.cfg)?;
        ivs.extend(switch_off(&set, positions.as_deref()));
    }
    let prompt = model.encode(&a.prompt)?;
    if let Some(spec) = &a.heads {
        let set = parse_head_set(spec, &model.cfg)?;
        let means = match op {
            OpSpec::Mean => {
                let layers: Vec<usize> = set.iter().map(|h| h.layer).collect();
                eval_means(&model, std::slice::from_ref(&prompt), &layers)?
            }
            _ => Default::default(),
        };
        ivs.extend(head_interventions(
            &set,
            &op,
            positions.as_deref(),
            model.cfg.head_dim,
            &means,
        )?);
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        seed: a.seed,
    };
    let ids = generate(&model, &prompt, &ivs, &opts)?;
    // decode prompt and completion together so word boundaries come out as the tokenizer means
    let prompt_text = model.tokenizer.decode(&prompt);
    let full = model
        .tokenizer
        .decode(&[prompt.as_slice(), ids.as_slice()].concat());
    let text = full
        .strip_prefix(&prompt_text)
        .map(String::from)
        .unwrap_or_else(|| model.tokenizer.decode(&ids));
    if a.json {
        let out = json!({"prompt": a.prompt, "completion": text, "ids": ids,
            "tokens": ids.iter().map(|&i| model.tokenizer.token_text(i)).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            println!("{prompt_text}\x1b[1m{text}\x1b[0m");
        } else {
            println!("{prompt_text}{text}");
        }
    }
    Ok(())
}
