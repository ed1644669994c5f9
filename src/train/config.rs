//! Settings of the `train` and `rft` pipelines, their defaults (the main job: all of it on two
//! CPU cores in under ten minutes) and the `--quick` preset (under a minute, used by tests).

use std::path::PathBuf;

use candle_core::Device;

use super::model::ModelConfig;
use super::task::{Task, TASK_TOKENS};
use super::LossImpl;
use crate::config::{GrpoConfig, KlEstimator, KlPenalty, PositionShaping, PplShaping, SamplingFilter, Shaping};
use crate::error::{Error, Result};

/// SFT steps between two probes of its Pass@1 (see [`CommonConfig::sft_target`]).
pub const SFT_PROBE_EVERY: usize = 25;
/// SFT problems in the probe.
pub const SFT_PROBE_PROBLEMS: usize = 128;

/// The advantage shapings compared by `rlvr train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapingKind {
    /// Plain GRPO advantages.
    None,
    /// PPL-based shaping (DESIGN.md §4 defaults).
    Ppl,
    /// Position-based shaping (DESIGN.md §4 defaults).
    Position,
    /// Both, position first.
    Both,
}

impl ShapingKind {
    /// All four, in the order they run.
    pub const ALL: [ShapingKind; 4] = [ShapingKind::None, ShapingKind::Ppl, ShapingKind::Position, ShapingKind::Both];

    /// The crate's shaping settings with the paper's coefficients.
    pub fn shaping(self) -> Shaping {
        let ppl = Some(PplShaping::default());
        let position = Some(PositionShaping::default());
        match self {
            ShapingKind::None => Shaping::NONE,
            ShapingKind::Ppl => Shaping { ppl, position: None },
            ShapingKind::Position => Shaping { ppl: None, position },
            ShapingKind::Both => Shaping { ppl, position },
        }
    }

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ShapingKind::None => "none",
            ShapingKind::Ppl => "ppl",
            ShapingKind::Position => "position",
            ShapingKind::Both => "both",
        }
    }
}

/// Task, model, SFT, evaluation and output settings shared by `train` and `rft`.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Run name: outputs go to `out_dir/name/`.
    pub name: String,
    /// Parent directory of runs.
    pub out_dir: PathBuf,
    /// Seed of the problem sets, the initial weights and every sampler.
    pub seed: u64,
    /// Operand digits of the addition task.
    pub digits: usize,
    /// Padded vocabulary size V (≥ the task's 15 tokens).
    pub vocab: usize,
    /// Model width.
    pub d_model: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Problems in the SFT set.
    pub sft_problems: usize,
    /// Problems in the RL (GRPO/RFT prompt) set.
    pub rl_problems: usize,
    /// Held-out evaluation problems.
    pub held_out: usize,
    /// Most SFT optimizer steps.
    pub sft_steps: usize,
    /// Stop SFT early once the sampled Pass@1 on a probe of SFT problems (checked every
    /// [`SFT_PROBE_EVERY`] steps) reaches this: the SFT model must solve some problems (so
    /// GRPO gets a signal) and leave room to improve. `None` runs all `sft_steps`.
    pub sft_target: Option<f64>,
    /// Sequences per SFT step.
    pub sft_batch: usize,
    /// SFT learning rate (AdamW).
    pub sft_lr: f64,
    /// Samples per held-out problem at evaluation (n of Pass@k).
    pub eval_samples: usize,
    /// Largest k of the Pass@k curve and the k of the k-rollout unsolvable sets (≤ n).
    pub eval_k: usize,
    /// Relative-position bins of the entropy profile.
    pub bins: usize,
    /// Fused or naive candle ops.
    pub loss: LossImpl,
    /// Where tensors live.
    pub device: Device,
    /// The sampler's filter (top-k / top-p, as a rollout engine applies it) for every rollout,
    /// and replayed by the GRPO loss (ratio from the truncated log-prob ℓ̃). `None`: plain
    /// sampling (the default).
    pub filter: Option<SamplingFilter>,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            out_dir: "runs".into(),
            seed: 0,
            digits: 2,
            vocab: 32768,
            d_model: 64,
            layers: 2,
            heads: 4,
            sft_problems: 2000,
            rl_problems: 2000,
            held_out: 128,
            sft_steps: 600,
            sft_target: Some(0.3),
            sft_batch: 32,
            sft_lr: 3e-3,
            eval_samples: 16,
            eval_k: 16,
            bins: 10,
            loss: LossImpl::Fused,
            device: Device::Cpu,
            filter: None,
        }
    }
}

