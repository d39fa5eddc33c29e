//! `ftri align`: compare each layer's representation of a stimulus set with recorded brain
//! responses (ridge encoding, RSA, CKA).

use super::ModelArgs;
use crate::analyze::align::{align, AlignOptions, AlignRequest, Alignment, Brain, Methods};
use crate::analyze::localize::parse_layers;
use crate::analyze::responses::{read_stimuli, Method, Readout, Reduce};
use crate::corpus::matrix::read_array;
use crate::error::user_error;
use crate::model::{Model, SiteKind};
use crate::output::{print_json, write_atomic};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct AlignArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Stimuli, one per line (or JSONL with `text`), in the order of the brain matrix's rows
    #[arg(long)]
    pub stimuli: PathBuf,
    /// Brain responses [stimuli x units]: .npy, .safetensors, .csv or .parquet
    #[arg(long)]
    pub brain: PathBuf,
    /// The tensor to read when the safetensors file holds several
    #[arg(long)]
    pub brain_key: Option<String>,
    /// Repeated measurements [repeats x stimuli x units] (.npy/.safetensors) for the noise ceiling
    #[arg(long)]
    pub repeats: Option<PathBuf>,
    /// Comma list of ridge, rsa, cka
    #[arg(long, default_value = "ridge,rsa,cka")]
    pub methods: String,
    /// Outer cross-validation folds of the ridge encoding (interleaved)
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Hook point within each block (`blocks.*.` may be written before it)
    #[arg(long, default_value = "blocks.*.hook_resid_post")]
    pub site: String,
    /// Layers: `0-5`, `1,3,5` (default: all)
    #[arg(long)]
    pub layers: Option<String>,
    /// How a stimulus's tokens reduce to one value per unit: mean, max, last
    #[arg(long, default_value = "mean")]
    pub reduce: String,
    /// Keep special tokens (BOS, [CLS], [SEP]) in the reduction
    #[arg(long)]
    pub include_special: bool,
    /// Permutations of the RSA test
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Per brain unit held-out r and R² of every layer (and the noise ceiling) as CSV
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn finite_or_error(path: &Path, a: &crate::corpus::matrix::Array) -> Result<()> {
    if let Some((r, c)) = a.first_non_finite() {
        return Err(user_error(format!(
            "{}: row {}, column {} is not a finite number (NaN or infinity); remove or impute it",
            path.display(),
            r + 1,
            c + 1
        )));
    }
    Ok(())
}

pub fn run(a: AlignArgs) -> Result<()> {
    let r = compute(&a, &a.model.load()?)?;
    if a.json {
        return print_json(&r);
    }
    print_table(&r);
    Ok(())
}

/// The job of `ftri align` on a loaded model, `--out` written (the Python bindings call it too).
pub fn compute(a: &AlignArgs, model: &Model) -> Result<Alignment> {
    let methods = Methods::parse(&a.methods)?;
    let reduce = Reduce::parse(&a.reduce)?;
    if a.folds < 2 {
        return Err(user_error("--folds must be at least 2"));
    }
    let stimuli: Vec<String> = read_stimuli(&a.stimuli)?
        .into_iter()
        .map(|s| s.text)
        .collect();
    let arr = read_array(&a.brain, a.brain_key.as_deref())?;
    let (n, units) = match arr.shape.as_slice() {
        [n] => (*n, 1),
        [n, u] => (*n, *u),
        s => {
            return Err(user_error(format!(
                "{}: a brain matrix is [stimuli x units]; this one has shape {s:?}",
                a.brain.display()
            )))
        }
    };
    if n != stimuli.len() {
        return Err(user_error(format!(
            "{} has {n} rows but {} has {} stimuli: one brain row per stimulus, in the same order",
            a.brain.display(),
            a.stimuli.display(),
            stimuli.len()
        )));
    }
    if units == 0 {
        return Err(user_error(format!(
            "{}: no units (0 columns)",
            a.brain.display()
        )));
    }
    finite_or_error(&a.brain, &arr)?;
    let repeats = match &a.repeats {
        None => None,
        Some(p) => {
            let r = read_array(p, None)?;
            match r.shape.as_slice() {
                [k, rn, ru] if *k >= 2 && *rn == n && *ru == units => {}
                s => {
                    return Err(user_error(format!(
                        "{}: repeats must be [repeats ≥ 2 x {n} stimuli x {units} units] to match {}; this one has shape {s:?}",
                        p.display(),
                        a.brain.display()
                    )))
                }
            }
            finite_or_error(p, &r)?;
            Some((r.data, r.shape[0]))
        }
    };
    let suffix = a.site.strip_prefix("blocks.*.").unwrap_or(&a.site);
    let site = SiteKind::from_suffix(suffix).ok_or_else(|| {
        user_error(format!(
            "--site `{}` is not a per-block hook point (e.g. blocks.*.hook_resid_post, mlp.hook_post)",
            a.site
        ))
    })?;
    let layers = parse_layers(a.layers.as_deref(), model.cfg.n_layers)?;
    let r = align(
        model,
        &AlignRequest {
            stimuli,
            brain: Brain {
                n,
                units,
                data: arr.data,
            },
            repeats,
            site,
            layers,
            readout: Readout {
                reduce,
                method: Method::Contrast,
                include_special: a.include_special,
                batch: a.batch,
            },
            options: AlignOptions {
                methods,
                folds: a.folds,
                permutations: a.permutations,
                seed: a.seed,
                ..AlignOptions::default()
            },
        },
    )?;
    if let Some(out) = &a.out {
        write_csv(out, &r)?;
    }
    Ok(r)
}

