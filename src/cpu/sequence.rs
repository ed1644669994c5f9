//! The O(N) sequence side in f32 (sums in f64): log-PPL, PPL weight, GRPO advantages,
//! shapings, aggregation weights. Same formulas, validation and errors as [`crate::reference`].
//!
//! Work and precision:
//! - Per-token work (the log-PPL sums, the position bonus, writing Ã) is one pass over each
//!   sequence's tokens, sequences (or whole GRPO groups) in parallel; the sigmoid is f32.
//! - Per-sequence scalars (log-PPL, group mean/std, PPL weight, PPL factor) are O(B) and stay in
//!   f64 inside [`token_advantages`]. The IQR filter is a discontinuous decision, so it is taken
//!   on the same f64 log-PPL values, in the same summation order, as the reference: the fast
//!   pipeline keeps exactly the sequences the reference keeps.
//! - Quartiles come from two selections (`select_nth_unstable`), O(G) per group, not a sort.
//! - Allocations: the outputs, plus one scratch of G values per worker thread.

use rayon::prelude::*;

use crate::config::{AdvantageConfig, Aggregation, PositionShaping, PplShaping, Shaping};
use crate::error::{Error, Result};
use crate::validate;

/// GRPO's ε in A = (r − mean)/(std + ε).
const STD_EPS: f64 = 1e-6;
/// A group's log-PPL σ at or below this is replaced by 1 (the values are all but equal).
const SIGMA_FLOOR: f64 = 1e-6;
/// Tukey's fence: keep values within 1.5·IQR of the quartiles.
const IQR_FENCE: f64 = 1.5;
/// One rayon task covers at least this many tokens: the per-token work is a few flops, so
/// smaller tasks would cost more in scheduling than they save.
const MIN_TOKENS_PER_TASK: usize = 1 << 14;

fn items_per_task(tokens_per_item: usize) -> usize {
    (MIN_TOKENS_PER_TASK / tokens_per_item.max(1)).max(1)
}

/// Sequence log-perplexity over the `[B, T]` view (T = `seq_len`):
/// log PPL_i = −Σ_t m_t ℓ_t / Σ_t m_t, `None` when Σ_t m_t = 0 (no response tokens).
///
/// `logp` is the rollout policy's log-prob of each sampled token (`old_logp`). Sums are f64;
/// the result is rounded to f32 once. Errors: `seq_len` 0 or not dividing N, a mask value other
/// than 0/1, a non-finite log-prob.
pub fn log_ppl(logp: &[f32], mask: &[f32], seq_len: usize) -> Result<Vec<Option<f32>>> {
    validate::sequences(logp.len(), seq_len)?;
    validate::mask(mask, logp.len())?;
    validate::finite("old_logp", logp)?;
    Ok(logp
        .par_chunks(seq_len)
        .zip(mask.par_chunks(seq_len))
        .with_min_len(items_per_task(seq_len))
        .map(|(l, m)| seq_log_ppl(l, m).map(|v| v as f32))
        .collect())
}

/// −Σ m ℓ / Σ m of one sequence in f64, summed in token order (the reference's order, so the
/// value is the reference's to the last bit).
fn seq_log_ppl(logp: &[f32], mask: &[f32]) -> Option<f64> {
    let (mut count, mut sum) = (0.0f64, 0.0f64);
    for (&l, &m) in logp.iter().zip(mask) {
        count += m as f64;
        sum += l as f64 * m as f64;
    }
    (count > 0.0).then(|| -sum / count)
}

/// PPL weight: the z-score of the log-PPL inside each group of `group_size` consecutive
/// sequences, after an IQR outlier filter (DESIGN.md §4).
///
/// For the n valid values of a group: Q1, Q3 = 25%/75% quantiles with linear interpolation at
/// position (n − 1)·q; keep values in [Q1 − 1.5·IQR, Q3 + 1.5·IQR] (all of them if none is kept);
/// μ = mean, σ = population std of the kept values (σ := 1 if σ ≤ 1e-6);
/// w_i = (log PPL_i − μ)/σ for every valid sequence of the group, w_i = 0 for a sequence without
/// log-PPL (and so for every sequence of a group without any). Statistics are f64.
///
/// Errors: `group_size` 0, or not dividing the number of sequences.
pub fn ppl_weight(log_ppl: &[Option<f32>], group_size: usize) -> Result<Vec<f32>> {
    validate::groups(log_ppl.len(), group_size)?;
    let mut w = vec![0.0f32; log_ppl.len()];
    let mut scratch = Vec::with_capacity(group_size);
    for (ws, group) in w.chunks_mut(group_size).zip(log_ppl.chunks(group_size)) {
        let widened = |j: usize| group[j].map(f64::from);
        if let Some(stats) = GroupStats::of(group.len(), widened, &mut scratch) {
            for (wj, lp) in ws.iter_mut().zip(group) {
                *wj = lp.map_or(0.0, |v| stats.z(v as f64) as f32);
            }
        }
    }
    Ok(w)
}