impl CommonConfig {
    /// How this run's rollouts are drawn.
    pub fn sampling(&self) -> super::rollout::Sampling {
        super::rollout::Sampling { imp: self.loss, filter: self.filter }
    }

    /// Tiny settings for a run of seconds (tests, smoke checks).
    pub fn quick() -> Self {
        Self {
            name: "quick".into(),
            vocab: 2048,
            d_model: 32,
            sft_problems: 400,
            rl_problems: 200,
            held_out: 24,
            sft_steps: 40,
            sft_target: None,
            ..Self::default()
        }
    }

    /// The task.
    pub fn task(&self) -> Result<Task> {
        Task::new(self.digits)
    }

    /// The model shape for this task.
    pub fn model(&self) -> Result<ModelConfig> {
        let task = self.task()?;
        let cfg = ModelConfig {
            vocab: self.vocab,
            d_model: self.d_model,
            layers: self.layers,
            heads: self.heads,
            max_len: task.prompt_len() + task.max_response(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The run's output directory.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }

    /// Checks every setting; each error names the setting and the rule it breaks.
    pub fn validate(&self) -> Result<()> {
        if self.vocab < TASK_TOKENS {
            return Err(invalid("vocab", self.vocab, "must be >= 15, the task's own tokens"));
        }
        if let Some(f) = self.filter {
            f.validate()?;
        }
        self.model()?;
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name == ".." {
            return Err(Error::InvalidConfig {
                name: "name",
                value: self.name.clone(),
                why: "must be a plain file name",
            });
        }
        positive("sft-problems", self.sft_problems)?;
        positive("rl-problems", self.rl_problems)?;
        positive("held-out", self.held_out)?;
        positive("sft-batch", self.sft_batch)?;
        positive("eval-samples", self.eval_samples)?;
        positive("eval-k", self.eval_k)?;
        positive("bins", self.bins)?;
        learning_rate("sft-lr", self.sft_lr)?;
        if let Some(t) = self.sft_target {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Error::InvalidConfig {
                    name: "sft-target",
                    value: t.to_string(),
                    why: "must be in (0, 1]",
                });
            }
        }
        if self.eval_k > self.eval_samples {
            return Err(invalid("eval-k", self.eval_k, "Pass@k needs k <= n (--eval-samples)"));
        }
        let needed = (self.sft_problems + self.rl_problems + self.held_out) as u128;
        if needed * 2 > self.task()?.space() {
            return Err(invalid(
                "digits",
                self.digits,
                "too few distinct problems for the requested set sizes (need 2x their sum)",
            ));
        }
        Ok(())
    }
}

/// Settings of `rlvr train`: SFT, then GRPO with each shaping from the same SFT checkpoint.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Task, model, SFT, evaluation and output.
    pub common: CommonConfig,
    /// GRPO steps per shaping.
    pub steps: usize,
    /// Prompts per GRPO step.
    pub prompts_per_step: usize,
    /// Rollouts per prompt G (the GRPO group).
    pub group_size: usize,
    /// Passes over each batch of rollouts (μ).
    pub epochs: usize,
    /// Optimizer updates per pass, each on an equal share of the prompts' groups. With more than
    /// one, later updates see rollouts of an older policy, so ratios move off 1 and the clip acts.
    pub minibatches: usize,
    /// GRPO learning rate (AdamW).
    pub lr: f64,
    /// GRPO loss settings (clip-higher and token-mean by default); `kl` is set from `kl_coef`.
    pub grpo: GrpoConfig,
    /// KL coefficient to the SFT model (0 = off; the KL is measured either way).
    pub kl_coef: f32,
    /// Divide advantages by the group std (GRPO) or not (Dr. GRPO).
    pub scale_by_std: bool,
    /// The shapings to compare, each from the same SFT checkpoint.
    pub shapings: Vec<ShapingKind>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            common: CommonConfig::default(),
            steps: 80,
            prompts_per_step: 8,
            group_size: 8,
            epochs: 1,
            minibatches: 2,
            lr: 3e-4,
            grpo: GrpoConfig::default(),
            kl_coef: 0.0,
            scale_by_std: true,
            shapings: ShapingKind::ALL.to_vec(),
        }
    }
}

