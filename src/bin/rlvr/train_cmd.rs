//! `rlvr train`: the main job. SFT a tiny transformer on d-digit addition, then GRPO with each
//! advantage shaping from the same SFT checkpoint; evaluate base, SFT and every RL checkpoint on
//! held-out problems; write `metrics.jsonl` and PNG plots; print a summary.
//!
//! Flags override the preset (the defaults, or `--quick`); settings are checked before anything
//! runs, and an impossible one is a usage error (exit 2).

use std::path::PathBuf;

use rlvr_kernels::train::eval::EvalResult;
use rlvr_kernels::train::{self, CommonConfig, LossImpl, ShapingKind, TrainConfig, TrainReport};
use rlvr_kernels::SamplingFilter;

use crate::device::Device;
use crate::error::{CliError, CliResult};
use crate::progress;
use crate::table;

/// Task, model, SFT, evaluation and output flags shared by `train` and `rft`.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Tiny settings that finish in seconds (for tests and smoke checks); other flags still apply.
    #[arg(long)]
    pub quick: bool,
    /// Run name: outputs go to OUT_DIR/NAME/ [default: the command's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of runs.
    #[arg(long, default_value = "runs")]
    pub out_dir: PathBuf,
    /// Seed of the problem sets, the initial weights and every sampler.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Operand digits of the addition task (1..=9).
    #[arg(long)]
    pub digits: Option<usize>,
    /// Padded vocabulary size (>= 15, the task's tokens; default 32768).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Model width.
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads (must divide --d-model).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Problems in the SFT set.
    #[arg(long)]
    pub sft_problems: Option<usize>,
    /// Problems in the RL prompt set.
    #[arg(long)]
    pub rl_problems: Option<usize>,
    /// Held-out evaluation problems.
    #[arg(long)]
    pub held_out: Option<usize>,
    /// Most SFT optimizer steps.
    #[arg(long)]
    pub sft_steps: Option<usize>,
    /// Stop SFT once the sampled Pass@1 on a probe of SFT problems reaches this, in (0, 1]
    /// (checked every 25 steps; default 0.3, off with --quick).
    #[arg(long, conflicts_with = "sft_all_steps", allow_negative_numbers = true)]
    pub sft_target: Option<f64>,
    /// Run all --sft-steps, without the early stop.
    #[arg(long)]
    pub sft_all_steps: bool,
    /// SFT learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub sft_lr: Option<f64>,
    /// Samples per held-out problem (n of Pass@k).
    #[arg(long)]
    pub eval_samples: Option<usize>,
    /// Largest k of Pass@k and the k of the unsolvable sets (<= --eval-samples).
    #[arg(long)]
    pub eval_k: Option<usize>,
    /// Relative-position bins of the entropy profile.
    #[arg(long)]
    pub bins: Option<usize>,
    /// Fused candle ops (default) or the naive composition of plain candle ops.
    #[arg(long, value_enum, default_value_t = LossArg::Fused)]
    pub loss: LossArg,
    /// Where the model and the ops run (cuda needs a build with --features cuda).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Sample as a rollout engine with a filter does (`top-p=0.95`, `top-k=50` or
    /// `top-k=50,top-p=0.95`), and replay the filter in the loss: the ratio is built from the
    /// truncated log-prob over the kept set, and each step reports how many sampled tokens the
    /// trainer found outside its recomputed kept set.
    #[arg(long, value_parser = parse_filter)]
    pub filter: Option<SamplingFilter>,
}

fn parse_filter(s: &str) -> Result<SamplingFilter, String> {
    s.parse::<SamplingFilter>().map_err(|e| e.to_string())
}

/// `--loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LossArg {
    /// rlvr_kernels::ops (fused kernels).
    Fused,
    /// rlvr_kernels::ops::naive (plain candle ops).
    Naive,
}

