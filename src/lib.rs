//! # rlvr-kernels
//!
//! Fused kernels for reinforcement learning with verifiable rewards (RLVR): token entropy, the
//! exact top-p Rollout Branching Factor, sequence log-perplexity and the shaped GRPO loss
//! (forward and backward to the logits), after arXiv 2508.07534.
//!
//! - [`reference`](mod@reference): float64, obviously-correct implementations of every formula — the spec.
//! - [`cpu`]: fast fused CPU implementations over bf16/f16/f32 rows, tested against the spec.
//! - [`metrics`], [`rft`]: Pass@k, k-rollout unsolvable sets, RFT data selection.
//! - [`train`]: a minimal candle GRPO loop (SFT, GRPO with shapings, RFT) on a toy verifiable task.
//!
//! Logits are row-major `[N, V]` (a `[B, T, V]` tensor is N = B·T rows); per-token inputs have N
//! entries; sequences are rows of the `[B, T]` view; GRPO groups are G consecutive sequences.

#![warn(missing_docs)]

pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod element;
pub mod error;
pub mod lm;
pub mod metrics;
pub mod naive;
pub mod ops;
pub mod reference;
pub mod rft;
pub mod train;
pub mod types;
pub mod validate;

pub use config::{
    AdvantageConfig, Aggregation, GrpoConfig, KlEstimator, KlPenalty, PositionShaping, PplShaping, SamplingFilter,
    Shaping, TokenStatsConfig, DEFAULT_TOP_P,
};
pub use element::{DType, Element};
pub use error::{Error, Result};
pub use types::{
    GrpoForward, GrpoInputs, GrpoSaved, KeptMask, KeptSaved, KeptStats, TokenStats, CLIPPED, DUAL_CLIPPED, OUTSIDE_KEPT,
};
