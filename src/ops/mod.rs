//! candle custom ops with backward: the fused token statistics and the shaped GRPO loss on
//! candle tensors. `cpu_fwd` calls [`crate::cpu`], `cuda_fwd` calls `crate::cuda` on candle's
//! own stream, `bwd` gives dlogits.
//!
//! [`naive`] holds the same functions composed from plain candle ops (the code a trainer would
//! write by hand, differentiated by candle autograd): switching a trainer from naive to fused is
//! a change of one call, `ops::naive::grpo_loss` → `ops::grpo_loss`. Both check their inputs the
//! same way and return the same [`crate::Error`]s.
//!
//! Where each op runs:
//!
//! | op | CPU forward | CPU backward | CUDA forward | CUDA backward |
//! |----|-------------|--------------|--------------|---------------|
//! | [`token_stats()`] | `cpu::token_stats` | fused row pass | `cuda::token_stats` | candle ops |
//! | [`grpo_loss`] | `cpu::grpo_forward` | `cpu::grpo_backward` | `cuda::grpo_forward` | `cuda::grpo_backward` |
//! | [`naive`] | candle ops | autograd | candle ops | autograd |
//!
//! Each op is a small private struct implementing candle's `CustomOp1` over the logits (the
//! per-token inputs, read to the host once, live in the struct), with its extra outputs and typed
//! errors passed back through a side channel.

mod check;
pub mod grpo;
#[cfg(feature = "cuda")]
mod grpo_cuda;
pub mod naive;
mod side;
mod stats_backward;
pub mod token_stats;

pub use grpo::{grpo_loss, GrpoLossInputs, GrpoLossOutput, KeptMaskTensors};
pub use token_stats::{token_stats, KeptStatsOutput, TokenStatsOutput};
