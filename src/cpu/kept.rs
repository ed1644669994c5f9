//! The sampler's kept set K of one row and the statistics over it (DESIGN.md §4, "Sampling
//! filter and replay"): lse_K, H̃, ℓ̃, |K| and whether the target is outside K.
//!
//! K is recomputed from a [`SamplingFilter`] (top-k, top-p, top-k then top-p; ties at the
//! crossing all kept) or given as the engine's kept ids. A recomputed K is `{i : z_i ≥ z_τ}` for
//! the smallest kept logit z_τ (the `threshold`, which the backward uses again).
//!
//! Nothing here reads the whole row a second time in the common cases; the statistics pass
//! leaves what K needs:
//!
//! - **Given ids**: a gather over the ids (their max, Σ_K e, Σ_K (x − m)e), no selection.
//! - **bf16/f16 rows**: the bit-pattern histogram of [`crate::cpu::hist16`] (K is every distinct
//!   value ≥ the crossing value; its sums are prefix sums of the per-value terms).
//! - **f32 rows** ([`from_blocks`]): the pass records each block's max. A lower bound t on z_τ
//!   comes from the maxima alone — top-k: the k-th largest block max (k blocks each hold a
//!   token ≥ it, so the k-th largest token is ≥ it); top-p alone: the head step of
//!   [`crate::cpu::top_p`] (the blocks' maxima, by descending value, until their e sum to p·S:
//!   the tokens ≥ that max hold ≥ p·S, so the crossing is ≥ it). Only blocks whose max is ≥ t
//!   can hold a token of K: those few blocks (still in cache) are compacted to the candidates
//!   ≥ t, and K is selected and summed over the candidates ([`from_candidates`], f64).
//! - **Other f32 rows, top-p alone** (the head would be most of the row): the top-p count
//!   finds the crossing exactly among its candidates ([`crate::cpu::top_p`]): on flat rows
//!   bottom mode's (every logit below its estimate of the crossing, gathered during the pass;
//!   K's sums are S and W of the pass minus the complement's), else those of its head or
//!   fallback step (a superset of K: K's sums are theirs) ([`from_split`]).
//! - **Fallback** (rare: top-p alone with a different top-p count on a row whose head is more
//!   than [`MAX_BLOCKS`] blocks, or a top-k larger than the row's blocks whose blocks are more
//!   than a quarter of the row): [`plain`], a second read of the row.
//!
//! Top-p = 1 keeps every finite token (and top-k ≥ V every finite token): then K's sums are the
//! row's own S and W.

use crate::config::SamplingFilter;
use crate::cpu::math::{self, BLOCK};
use crate::element::Element;

/// How a row's K is defined.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowKept<'a> {
    /// Recomputed from the logits.
    Filter(SamplingFilter),
    /// The engine's kept ids (validated: in range, distinct, non-empty).
    Ids(&'a [u32]),
}

/// Which way K's statistics were found (for the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeptPath {
    /// A gather over given ids.
    Ids,
    /// The 16-bit histogram.
    Hist,
    /// Every finite token (top-p = 1, top-k ≥ V).
    All,
    /// Candidates from the blocks whose max is ≥ a bound on z_τ.
    Blocks,
    /// S and W minus the complement (top-p bottom mode).
    Complement,
    /// The top-p count's head or fallback candidates.
    Count,
    /// A second read of the row.
    Plain,
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
    /// How it was found.
    pub path: KeptPath,
}

/// Most blocks [`from_blocks`] reads again (beyond that, or a quarter of the row's blocks if
/// more, the row is flat and another way is cheaper).
pub(crate) const MAX_BLOCKS: usize = 64;

/// The filter as it acts on a row of `vocab` tokens: top-p = 1 is no top-p step (it keeps
/// every finite token), top-k ≥ V no top-k step. `None`: every finite token is kept.
pub(crate) fn effective(f: SamplingFilter, vocab: usize) -> Option<SamplingFilter> {
    let f = SamplingFilter { top_k: f.top_k.filter(|&k| (k as usize) < vocab), top_p: f.top_p.filter(|&p| p < 1.0) };
    (f.top_k.is_some() || f.top_p.is_some()).then_some(f)
}