impl CommonArgs {
    /// The preset with every given flag applied.
    pub fn apply(&self, mut c: CommonConfig, command: &str) -> CliResult<CommonConfig> {
        c.name =
            self.name.clone().unwrap_or_else(|| if self.quick { format!("{command}-quick") } else { command.into() });
        c.out_dir = self.out_dir.clone();
        set(&mut c.seed, self.seed);
        set(&mut c.digits, self.digits);
        set(&mut c.vocab, self.vocab);
        set(&mut c.d_model, self.d_model);
        set(&mut c.layers, self.layers);
        set(&mut c.heads, self.heads);
        set(&mut c.sft_problems, self.sft_problems);
        set(&mut c.rl_problems, self.rl_problems);
        set(&mut c.held_out, self.held_out);
        set(&mut c.sft_steps, self.sft_steps);
        set(&mut c.sft_lr, self.sft_lr);
        if self.sft_target.is_some() {
            c.sft_target = self.sft_target;
        }
        if self.sft_all_steps {
            c.sft_target = None;
        }
        set(&mut c.eval_samples, self.eval_samples);
        set(&mut c.eval_k, self.eval_k);
        set(&mut c.bins, self.bins);
        if self.eval_samples.is_some() && self.eval_k.is_none() {
            // Lowering n alone lowers K with it, so `--eval-samples 8` works by itself.
            c.eval_k = c.eval_k.min(c.eval_samples);
        }
        c.loss = match self.loss {
            LossArg::Fused => LossImpl::Fused,
            LossArg::Naive => LossImpl::Naive,
        };
        self.device.check_available()?;
        c.device = candle_device(self.device)?;
        c.filter = self.filter;
        Ok(c)
    }
}

/// Overwrites `slot` when the flag was given.
pub fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

#[cfg(feature = "cuda")]
pub fn candle_device(d: Device) -> CliResult<candle_core::Device> {
    match d {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda => candle_core::Device::new_cuda(0).map_err(|e| CliError::runtime(format!("cuda device 0: {e}"))),
    }
}

#[cfg(not(feature = "cuda"))]
pub fn candle_device(_d: Device) -> CliResult<candle_core::Device> {
    // `check_available` has already rejected `--device cuda` in this build.
    Ok(candle_core::Device::Cpu)
}

/// `--shaping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShapingArg {
    /// Plain GRPO advantages.
    None,
    /// PPL-based shaping.
    Ppl,
    /// Position-based shaping.
    Position,
    /// PPL and position shaping.
    Both,
    /// All four, one run each.
    All,
}

/// Arguments of `rlvr train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// GRPO steps per shaping.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Prompts per GRPO step.
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Rollouts per prompt G (>= 2).
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Passes over each batch of rollouts (mu).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer updates per pass, each on an equal share of the groups (must divide --prompts).
    #[arg(long)]
    pub minibatches: Option<usize>,
    /// GRPO learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Lower clip epsilon.
    #[arg(long, allow_negative_numbers = true)]
    pub clip_low: Option<f32>,
    /// Upper clip epsilon (clip-higher).
    #[arg(long, allow_negative_numbers = true)]
    pub clip_high: Option<f32>,
    /// KL coefficient to the SFT model (0 = off; the KL is reported either way).
    #[arg(long, allow_negative_numbers = true)]
    pub kl_coef: Option<f32>,
    /// Advantage shapings to compare, comma-separated (each starts from the same SFT model)
    /// [default: all; with --model one shaping, default none].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub shaping: Vec<ShapingArg>,
    /// GRPO on a real chat model instead of the toy: `smollm2` (SmolLM2-135M-Instruct, fetched by
    /// `bash scripts/fetch-model.sh`) or a llama .gguf path. No SFT; the toy's model flags do not apply.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: questions (add1, add2, add3, mul) [default: add1].
    #[arg(long)]
    pub task: Option<String>,
    /// With --model: trainable transformer blocks, counted from the top [default: all; 2 with --quick].
    #[arg(long)]
    pub train_blocks: Option<usize>,
    /// With --model: train the tied token embedding / output head too.
    #[arg(long)]
    pub train_embedding: bool,
    /// With --model: most tokens per response [default: 32].
    #[arg(long)]
    pub max_new: Option<usize>,
}

