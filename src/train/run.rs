//! `rlvr train`: base evaluation → SFT → evaluation → GRPO with each shaping, every one from
//! the same SFT checkpoint (so the comparison is fair) → evaluation of each → unsolvable-set
//! overlaps, `metrics.jsonl` and plots in `out_dir/name/`.

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;
use serde_json::json;

use super::config::{CommonConfig, ShapingKind, TrainConfig, SFT_PROBE_EVERY, SFT_PROBE_PROBLEMS};
use super::eval::{evaluate, overlaps, EvalResult, OverlapRecord};
use super::figures;
use super::grpo::{GrpoTrainer, StepMetrics};
use super::log::{MetricsLog, Record, SftStep};
use super::model::Policy;
use super::rollout::sample;
use super::sft::{optimizer, Example, Trainer};
use super::task::{Splits, Task};
use super::Progress;
use crate::error::Result;

/// What `rlvr train` produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The run directory.
    pub dir: PathBuf,
    /// `metrics.jsonl`.
    pub metrics: PathBuf,
    /// SFT steps taken (fewer than the maximum when the probe reached its target).
    pub sft_steps: usize,
    /// Evaluations in order: `base`, `sft`, then `grpo-<shaping>` per shaping.
    pub evals: Vec<EvalResult>,
    /// Unsolvable-set overlaps of every pair of evaluations.
    pub overlaps: Vec<OverlapRecord>,
    /// Every GRPO step, shapings in run order.
    pub steps: Vec<StepMetrics>,
    /// The PNG files written.
    pub plots: Vec<PathBuf>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

