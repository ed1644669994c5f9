//! `rlvr rft`: SFT, then rejection-sampling fine-tuning (RFT) with each data-selection strategy
//! of DESIGN.md §4. n rollouts per RL problem are sampled once from the SFT model; each
//! strategy selects from the same rollouts ([`crate::rft::select`]) and fine-tunes its own copy
//! of the SFT model on its selection for the same number of steps; every copy is evaluated on
//! the held-out problems.

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use super::config::RftConfig;
use super::eval::EvalResult;
use super::figures;
use super::log::{MetricsLog, Record, RftSelection, SftStep};
use super::model::Policy;
use super::rollout::{sample, Rollouts};
use super::run::{common_settings, eval_phase, sft_phase};
use super::sft::{optimizer, Example, Trainer};
use super::task::Splits;
use super::Progress;
use crate::error::Result;
use crate::metrics::sequence_means;
use crate::rft::{select, RftStrategy, RolloutRecord};

/// One strategy's outcome.
#[derive(Debug, Clone)]
pub struct StrategyOutcome {
    /// What it selected.
    pub selection: RftSelection,
    /// The fine-tuned model's evaluation.
    pub eval: EvalResult,
}

/// What `rlvr rft` produced.
#[derive(Debug, Clone)]
pub struct RftReport {
    /// The run directory.
    pub dir: PathBuf,
    /// `metrics.jsonl`.
    pub metrics: PathBuf,
    /// SFT steps taken.
    pub sft_steps: usize,
    /// The SFT model's evaluation (the starting point of every strategy).
    pub sft: EvalResult,
    /// Rollouts sampled from the SFT model, and how many were correct.
    pub rollouts: (usize, usize),
    /// Per strategy, in the order of [`strategies`].
    pub outcomes: Vec<StrategyOutcome>,
    /// The PNG files written.
    pub plots: Vec<PathBuf>,
    /// Wall time.
    pub seconds: f64,
}

/// The strategies compared, with their names: baseline, noise, high-entropy, high-RBF and
/// noise + high-RBF (the paper's best).
pub fn strategies(noise: f64, top: f64) -> Vec<(&'static str, RftStrategy)> {
    vec![
        ("baseline", RftStrategy::baseline()),
        ("noise", RftStrategy::noise(noise)),
        ("high-entropy", RftStrategy::high_entropy(top)),
        ("high-rbf", RftStrategy::high_rbf(top)),
        ("noise+high-rbf", RftStrategy::noise_high_rbf(noise, top)),
    ]
}