impl TrainArgs {
    /// The settings the flags ask for.
    pub fn config(&self) -> CliResult<TrainConfig> {
        let preset = if self.common.quick { TrainConfig::quick() } else { TrainConfig::default() };
        let mut cfg = TrainConfig { common: self.common.apply(preset.common.clone(), "train")?, ..preset };
        set(&mut cfg.steps, self.steps);
        set(&mut cfg.prompts_per_step, self.prompts);
        set(&mut cfg.group_size, self.group_size);
        set(&mut cfg.epochs, self.epochs);
        set(&mut cfg.minibatches, self.minibatches);
        set(&mut cfg.lr, self.lr);
        set(&mut cfg.grpo.clip_low, self.clip_low);
        set(&mut cfg.grpo.clip_high, self.clip_high);
        set(&mut cfg.kl_coef, self.kl_coef);
        cfg.shapings = if self.shaping.is_empty() { ShapingKind::ALL.to_vec() } else { shapings(&self.shaping) };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn shapings(args: &[ShapingArg]) -> Vec<ShapingKind> {
    let mut out = Vec::new();
    for a in args {
        let add: &[ShapingKind] = match a {
            ShapingArg::None => &[ShapingKind::None],
            ShapingArg::Ppl => &[ShapingKind::Ppl],
            ShapingArg::Position => &[ShapingKind::Position],
            ShapingArg::Both => &[ShapingKind::Both],
            ShapingArg::All => &ShapingKind::ALL,
        };
        for s in add {
            if !out.contains(s) {
                out.push(*s);
            }
        }
    }
    out
}

/// Drives one progress bar per phase.
pub struct Bars {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Bars {
    /// Bars on stderr unless `quiet` (or stderr is not a terminal).
    pub fn new(quiet: bool) -> Self {
        Self { quiet, bar: None }
    }
}

impl train::Progress for Bars {
    fn start(&mut self, phase: &str, steps: u64) {
        let bar = progress::bar(steps, "", self.quiet);
        bar.set_message(phase.to_string());
        self.bar = Some(bar);
    }
    fn step(&mut self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.inc(1);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// glibc allocator thresholds for large, short-lived tensors: big blocks stay in the heap
/// instead of an mmap/munmap pair (and its page faults) per tensor.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: glibc's documented `int mallopt(int param, int value)`; it only changes two
        // allocator thresholds, takes no pointers, and rejects out-of-range values itself.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
        }
    }
}

/// Process-wide settings that make the training commands several times faster on a small
/// CPU machine; call before any tensor work.
///
/// - glibc returns every freed block above its mmap threshold (≥ 128 KiB, growing to at most
///   32 MiB) to the kernel, so each `[B, T, V]` temporary of every step was a fresh mmap whose
///   pages the kernel zeroed on first touch: half the wall time was page faults. Raising the
///   threshold to its maximum and never trimming keeps those blocks in the heap for reuse.
/// - candle's CPU thread pool waits for its workers by spinning, without yielding: on a machine
///   where other jobs hold the cores, the spin costs more than the extra worker gains (measured:
///   a 50-step SFT run took 30 s with 2 threads, 21 s with 1). Our fused ops and candle's
///   matmuls (gemm over rayon) still use every core. `CANDLE_NUM_THREADS` overrides this.
pub fn tune_runtime() {
    tune_allocator();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs `rlvr train`.
pub fn run(args: &TrainArgs, quiet: bool) -> CliResult<()> {
    if args.model.is_some() {
        return crate::train_lm::run(args, quiet);
    }
    for (flag, given) in [
        ("--task", args.task.is_some()),
        ("--train-blocks", args.train_blocks.is_some()),
        ("--train-embedding", args.train_embedding),
        ("--max-new", args.max_new.is_some()),
    ] {
        if given {
            return Err(CliError::usage(format!("{flag} applies to a real model only (with --model)")));
        }
    }
    let cfg = args.config()?;
    tune_runtime();
    let report = train::run_train(&cfg, &mut Bars::new(quiet)).map_err(CliError::runtime)?;
    print_report(&report);
    Ok(())
}

/// The Pass@k columns shown: k = 1, 4, 16 where measured, and the largest k.
pub fn shown_ks(e: &EvalResult) -> Vec<usize> {
    let kmax = e.k.last().copied().unwrap_or(1);
    let mut ks: Vec<usize> = [1, 4, 16].into_iter().filter(|&k| k <= kmax).collect();
    if !ks.contains(&kmax) {
        ks.push(kmax);
    }
    ks
}

/// One summary row per checkpoint: Pass@k, unsolvable count, entropy (all, correct, incorrect),
/// branch, length, garbage mass.
pub fn print_evals(evals: &[EvalResult]) {
    let Some(first) = evals.first() else { return };
    let ks = shown_ks(first);
    let mut headers: Vec<String> = vec!["checkpoint".into()];
    headers.extend(ks.iter().map(|k| format!("pass@{k}")));
    headers.extend(
        [format!("unsolv@{}", first.unsolvable_k), "H".into(), "H ok".into(), "H wrong".into()]
            .into_iter()
            .chain(["branch", "len", "garbage"].map(String::from)),
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let rows: Vec<Vec<String>> = evals
        .iter()
        .map(|e| {
            let mut r = vec![e.checkpoint.clone()];
            r.extend(ks.iter().map(|&k| opt(e.pass_at(k))));
            r.push(format!("{}/{}", e.unsolvable.len(), e.correct_counts.len()));
            r.extend([format!("{:.3}", e.mean_entropy), opt(e.entropy_correct), opt(e.entropy_incorrect)]);
            r.extend([
                format!("{:.2}", e.mean_branch),
                format!("{:.2}", e.response_len),
                format!("{:.1e}", e.garbage_mass),
            ]);
            r
        })
        .collect();
    let h: Vec<&str> = headers.iter().map(String::as_str).collect();
    table::print(&h, &rows);
}

fn print_report(r: &TrainReport) {
    println!("\nSFT: {} steps", r.sft_steps);
    println!(
        "\nHeld-out evaluation ({} problems, n = {} samples each):",
        r.evals[0].correct_counts.len(),
        r.evals[0].n
    );
    print_evals(&r.evals);
    println!("\nUnsolvable-set overlaps (A, B: |A∩B|, |A∖B|, |B∖A|, Jaccard):");
    let rows: Vec<Vec<String>> = r
        .overlaps
        .iter()
        .filter(|o| o.a != "base" && o.b != "base")
        .map(|o| {
            vec![
                format!("{} vs {}", o.a, o.b),
                o.both.to_string(),
                o.only_a.to_string(),
                o.only_b.to_string(),
                format!("{:.3}", o.jaccard),
            ]
        })
        .collect();
    table::print(&["pair", "both", "only A", "only B", "jaccard"], &rows);
    print_last_steps(r);
    println!("\nmetrics: {}", r.metrics.display());
    println!("plots:");
    for p in &r.plots {
        println!("  {}", p.display());
    }
    println!("total time: {:.1} s", r.seconds);
}

/// Means over the last tenth of each shaping's GRPO steps.
fn print_last_steps(r: &TrainReport) {
    let mut names: Vec<&str> = Vec::new();
    r.steps.iter().for_each(|s| {
        if !names.contains(&s.shaping) {
            names.push(s.shaping)
        }
    });
    let mut rows = Vec::new();
    let mut window = 0;
    for name in names {
        let all: Vec<_> = r.steps.iter().filter(|s| s.shaping == name).collect();
        window = (all.len() / 10).max(1);
        let last = &all[all.len() - window..];
        let mean = |f: &dyn Fn(&rlvr_kernels::train::grpo::StepMetrics) -> Option<f64>| {
            let v: Vec<f64> = last.iter().filter_map(|s| f(s)).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", v.iter().sum::<f64>() / v.len() as f64)
            }
        };
        rows.push(vec![
            name.to_string(),
            mean(&|s| Some(s.reward)),
            mean(&|s| Some(s.entropy)),
            mean(&|s| s.entropy_correct),
            mean(&|s| s.entropy_incorrect),
            mean(&|s| Some(s.branch)),
            mean(&|s| Some(s.clip_frac)),
            mean(&|s| Some(s.kl)),
            mean(&|s| s.outside_kept),
        ]);
    }
    println!("\nGRPO, mean over the last {window} steps of each run:");
    let mut head = vec!["shaping", "reward", "H", "H ok", "H wrong", "branch", "clip", "KL"];
    if r.steps.iter().any(|s| s.outside_kept.is_some()) {
        head.push("outside K");
    } else {
        rows.iter_mut().for_each(|row| {
            row.pop();
        });
    }
    table::print(&head, &rows);
}
