//! `ftri <verb>`: argument parsing and the human/JSON presentation of each stage's results.

pub mod align;
pub mod atlas;
pub mod bench;
pub mod celltypes;
pub mod decompose;
pub mod demo;
pub mod describe;
pub mod experts;
pub mod frequency;
pub mod generate;
pub mod info;
pub mod lesion;
pub mod localize;
pub mod merge;
pub mod modules;
pub mod moefy;
pub mod patch;
pub mod plant;
pub mod record;
pub mod serve;
pub mod show;
pub mod sparsity;
pub mod trace;
pub mod tune;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ftri",
    version,
    about = "functional Token Resonance Imaging: record, localize, describe, lesion and stimulate the neurons of transformers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The main job on a real model: fetch all-MiniLM-L6-v2, record its atlas over a built-in
    /// corpus, localize built-in concepts, print a report and serve it in the browser
    Demo(demo::DemoArgs),
    /// Architecture, sizes, neuron count and hook points of a model
    Info(info::InfoArgs),
    /// Run one text and save every hook point's activations (and logits) to safetensors
    Trace(trace::TraceArgs),
    /// Write a synthetic checkpoint (random weights, Hugging Face layout)
    Plant(plant::PlantArgs),
    /// Throughput and peak memory of capturing hook points; the machine's matmul GFLOP/s
    Bench(bench::BenchArgs),
    /// Run a model over a corpus and write a per-unit atlas (statistics and top examples)
    Record(record::RecordArgs),
    /// One unit of an atlas: statistics and top examples in context
    Show(show::ShowArgs),
    /// Combine atlases recorded as shards (--shard i/n) into one
    Merge(merge::MergeArgs),
    /// Per-layer summary of an atlas: fire rates, dead and most selective units
    Atlas(atlas::AtlasArgs),
    /// Silence or drive neurons and measure the change on evaluation prompts (with random baselines)
    Lesion(lesion::LesionArgs),
    /// Generate text, optionally with neurons held at a value on every step
    Generate(generate::GenerateArgs),
    /// Rank neurons by how differently they respond to target and control stimuli
    Localize(localize::LocalizeArgs),
    /// Rank the experts of a mixture-of-experts model by how differently target and control
    /// stimuli are routed to them
    Experts(experts::ExpertsArgs),
    /// Local web UI and JSON API over an atlas (brain-map overview, neuron pages, search, localize)
    Serve(serve::ServeArgs),
    /// What a neuron writes (tokens it promotes/suppresses) and reads, from its weights; --all for every neuron
    Describe(describe::DescribeArgs),
    /// Tuning curves: each unit's response against a numeric stimulus value (linear, log, Gaussian fits; ridge decoding per layer)
    Tune(tune::TuneArgs),
    /// Frequency tagging: which units follow the words, phrases and sentences of structured token streams
    Frequency(frequency::FrequencyArgs),
    /// Model–brain alignment per layer: ridge encoding of recorded brain units, RSA and CKA
    Align(align::AlignArgs),
    /// Activation patching and causal tracing: restore clean activations into a corrupted run,
    /// site × layer × position, and report the recovered fraction of a next-token metric
    Patch(patch::PatchArgs),
    /// Functional modules: cluster each layer's neurons by co-activation over a corpus
    Modules(modules::ModulesArgs),
    /// Lazy neurons: active neurons per token, dead ones, and the loss of keeping each token's top k %
    Sparsity(sparsity::SparsityArgs),
    /// MoEfication: split each FFN into equal experts, route r per token, loss against dense
    Moefy(moefy::MoefyArgs),
    /// Semi-NMF of a layer's neuron activations into non-negative components (units L.cK)
    Decompose(decompose::DecomposeArgs),
    /// Functional cell types: cluster an atlas's units by the stimuli that drive them most
    Celltypes(celltypes::CelltypesArgs),
}

/// How to load the model; shared by every verb that runs one.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json, *.safetensors, tokenizer.json), a GGUF file (or a folder holding one), or Hugging Face hub id
    #[arg(long, short)]
    pub model: String,
    /// Compute dtype: f32 (default), bf16, f16, f64
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Worker threads for the CPU (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<crate::model::Model> {
        if let Some(n) = self.threads {
            set_threads(n);
        }
        let opts = crate::model::LoadOptions {
            dtype: crate::model::parse_dtype(&self.dtype)?,
            device: crate::model::parse_device(&self.device)?,
        };
        crate::model::Model::load(&self.model, &opts)
    }
}

/// candle's CPU kernels read the thread count from the environment the first time they run.
pub fn set_threads(n: usize) {
    let n = n.max(1).to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Info(a) => info::run(a),
        Command::Trace(a) => trace::run(a),
        Command::Plant(a) => plant::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Lesion(a) => lesion::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Localize(a) => localize::run(a),
        Command::Experts(a) => experts::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Describe(a) => describe::run(a),
        Command::Record(a) => record::run(a),
        Command::Show(a) => show::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Atlas(a) => atlas::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Frequency(a) => frequency::run(a),
        Command::Align(a) => align::run(a),
        Command::Patch(a) => patch::run(a),
        Command::Modules(a) => modules::run(a),
        Command::Sparsity(a) => sparsity::run(a),
        Command::Moefy(a) => moefy::run(a),
        Command::Decompose(a) => decompose::run(a),
        Command::Celltypes(a) => celltypes::run(a),
    }
}