/// Runs the whole `rft` pipeline; see the module doc.
pub fn run_rft(cfg: &RftConfig, progress: &mut dyn Progress) -> Result<RftReport> {
    cfg.validate()?;
    let start = Instant::now();
    let c = &cfg.common;
    let task = c.task()?;
    let splits = Splits::new(&task, c.sft_problems, c.rl_problems, c.held_out, c.seed)?;
    let dir = c.run_dir();
    let mut log = MetricsLog::create(&dir)?;
    let mut settings = common_settings(c);
    settings["command"] = json!("rft");
    settings["rft"] = json!({ "rollouts": cfg.rollouts, "steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr,
        "top_fraction": cfg.top_fraction, "noise": cfg.noise });
    log.write(&Record::Config(&settings))?;
    let sft = Policy::new(c.model()?, &c.device, c.seed)?;
    let sft_steps = sft_phase(&sft, &task, &splits, c, &mut log, progress)?;
    let sft_eval = eval_phase("sft", &sft, &task, &splits, c, &mut log, progress)?;
    progress.start("rft sampling", 1);
    let mut rng = StdRng::seed_from_u64(c.seed ^ 0x4F7_0000);
    let ids: Vec<usize> = (0..splits.rl.len()).collect();
    let ro = sample(&sft, &task, &splits.rl, &ids, cfg.rollouts, c.sampling(), &mut rng)?;
    progress.finish();
    let records = rollout_records(&ro)?;
    let mut outcomes = Vec::new();
    for (name, strategy) in strategies(cfg.noise, cfg.top_fraction) {
        let picked = select(&records, &strategy, c.seed)?;
        let selection = describe(name, &picked, &records);
        log.write(&Record::RftSelect(&selection))?;
        let data: Vec<Example> = picked.iter().map(|&i| example(&ro, i)).collect();
        let tuned = sft.deep_copy()?;
        fine_tune(&tuned, &data, name, cfg, task.prompt_len(), &mut log, progress)?;
        let eval = eval_phase(&format!("rft-{name}"), &tuned, &task, &splits, c, &mut log, progress)?;
        outcomes.push(StrategyOutcome { selection, eval });
    }
    let mut evals = vec![sft_eval.clone()];
    evals.extend(outcomes.iter().map(|o| o.eval.clone()));
    let plots = figures::rft(&dir, &evals)?;
    let correct = records.iter().filter(|r| r.correct).count();
    Ok(RftReport {
        metrics: log.path().to_path_buf(),
        dir,
        sft_steps,
        sft: sft_eval,
        rollouts: (records.len(), correct),
        outcomes,
        plots,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Per-response correctness, mean entropy and mean branch count (over the response tokens).
fn rollout_records(ro: &Rollouts) -> Result<Vec<RolloutRecord>> {
    let entropy = sequence_means(&ro.entropy, &ro.mask, ro.resp_len)?;
    let branch = sequence_means(&ro.branch, &ro.mask, ro.resp_len)?;
    Ok(ro
        .correct()
        .iter()
        .enumerate()
        .map(|(i, &correct)| RolloutRecord {
            problem: ro.problems[i],
            correct,
            mean_entropy: entropy[i].unwrap_or(0.0),
            mean_branch: branch[i].unwrap_or(0.0),
        })
        .collect())
}

fn describe(name: &str, picked: &[usize], records: &[RolloutRecord]) -> RftSelection {
    let mean =
        |f: fn(&RolloutRecord) -> f64| picked.iter().map(|&i| f(&records[i])).sum::<f64>() / picked.len().max(1) as f64;
    RftSelection {
        strategy: name.to_string(),
        selected: picked.len(),
        incorrect: picked.iter().filter(|&&i| !records[i].correct).count(),
        mean_entropy: mean(|r| r.mean_entropy),
        mean_branch: mean(|r| r.mean_branch),
    }
}

/// Rollout i as a training example (its own sampled tokens and mask).
fn example(ro: &Rollouts, i: usize) -> Example {
    let (l, r) = (ro.prompt_len + ro.resp_len, ro.resp_len);
    Example { seq: ro.seqs[i * l..(i + 1) * l].to_vec(), mask: ro.mask[i * r..(i + 1) * r].to_vec() }
}

/// Fine-tunes `policy` on `data` (nothing to do when the selection is empty).
fn fine_tune(
    policy: &Policy,
    data: &[Example],
    name: &str,
    cfg: &RftConfig,
    prompt_len: usize,
    log: &mut MetricsLog,
    progress: &mut dyn Progress,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let c = &cfg.common;
    let mut trainer = Trainer { policy, opt: optimizer(policy.vars(), cfg.lr)?, prompt_len, imp: c.loss };
    let mut rng = StdRng::seed_from_u64(c.seed ^ 0x4F7_1111);
    let phase = format!("rft-{name}");
    progress.start(&phase, cfg.steps as u64);
    for step in 1..=cfg.steps {
        let loss = trainer.step(data, cfg.batch, &mut rng)?;
        log.write(&Record::Sft(&SftStep { phase: phase.clone(), step, loss: loss as f64, probe_pass_at_1: None }))?;
        progress.step(&format!("loss {loss:.3}"));
    }
    progress.finish();
    Ok(())
}