/// K's statistics from its sums relative to the row max `zmax` (the max of K for a recomputed
/// K): `s` = Σ_K e^{(z_i − zmax)/T}, `w` = Σ_K ((z_i − zmax)/T)·e^{…}, `count` = |K|;
/// `inside` says whether the target is in K, `zy` is its logit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    zmax: f32,
    inv_t: f32,
    s: f64,
    w: f64,
    count: u32,
    threshold: f32,
    target: Option<(f32, bool)>,
    logp_full: f32,
    path: KeptPath,
) -> KeptOut {
    let ln_s = s.ln();
    let lse = zmax as f64 * inv_t as f64 + ln_s;
    let (logp, outside) = match target {
        None => (f32::NAN, false),
        Some((zy, true)) => ((((zy - zmax) * inv_t) as f64 - ln_s) as f32, false),
        Some((_, false)) => (logp_full, true),
    };
    KeptOut { lse: lse as f32, entropy: (ln_s - w / s) as f32, logp, count, outside, threshold, path }
}

/// K given as `ids` (validated): a gather over them, sums in f64 relative to K's max.
pub(crate) fn from_ids<E: Element>(z: &[E], inv_t: f32, logp_full: f32, target: Option<u32>, ids: &[u32]) -> KeptOut {
    let m = ids.iter().map(|&i| z[i as usize].to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for &i in ids {
        let x = ((z[i as usize].to_f32() - m) * inv_t) as f64;
        let e = x.exp();
        s += e;
        if e > 0.0 {
            w += x * e;
        }
    }
    let target = target.map(|y| (z[y as usize].to_f32(), ids.contains(&y)));
    finish(m, inv_t, s, w, ids.len() as u32, f32::NAN, target, logp_full, KeptPath::Ids)
}

/// Every finite token of the f32 row `z` kept (top-p = 1, top-k ≥ V): the pass's own S and W
/// (so lse_K and H̃ equal lse and H), |K| and z_τ (the smallest finite logit) from a scan of the
/// row without any `exp`.
pub(crate) fn all_finite(
    z: &[f32],
    zmax: f32,
    inv_t: f32,
    s: f64,
    w: f64,
    target: Option<u32>,
    logp_full: f32,
) -> KeptOut {
    let (mut lo, mut count) = (f32::INFINITY, 0u32);
    for &v in z {
        let finite = v > f32::NEG_INFINITY;
        count += u32::from(finite);
        if finite && v < lo {
            lo = v;
        }
    }
    let target = target.map(|y| (z[y as usize], z[y as usize] > f32::NEG_INFINITY));
    finish(zmax, inv_t, s, w, count, lo, target, logp_full, KeptPath::All)
}

/// K's statistics of the f32 row `z` (max `zmax`, S = `s`) from the blocks whose max (the pass's
/// `maxima`, one per [`BLOCK`] tokens) can reach K (see the module doc); `None` when that would be
/// more than [`MAX_BLOCKS`] blocks (and more than a quarter of the row) or the head's bound
/// falls short by rounding. `f` is [`effective`]. `order` and `cand` are scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn from_blocks<const AVX2: bool>(
    z: &[f32],
    maxima: &[f32],
    zmax: f32,
    inv_t: f32,
    s: f64,
    f: &SamplingFilter,
    order: &mut Vec<f32>,
    cand: &mut Vec<f32>,
) -> Option<(f32, f64, f64, u32)> {
    let cap = MAX_BLOCKS.max(maxima.len() / 4);
    order.clear();
    order.extend_from_slice(maxima);
    let t = match (f.top_k, f.top_p) {
        (Some(k), _) => {
            let k = k as usize;
            if k > order.len() {
                // Fewer blocks than k: no bound from the maxima; every block is read.
                f32::NEG_INFINITY
            } else {
                *order.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
            }
        }
        (None, Some(p)) => {
            // The head: maxima by descending value until their e reach p·S.
            let need = p as f64 * s;
            order.sort_unstable_by(|a, b| b.total_cmp(a));
            let mut cum = 0.0;
            let mut t = None;
            for &bm in order.iter().take(cap) {
                cum += math::exp::<AVX2>((bm - zmax) * inv_t) as f64;
                if cum >= need {
                    t = Some(bm);
                    break;
                }
            }
            t?
        }
        (None, None) => f32::NEG_INFINITY,
    };
    if maxima.iter().filter(|&&bm| bm >= t).count() > cap {
        return None;
    }
    // The candidates: every finite logit ≥ t of those blocks (−inf < f32::MIN is never one).
    let lo = t.max(f32::MIN);
    let mut n = 0;
    for (block, &bm) in z.chunks(BLOCK).zip(maxima) {
        if bm >= t {
            if cand.len() < n + block.len() + 8 {
                cand.resize(n + block.len() + 8, 0.0);
            }
            math::compact_range::<AVX2>(block, lo, f32::INFINITY, cand, &mut n);
        }
    }
    from_candidates(&mut cand[..n], zmax, inv_t, s, f)
}

