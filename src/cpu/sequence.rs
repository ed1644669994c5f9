//! The O(N) sequence side in f32 (sums in f64): log-PPL, PPL weight, GRPO advantages,
//! shapings, aggregation weights. Same formulas as [`crate::reference`].

use crate::config::{AdvantageConfig, Aggregation, Shaping};
use crate::error::Result;

/// Sequence log-PPL −Σ m ℓ / Σ m per sequence of the `[B, T]` view; `None` when Σ m = 0.
pub fn log_ppl(logp: &[f32], mask: &[f32], seq_len: usize) -> Result<Vec<Option<f32>>> {
    let _ = (logp, mask, seq_len);
    todo!()
}

/// Group z-score of the log-PPL with the IQR filter (see [`crate::reference::ppl_weight`]).
pub fn ppl_weight(log_ppl: &[Option<f32>], group_size: usize) -> Result<Vec<f32>> {
    let _ = (log_ppl, group_size);
    todo!()
}

/// GRPO advantages per sequence (see [`crate::reference::grpo_advantages`]).
pub fn grpo_advantages(rewards: &[f32], cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    let _ = (rewards, cfg);
    todo!()
}

/// Per-token shaped advantages (see [`crate::reference::shape_advantages`]).
pub fn shape_advantages(
    adv: &[f32],
    mask: &[f32],
    seq_len: usize,
    ppl_weight: Option<&[f32]>,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    let _ = (adv, mask, seq_len, ppl_weight, shaping);
    todo!()
}

/// The whole advantage pipeline (see [`crate::reference::token_advantages`]).
pub fn token_advantages(
    rewards: &[f32],
    old_logp: &[f32],
    mask: &[f32],
    seq_len: usize,
    adv: &AdvantageConfig,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    let _ = (rewards, old_logp, mask, seq_len, adv, shaping);
    todo!()
}

/// Aggregation weights a_t, loss = Σ a_t ℓ_t (see [`crate::reference::aggregation_weights`]).
pub fn aggregation_weights(mask: &[f32], seq_len: usize, agg: &Aggregation) -> Result<Vec<f32>> {
    let _ = (mask, seq_len, agg);
    todo!()
}
