//! Token statistics of 16-bit (bf16, f16) rows from a histogram of their bit patterns.
//!
//! A 16-bit logit takes one of at most 65536 values, and a real row uses a few thousand of them
//! (128 per binade for bf16). So the one read of the row only counts how often each bit pattern
//! occurs — one scalar increment per token, no `exp` — and everything else is computed once per
//! **distinct value**, in descending order of value, from (value, count) pairs:
//! S = Σ c_v·e_v and W = Σ c_v·d_v·e_v with d_v = (v − m)/T, e_v = e^{d_v} (f32, as the
//! per-token path computes each term; c_v·e_v is exact in f64 and the sums run in f64), the
//! max m (the largest value present), NaN/+inf (their counts), and the **exact top-p count**
//! by the tie rule of DESIGN.md §4 with no selection at all: walking down the values, the
//! first v at which the cumulative mass reaches p·S is τ, its count the number of ties.
//!
//! The order-preserving key of DESIGN.md §5 is the bit pattern itself, read in value order:
//! positive patterns descending, then ±0 (two patterns, one value), then negative patterns
//! ascending. Histogram: 65536 u32 per thread (256 KiB, in L2), cleared entry by entry after
//! each row (only the patterns the row used).

use crate::config::SamplingFilter;
use crate::cpu::kept::{self, KeptOut, KeptPath};
use crate::cpu::math::{self, EXP_LO};
use crate::cpu::token_stats::{RowOut, RowProblem};
use crate::element::{DType, Element};

/// Number of 16-bit patterns.
const PATTERNS: usize = 1 << 16;
/// Keys scanned at once when looking for used patterns (runs of unused ones are skipped).
const CHUNK: usize = 16;

/// Per-thread scratch of the 16-bit statistics.
#[derive(Debug, Default)]
pub(crate) struct Hist16 {
    /// Count of each bit pattern (all zero between rows).
    counts: Vec<u32>,
    /// The row's distinct values in descending order: pattern, value, count, e_v, d_v.
    keys: Vec<u16>,
    values: Vec<f32>,
    mult: Vec<u32>,
    e: Vec<f32>,
    d: Vec<f32>,
}

/// +inf and the lowest NaN pattern above it; −inf and the patterns of negative NaNs above it.
fn special_patterns(dtype: DType) -> (usize, usize) {
    match dtype {
        DType::BF16 => (0x7F80, 0xFF80),
        _ => (0x7C00, 0xFC00),
    }
}

/// The logit whose bit pattern is `k`.
#[inline(always)]
fn value<E: Element>(k: u16) -> f32 {
    bytemuck::pod_read_unaligned::<E>(&k.to_ne_bytes()).to_f32()
}

/// Highest index in `lo..hi` with a nonzero count, skipping [`CHUNK`] zeros at a time.
#[inline(always)]
fn highest_used(counts: &[u32], lo: usize, hi: usize) -> Option<usize> {
    let mut end = hi;
    while end > lo {
        let start = end.saturating_sub(CHUNK).max(lo);
        if counts[start..end].iter().fold(0, |a, &c| a | c) != 0 {
            return (start..end).rev().find(|&k| counts[k] != 0);
        }
        end = start;
    }
    None
}

impl Hist16 {
    /// Appends the used patterns of `lo..=hi` (ascending when `up`, else descending) to the
    /// distinct-value lists `keys[..n]`, `mult[..n]`: branch-free within a chunk that has any.
    #[inline(always)]
    fn collect(&mut self, lo: usize, hi: usize, up: bool, n: &mut usize) {
        let n_chunks = (hi + 1 - lo).div_ceil(CHUNK);
        for i in 0..n_chunks {
            let (a, b) = if up {
                (lo + i * CHUNK, (lo + (i + 1) * CHUNK).min(hi + 1))
            } else {
                ((hi + 1).saturating_sub((i + 1) * CHUNK).max(lo), hi + 1 - i * CHUNK)
            };
            if self.counts[a..b].iter().fold(0, |x, &c| x | c) == 0 {
                continue;
            }
            let mut put = |k: usize| {
                let c = self.counts[k];
                self.keys[*n] = k as u16;
                self.mult[*n] = c;
                *n += usize::from(c != 0);
            };
            if up {
                (a..b).for_each(&mut put);
            } else {
                (a..b).rev().for_each(&mut put);
            }
        }
    }