/// K selected among `cand` (finite logits, every token of K among them) and summed:
/// (z_τ, Σ_K e, Σ_K (x − zmax/T)·e, |K|), e = e^{(z − zmax)/T} in f64 (the top-p walk on the
/// same f64 e, against p·S for top-p alone, p·Σ_{top-k} e after a top-k step). `None` when a
/// top-p walk alone never reaches p·S (rounding: the caller falls back).
pub(crate) fn from_candidates(
    cand: &mut [f32],
    zmax: f32,
    inv_t: f32,
    s: f64,
    f: &SamplingFilter,
) -> Option<(f32, f64, f64, u32)> {
    let x = |v: f32| ((v - zmax) * inv_t) as f64;
    let mut c = &mut cand[..];
    if c.is_empty() {
        return None;
    }
    let mut zt = f32::NEG_INFINITY;
    if let Some(k) = f.top_k {
        let k = (k as usize).clamp(1, c.len());
        zt = *c.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1;
        let mut j = 0;
        for i in 0..c.len() {
            let v = c[i];
            c[j] = v;
            j += usize::from(v >= zt);
        }
        c = &mut c[..j];
    }
    if let Some(p) = f.top_p {
        let total = if f.top_k.is_some() { c.iter().map(|&v| x(v).exp()).sum::<f64>() } else { s };
        let goal = p as f64 * total;
        c.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut cum = 0.0;
        let mut found = None;
        for &v in c.iter() {
            cum += x(v).exp();
            if cum >= goal {
                found = Some(v);
                break;
            }
        }
        zt = match found {
            Some(v) => v,
            // After a top-k step the walk sums the same terms as `total`: only rounding can
            // leave it short, and then the whole top-k set is kept.
            None if f.top_k.is_some() => c[c.len() - 1],
            None => return None,
        };
    }
    let (mut sk, mut wk, mut count) = (0.0f64, 0.0f64, 0u32);
    for &v in c.iter().filter(|&&v| v >= zt) {
        let xv = x(v);
        let e = xv.exp();
        sk += e;
        if e > 0.0 {
            wk += xv * e;
        }
        count += 1;
    }
    Some((zt, sk, wk, count))
}