fn print_table(r: &Alignment) {
    println!(
        "{} stimuli, {} brain units, {}-fold ridge{}",
        r.n_stimuli,
        r.n_brain_units,
        r.folds,
        r.noise_ceiling
            .as_ref()
            .map(|c| format!(
                ", noise ceiling on r: mean {:.3}, median {:.3}",
                c.mean, c.median
            ))
            .unwrap_or_default()
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "layer", "mean r", "median r", "mean R²", "RSA rho", "RSA p", "CKA"
    );
    let f = |x: Option<f64>, w: usize| match x {
        Some(v) => format!("{v:>w$.3}"),
        None => format!("{:>w$}", "-"),
    };
    for l in &r.layers {
        println!(
            "{:>6} {} {} {} {} {} {}",
            l.layer,
            f(l.ridge.as_ref().map(|x| x.mean_r), 9),
            f(l.ridge.as_ref().map(|x| x.median_r), 9),
            f(l.ridge.as_ref().map(|x| x.mean_r2), 9),
            f(l.rsa.as_ref().map(|x| x.rho), 9),
            l.rsa
                .as_ref()
                .map(|x| format!("{:>10.2e}", x.p))
                .unwrap_or_else(|| format!("{:>10}", "-")),
            f(l.cka, 8)
        );
    }
    let b = |x: Option<usize>| x.map_or("-".to_string(), |l| l.to_string());
    println!(
        "best layer: ridge {}, RSA {}, CKA {}",
        b(r.best.ridge),
        b(r.best.rsa),
        b(r.best.cka)
    );
}

/// One row per brain unit: `unit, r_L, r2_L` for every layer, and `noise_ceiling` with repeats.
fn write_csv(path: &Path, r: &Alignment) -> Result<()> {
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x}")
        } else {
            String::new()
        }
    };
    write_atomic(path, |tmp| {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(tmp)
                .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))?,
        );
        let layers: Vec<_> = r.layers.iter().filter(|l| !l.unit_r.is_empty()).collect();
        let mut head = vec!["unit".to_string()];
        for l in &layers {
            head.push(format!("r_layer{}", l.layer));
            head.push(format!("r2_layer{}", l.layer));
        }
        if r.unit_ceiling.is_some() {
            head.push("noise_ceiling".into());
        }
        writeln!(w, "{}", head.join(","))?;
        for u in 0..r.n_brain_units {
            let mut row = vec![u.to_string()];
            for l in &layers {
                row.push(f(l.unit_r[u]));
                row.push(f(l.unit_r2[u]));
            }
            if let Some(c) = &r.unit_ceiling {
                row.push(f(c[u]));
            }
            writeln!(w, "{}", row.join(","))?;
        }
        w.flush()?;
        Ok(())
    })
}
