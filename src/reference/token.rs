//! Token statistics in float64: log-sum-exp, entropy, target log-prob and the exact top-p
//! branch count by sorting. Slow and obviously correct.

use crate::config::TokenStatsConfig;
use crate::error::Result;
use crate::validate;

/// The statistics of one row, in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowStats {
    /// lse = m + ln Σ exp(x_i − m).
    pub lse: f64,
    /// H = lse − W/S with S = Σ e^{x_i−m}, W = Σ x_i e^{x_i−m}.
    pub entropy: f64,
    /// x_y − lse, when a target was given.
    pub logp: Option<f64>,
    /// The branch count at top-p, when top-p was given.
    pub branch: Option<u32>,
}

/// Softmax probabilities p_i = exp(x_i − lse) of x = z / T, and lse. −inf logits give p = 0.
pub fn softmax(z: &[f64], temperature: f64) -> (Vec<f64>, f64) {
    let x: Vec<f64> = z.iter().map(|&v| v / temperature).collect();
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().map(|&v| (v - m).exp()).sum();
    let lse = m + s.ln();
    (x.iter().map(|&v| (v - lse).exp()).collect(), lse)
}

/// Statistics of one row of logits `z` (assumed valid: no NaN/+inf, not all −inf).
pub fn row_stats(z: &[f64], target: Option<u32>, temperature: f64, top_p: Option<f64>) -> RowStats {
    let x: Vec<f64> = z.iter().map(|&v| v / temperature).collect();
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for &v in &x {
        let e = (v - m).exp();
        s += e;
        if e > 0.0 {
            w += v * e;
        }
    }
    let lse = m + s.ln();
    let entropy = lse - w / s;
    let logp = target.map(|y| x[y as usize] - lse);
    let branch = top_p.map(|p| {
        let probs: Vec<f64> = x.iter().map(|&v| (v - lse).exp()).collect();
        branch_count(&probs, p)
    });
    RowStats { lse, entropy, logp, branch }
}

/// The Rollout Branching Factor of a probability vector: the smallest k such that the k largest
/// probabilities sum to ≥ `top_p`. Ties are interchangeable: with τ the probability at which
/// the sorted cumulative sum crosses `top_p`, k = #{p > τ} + ceil((top_p − M_{>τ}) / τ).
/// If rounding leaves the total below `top_p`, every positive probability is counted.
pub fn branch_count(probs: &[f64], top_p: f64) -> u32 {
    let mut p: Vec<f64> = probs.iter().copied().filter(|&v| v > 0.0).collect();
    p.sort_by(|a, b| b.total_cmp(a));
    let Some(&smallest) = p.last() else { return 0 };
    let mut cum = 0.0;
    let mut tau = smallest;
    for &v in &p {
        cum += v;
        if cum >= top_p {
            tau = v;
            break;
        }
    }
    let above = p.iter().take_while(|&&v| v > tau).count();
    let ties = p[above..].iter().take_while(|&&v| v == tau).count();
    let mass_above: f64 = p[..above].iter().sum();
    let need = ((top_p - mass_above) / tau).ceil().max(1.0) as usize;
    (above + need.min(ties)) as u32
}

/// The tolerance band of DESIGN.md §4 for a fast branch count of row `z`:
/// `[k_ref(p·(1 − 1e-5)), k_ref(p·(1 + 1e-5))]` (the upper end capped below 1), since mass
/// within that band is below f32 resolution.
pub fn branch_band(z: &[f64], temperature: f64, top_p: f64) -> (u32, u32) {
    let (probs, _) = softmax(z, temperature);
    let lo = branch_count(&probs, top_p * (1.0 - 1e-5));
    let hi = branch_count(&probs, (top_p * (1.0 + 1e-5)).min(1.0 - 1e-12));
    (lo, hi)
}

/// Validated token statistics of `[N, V]` logits (row-major, as f64) with the errors of
/// DESIGN.md §7, in the same order as the fast paths.
pub fn token_stats(
    logits: &[f64],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
) -> Result<Vec<RowStats>> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    if let Some(t) = targets {
        validate::targets(t, n, vocab)?;
    }
    let rows = || logits.chunks_exact(vocab);
    if cfg.check_finite {
        for (r, row) in rows().enumerate() {
            if let Some(e) = validate::row_problem(r, row.iter().copied()) {
                return Err(e);
            }
        }
    }
    let (t, p) = (cfg.temperature as f64, cfg.top_p.map(|p| p as f64));
    Ok(rows().enumerate().map(|(r, row)| row_stats(row, targets.map(|t| t[r]), t, p)).collect())
}
