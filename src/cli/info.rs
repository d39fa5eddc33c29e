use super::ModelArgs;
use crate::model::Model;
use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The model's MLP neurons, by kind: (dense layers' `mlp.hook_post`, experts' `mlp.experts.E.hook_post`,
/// the shared expert's `mlp.shared_expert.hook_post`), summed over layers.
pub fn neuron_counts(m: &Model) -> (usize, usize, usize) {
    let (mut dense, mut experts, mut shared) = (0, 0, 0);
    for b in &m.net.blocks {
        match &b.moe {
            None => dense += m.cfg.d_mlp,
            Some(moe) => {
                experts += moe.n_experts() * moe.d_expert();
                shared += moe.shared.as_ref().map_or(0, |s| s.mlp.d_expert());
            }
        }
    }
    (dense, experts, shared)
}

pub fn info_json(m: &Model) -> serde_json::Value {
    let c = &m.cfg;
    let mut j = info_json_dense(m);
    if let Some(moe) = &c.moe {
        let (dense, experts, shared) = neuron_counts(m);
        j["total_neurons"] = json!(dense + experts + shared);
        j["moe"] = json!({
            "experts": moe.n_experts,
            "top_k": moe.top_k,
            "d_expert": moe.d_expert,
            "norm_topk_prob": moe.norm_topk_prob,
            "shared_expert": moe.shared_expert,
            "moe_layers": (0..c.n_layers).filter(|&l| c.is_moe_layer(l)).collect::<Vec<_>>(),
            "dense_neurons": dense,
            "expert_neurons": experts,
            "shared_expert_neurons": shared,
        });
    }
    j
}

fn info_json_dense(m: &Model) -> serde_json::Value {
    let c = &m.cfg;
    json!({
        "model": m.id,
        "path": m.dir.display().to_string(),
        "architecture": c.arch.name(),
        "layers": c.n_layers,
        "d_model": c.d_model,
        "d_mlp": c.d_mlp,
        "neurons_per_layer": c.d_mlp,
        "total_neurons": c.d_mlp * c.n_layers,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "context": c.n_ctx,
        "has_lm_head": m.net.unembed.is_some(),
        "hook_points": m.sites().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    })
}

pub fn run(a: InfoArgs) -> Result<()> {
    let m = a.model.load()?;
    let j = info_json(&m);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let c = &m.cfg;
    println!("model         {}", m.id);
    println!("path          {}", m.dir.display());
    println!("architecture  {}", c.arch.name());
    println!("layers        {}", c.n_layers);
    println!("d_model       {}", c.d_model);
    if c.moe.is_some() {
        // the dense layers' MLP width; each MoE layer's neurons are its experts'
        let (dense, experts, shared) = neuron_counts(&m);
        if dense > 0 {
            println!("d_mlp         {} neurons per dense layer", c.d_mlp);
        }
        println!(
            "neurons       {} in all: {} in experts{}{}",
            dense + experts + shared,
            experts,
            if shared > 0 {
                format!(", {shared} in shared experts")
            } else {
                String::new()
            },
            if dense > 0 {
                format!(", {dense} in dense layers")
            } else {
                String::new()
            }
        );
    } else {
        println!("d_mlp         {} neurons per layer", c.d_mlp);
        println!("neurons       {} in all", c.d_mlp * c.n_layers);
    }
    println!(
        "heads         {} ({} key/value), head_dim {}",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("vocabulary    {}", c.vocab_size);
    println!("context       {} tokens", c.n_ctx);
    println!(
        "LM head       {}",
        if m.net.unembed.is_some() { "yes" } else { "no" }
    );
    if let Some(moe) = &c.moe {
        let layers: Vec<String> = (0..c.n_layers)
            .filter(|&l| c.is_moe_layer(l))
            .map(|l| l.to_string())
            .collect();
        println!(
            "experts       {} per MoE layer (layers {}), top-{}{}, {} neurons each{}",
            moe.n_experts,
            layers.join(","),
            moe.top_k,
            if moe.norm_topk_prob {
                " renormalized"
            } else {
                ""
            },
            moe.d_expert,
            moe.shared_expert
                .map(|s| format!("; a shared expert of {s}"))
                .unwrap_or_default()
        );
    }
    let sites = m.sites();
    println!("hook points   {} — per block:", sites.len());
    // one line per kind of hook point: experts as {e}, and dense layers' MLP sites among MoE ones
    let mut seen = std::collections::BTreeSet::new();
    for s in &sites {
        let Some(l) = s.layer() else { continue };
        let mut name = s
            .to_string()
            .replacen(&format!("blocks.{l}."), "blocks.{l}.", 1);
        if let crate::model::Site::Block(_, crate::model::SiteKind::Expert(e, _)) = s {
            name = name.replacen(&format!("experts.{e}."), "experts.{e}.", 1);
        }
        if seen.insert(name.clone()) {
            println!("                {name}");
        }
    }
    println!(
        "              and hook_embed{}",
        if m.net.unembed.is_some() {
            ", logits"
        } else {
            ""
        }
    );
    Ok(())
}
