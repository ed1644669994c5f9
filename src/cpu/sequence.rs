//! The O(N) sequence side in f32 (sums in f64): log-PPL, PPL weight, GRPO advantages,
//! shapings, aggregation weights. Same formulas as [`crate::reference`].

use crate::config::{AdvantageConfig, Aggregation, Shaping};
use crate::error::Result;
use crate::validate;

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

/// Aggregation weights a_t, loss = Σ a_t ℓ_t (see [`crate::reference::aggregation_weights`]):
/// token-mean 1/Σm (or 1/global count), seq-mean-token-mean 1/(|o_i|·#valid), seq-mean-token-sum
/// 1/#valid, seq-mean-token-sum-norm 1/C; 0 for masked tokens and for an empty batch.
pub fn aggregation_weights(mask: &[f32], seq_len: usize, agg: &Aggregation) -> Result<Vec<f32>> {
    agg.validate()?;
    validate::sequences(mask.len(), seq_len)?;
    validate::mask(mask, mask.len())?;
    // Counts of 0/1 values are exact in f64.
    let lens: Vec<f64> = mask.chunks(seq_len).map(|s| s.iter().map(|&m| m as f64).sum()).collect();
    let total: f64 = lens.iter().sum();
    let valid = lens.iter().filter(|&&l| l > 0.0).count() as f64;
    let mut w = vec![0.0f32; mask.len()];
    for ((ws, ms), &len) in w.chunks_mut(seq_len).zip(mask.chunks(seq_len)).zip(&lens) {
        let a = match *agg {
            Aggregation::TokenMean { global_tokens: Some(g) } => 1.0 / g,
            Aggregation::TokenMean { global_tokens: None } => 1.0 / total,
            Aggregation::SeqMeanTokenMean => 1.0 / (len * valid),
            Aggregation::SeqMeanTokenSum => 1.0 / valid,
            Aggregation::SeqMeanTokenSumNorm { norm } => 1.0 / norm,
        } as f32;
        for (wt, &m) in ws.iter_mut().zip(ms) {
            if m != 0.0 {
                *wt = a;
            }
        }
    }
    Ok(w)
}