    /// Clears the counts the row used (all of them after a row with NaN/+inf).
    fn clear(&mut self, all: bool, n: usize) {
        if all {
            self.counts.fill(0);
        } else {
            for &k in &self.keys[..n] {
                self.counts[k as usize] = 0;
            }
            // ±0 share one list entry (filed under +0's pattern).
            self.counts[0x8000] = 0;
        }
    }
}

/// The statistics of one bf16/f16 row (see the module doc); the top-p count when `top_p` is set,
/// the statistics over the kept set of `filter` when set (see [`kept_stats`]).
/// Same results as the per-token path up to rounding (S and W are more accurate here: one f32
/// rounding per distinct value instead of per token, f64 sums).
#[inline(always)]
pub(crate) fn row_stats<E: Element, const AVX2: bool>(
    z: &[E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    filter: Option<SamplingFilter>,
    h: &mut Hist16,
) -> RowOut {
    debug_assert!(E::DTYPE != DType::F32);
    if h.counts.len() != PATTERNS {
        h.counts = vec![0; PATTERNS];
        // Room for every pattern plus one chunk of branch-free writes past the last used one.
        for v in [&mut h.e, &mut h.d, &mut h.values] {
            v.resize(PATTERNS + CHUNK, 0.0);
        }
        h.keys.resize(PATTERNS + CHUNK, 0);
        h.mult.resize(PATTERNS + CHUNK, 0);
    }
    // The one read of the row: count each bit pattern.
    let bits: &[u16] = bytemuck::cast_slice(z);
    let counts: &mut [u32; PATTERNS] = (&mut h.counts[..]).try_into().expect("65536 counts");
    for &b in bits {
        counts[b as usize] += 1;
    }
    let nan =
        RowOut { lse: f32::NAN, entropy: f32::NAN, logp: f32::NAN, branch: 0, problem: RowProblem::None, kept: None };
    let (pos_inf, neg_inf) = special_patterns(E::DTYPE);
    let bad = counts[pos_inf..0x8000].iter().chain(&counts[neg_inf + 1..]).fold(0, |a, &c| a | c) != 0;
    if bad {
        h.clear(true, 0);
        return RowOut { problem: RowProblem::NonFinite, ..nan };
    }
    // Distinct values, descending: positive patterns down to +0 (with −0's count), then the
    // negative ones up to −inf.
    let mut n = 0;
    if let Some(top) = highest_used(&h.counts, 1, pos_inf) {
        h.collect(1, top, false, &mut n);
    }
    let zeros = h.counts[0] + h.counts[0x8000];
    h.keys[n] = 0;
    h.mult[n] = zeros;
    n += usize::from(zeros != 0);
    if let Some(bottom) = highest_used(&h.counts, 0x8001, neg_inf + 1) {
        h.collect(0x8001, bottom, true, &mut n);
    }
    for (v, &k) in h.values[..n].iter_mut().zip(&h.keys[..n]) {
        *v = value::<E>(k);
    }
    let m = h.values[0];
    if m == f32::NEG_INFINITY {
        h.clear(false, n);
        return RowOut { problem: RowProblem::AllNegInf, ..nan };
    }
    // e_v and d_v of each distinct value (vectorised), then the f64 sums in value order.
    let (values, e, d, mult) = (&h.values[..n], &mut h.e[..n], &mut h.d[..n], &h.mult[..n]);
    for ((e, d), &v) in e.iter_mut().zip(d.iter_mut()).zip(values) {
        let x = (v - m) * inv_t;
        *d = if x > EXP_LO { x } else { EXP_LO };
        *e = math::exp::<AVX2>(x);
    }
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for ((&c, &e), &d) in mult.iter().zip(e.iter()).zip(d.iter()) {
        let ce = c as f64 * e as f64;
        s += ce;
        w += ce * d as f64;
    }
    let ln_s = s.ln();
    let lse = m as f64 * inv_t as f64 + ln_s;
    let entropy = ln_s - w / s;
    let logp = target.map_or(f64::NAN, |y| ((z[y as usize].to_f32() - m) * inv_t) as f64 - ln_s);
    let branch = top_p.map_or(0, |p| branch_count(mult, e, p as f64 * s));
    let kept = filter.map(|f| {
        let zy = target.map(|y| z[y as usize].to_f32());
        kept_stats(values, mult, e, d, m, inv_t, s, w, f, zy, logp as f32)
    });
    h.clear(false, n);
    RowOut { lse: lse as f32, entropy: entropy as f32, logp: logp as f32, branch, problem: RowProblem::None, kept }
}

/// The tie rule of DESIGN.md §4 over distinct values in descending order (`mult[i]` tokens of
/// probability ∝ `e[i]`): the first value τ at which the cumulative mass reaches `need`, then
/// k = #{e > τ} + ceil((need − M_{>τ})/τ), capped by the ties at τ. If rounding leaves the total
/// short of `need`, every token of nonzero mass counts.
fn branch_count(mult: &[u32], e: &[f32], need: f64) -> u32 {
    let (mut count, mut mass) = (0u64, 0.0f64);
    for (&c, &tau) in mult.iter().zip(e) {
        if tau <= 0.0 {
            break;
        }
        let m = c as f64 * tau as f64;
        if mass + m >= need {
            let ties = ((need - mass) / tau as f64).ceil().max(1.0) as u64;
            return (count + ties.min(c as u64)) as u32;
        }
        count += c as u64;
        mass += m;
    }
    count as u32
}

/// The statistics over the kept set of `f` from the distinct values (descending `values`, each
/// held by `mult` tokens, with the pass's e_v and d_v; max `m`, S = `s`, W = `w`): K is every
/// value ≥ the crossing value v_τ (all its ties). Top-k: values from the top until their counts
/// reach k. Top-p: values from the top (within the top-k values) until Σ c_v·e_v reaches p·(their
/// mass, or S). Then Σ_K e, Σ_K d·e and |K| are prefix sums of the same f64 terms as S and W, and
/// the target is inside when z_y ≥ v_τ. No read of the row. `zy` is the target's logit,
/// `logp_full` its unfiltered log-prob.
#[allow(clippy::too_many_arguments)]
fn kept_stats(
    values: &[f32],
    mult: &[u32],
    e: &[f32],
    d: &[f32],
    m: f32,
    inv_t: f32,
    s: f64,
    w: f64,
    f: SamplingFilter,
    zy: Option<f32>,
    logp_full: f32,
) -> KeptOut {
    // The finite values (a −inf value, if any, is the last).
    let finite = values.len() - usize::from(values[values.len() - 1] == f32::NEG_INFINITY);
    let tokens: u64 = mult[..finite].iter().map(|&c| c as u64).sum();
    let target = |thr: f32| zy.map(|v| (v, v >= thr && v > f32::NEG_INFINITY));
    let Some(f) = kept::effective(f, tokens as usize) else {
        // Every finite token: K's sums are S and W themselves.
        let thr = values[finite - 1];
        return kept::finish(m, inv_t, s, w, tokens as u32, thr, target(thr), logp_full, KeptPath::Hist);
    };
    // The last value index of the top-k step (all of its ties).
    let mut last = finite - 1;
    if let Some(k) = f.top_k {
        let mut cum = 0u64;
        for (i, &c) in mult[..finite].iter().enumerate() {
            cum += c as u64;
            if cum >= k as u64 {
                last = i;
                break;
            }
        }
    }
    let term = |i: usize| mult[i] as f64 * e[i] as f64;
    if let Some(p) = f.top_p {
        let total = if f.top_k.is_some() { (0..=last).map(term).sum::<f64>() } else { s };
        let goal = p as f64 * total;
        let mut cum = 0.0;
        for i in 0..=last {
            cum += term(i);
            if cum >= goal {
                last = i;
                break;
            }
        }
    }
    let (mut sk, mut wk, mut count) = (0.0f64, 0.0f64, 0u64);
    for i in 0..=last {
        let ce = term(i);
        sk += ce;
        wk += ce * d[i] as f64;
        count += mult[i] as u64;
    }
    let thr = values[last];
    kept::finish(m, inv_t, sk, wk, count as u32, thr, target(thr), logp_full, KeptPath::Hist)
}
