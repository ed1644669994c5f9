//! The same functions as [`crate::ops`], composed from plain candle ops and differentiated by
//! candle autograd: the baseline the fused ops are tested and benchmarked against.

use candle_core::Tensor;

use super::{GrpoLossInputs, GrpoLossOutput, TokenStatsOutput};
use crate::config::{GrpoConfig, TokenStatsConfig};
use crate::error::Result;

/// Token statistics from log_softmax, exp, mul, sum and gather; branch by a host sort.
pub fn token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<TokenStatsOutput> {
    let _ = (logits, targets, cfg);
    todo!("ops::naive::token_stats")
}

/// The GRPO loss composed from candle ops (same signature as [`super::grpo_loss`]).
pub fn grpo_loss(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<GrpoLossOutput> {
    let _ = (logits, inputs, cfg);
    todo!("ops::naive::grpo_loss")
}
