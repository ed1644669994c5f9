//! The rollout sampler's kept set K (top-k, top-p, top-k then top-p, or an engine's mask) and
//! the statistics over it, in float64 (DESIGN.md §4, "Sampling filter and replay").

use super::token::softmax;
use crate::config::{SamplingFilter, TokenStatsConfig};
use crate::error::Result;
use crate::types::KeptMask;
use crate::validate;

/// The statistics of one row over its kept set K, in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeptRow {
    /// lse_K = ln Σ_{i∈K} e^{x_i}.
    pub lse: f64,
    /// H̃ = −Σ_K p̃ ln p̃ with p̃ = p / Σ_K p.
    pub entropy: f64,
    /// ℓ̃ = x_y − lse_K for y ∈ K; the unfiltered ℓ = x_y − lse for y ∉ K. When a target was given.
    pub logp: Option<f64>,
    /// |K|.
    pub count: u32,
    /// The target is outside K.
    pub outside: bool,
}

/// The crossing probability τ of `filter` over probabilities `p`: K = {i : p_i ≥ τ, p_i > 0}.
///
/// Top-k: τ = the k-th largest positive probability (every positive one when fewer than k).
/// Top-p (after top-k, over the top-k set renormalised): sorted descending, τ = the first
/// probability at which the cumulative sum reaches p·(the set's mass); if rounding never lets it
/// reach (p = 1), the smallest of the set. +inf when no probability is positive.
pub fn kept_threshold(p: &[f64], filter: &SamplingFilter) -> f64 {
    let mut sorted: Vec<f64> = p.iter().copied().filter(|&v| v > 0.0).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let Some(&smallest) = sorted.last() else { return f64::INFINITY };
    let mut tau = smallest;
    let mut set = &sorted[..];
    if let Some(k) = filter.top_k {
        let k = (k as usize).clamp(1, sorted.len());
        tau = sorted[k - 1];
        set = &sorted[..sorted.partition_point(|&v| v >= tau)];
    }
    if let Some(top_p) = filter.top_p {
        let goal = top_p as f64 * set.iter().sum::<f64>();
        let mut cum = 0.0;
        tau = set[set.len() - 1];
        // p = 1 keeps the whole set (the cumulative sum may reach the rounded total early in a
        // peaked row, before its smallest probabilities).
        for &v in set.iter().take_while(|_| top_p < 1.0) {
            cum += v;
            if cum >= goal {
                tau = v;
                break;
            }
        }
    }
    tau
}

/// Which tokens `filter` keeps of row `z` (logits, as f64) at `temperature`.
pub fn kept_set(z: &[f64], temperature: f64, filter: &SamplingFilter) -> Vec<bool> {
    let (p, _) = softmax(z, temperature);
    let tau = kept_threshold(&p, filter);
    p.iter().map(|&v| v > 0.0 && v >= tau).collect()
}

/// K as a bool per token from an engine's kept ids.
pub fn kept_from_ids(vocab: usize, ids: &[u32]) -> Vec<bool> {
    let mut k = vec![false; vocab];
    ids.iter().for_each(|&i| k[i as usize] = true);
    k
}

/// The `count` largest logits of `z` as a kept set, if that set is closed under ties (the
/// count-th and the next logit differ); `None` otherwise. A fast path that reports |K| = c
/// kept exactly this set, so the tests compare its ℓ̃ and H̃ with [`kept_stats`] over it.
pub fn kept_top(z: &[f64], count: u32) -> Option<Vec<bool>> {
    let c = count as usize;
    if c == 0 || c > z.len() {
        return None;
    }
    let mut sorted: Vec<f64> = z.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = sorted[c - 1];
    if cut == f64::NEG_INFINITY || (c < z.len() && sorted[c] == cut) {
        return None;
    }
    Some(z.iter().map(|&v| v >= cut).collect())
}

/// The band of |K| a fast path may report for `filter` on row `z`: a top-p crossing within
/// p·(1 ± 1e-5) of the mass is below f32 resolution (DESIGN.md §4, as for the branch count), so
/// the band is [|K| at p·(1 − 1e-5), |K| at min(p·(1 + 1e-5), 1)]; top-k alone is exact.
pub fn kept_band(z: &[f64], temperature: f64, filter: &SamplingFilter) -> (u32, u32) {
    let count = |f: SamplingFilter| kept_set(z, temperature, &f).iter().filter(|&&k| k).count() as u32;
    match filter.top_p {
        None => {
            let c = count(*filter);
            (c, c)
        }
        Some(p) => {
            let lo = SamplingFilter { top_p: Some(p * (1.0 - 1e-5)), ..*filter };
            let hi = SamplingFilter { top_p: Some((p * (1.0 + 1e-5)).min(1.0)), ..*filter };
            (count(lo), count(hi))
        }
    }
}

/// The statistics of row `z` over the kept set `kept` (a bool per token, at least one true
/// with a finite logit) at `temperature`, with the target's ℓ̃ and outside flag.
pub fn kept_stats(z: &[f64], temperature: f64, kept: &[bool], target: Option<u32>) -> KeptRow {
    let x: Vec<f64> = z.iter().map(|&v| v / temperature).collect();
    let in_k = || x.iter().zip(kept).filter(|(_, &k)| k).map(|(&v, _)| v);
    let m = in_k().fold(f64::NEG_INFINITY, f64::max);
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for v in in_k() {
        let e = (v - m).exp();
        s += e;
        if e > 0.0 {
            w += (v - m) * e;
        }
    }
    let lse = m + s.ln();
    let outside = target.is_some_and(|y| !kept[y as usize]);
    let logp = target.map(|y| {
        let y = y as usize;
        if kept[y] {
            x[y] - lse
        } else {
            x[y] - softmax(z, temperature).1
        }
    });
    KeptRow { lse, entropy: s.ln() - w / s, logp, count: kept.iter().filter(|&&k| k).count() as u32, outside }
}

/// Validated statistics over K of `[N, V]` logits (as f64): K recomputed from `cfg.filter`, or
/// given by `mask` (exactly one of the two). Errors as [`super::token_stats`], plus the
/// filter's ([`crate::Error::InvalidConfig`]) and the mask's ([`crate::Error::InvalidKeptMask`]).
pub fn kept_token_stats(
    logits: &[f64],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMask>,
) -> Result<Vec<KeptRow>> {
    let n = validate::rows(logits.len(), vocab)?;
    validate::filter_or_mask(cfg.filter.as_ref(), mask, n, vocab)?;
    super::token_stats(logits, vocab, targets, cfg)?;
    let t = cfg.temperature as f64;
    Ok(logits
        .chunks_exact(vocab)
        .enumerate()
        .map(|(r, row)| {
            let kept = kept_of_row(row, t, cfg.filter.as_ref(), mask, r);
            kept_stats(row, t, &kept, targets.map(|t| t[r]))
        })
        .collect())
}

/// Row r's K from the filter or the mask (one of them is given).
pub(crate) fn kept_of_row(
    row: &[f64],
    temperature: f64,
    filter: Option<&SamplingFilter>,
    mask: Option<&KeptMask>,
    r: usize,
) -> Vec<bool> {
    match (filter, mask) {
        (_, Some(m)) => kept_from_ids(row.len(), m.row(r)),
        (Some(f), None) => kept_set(row, temperature, f),
        (None, None) => vec![true; row.len()],
    }
}