/// Runs the whole `train` pipeline; see the module doc.
pub fn run_train(cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<TrainReport> {
    cfg.validate()?;
    let start = Instant::now();
    let c = &cfg.common;
    let task = c.task()?;
    let splits = Splits::new(&task, c.sft_problems, c.rl_problems, c.held_out, c.seed)?;
    let dir = c.run_dir();
    let mut log = MetricsLog::create(&dir)?;
    log.write(&Record::Config(&train_settings(cfg)))?;
    let policy = Policy::new(c.model()?, &c.device, c.seed)?;
    let mut evals = vec![eval_phase("base", &policy, &task, &splits, c, &mut log, progress)?];
    let sft_steps = sft_phase(&policy, &task, &splits, c, &mut log, progress)?;
    evals.push(eval_phase("sft", &policy, &task, &splits, c, &mut log, progress)?);
    let mut steps = Vec::new();
    for &shaping in &cfg.shapings {
        let trained = grpo_phase(&policy, shaping, &task, &splits, cfg, &mut log, progress, &mut steps)?;
        let name = format!("grpo-{}", shaping.name());
        evals.push(eval_phase(&name, &trained, &task, &splits, c, &mut log, progress)?);
    }
    let overlaps = overlaps(&evals);
    for o in &overlaps {
        log.write(&Record::Overlap(o))?;
    }
    let plots = figures::train(&dir, &steps, &evals)?;
    Ok(TrainReport {
        metrics: log.path().to_path_buf(),
        dir,
        sft_steps,
        evals,
        overlaps,
        steps,
        plots,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Evaluates a checkpoint on the held-out set and logs it.
pub(crate) fn eval_phase(
    name: &str,
    policy: &Policy,
    task: &Task,
    splits: &Splits,
    c: &CommonConfig,
    log: &mut MetricsLog,
    progress: &mut dyn Progress,
) -> Result<EvalResult> {
    progress.start(&format!("eval {name}"), 1);
    let e = evaluate(name, policy, task, &splits.held_out, c)?;
    log.write(&Record::Eval(&e))?;
    progress.step(&format!("pass@1 {:.3}", e.pass_at_k[0]));
    progress.finish();
    Ok(e)
}

/// Supervised fine-tuning on the reference answers of the SFT set, stopped early once the
/// sampled Pass@1 on a probe of SFT problems reaches `c.sft_target`. Returns the steps taken.
pub(crate) fn sft_phase(
    policy: &Policy,
    task: &Task,
    splits: &Splits,
    c: &CommonConfig,
    log: &mut MetricsLog,
    progress: &mut dyn Progress,
) -> Result<usize> {
    let data: Vec<Example> = splits.sft.iter().map(|p| Example::reference(task, p)).collect();
    let mut trainer =
        Trainer { policy, opt: optimizer(policy.vars(), c.sft_lr)?, prompt_len: task.prompt_len(), imp: c.loss };
    let mut rng = StdRng::seed_from_u64(c.seed ^ 0x5F7_0000);
    let mut probe_rng = StdRng::seed_from_u64(c.seed ^ 0x5F7_1111);
    let probe: Vec<usize> = (0..splits.sft.len().min(SFT_PROBE_PROBLEMS)).collect();
    progress.start("sft", c.sft_steps as u64);
    let mut steps = 0;
    for step in 1..=c.sft_steps {
        let loss = trainer.step(&data, c.sft_batch, &mut rng)?;
        let probed = match c.sft_target {
            Some(_) if step % SFT_PROBE_EVERY == 0 => {
                Some(sample(policy, task, &splits.sft, &probe, 1, c.sampling(), &mut probe_rng)?.mean_reward())
            }
            _ => None,
        };
        log.write(&Record::Sft(&SftStep { phase: "sft".into(), step, loss: loss as f64, probe_pass_at_1: probed }))?;
        progress.step(&format!("loss {loss:.3}"));
        steps = step;
        if let (Some(p), Some(target)) = (probed, c.sft_target) {
            if p >= target {
                break;
            }
        }
    }
    progress.finish();
    Ok(steps)
}

/// GRPO from a copy of the SFT model with one shaping; returns the trained copy.
#[allow(clippy::too_many_arguments)]
fn grpo_phase(
    sft: &Policy,
    shaping: ShapingKind,
    task: &Task,
    splits: &Splits,
    cfg: &TrainConfig,
    log: &mut MetricsLog,
    progress: &mut dyn Progress,
    steps: &mut Vec<StepMetrics>,
) -> Result<Policy> {
    let policy = sft.deep_copy()?;
    let mut trainer =
        GrpoTrainer { policy: &policy, reference: sft, opt: optimizer(policy.vars(), cfg.lr)?, cfg, task, shaping };
    // The same seed for every shaping: the same prompts, and identical first-step rollouts.
    let mut rng = StdRng::seed_from_u64(cfg.common.seed ^ 0x6790_0000);
    let n = splits.rl.len();
    let prompts = cfg.prompts_per_step.min(n);
    progress.start(&format!("grpo {}", shaping.name()), cfg.steps as u64);
    for step in 1..=cfg.steps {
        let ids = index::sample(&mut rng, n, prompts).into_vec();
        let m = trainer.step(step, &splits.rl, &ids, &mut rng)?;
        log.write(&Record::Grpo(&m))?;
        progress.step(&format!("reward {:.2} H {:.3}", m.reward, m.entropy));
        steps.push(m);
    }
    progress.finish();
    Ok(policy)
}

/// The settings, as the `config` record.
fn train_settings(cfg: &TrainConfig) -> serde_json::Value {
    let mut v = common_settings(&cfg.common);
    let g = &cfg.grpo;
    v["command"] = json!("train");
    v["grpo"] = json!({
        "steps": cfg.steps, "prompts_per_step": cfg.prompts_per_step, "group_size": cfg.group_size,
        "epochs": cfg.epochs, "minibatches": cfg.minibatches, "lr": cfg.lr, "clip_low": g.clip_low, "clip_high": g.clip_high,
        "aggregation": format!("{:?}", g.aggregation), "kl_coef": cfg.kl_coef, "scale_by_std": cfg.scale_by_std,
        "shapings": cfg.shapings.iter().map(|s| s.name()).collect::<Vec<_>>(),
    });
    v
}

/// The shared settings, as JSON.
pub(crate) fn common_settings(c: &CommonConfig) -> serde_json::Value {
    json!({
        "name": c.name, "seed": c.seed, "digits": c.digits, "vocab": c.vocab,
        "model": { "d_model": c.d_model, "layers": c.layers, "heads": c.heads },
        "problems": { "sft": c.sft_problems, "rl": c.rl_problems, "held_out": c.held_out },
        "sft": { "max_steps": c.sft_steps, "target": c.sft_target, "batch": c.sft_batch, "lr": c.sft_lr },
        "eval": { "samples": c.eval_samples, "k": c.eval_k, "bins": c.bins },
        "loss": c.loss.name(), "device": format!("{:?}", c.device),
    })
}
