//! The token-statistics op: lse, entropy and target log-prob (differentiable w.r.t. the
//! logits) and the branch count (not differentiable) of `[.., V]` logits.

use candle_core::Tensor;

use crate::config::TokenStatsConfig;
use crate::error::Result;

/// Per-token statistics as candle tensors with the logits' leading shape (`[N]` or `[B, T]`).
#[derive(Debug, Clone)]
pub struct TokenStatsOutput {
    /// lse of z / T (f32), differentiable: ∂lse/∂z_j = p_j / T.
    pub lse: Tensor,
    /// Entropy H (f32), differentiable: ∂H/∂z_j = −p_j (ln p_j + H) / T.
    pub entropy: Tensor,
    /// log p of the target (f32) when targets were given, differentiable: (δ_jy − p_j) / T.
    pub logp: Option<Tensor>,
    /// Branch count (u32) when top-p was given; no gradient.
    pub branch: Option<Tensor>,
}

/// Fused token statistics of `logits` (`[N, V]` or `[B, T, V]`, bf16/f16/f32, any device
/// supported by the crate) with optional `targets` (u32, the leading shape).
pub fn token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<TokenStatsOutput> {
    let _ = (logits, targets, cfg);
    todo!("ops::token_stats")
}
