//! `rlvr rft`: SFT, then rejection-sampling fine-tuning with each data-selection strategy
//! (baseline, 5% noise, high-entropy, high-RBF, noise + high-RBF) from the same SFT model and the
//! same rollouts; one table of held-out Pass@k per strategy.

use rlvr_kernels::train::{self, RftConfig, RftReport};

use crate::error::{CliError, CliResult};
use crate::table;
use crate::train_cmd::{print_evals, set, shown_ks, tune_runtime, Bars, CommonArgs};

/// Arguments of `rlvr rft`.
#[derive(Debug, clap::Args)]
pub struct RftArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Rollouts sampled per RL problem from the SFT model.
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Fine-tuning steps per strategy.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per fine-tuning step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Fine-tuning learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Fraction of correct responses kept by high-entropy / high-RBF, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_fraction: Option<f64>,
    /// Fraction of incorrect responses added by noise injection, in [0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub noise: Option<f64>,
}

impl RftArgs {
    /// The settings the flags ask for.
    pub fn config(&self) -> CliResult<RftConfig> {
        let preset = if self.common.quick { RftConfig::quick() } else { RftConfig::default() };
        let mut cfg = RftConfig { common: self.common.apply(preset.common.clone(), "rft")?, ..preset };
        set(&mut cfg.rollouts, self.rollouts);
        set(&mut cfg.steps, self.steps);
        set(&mut cfg.batch, self.batch);
        set(&mut cfg.lr, self.lr);
        set(&mut cfg.top_fraction, self.top_fraction);
        set(&mut cfg.noise, self.noise);
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `rlvr rft`.
pub fn run(args: &RftArgs, quiet: bool) -> CliResult<()> {
    let cfg = args.config()?;
    tune_runtime();
    let report = train::run_rft(&cfg, &mut Bars::new(quiet)).map_err(CliError::runtime)?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &RftReport) {
    let (n, correct) = r.rollouts;
    println!("\nSFT: {} steps", r.sft_steps);
    println!("\nRollouts from the SFT model: {n}, of which correct: {correct}");
    let rows: Vec<Vec<String>> = r
        .outcomes
        .iter()
        .map(|o| {
            let s = &o.selection;
            vec![
                s.strategy.clone(),
                s.selected.to_string(),
                s.incorrect.to_string(),
                format!("{:.3}", s.mean_entropy),
                format!("{:.2}", s.mean_branch),
            ]
        })
        .collect();
    println!("\nSelections:");
    table::print(&["strategy", "selected", "incorrect", "mean H", "mean branch"], &rows);
    let mut evals = vec![r.sft.clone()];
    evals.extend(r.outcomes.iter().map(|o| o.eval.clone()));
    let ks = shown_ks(&r.sft);
    println!(
        "\nHeld-out Pass@k per strategy ({} problems, n = {}; k = {:?}):",
        r.sft.correct_counts.len(),
        r.sft.n,
        ks
    );
    print_evals(&evals);
    println!("\nmetrics: {}", r.metrics.display());
    println!("plots:");
    for p in &r.plots {
        println!("  {}", p.display());
    }
    println!("total time: {:.1} s", r.seconds);
}
