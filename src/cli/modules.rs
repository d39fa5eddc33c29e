//! `ftri modules`: functional modules of co-activating neurons (see `analyze::modules`); writes
//! `DIR/modules.json` and one `DIR/module-ID.json` per module (a neuron set for `--neurons @…`).

use super::ModelArgs;
use crate::analyze::cluster::KChoice;
use crate::analyze::localize::parse_layers;
use crate::analyze::modules::{modules, ModulesRequest, ModulesResult};
use crate::analyze::pass::CorpusSpec;
use crate::error::user_error;
use crate::model::Model;
use crate::output::{print_json, to_pretty_json, write_atomic};
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// The corpus flags shared by the verbs that run a model over a corpus.
#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// Text (one document per line), a folder of .txt, JSONL or Parquet (repeatable)
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// JSONL/Parquet field holding the text
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Tokens per window
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    /// Windows per forward pass
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Stop reading the corpus after this many tokens
    #[arg(long)]
    pub max_tokens: Option<u64>,
}

impl CorpusArgs {
    pub fn spec(&self) -> Result<CorpusSpec> {
        if self.ctx == 0 || self.batch == 0 {
            return Err(user_error("--ctx and --batch must be at least 1"));
        }
        Ok(CorpusSpec {
            paths: self.corpus.clone(),
            text_field: self.text_field.clone(),
            ctx: self.ctx,
            max_tokens: self.max_tokens,
            batch: self.batch,
        })
    }
}

#[derive(Args)]
pub struct ModulesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Layers (`0-5`, `1,3`; default all)
    #[arg(long)]
    pub layers: Option<String>,
    /// Modules per layer
    #[arg(long, default_value_t = 32, conflicts_with = "auto")]
    pub k: usize,
    /// Choose each layer's k by the largest eigengap (up to --max-k)
    #[arg(long)]
    pub auto: bool,
    /// Largest k --auto considers
    #[arg(long, default_value_t = 64)]
    pub max_k: usize,
    /// Soft-threshold power β of the affinity max(r, 0)^β (WGCNA's default 6)
    #[arg(long, default_value_t = 6.0)]
    pub power: f64,
    /// Top tokens kept per module
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Promoted tokens listed per module
    #[arg(long, default_value_t = 10)]
    pub promotes: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: modules.json and module-ID.json per module
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// A progress bar over tokens on stderr (hidden when stderr is not a terminal), relabelled per
/// stage.
pub fn token_bar() -> (ProgressBar, impl FnMut(&str, u64, u64)) {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} {bar:30} {pos}/{len} tokens {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let mut stage = String::new();
    let update = move |s: &str, done: u64, total: u64| {
        if s != stage {
            stage = s.to_string();
            b.set_message(stage.clone());
            b.reset();
            b.set_length(total.max(1));
        }
        b.set_position(done);
    };
    (bar, update)
}

/// Load the model, run `compute` with a token progress bar (`token_bar`), then print the result
/// as `--json` or with `print`.
pub fn run_with_bar<R: serde::Serialize>(
    model: &ModelArgs,
    json: bool,
    compute: impl FnOnce(&Model, &mut dyn FnMut(&str, u64, u64)) -> Result<R>,
    print: impl FnOnce(&R),
) -> Result<()> {
    let m = model.load()?;
    let (bar, mut update) = token_bar();
    let r = compute(&m, &mut update)?;
    bar.finish_and_clear();
    if json {
        print_json(&r)
    } else {
        print(&r);
        Ok(())
    }
}

pub fn run(a: ModulesArgs) -> Result<()> {
    run_with_bar(
        &a.model,
        a.json,
        |m, p| compute(&a, m, p),
        |r| print_table(r, &a.out),
    )
}

/// The job of `ftri modules` on a loaded model, its files written (the Python bindings call it
/// too); `progress(stage, done, total)` as the library job's.
pub fn compute(
    a: &ModulesArgs,
    m: &Model,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<ModulesResult> {
    let corpus = a.corpus.spec()?;
    if a.auto && a.max_k < 2 {
        return Err(user_error("--max-k must be at least 2"));
    }
    let layers = parse_layers(a.layers.as_deref(), m.cfg.n_layers)?;
    let req = ModulesRequest {
        corpus,
        layers,
        k: if a.auto {
            KChoice::Eigengap { max: a.max_k }
        } else {
            KChoice::Fixed(a.k)
        },
        power: a.power,
        top: a.top,
        promotes: a.promotes,
        seed: a.seed,
    };
    let r = modules(m, &req, progress)?;
    write_outputs(&a.out, &r)?;
    Ok(r)
}

/// `DIR/modules.json` and `DIR/module-ID.json`, each written atomically.
pub fn write_outputs(dir: &Path, r: &ModulesResult) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| user_error(format!("{}: cannot create: {e}", dir.display())))?;
    let put = |name: String, text: String| {
        write_atomic(&dir.join(name), |tmp| {
            std::fs::write(tmp, text)?;
            Ok(())
        })
    };
    for md in &r.modules {
        put(format!("module-{}.json", md.id), to_pretty_json(md)?)?;
    }
    put("modules.json".into(), to_pretty_json(r)?)
}

fn print_table(r: &ModulesResult, out: &Path) {
    println!(
        "{:>4} {:>5} {:>5} {:>9}  {:<40} promotes",
        "id", "layer", "size", "cohesion", "top tokens"
    );
    for md in &r.modules {
        let top: Vec<String> = md
            .top
            .iter()
            .take(4)
            .map(|t| format!("{:?}", t.token))
            .collect();
        let pro: Vec<String> = md
            .promotes
            .iter()
            .take(4)
            .map(|t| format!("{:?}", t.token))
            .collect();
        println!(
            "{:>4} {:>5} {:>5} {:>9.3}  {:<40} {}",
            md.id,
            md.layer,
            md.size,
            md.cohesion,
            top.join(" "),
            pro.join(" ")
        );
    }
    let s = &r.speed;
    println!(
        "{} modules over layers {:?}, {} tokens; co-activation {:.1} GFLOP at {:.0} GFLOP/s ({:.0} % of this machine's matmul, {:.0} GFLOP/s); {:.1} s in all. Wrote {}/module-ID.json",
        r.k,
        r.layers,
        r.tokens,
        s.coactivation_gflop,
        s.coactivation_gflops,
        100.0 * s.coactivation_gflops / s.matmul_gflops.max(1e-9),
        s.matmul_gflops,
        s.seconds,
        out.display()
    );
}
