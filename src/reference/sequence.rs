//! The O(N) sequence side in float64: log-PPL, PPL weight, GRPO advantages, shapings and
//! aggregation weights. Tokens are the `[B, T]` view of N = B·T rows.

use crate::config::{AdvantageConfig, Aggregation, PositionShaping, PplShaping, Shaping};
use crate::error::{Error, Result};
use crate::validate;

/// Sequence log-perplexity log PPL_i = −Σ_t m_t ℓ_t / Σ_t m_t; `None` when Σ m = 0.
pub fn log_ppl(logp: &[f32], mask: &[f32], seq_len: usize) -> Result<Vec<Option<f64>>> {
    let b = validate::sequences(logp.len(), seq_len)?;
    validate::mask(mask, logp.len())?;
    validate::finite("old_logp", logp)?;
    Ok((0..b)
        .map(|i| {
            let s = i * seq_len..(i + 1) * seq_len;
            let count: f64 = mask[s.clone()].iter().map(|&m| m as f64).sum();
            let sum: f64 = logp[s.clone()].iter().zip(&mask[s]).map(|(&l, &m)| l as f64 * m as f64).sum();
            (count > 0.0).then(|| -sum / count)
        })
        .collect())
}

/// Quantile `q` of sorted values with linear interpolation at position (n − 1)·q
/// (numpy/torch default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// PPL weight: inside each group of `group_size` consecutive sequences, the z-score of the
/// log-PPL over the valid sequences after an IQR filter. Q1/Q3 by [`quantile`]; keep values in
/// [Q1 − 1.5·IQR, Q3 + 1.5·IQR] (all if none kept); μ, σ = mean and population std of the kept
/// values (σ := 1 if σ ≤ 1e-6); w_i = (log PPL_i − μ)/σ. Sequences without PPL get w = 0.
pub fn ppl_weight(log_ppl: &[Option<f64>], group_size: usize) -> Result<Vec<f64>> {
    validate::groups(log_ppl.len(), group_size)?;
    let mut w = vec![0.0; log_ppl.len()];
    for (g, group) in log_ppl.chunks(group_size).enumerate() {
        let mut valid: Vec<f64> = group.iter().flatten().copied().collect();
        if valid.is_empty() {
            continue;
        }
        valid.sort_by(f64::total_cmp);
        let (q1, q3) = (quantile(&valid, 0.25), quantile(&valid, 0.75));
        let iqr = q3 - q1;
        let (lo, hi) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
        let mut kept: Vec<f64> = valid.iter().copied().filter(|&v| v >= lo && v <= hi).collect();
        if kept.is_empty() {
            kept = valid;
        }
        let mu = kept.iter().sum::<f64>() / kept.len() as f64;
        let var = kept.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / kept.len() as f64;
        let sigma = if var.sqrt() <= 1e-6 { 1.0 } else { var.sqrt() };
        for (j, lp) in group.iter().enumerate() {
            if let Some(lp) = lp {
                w[g * group_size + j] = (lp - mu) / sigma;
            }
        }
    }
    Ok(w)
}