/// K of a top-p filter alone from the top-p count's crossing: `zc` are the candidate logits it
/// selected among, `ec` their e if it kept them in order (else recomputed), `tau` the e value
/// at the crossing (e = `math::exp((z − zmax)·(1/T))`, as the count computed it). K = {e ≥ τ}:
/// z_τ is the smallest candidate with e ≥ τ. With `superset` (head, fallback) every token of K
/// is a candidate and K's sums are those of the candidates ≥ z_τ; otherwise (bottom mode: the
/// candidates are every logit ≤ its threshold, a superset of K's complement) they are the pass's
/// S and W minus those of the candidates below z_τ. `None` (fall back) if no candidate reaches τ
/// or e is not monotone in z there. Inlined into the AVX2 copy of the kernel: a
/// `math::exp::<true>` outside it costs ~10× more.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn from_split<const AVX2: bool>(
    zc: &[f32],
    ec: Option<&[f32]>,
    superset: bool,
    vocab: usize,
    zmax: f32,
    inv_t: f32,
    s: f64,
    w: f64,
    tau: f32,
) -> Option<(f32, f64, f64, u32)> {
    // One branch-free pass, both sides summed (8 f32 lanes per 256 values, then f64, as the
    // pass's own sums), the smallest candidate at or above τ (z_τ) and the largest below it.
    let (mut s_lo, mut w_lo, mut s_hi, mut w_hi, mut n_lo) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut zt, mut below) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut buf = [0.0f32; 256];
    for (i, zch) in zc.chunks(256).enumerate() {
        let ech: &[f32] = match ec {
            Some(ec) => &ec[i * 256..i * 256 + zch.len()],
            None => {
                for (e, &v) in buf.iter_mut().zip(zch) {
                    *e = math::exp::<AVX2>((v - zmax) * inv_t);
                }
                &buf[..zch.len()]
            }
        };
        let (mut a, mut b, mut a2, mut b2, mut c) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8], [0.0f32; 8], [0u32; 8]);
        let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
        for (k, (&v, &e)) in zch.iter().zip(ech).enumerate() {
            let j = k % 8;
            let out = e < tau;
            let xe = if e > 0.0 { (v - zmax) * inv_t * e } else { 0.0 };
            a[j] += if out { e } else { 0.0 };
            b[j] += if out { xe } else { 0.0 };
            a2[j] += if out { 0.0 } else { e };
            b2[j] += if out { 0.0 } else { xe };
            c[j] += u32::from(out);
            lo[j] = if out { lo[j] } else { lo[j].min(v) };
            hi[j] = if out { hi[j].max(v) } else { hi[j] };
        }
        s_lo += math::fold8(a) as f64;
        w_lo += math::fold8(b) as f64;
        s_hi += math::fold8(a2) as f64;
        w_hi += math::fold8(b2) as f64;
        n_lo += c.iter().sum::<u32>() as usize;
        zt = lo.iter().fold(zt, |m, &v| m.min(v));
        below = hi.iter().fold(below, |m, &v| m.max(v));
    }
    if zt == f32::INFINITY || below >= zt {
        // No crossing among them, or e not monotone in z at the crossing (never seen; K must
        // be {z ≥ z_τ}): the caller falls back.
        return None;
    }
    Some(if superset {
        (zt, s_hi, w_hi, (zc.len() - n_lo) as u32)
    } else {
        (zt, s - s_lo, w - w_lo, (vocab - n_lo) as u32)
    })
}

/// The plain version (the fallback): reads the row again to select the crossing and sum over
/// K, in f64. `buf` is scratch.
pub(crate) fn plain<E: Element>(
    z: &[E],
    inv_t: f32,
    logp_full: f32,
    target: Option<u32>,
    f: &SamplingFilter,
    buf: &mut Vec<f32>,
) -> KeptOut {
    let zmax = z.iter().map(|v| v.to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let threshold = threshold(z, inv_t, zmax, f, buf);
    let x = |v: f32| ((v - zmax) * inv_t) as f64;
    let (mut s, mut w, mut count) = (0.0f64, 0.0f64, 0u32);
    for v in z.iter().map(|v| v.to_f32()).filter(|&v| v >= threshold && v > f32::NEG_INFINITY) {
        let e = x(v).exp();
        s += e;
        if e > 0.0 {
            w += x(v) * e;
        }
        count += 1;
    }
    let target = target.map(|y| {
        let zy = z[y as usize].to_f32();
        (zy, zy >= threshold && zy > f32::NEG_INFINITY)
    });
    finish(zmax, inv_t, s, w, count, threshold, target, logp_full, KeptPath::Plain)
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
    let Some(p) = f.top_p.filter(|&p| p < 1.0) else {
        return if f.top_k.is_some() { thr } else { buf.iter().copied().fold(f32::INFINITY, f32::min) };
    };
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
