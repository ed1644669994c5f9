//! The `rlvr` command line: make an example logits dump, compute per-token statistics
//! (entropy, Rollout Branching Factor, target log-prob, sequence log-PPL) of a safetensors file,
//! and benchmark the fused kernels against naive baselines.
//!
//! Exit codes: 0 success, 1 a problem with the input data or the run, 2 a usage error (unknown
//! flag, bad flag value). Every error is one line on stderr.

mod analyze_cmd;
mod bench;
mod device;
mod error;
mod example;
mod io;
mod output;
mod progress;
mod rft_cmd;
mod stats;
mod table;
mod train_cmd;
mod train_lm;

use clap::{Parser, Subcommand};

use crate::error::CliResult;

/// Fused RLVR token statistics (entropy, top-p branching factor, log-PPL) from the command line.
#[derive(Debug, Parser)]
#[command(name = "rlvr", version, about, long_about = None)]
struct Cli {
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a logits dump (logits, targets, mask) to a .safetensors file: synthetic LM-like rows,
    /// or real rollouts of a chat model with `--model`.
    Example(example::ExampleArgs),
    /// Per-token lse, entropy, branch count and logp (and per-sequence log-PPL) of a logits file.
    Stats(stats::StatsArgs),
    /// Time the fused statistics against a plain log-sum-exp and the naive candle composition.
    Bench(bench::BenchArgs),
    /// SFT then GRPO (each advantage shaping) on a toy addition task; metrics, plots, summary.
    Train(train_cmd::TrainArgs),
    /// SFT then rejection-sampling fine-tuning with each RFT data-selection strategy.
    Rft(rft_cmd::RftArgs),
    /// The exploration analysis on a real chat model (SmolLM2-135M): Pass@k, entropy, branching
    /// factor and log-PPL of correct vs incorrect responses, RFT selections.
    Analyze(analyze_cmd::AnalyzeArgs),
}

fn run(cli: &Cli) -> CliResult<()> {
    match &cli.command {
        Command::Example(args) => example::run(args, cli.quiet),
        Command::Stats(args) => stats::run(args, cli.quiet),
        Command::Bench(args) => bench::run(args, cli.quiet),
        Command::Train(args) => train_cmd::run(args, cli.quiet),
        Command::Rft(args) => rft_cmd::run(args, cli.quiet),
        Command::Analyze(args) => analyze_cmd::run(args, cli.quiet),
    }
}

fn main() {
    // clap prints its own usage errors and exits with code 2.
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
