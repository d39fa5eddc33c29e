//! `ftri trace`: one text through the model, every chosen hook point saved to safetensors.

use super::ModelArgs;
use crate::model::hooks::select_sites;
use crate::model::HookSet;
use crate::output::write_safetensors;
use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to run (tokenized with the tokenizer's default special tokens)
    #[arg(long)]
    pub text: String,
    /// Output safetensors file
    #[arg(long)]
    pub out: PathBuf,
    /// Hook points to save: comma-separated globs over TransformerLens names (default: all)
    #[arg(long, default_value = "*")]
    pub hooks: String,
}

pub fn run(a: TraceArgs) -> Result<()> {
    let m = a.model.load()?;
    let sites = select_sites(&m.sites(), &a.hooks)?;
    let ids = m.encode(&a.text)?;
    let batch = m.batch(std::slice::from_ref(&ids))?;
    let mut hooks = HookSet::capturing(sites.iter().copied());
    m.forward(&batch, &mut hooks)?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let t = ids.len();
    out.push((
        "input_ids".into(),
        Tensor::from_vec(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            t,
            &candle_core::Device::Cpu,
        )?,
    ));
    for s in &sites {
        let x = hooks
            .take(*s)
            .ok_or_else(|| anyhow::anyhow!("hook {s} was not reached"))?;
        out.push((s.to_string(), x.squeeze(0)?.to_dtype(DType::F32)?));
    }
    let meta = HashMap::from([
        ("text".to_string(), a.text.clone()),
        ("model".to_string(), m.id.clone()),
        (
            "ftri_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    write_safetensors(&a.out, &out, Some(meta))?;
    eprintln!(
        "{} tokens, {} hook points → {}",
        t,
        sites.len(),
        a.out.display()
    );
    Ok(())
}
