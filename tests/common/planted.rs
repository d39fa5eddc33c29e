//! Small checkpoints with a planted neuron 1.5 that fires on `dog`/`puppy` and writes `bark`.

use ftri::model::plant::{plant, PlantedNeuron};
use ftri::model::synth::{random_weights, vocab_with, write_checkpoint, SynthArch, SynthSpec};
use ftri::model::{LoadOptions, Model};
use std::path::PathBuf;

pub const PLANTED: &str = "1.5";

/// Build (once per test binary and arch) and return the checkpoint folder.
pub fn planted_dir(arch: SynthArch) -> PathBuf {
    let name = match arch {
        SynthArch::Gpt2 => "planted-gpt2",
        SynthArch::Llama => "planted-llama",
        SynthArch::Mixtral { .. } => "planted-mixtral",
    };
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    // tests run on parallel threads: one builds, the others wait for it
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    let words: Vec<String> = ["dog", "puppy", "bark"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let spec = SynthSpec {
        arch,
        n_layers: 2,
        d_model: 64,
        n_heads: 4,
        d_mlp: 256,
        n_ctx: 64,
        vocab: vocab_with(&words, 300),
        seed: 3,
    };
    let mut w = random_weights(&spec);
    let neuron = PlantedNeuron {
        layer: 1,
        index: 5,
        fires_on: vec!["dog".into(), "puppy".into()],
        writes: "bark".into(),
    };
    let rec = plant(&spec, &mut w, &[neuron]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    write_checkpoint(
        &dir,
        &spec,
        &w,
        &[("plant.json", serde_json::to_string(&rec).unwrap())],
    )
    .unwrap();
    dir
}

pub fn planted(arch: SynthArch) -> Model {
    Model::load(planted_dir(arch).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Sentences of filler words; `with` puts a trigger word at a varying place in each.
pub fn stimuli(n: usize, with_trigger: bool, seed: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut words: Vec<String> = (0..6)
                .map(|j| format!("w{}", 10 + (i * 7 + j * 13 + seed * 31) % 250))
                .collect();
            if with_trigger {
                words[1 + i % 4] = if i % 2 == 0 {
                    "dog".into()
                } else {
                    "puppy".into()
                };
            }
            words.join(" ")
        })
        .collect()
}
