//! `rlvr analyze --model smollm2`: the paper's exploration analysis on a real chat model (Pass@k,
//! unsolvable set, entropy / branching factor / log-prob split by correctness and by position,
//! sequence log-PPL, RFT selections); metrics.jsonl, PNG plots, a summary table.

use std::path::PathBuf;

use rlvr_kernels::lm::analyze::{run_analyze, AnalyzeConfig, AnalyzeReport, Split};
use rlvr_kernels::lm::gguf;
use rlvr_kernels::lm::task::TaskKind;

use crate::error::{CliError, CliResult};
use crate::table;
use crate::train_cmd::{set, tune_allocator, Bars};

/// Flags of `rlvr analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// `smollm2` (SmolLM2-135M-Instruct, fetched by `bash scripts/fetch-model.sh`) or a .gguf path.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The same pipeline with fewer problems: under 2 minutes on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// Questions: add1 (a + b, one digit), add2 (two digits), add3 (a + b + c, one digit), mul (a * b, 2..12) [default: add1].
    #[arg(long)]
    pub task: Option<String>,
    /// Problems [default: 40, 6 with --quick].
    #[arg(long)]
    pub problems: Option<usize>,
    /// Responses per problem n (Pass@k for k = 1..n) [default: 16].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Most tokens per response [default: 40, 32 with --quick].
    #[arg(long)]
    pub max_new: Option<usize>,
    /// Sampling temperature [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Rows per forward batch [default: 128].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed of the problems and the sampler [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Relative-position bins [default: 10].
    #[arg(long)]
    pub bins: Option<usize>,
    /// Output folder [default: runs/analyze, runs/analyze-quick with --quick].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

impl AnalyzeArgs {
    /// The preset with every given flag applied; the model file must exist.
    pub fn config(&self) -> CliResult<AnalyzeConfig> {
        let path = gguf::resolve(&self.model).map_err(CliError::runtime)?;
        let mut c = if self.quick { AnalyzeConfig::quick(path) } else { AnalyzeConfig::new(path) };
        c.out_dir = self
            .out_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(if self.quick { "runs/analyze-quick" } else { "runs/analyze" }));
        if let Some(t) = &self.task {
            c.task = TaskKind::parse(t)?;
        }
        set(&mut c.problems, self.problems);
        set(&mut c.samples, self.samples);
        set(&mut c.max_new, self.max_new);
        set(&mut c.temperature, self.temperature);
        set(&mut c.batch, self.batch);
        set(&mut c.seed, self.seed);
        set(&mut c.bins, self.bins);
        c.validate()?;
        Ok(c)
    }
}

/// Runs `rlvr analyze`.
pub fn run(args: &AnalyzeArgs, quiet: bool) -> CliResult<()> {
    let cfg = args.config()?;
    // Not `tune_runtime`: at this model's size candle's own threads pay for themselves.
    tune_allocator();
    let report = run_analyze(&cfg, &mut Bars::new(quiet)).map_err(CliError::runtime)?;
    print_report(&cfg, &report);
    Ok(())
}

fn f(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn split_row(name: &str, s: &Split, digits: usize) -> Vec<String> {
    vec![name.into(), f(s.correct, digits), f(s.incorrect, digits), f(s.all, digits)]
}

fn print_report(cfg: &AnalyzeConfig, r: &AnalyzeReport) {
    println!(
        "\n{} ({} task): {} problems x {} samples at T = {}, {} response tokens ({} cut at {} tokens), sampled in {:.1} s",
        cfg.model.display(),
        cfg.task.name(),
        r.problems,
        r.samples,
        cfg.temperature,
        r.tokens,
        r.unfinished,
        cfg.max_new,
        r.sample_seconds
    );
    let ks: Vec<usize> = [1, 2, 4, 8, 16, 32, 64].into_iter().filter(|&k| k <= r.samples).collect();
    let header: Vec<String> = ks.iter().map(|k| format!("pass@{k}")).collect();
    let mut headers: Vec<&str> = vec![""];
    headers.extend(header.iter().map(String::as_str));
    headers.push("unsolvable");
    let mut row = vec!["".to_string()];
    row.extend(ks.iter().map(|&k| format!("{:.3}", r.pass_at_k[k - 1])));
    row.push(format!("{}/{}", r.unsolvable.len(), r.problems));
    println!();
    table::print(&headers, &[row]);
    println!("\nPer-token means (response tokens, end-of-turn included):");
    table::print(
        &["", "correct", "incorrect", "all"],
        &[
            split_row("entropy (nats)", &r.entropy, 3),
            split_row("branching factor", &r.branch, 2),
            split_row("log p(sampled)", &r.logp, 3),
            split_row("sequence log-PPL", &r.log_ppl, 3),
        ],
    );
    println!("\nEntropy / branching factor by relative position (correct | incorrect):");
    let rows: Vec<Vec<String>> = r
        .entropy_by_position
        .iter()
        .zip(&r.branch_by_position)
        .enumerate()
        .map(|(b, (e, br))| {
            let lo = b as f64 / r.entropy_by_position.len() as f64;
            let hi = (b + 1) as f64 / r.entropy_by_position.len() as f64;
            vec![format!("[{lo:.1}, {hi:.1})"), f(e.0, 3), f(e.1, 3), f(br.0, 2), f(br.1, 2)]
        })
        .collect();
    table::print(&["position", "H correct", "H incorrect", "RBF correct", "RBF incorrect"], &rows);
    println!("\nRFT selections (DESIGN.md §4):");
    let rows: Vec<Vec<String>> = r
        .rft
        .iter()
        .map(|o| {
            vec![
                o.strategy.clone(),
                o.selected.to_string(),
                o.incorrect.to_string(),
                o.problems.to_string(),
                format!("{:.3}", o.mean_entropy),
                format!("{:.2}", o.mean_branch),
                format!("{:.3}", o.mean_log_ppl),
                format!("{:.1}", o.mean_len),
            ]
        })
        .collect();
    table::print(&["strategy", "selected", "incorrect", "problems", "entropy", "RBF", "log-PPL", "tokens"], &rows);
    println!("\nfiles:");
    for p in &r.files {
        println!("  {}", p.display());
    }
    println!("total time: {:.1} s", r.seconds);
}