/// GRPO advantages A_i = (r_i − mean_g r)/(std_g r + 1e-6), std unbiased (taken as 0 when
/// G = 1, so a group of one gets A = 0); without `scale_by_std`, A_i = r_i − mean_g r.
pub fn grpo_advantages(rewards: &[f32], cfg: &AdvantageConfig) -> Result<Vec<f64>> {
    validate::groups(rewards.len(), cfg.group_size)?;
    validate::finite("rewards", rewards)?;
    let mut a = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(cfg.group_size) {
        let n = group.len() as f64;
        let mean = group.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = if group.len() > 1 {
            (group.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        for &r in group {
            let d = r as f64 - mean;
            a.push(if cfg.scale_by_std { d / (std + 1e-6) } else { d });
        }
    }
    Ok(a)
}

/// The logistic function σ(x) = 1 / (1 + e^{−x}).
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Position bonus b = min(β·σ(κ·(r − ½)), ½·|A|) for relative position r = (t − 1)/|o|.
pub fn position_bonus(t: usize, len: usize, adv: f64, p: &PositionShaping) -> f64 {
    let r = (t - 1) as f64 / len as f64;
    (p.beta as f64 * sigmoid(p.kappa as f64 * (r - 0.5))).min(0.5 * adv.abs())
}

/// PPL factor clip(1 − α·w, lo, hi).
pub fn ppl_factor(w: f64, p: &PplShaping) -> f64 {
    (1.0 - p.alpha as f64 * w).clamp(p.lo as f64, p.hi as f64)
}

/// Per-token shaped advantages from per-sequence advantages `adv` (`[B]`) over the `[B, T]`
/// `mask`. Position shaping (counted tokens only) first, with its cap from the unshaped |A|;
/// then the PPL factor multiplies every token of the sequence (needs `ppl_weight`, `[B]`).
/// A = 0 gets no bonus. Masked tokens carry A (times the PPL factor when on).
pub fn shape_advantages(
    adv: &[f64],
    mask: &[f32],
    seq_len: usize,
    ppl_weight: Option<&[f64]>,
    shaping: &Shaping,
) -> Result<Vec<f64>> {
    shaping.validate()?;
    let b = validate::sequences(mask.len(), seq_len)?;
    // Lengths before values: the order in which a device path can check them (lengths on the
    // host before the launch, values on the device).
    validate::len("advantages", adv.len(), b, "one per sequence")?;
    if shaping.ppl.is_some() {
        match ppl_weight {
            Some(w) => validate::len("ppl_weight", w.len(), b, "one per sequence")?,
            None => {
                return Err(Error::ShapeMismatch {
                    name: "ppl_weight",
                    expected: format!("{b} elements (PPL shaping is on)"),
                    got: "none".into(),
                })
            }
        }
    }
    validate::mask(mask, mask.len())?;
    let mut out = vec![0.0; mask.len()];
    for i in 0..b {
        let a = adv[i];
        let m = &mask[i * seq_len..(i + 1) * seq_len];
        let len = m.iter().filter(|&&v| v != 0.0).count();
        let factor = match (shaping.ppl, ppl_weight) {
            (Some(p), Some(w)) => ppl_factor(w[i], &p),
            _ => 1.0,
        };
        let mut t = 0;
        for (j, &mj) in m.iter().enumerate() {
            let mut v = a;
            if mj != 0.0 {
                t += 1;
                if let (Some(p), true) = (shaping.position, a != 0.0) {
                    v = a + a.signum() * position_bonus(t, len, a, &p);
                }
            }
            out[i * seq_len + j] = v * factor;
        }
    }
    Ok(out)
}

/// The whole advantage pipeline of DESIGN.md §4: log-PPL of `old_logp` → PPL weight (when PPL
/// shaping is on) → GRPO advantages of `rewards` (`[B]`) → shaped per-token advantages (`[B·T]`).
pub fn token_advantages(
    rewards: &[f32],
    old_logp: &[f32],
    mask: &[f32],
    seq_len: usize,
    adv: &AdvantageConfig,
    shaping: &Shaping,
) -> Result<Vec<f64>> {
    let b = validate::sequences(mask.len(), seq_len)?;
    validate::len("rewards", rewards.len(), b, "one per sequence")?;
    validate::len("old_logp", old_logp.len(), mask.len(), "one per token")?;
    // Shapes and settings before values (the order a device path checks them in).
    validate::groups(b, adv.group_size)?;
    shaping.validate()?;
    let a = grpo_advantages(rewards, adv)?;
    let w = match shaping.ppl {
        Some(_) => Some(ppl_weight(&log_ppl(old_logp, mask, seq_len)?, adv.group_size)?),
        None => None,
    };
    shape_advantages(&a, mask, seq_len, w.as_deref(), shaping)
}

/// Aggregation weights a_t such that loss = Σ_t a_t·ℓ_t (DESIGN.md §4); 0 for masked tokens,
/// all 0 for an empty batch.
pub fn aggregation_weights(mask: &[f32], seq_len: usize, agg: &Aggregation) -> Result<Vec<f64>> {
    agg.validate()?;
    validate::sequences(mask.len(), seq_len)?;
    validate::mask(mask, mask.len())?;
    let lens: Vec<f64> = mask.chunks(seq_len).map(|s| s.iter().map(|&m| m as f64).sum()).collect();
    let total: f64 = lens.iter().sum();
    let valid = lens.iter().filter(|&&l| l > 0.0).count() as f64;
    let mut w = vec![0.0; mask.len()];
    for (i, &len) in lens.iter().enumerate() {
        for k in i * seq_len..(i + 1) * seq_len {
            if mask[k] == 0.0 {
                continue;
            }
            w[k] = match *agg {
                Aggregation::TokenMean { global_tokens: Some(g) } => 1.0 / g,
                Aggregation::TokenMean { global_tokens: None } => 1.0 / total,
                Aggregation::SeqMeanTokenMean => 1.0 / (len * valid),
                Aggregation::SeqMeanTokenSum => 1.0 / valid,
                Aggregation::SeqMeanTokenSumNorm { norm } => 1.0 / norm,
            };
        }
    }
    Ok(w)
}
