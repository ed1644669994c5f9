//! The minimal candle GRPO training loop on a toy verifiable task (DESIGN.md §2 `train/`).
//!
//! - [`task`]: d-digit addition with an exact-match verifier, train/held-out splits, a
//!   vocabulary padded with never-used "garbage" ids;
//! - [`model`]: a tiny decoder-only transformer in candle-nn;
//! - [`rollout`]: batched sampling at temperature 1 with per-token statistics from the fused
//!   token-stats op (old log-probs, entropy, Rollout Branching Factor, garbage mass);
//! - [`sft`], [`grpo`]: supervised fine-tuning and GRPO steps (the loss is [`crate::ops::grpo_loss`]
//!   or its naive twin, advantages from [`crate::cpu::token_advantages`]);
//! - [`eval`]: Pass@k, k-rollout unsolvable sets, entropy by relative position;
//! - [`run`], [`rft_run`]: the `rlvr train` and `rlvr rft` pipelines, writing
//!   `metrics.jsonl` ([`log`]) and PNG plots ([`plot`]).

pub mod config;
pub mod eval;
pub mod figures;
pub mod grpo;
pub mod log;
pub mod model;
pub mod plot;
pub mod rft_run;
pub mod rollout;
pub mod run;
pub mod sampler;
pub mod sft;
pub mod task;

use candle_core::Tensor;

use crate::config::{GrpoConfig, TokenStatsConfig};
use crate::error::Result;
use crate::ops::{self, GrpoLossInputs, GrpoLossOutput, TokenStatsOutput};

pub use config::{CommonConfig, RftConfig, ShapingKind, TrainConfig};
pub use rft_run::{run_rft, RftReport};
pub use run::{run_train, TrainReport};

/// Which implementation of the candle ops the loop calls: the fused kernels
/// ([`crate::ops`], the default) or the same math composed from plain candle ops
/// ([`crate::ops::naive`]). Switching is the one-call change the ops module promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossImpl {
    /// [`crate::ops::grpo_loss`] / [`crate::ops::token_stats()`].
    #[default]
    Fused,
    /// [`crate::ops::naive::grpo_loss`] / [`crate::ops::naive::token_stats()`].
    Naive,
}

impl LossImpl {
    /// The GRPO loss of `[B, T, V]` logits.
    pub fn grpo_loss(self, logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<GrpoLossOutput> {
        match self {
            LossImpl::Fused => ops::grpo_loss(logits, inputs, cfg),
            LossImpl::Naive => ops::naive::grpo_loss(logits, inputs, cfg),
        }
    }

    /// Token statistics of `[.., V]` logits.
    pub fn token_stats(
        self,
        logits: &Tensor,
        targets: Option<&Tensor>,
        cfg: &TokenStatsConfig,
    ) -> Result<TokenStatsOutput> {
        match self {
            LossImpl::Fused => ops::token_stats(logits, targets, cfg),
            LossImpl::Naive => ops::naive::token_stats(logits, targets, cfg),
        }
    }

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LossImpl::Fused => "fused",
            LossImpl::Naive => "naive",
        }
    }
}

/// Receives progress events, e.g. to drive a progress bar. Every method defaults to nothing.
pub trait Progress {
    /// A phase of `steps` steps begins (e.g. `"sft"`, `"grpo none"`, `"eval sft"`).
    fn start(&mut self, _phase: &str, _steps: u64) {}
    /// One step of the current phase is done; `msg` is a short status (e.g. the reward).
    fn step(&mut self, _msg: &str) {}
    /// The current phase is done.
    fn finish(&mut self) {}
}

/// A [`Progress`] that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
