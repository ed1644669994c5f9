//! The shaped GRPO loss op: scalar loss (differentiable w.r.t. the logits) plus per-token
//! statistics from the same fused forward.

use candle_core::Tensor;

use crate::config::GrpoConfig;
use crate::error::Result;

/// Per-token inputs of the loss as candle tensors, all with the logits' leading shape `[B, T]`.
#[derive(Debug, Clone, Copy)]
pub struct GrpoLossInputs<'a> {
    /// Sampled token ids (u32).
    pub targets: &'a Tensor,
    /// 1 = counted response token, 0 = not (f32).
    pub mask: &'a Tensor,
    /// Rollout-policy log-probs of the targets (f32).
    pub old_logp: &'a Tensor,
    /// Reference-policy log-probs (f32), needed when the KL penalty is on.
    pub ref_logp: Option<&'a Tensor>,
    /// Shaped per-token advantages (f32), e.g. from [`crate::cpu::token_advantages`].
    pub advantages: &'a Tensor,
}

/// The loss and per-token statistics. Only `loss` carries a gradient.
#[derive(Debug, Clone)]
pub struct GrpoLossOutput {
    /// Aggregated scalar loss (f32, shape `[]`).
    pub loss: Tensor,
    /// Per-token L + β_kl·KL − c_H·H (f32).
    pub token_loss: Tensor,
    /// Current log-prob of the target (f32).
    pub logp: Tensor,
    /// Entropy (f32).
    pub entropy: Tensor,
    /// Importance ratio ρ (f32).
    pub ratio: Tensor,
    /// Clip flags (u8: bit 0 clipped, bit 1 dual-clipped).
    pub clip_flags: Tensor,
    /// Per-token KL (f32) when the penalty is on.
    pub kl: Option<Tensor>,
    /// Branch count (u32) when `cfg.top_p` is set.
    pub branch: Option<Tensor>,
}

/// The fused shaped GRPO loss of `logits` (`[B, T, V]`, bf16/f16/f32). The sequence length T
/// is the logits' second dimension.
pub fn grpo_loss(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<GrpoLossOutput> {
    let _ = (logits, inputs, cfg);
    todo!("ops::grpo_loss")
}