impl TrainConfig {
    /// The `--quick` preset.
    pub fn quick() -> Self {
        Self { common: CommonConfig::quick(), steps: 4, prompts_per_step: 4, ..Self::default() }
    }

    /// The loss settings with the KL term always on (coefficient `kl_coef`, possibly 0) so the
    /// fused op reports the per-token KL to the SFT model at no extra pass.
    pub fn loss_config(&self) -> GrpoConfig {
        GrpoConfig {
            kl: Some(KlPenalty { coef: self.kl_coef, estimator: KlEstimator::K3 }),
            filter: self.common.filter,
            ..self.grpo
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        positive("steps", self.steps)?;
        positive("prompts", self.prompts_per_step)?;
        positive("epochs", self.epochs)?;
        positive("minibatches", self.minibatches)?;
        if !self.prompts_per_step.is_multiple_of(self.minibatches) {
            return Err(invalid("minibatches", self.minibatches, "must divide --prompts (whole groups per update)"));
        }
        learning_rate("lr", self.lr)?;
        if self.group_size < 2 {
            return Err(invalid("group-size", self.group_size, "must be >= 2: a group of one has advantage 0"));
        }
        if self.shapings.is_empty() {
            return Err(invalid("shaping", 0, "name at least one shaping"));
        }
        self.loss_config().validate()
    }
}

/// Settings of `rlvr rft`: SFT, then rejection-sampling fine-tuning with each selection strategy.
#[derive(Debug, Clone)]
pub struct RftConfig {
    /// Task, model, SFT, evaluation and output.
    pub common: CommonConfig,
    /// Rollouts sampled per RL problem from the SFT model.
    pub rollouts: usize,
    /// Fine-tuning steps per strategy.
    pub steps: usize,
    /// Sequences per fine-tuning step.
    pub batch: usize,
    /// Fine-tuning learning rate (AdamW).
    pub lr: f64,
    /// Fraction kept by high-entropy / high-RBF.
    pub top_fraction: f64,
    /// Fraction of incorrect responses added by noise injection.
    pub noise: f64,
}

impl Default for RftConfig {
    fn default() -> Self {
        Self {
            common: CommonConfig::default(),
            rollouts: 4,
            steps: 100,
            batch: 32,
            lr: 1e-3,
            top_fraction: crate::rft::DEFAULT_TOP_FRACTION,
            noise: crate::rft::DEFAULT_NOISE,
        }
    }
}

impl RftConfig {
    /// The `--quick` preset.
    pub fn quick() -> Self {
        Self { common: CommonConfig::quick(), rollouts: 4, steps: 5, batch: 32, ..Self::default() }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        positive("rollouts", self.rollouts)?;
        positive("steps", self.steps)?;
        positive("batch", self.batch)?;
        learning_rate("lr", self.lr)?;
        crate::rft::RftStrategy::noise_high_rbf(self.noise, self.top_fraction).validate()
    }
}

fn invalid(name: &'static str, value: usize, why: &'static str) -> Error {
    Error::InvalidConfig { name, value: value.to_string(), why }
}

fn positive(name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(invalid(name, 0, "must be >= 1"));
    }
    Ok(())
}

fn learning_rate(name: &'static str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::InvalidConfig { name, value: lr.to_string(), why: "must be finite and > 0" });
    }
    Ok(())
}
