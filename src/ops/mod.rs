//! candle custom ops with backward: the fused token statistics and the shaped GRPO loss on
//! candle tensors. `cpu_fwd` calls [`crate::cpu`], `cuda_fwd` calls `crate::cuda` on candle's
//! own stream, `bwd` gives dlogits.
//!
//! [`naive`] holds the same functions composed from plain candle ops (the code a trainer would
//! write by hand, differentiated by candle autograd): switching a trainer from naive to fused is
//! a change of one call, `ops::naive::grpo_loss` → `ops::grpo_loss`.

mod check;
pub mod grpo;
pub mod naive;
mod side;
mod stats_backward;
pub mod token_stats;

pub use grpo::{grpo_loss, GrpoLossInputs, GrpoLossOutput};
pub use token_stats::{token_stats, TokenStatsOutput};