/// μ and σ of a group's IQR-filtered valid log-PPL values.
#[derive(Debug, Clone, Copy)]
struct GroupStats {
    mu: f64,
    sigma: f64,
}

impl GroupStats {
    /// Statistics of the valid values among `value(0..n)`; `None` when there are none.
    /// `scratch` is reused between groups so the whole batch allocates it once.
    fn of(n: usize, value: impl Fn(usize) -> Option<f64>, scratch: &mut Vec<f64>) -> Option<Self> {
        scratch.clear();
        scratch.extend((0..n).filter_map(value));
        if scratch.is_empty() {
            return None;
        }
        let (q1, q3) = quartiles(scratch);
        let iqr = q3 - q1;
        let (lo, hi) = (q1 - IQR_FENCE * iqr, q3 + IQR_FENCE * iqr);
        let (mut kept, mut sum) = (0usize, 0.0f64);
        for &v in scratch.iter() {
            if v >= lo && v <= hi {
                kept += 1;
                sum += v;
            }
        }
        // Fallback of the authors' code; unreachable for finite values (Q1..Q3 holds a value).
        let keep_all = kept == 0;
        if keep_all {
            kept = scratch.len();
            sum = scratch.iter().sum();
        }
        let mu = sum / kept as f64;
        let ss: f64 = scratch.iter().filter(|&&v| keep_all || (v >= lo && v <= hi)).map(|&v| (v - mu) * (v - mu)).sum();
        let sd = (ss / kept as f64).sqrt();
        Some(GroupStats { mu, sigma: if sd <= SIGMA_FLOOR { 1.0 } else { sd } })
    }

    /// w = (v − μ)/σ.
    fn z(&self, v: f64) -> f64 {
        (v - self.mu) / self.sigma
    }
}

/// Q1 and Q3 (linear interpolation at (n − 1)·q, the numpy/torch default) of n ≥ 1 values,
/// reordering them. Two selections find the order statistics at ⌊pos⌋; the one at ⌈pos⌉ is the
/// minimum of the part above — O(n) instead of a sort.
fn quartiles(v: &mut [f64]) -> (f64, f64) {
    let last = (v.len() - 1) as f64;
    let (pos1, pos3) = (last * 0.25, last * 0.75);
    let (lo1, lo3) = (pos1.floor() as usize, pos3.floor() as usize);
    let (below3, at3, above3) = v.select_nth_unstable_by(lo3, f64::total_cmp);
    let at3 = *at3;
    let next3 = if pos3.ceil() as usize == lo3 { at3 } else { min_or(above3, at3) };
    let (at1, next1) = if lo1 == lo3 {
        (at3, next3)
    } else {
        let (_, at1, above1) = below3.select_nth_unstable_by(lo1, f64::total_cmp);
        let at1 = *at1;
        // ⌈pos1⌉ ≤ lo3, so the next statistic is in `above1` or is v[lo3] itself.
        (at1, if pos1.ceil() as usize == lo1 { at1 } else { min_or(above1, at3) })
    };
    (interpolate(at1, next1, pos1, lo1), interpolate(at3, next3, pos3, lo3))
}

fn min_or(v: &[f64], default: f64) -> f64 {
    v.iter().copied().min_by(f64::total_cmp).unwrap_or(default)
}

/// sorted[lo] + (sorted[hi] − sorted[lo])·(pos − lo): the reference's expression, term for term,
/// so the fence (and hence which values are kept) is the reference's to the last bit.
fn interpolate(at: f64, next: f64, pos: f64, lo: usize) -> f64 {
    at + (next - at) * (pos - lo as f64)
}

/// GRPO advantages per sequence: A_i = (r_i − mean_g r)/(std_g r + 1e-6) with the unbiased std
/// over each group of G consecutive sequences; with `scale_by_std = false` (Dr. GRPO)
/// A_i = r_i − mean_g r.
///
/// G = 1 is valid and gives A = 0 for every sequence (a group of one has nothing to compare
/// against; its std is taken as 0). Group statistics are f64. Errors: G = 0, G not dividing B,
/// a non-finite reward.
pub fn grpo_advantages(rewards: &[f32], cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    validate::groups(rewards.len(), cfg.group_size)?;
    validate::finite("rewards", rewards)?;
    let mut a = vec![0.0f32; rewards.len()];
    for (out, group) in a.chunks_mut(cfg.group_size).zip(rewards.chunks(cfg.group_size)) {
        group_advantages(group, cfg.scale_by_std, out);
    }
    Ok(a)
}

