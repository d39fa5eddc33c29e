//! `ftri plant`: write a synthetic checkpoint (random weights in the Hugging Face layout).

use crate::error::user_error;
use crate::model::synth::{default_vocab, random_weights, write_checkpoint, SynthArch, SynthSpec};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PlantArgs {
    /// Output checkpoint folder
    #[arg(long)]
    pub out: PathBuf,
    /// gpt2 or llama
    #[arg(long, default_value = "gpt2")]
    pub arch: String,
    /// Shape preset: gpt2-small (12 layers, 768 wide, 3072 neurons per layer, 50257 tokens)
    #[arg(long)]
    pub preset: Option<String>,
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

pub fn run(a: PlantArgs) -> Result<()> {
    let spec = match a.preset.as_deref() {
        Some("gpt2-small") => SynthSpec {
            seed: a.seed,
            ..SynthSpec::gpt2_small()
        },
        Some(other) => {
            return Err(user_error(format!(
                "unknown preset `{other}` (available: gpt2-small)"
            )))
        }
        None => SynthSpec {
            arch: match a.arch.as_str() {
                "gpt2" => SynthArch::Gpt2,
                "llama" => SynthArch::Llama,
                other => {
                    return Err(user_error(format!(
                        "unknown --arch `{other}` (choose gpt2 or llama)"
                    )))
                }
            },
            n_layers: a.layers,
            d_model: a.d_model,
            n_heads: a.heads,
            d_mlp: a.d_mlp,
            n_ctx: a.ctx,
            vocab: default_vocab(a.vocab.max(2)),
            seed: a.seed,
        },
    };
    if spec.n_heads == 0 || spec.d_model % spec.n_heads != 0 {
        return Err(user_error(format!(
            "--d-model {} must be a multiple of --heads {}",
            spec.d_model, spec.n_heads
        )));
    }
    if a.out.exists() {
        return Err(user_error(format!("{}: already exists", a.out.display())));
    }
    write_checkpoint(&a.out, &spec, &random_weights(&spec))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
