//! The sampler's kept set K of one row and the statistics over it (DESIGN.md §4, "Sampling
//! filter and replay"): lse_K, H̃, ℓ̃, |K| and whether the target is outside K.
//!
//! K is recomputed from a [`SamplingFilter`] (top-k, top-p, top-k then top-p; ties at the
//! crossing all kept) or given as the engine's kept ids. A recomputed K is `{i : z_i ≥ z_τ}` for
//! the smallest kept logit z_τ (the `threshold`, which the backward uses again).
//!
//! This is the plain version: after the statistics pass it reads the row again (from cache
//! for rows that fit) to select the crossing and sum over K, in f64.

use crate::config::SamplingFilter;
use crate::element::Element;

/// How a row's K is defined.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowKept<'a> {
    /// Recomputed from the logits.
    Filter(SamplingFilter),
    /// The engine's kept ids (validated: in range, distinct, non-empty).
    Ids(&'a [u32]),
}

/// The statistics of one row over its K, in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KeptOut {
    /// lse_K = ln Σ_K e^{x_i}.
    pub lse: f32,
    /// H̃.
    pub entropy: f32,
    /// ℓ̃ (ℓ when the target is outside K; NaN without a target).
    pub logp: f32,
    /// |K|.
    pub count: u32,
    /// The target is outside K.
    pub outside: bool,
    /// The smallest kept logit z_τ of a recomputed K (NaN for given ids).
    pub threshold: f32,
}

/// K's statistics for a finite row `z` whose unfiltered log-prob of the target is `logp_full`
/// (from the statistics pass). `buf` is scratch.
pub(crate) fn row_kept<E: Element>(
    z: &[E],
    inv_t: f32,
    logp_full: f32,
    target: Option<u32>,
    how: RowKept,
    buf: &mut Vec<f32>,
) -> KeptOut {
    let zmax = z.iter().map(|v| v.to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let (threshold, ids) = match how {
        RowKept::Ids(ids) => (f32::NAN, Some(ids)),
        RowKept::Filter(f) => (threshold(z, inv_t, zmax, &f, buf), None),
    };
    // m = the max of K (the row max for a recomputed K, which always keeps the top token).
    let m = match ids {
        Some(ids) => ids.iter().map(|&i| z[i as usize].to_f32()).fold(f32::NEG_INFINITY, f32::max),
        None => zmax,
    };
    let x = |v: f32| ((v - m) * inv_t) as f64;
    // Σ_K e^{x − m} and Σ_K (x − m)·e^{x − m}.
    let (mut s, mut w, mut count) = (0.0f64, 0.0f64, 0u32);
    let mut add = |v: f32| {
        let e = x(v).exp();
        s += e;
        if e > 0.0 {
            w += x(v) * e;
        }
        count += 1;
    };
    match ids {
        Some(ids) => ids.iter().for_each(|&i| add(z[i as usize].to_f32())),
        None => z.iter().map(|v| v.to_f32()).filter(|&v| v >= threshold).for_each(add),
    }
    let ln_s = s.ln();
    let lse = m as f64 * inv_t as f64 + ln_s;
    let inside = |y: u32| match ids {
        Some(ids) => ids.contains(&y),
        None => z[y as usize].to_f32() >= threshold,
    };
    let (logp, outside) = match target {
        None => (f32::NAN, false),
        Some(y) if inside(y) => ((((z[y as usize].to_f32() - m) * inv_t) as f64 - ln_s) as f32, false),
        Some(_) => (logp_full, true),
    };
    KeptOut { lse: lse as f32, entropy: (ln_s - w / s) as f32, logp, count, outside, threshold }
}

/// The smallest kept logit of `filter` on row `z` (max `zmax`): top-k's k-th largest finite
/// logit, then top-p's crossing among the tokens at or above it, masses in f64 relative to the
/// row max. Ties are all kept because K is `{z ≥ threshold}`.
fn threshold<E: Element>(z: &[E], inv_t: f32, zmax: f32, f: &SamplingFilter, buf: &mut Vec<f32>) -> f32 {
    let e = |v: f32| (((v - zmax) * inv_t) as f64).exp();
    buf.clear();
    buf.extend(z.iter().map(|v| v.to_f32()).filter(|&v| v > f32::NEG_INFINITY));
    let mut thr = f32::NEG_INFINITY;
    if let Some(k) = f.top_k {
        let k = (k as usize).clamp(1, buf.len());
        let (_, kth, _) = buf.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        thr = *kth;
    }
    let Some(p) = f.top_p else { return thr };
    buf.retain(|&v| v >= thr);
    let (mass, n) = (buf.iter().map(|&v| e(v)).sum::<f64>(), buf.len());
    // Tokens below (1 − p)·mass/n together hold < (1 − p)·mass: never needed to reach p·mass.
    let cut = (1.0 - p as f64) * mass / n as f64;
    let smallest = buf.iter().copied().fold(f32::INFINITY, f32::min);
    buf.retain(|&v| e(v) >= cut);
    buf.sort_unstable_by(|a, b| b.total_cmp(a));
    let goal = p as f64 * mass;
    let mut cum = 0.0;
    for &v in buf.iter() {
        cum += e(v);
        if cum >= goal {
            return v;
        }
    }
    smallest
}