/// One group's advantages (two passes over its G rewards: mean, then the centred sum of
/// squares, which is exact where a one-pass formula cancels).
fn group_advantages(rewards: &[f32], scale_by_std: bool, out: &mut [f32]) {
    let n = rewards.len() as f64;
    let mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
    let std = if rewards.len() > 1 {
        (rewards.iter().map(|&r| (r as f64 - mean) * (r as f64 - mean)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    for (a, &r) in out.iter_mut().zip(rewards) {
        let d = r as f64 - mean;
        *a = if scale_by_std { d / (std + STD_EPS) } else { d } as f32;
    }
}

/// Per-token shaped advantages Ã (B·T values) from per-sequence advantages `adv` (B values) over the
/// `[B, T]` mask (DESIGN.md §4):
/// - position shaping, for the t-th counted token (t = 1..|o_i|, r = (t − 1)/|o_i|):
///   b = min(β·σ(κ·(r − ½)), ½·|A_i|), Ã = A_i + sign(A_i)·b; A = 0 gets no bonus;
/// - PPL shaping (needs `ppl_weight` w, B values): Ã ← Ã · clip(1 − α·w_i, lo, hi);
/// - both: position first (its cap uses the unshaped |A_i|), then the PPL factor.
///
/// Masked tokens carry A_i (times the PPL factor when PPL shaping is on). The bonus and the
/// sigmoid σ(x) = 1/(1 + e^{−x}) are f32; the PPL factor is computed in f64 and rounded once.
///
/// Errors: invalid shaping coefficients, bad `seq_len` or mask, `adv` or `ppl_weight` not of
/// length B, PPL shaping on without `ppl_weight`.
pub fn shape_advantages(
    adv: &[f32],
    mask: &[f32],
    seq_len: usize,
    ppl_weight: Option<&[f32]>,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    shaping.validate()?;
    let b = validate::sequences(mask.len(), seq_len)?;
    validate::len("advantages", adv.len(), b, "one per sequence")?;
    let weights = match (shaping.ppl, ppl_weight) {
        (Some(_), Some(w)) => {
            validate::len("ppl_weight", w.len(), b, "one per sequence")?;
            Some(w)
        }
        (Some(_), None) => {
            return Err(Error::ShapeMismatch {
                name: "ppl_weight",
                expected: format!("{b} elements (PPL shaping is on)"),
                got: "none".into(),
            })
        }
        (None, _) => None,
    };
    validate::mask(mask, mask.len())?; // lengths first, as the reference (and the device) check them
    let mut out = vec![0.0f32; mask.len()];
    out.par_chunks_mut(seq_len)
        .zip(mask.par_chunks(seq_len))
        .with_min_len(items_per_task(seq_len))
        .enumerate()
        .for_each(|(i, (o, m))| {
            let factor = match (shaping.ppl, weights) {
                (Some(p), Some(w)) => ppl_factor(w[i] as f64, &p),
                _ => 1.0,
            };
            shape_sequence(adv[i], factor, m, shaping.position.as_ref(), o);
        });
    Ok(out)
}

/// The PPL factor clip(1 − α·w, lo, hi), in f64, rounded once.
fn ppl_factor(w: f64, p: &PplShaping) -> f32 {
    (1.0 - p.alpha as f64 * w).clamp(p.lo as f64, p.hi as f64) as f32
}

/// Writes one sequence's Ã = (A + sign(A)·b_t)·factor for counted tokens, A·factor for the rest.
/// Two light passes over the mask: |o| first (the bonus needs r = (t − 1)/|o|), then the tokens.
fn shape_sequence(a: f32, factor: f32, mask: &[f32], position: Option<&PositionShaping>, out: &mut [f32]) {
    let plain = a * factor;
    let p = match position {
        Some(p) if a != 0.0 => p,
        _ => return out.fill(plain),
    };
    let len = mask.iter().filter(|&&m| m != 0.0).count();
    // κ·(r − ½) = κ·(2(t − 1) − |o|)/(2|o|): the numerator is an exact integer, so the argument
    // carries two roundings, and σ's error stays below 4 ulp of β whatever κ is.
    let scale = p.kappa / (2 * len) as f32;
    let (cap, sign) = (0.5 * a.abs(), a.signum());
    let mut numerator = -(len as f32);
    for (o, &m) in out.iter_mut().zip(mask) {
        if m == 0.0 {
            *o = plain;
            continue;
        }
        let bonus = (p.beta * sigmoid(scale * numerator)).min(cap);
        *o = (a + sign * bonus) * factor;
        numerator += 2.0;
    }
}

/// σ(x) = 1/(1 + e^{−x}) in f32; saturates cleanly (e^{−x} = ∞ gives 0, e^{−x} = 0 gives 1).
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The whole advantage pipeline of DESIGN.md §4, fused per GRPO group: log-PPL of `old_logp`
/// → PPL weight (when PPL shaping is on) → GRPO advantages of `rewards` (B values) → shaped
/// per-token advantages Ã (B·T values); see [`log_ppl`], [`ppl_weight`], [`grpo_advantages`],
/// [`shape_advantages`] for each formula.
///
/// Each group is one task: its G·T tokens are read once for the log-PPL and once for writing
/// Ã; the per-sequence scalars stay in f64 (see the module doc). Inputs are checked in the
/// reference's order, so a bad input gets the reference's error. `old_logp` is only read (and
/// only checked for finiteness) when PPL shaping is on.
pub fn token_advantages(
    rewards: &[f32],
    old_logp: &[f32],
    mask: &[f32],
    seq_len: usize,
    adv: &AdvantageConfig,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    let b = validate::sequences(mask.len(), seq_len)?;
    validate::len("rewards", rewards.len(), b, "one per sequence")?;
    validate::len("old_logp", old_logp.len(), mask.len(), "one per token")?;
    validate::groups(b, adv.group_size)?;
    shaping.validate()?;
    // Values in the reference's order: rewards, then (PPL shaping) the log-PPL's mask and old_logp.
    validate::finite("rewards", rewards)?;
    validate::mask(mask, mask.len())?;
    if shaping.ppl.is_some() {
        validate::finite("old_logp", old_logp)?;
    }
    let g = adv.group_size;
    let group_tokens = g * seq_len;
    let mut out = vec![0.0f32; mask.len()];
    out.par_chunks_mut(group_tokens)
        .zip(rewards.par_chunks(g))
        .zip(old_logp.par_chunks(group_tokens))
        .zip(mask.par_chunks(group_tokens))
        .with_min_len(items_per_task(group_tokens))
        .for_each_init(
            || GroupScratch::new(g),
            |s, (((o, r), l), m)| {
                let pipeline = Pipeline { seq_len, scale_by_std: adv.scale_by_std, shaping };
                pipeline.group(r, l, m, s, o)
            },
        );
    Ok(out)
}

/// Per-worker buffers of one group's G sequences.
struct GroupScratch {
    adv: Vec<f32>,
    log_ppl: Vec<Option<f64>>,
    valid: Vec<f64>,
}

impl GroupScratch {
    fn new(g: usize) -> Self {
        Self { adv: vec![0.0; g], log_ppl: vec![None; g], valid: Vec::with_capacity(g) }
    }
}

/// The settings [`token_advantages`] applies to every group.
struct Pipeline<'a> {
    seq_len: usize,
    scale_by_std: bool,
    shaping: &'a Shaping,
}

impl Pipeline<'_> {
    /// [`token_advantages`] for one group (inputs already checked).
    fn group(&self, rewards: &[f32], logp: &[f32], mask: &[f32], s: &mut GroupScratch, out: &mut [f32]) {
        let (seq_len, shaping) = (self.seq_len, self.shaping);
        group_advantages(rewards, self.scale_by_std, &mut s.adv);
        let stats = shaping.ppl.and_then(|_| {
            for (lp, (l, m)) in s.log_ppl.iter_mut().zip(logp.chunks(seq_len).zip(mask.chunks(seq_len))) {
                *lp = seq_log_ppl(l, m);
            }
            let log_ppl = &s.log_ppl;
            GroupStats::of(log_ppl.len(), |j| log_ppl[j], &mut s.valid)
        });
        for (j, (o, m)) in out.chunks_mut(seq_len).zip(mask.chunks(seq_len)).enumerate() {
            let factor = match shaping.ppl {
                // A sequence without log-PPL (or a group without any) has w = 0.
                Some(p) => ppl_factor(stats.zip(s.log_ppl[j]).map_or(0.0, |(st, v)| st.z(v)), &p),
                None => 1.0,
            };
            shape_sequence(s.adv[j], factor, m, shaping.position.as_ref(), o);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    /// The selection-based quartiles equal the reference's sort-based quantiles bit for bit, for
    /// every n up to 40 and values with many ties.
    #[test]
    fn quartiles_match_sorted_quantiles() {
        let mut rng = reference::SplitMix64(7);
        for n in 1..=40 {
            for _ in 0..200 {
                let mut v: Vec<f64> = (0..n).map(|_| (rng.below(9) as f64 - 4.0) * 0.37).collect();
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let want = (reference::quantile(&sorted, 0.25), reference::quantile(&sorted, 0.75));
                assert_eq!(quartiles(&mut v), want, "n = {n}, values {sorted:?}");
            }
        }
    }
}
