//! The exact top-p branch count (Rollout Branching Factor) of one row without sorting: prune,
//! then a radix select on the bits of e_i = e^{x_i − m}.
//!
//! Traffic: one more read of the row, which the statistics pass has just brought into cache
//! (a [151936] bf16 row is 300 KB, f32 600 KB: L2 / L3), plus O(#kept) scratch.
//!
//! 1. **Prune** (DESIGN.md §5): a token with p_i < (1 − p)/V can never be in the top-p set —
//!    all such tokens together hold < 1 − p, and every larger token comes first in sorted
//!    order. With lse known this is a cut on the logit itself, z_i ≥ z_cut, tested with a
//!    vectorised compare; we cut at half that probability so that no rounding can drop a token
//!    that matters. Peaked (LM-like) rows keep a handful of tokens; flat rows keep all.
//! 2. e_i = e^{(z_i − z_max)/T} of the kept tokens (the same `exp` and the same expression as
//!    the statistics pass, so tokens with equal logits get bit-identical e_i: ties stay ties).
//! 3. **Radix select**: e_i ≥ 0, so its f32 bits are an order-preserving integer key. A
//!    histogram of count and f64 mass over the top ≤ 12 bits of (key − min key), a top-down
//!    scan to the bucket where the cumulative mass reaches p·S, keep only that bucket's members,
//!    repeat on the remaining bits until one key value τ is left (≤ 3 levels from a 2³⁰-wide key
//!    range). Then the tie rule of DESIGN.md §4:
//!    k = #{e > τ} + ceil((p·S − M_{>τ}) / τ), capped by the number of ties at τ.
//!
//! Everything runs in row order with f64 masses: deterministic.

use crate::cpu::math::{self, BLOCK, LANES};
use crate::element::Element;

/// Most bits resolved per histogram level (4096 buckets: 48 KB of counts and masses).
const LEVEL_BITS: u32 = 12;

/// Scratch of the selection, reused across rows.
#[derive(Debug, Default)]
pub(crate) struct TopPScratch {
    /// e_i of the kept tokens (then of the crossing bucket's members).
    kept: Vec<f32>,
    count: Vec<u32>,
    mass: Vec<f64>,
}

/// The branch count of row `z` at `top_p`, given its max logit `zmax` and S = Σ e^{(z_i −
/// zmax)/T} from the statistics pass. `buf` holds ≥ [`BLOCK`] f32 (widening).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the row's statistics, passed on from the fused pass
pub(crate) fn branch<E: Element, const FMA: bool>(
    z: &[E],
    zmax: f32,
    s: f64,
    inv_t: f32,
    top_p: f32,
    buf: &mut [f32],
    sc: &mut TopPScratch,
) -> u32 {
    let p = top_p as f64;
    // e_i < ½·(1 − p)·S/V  ⇔  z_i < z_cut; the ½ absorbs every rounding of e, S and z_cut.
    let ln_cut = (0.5 * (1.0 - p) * s / z.len() as f64).ln();
    let zcut = (zmax as f64 + ln_cut / inv_t as f64) as f32;
    // −inf logits (p = 0) are never kept, even when the cut is below every finite logit.
    let zcut = zcut.max(f32::MIN);
    let n = collect_kept::<E, FMA>(z, zcut, zmax, inv_t, buf, sc);
    select(&mut sc.kept[..n], p * s, &mut sc.count, &mut sc.mass)
}

/// Writes e_i of every token with z_i ≥ `zcut` into `sc.kept` (row order); returns how many.
#[inline(always)]
fn collect_kept<E: Element, const FMA: bool>(
    z: &[E],
    zcut: f32,
    zmax: f32,
    inv_t: f32,
    buf: &mut [f32],
    sc: &mut TopPScratch,
) -> usize {
    if sc.kept.len() < z.len() {
        sc.kept.resize(z.len(), 0.0);
    }
    let kept = &mut sc.kept[..z.len()];
    let mut n = 0;
    for block in z.chunks(BLOCK) {
        let zb = math::widen(block, buf);
        for chunk in zb.chunks(LANES) {
            // One vector compare per chunk; the scalar compaction runs only where something is
            // kept, so peaked rows cost little more than the compare.
            if chunk.iter().fold(false, |a, &v| a | (v >= zcut)) {
                for &v in chunk {
                    kept[n] = v;
                    n += usize::from(v >= zcut);
                }
            }
        }
    }
    for e in &mut kept[..n] {
        *e = math::exp::<FMA>((*e - zmax) * inv_t);
    }
    n
}

/// The smallest k such that the k largest of `kept` (all > 0, row order) sum to ≥ `need`, ties
/// interchangeable; every kept token when rounding leaves their total below `need`.
fn select(kept: &mut [f32], need: f64, count: &mut Vec<u32>, mass: &mut Vec<f64>) -> u32 {
    let (mut above, mut m_above) = (0u32, 0.0f64);
    let mut n = kept.len();
    let (mut lo, mut hi) = key_range(kept);
    while lo < hi {
        let width = u32::BITS - (hi - lo).leading_zeros();
        // About 2 buckets per kept token (at least 2), at most 2^LEVEL_BITS: small sets stay cheap.
        let bits = width.min(LEVEL_BITS).min(usize::BITS - n.leading_zeros() + 1);
        let shift = width - bits;
        let nb = ((hi - lo) >> shift) as usize + 1;
        let (count, mass) = clear(count, mass, nb);
        for &e in &kept[..n] {
            let b = ((e.to_bits() - lo) >> shift) as usize;
            count[b] += 1;
            mass[b] += e as f64;
        }
        let Some(b) = (0..nb).rev().find(|&b| {
            let crossed = m_above + mass[b] >= need;
            if !crossed {
                m_above += mass[b];
                above += count[b];
            }
            crossed
        }) else {
            return above;
        };
        // Keep only the crossing bucket's members, and narrow the key range to theirs.
        let base = lo;
        let mut j = 0;
        (lo, hi) = (u32::MAX, 0);
        for i in 0..n {
            let k = kept[i].to_bits();
            if ((k - base) >> shift) as usize == b {
                kept[j] = kept[i];
                j += 1;
                lo = lo.min(k);
                hi = hi.max(k);
            }
        }
        n = j;
    }
    // One value τ left, held by n tied tokens.
    let tau = f32::from_bits(lo) as f64;
    let need_ties = ((need - m_above) / tau).ceil().max(1.0);
    above + (need_ties as u32).min(n as u32)
}

/// (min, max) of the keys (f32 bits) of non-empty `kept`.
fn key_range(kept: &[f32]) -> (u32, u32) {
    kept.iter().fold((u32::MAX, 0), |(lo, hi), e| (lo.min(e.to_bits()), hi.max(e.to_bits())))
}

/// The first `nb` entries of both histograms, zeroed (grown on first use).
fn clear<'a>(count: &'a mut Vec<u32>, mass: &'a mut Vec<f64>, nb: usize) -> (&'a mut [u32], &'a mut [f64]) {
    if count.len() < nb {
        count.resize(nb, 0);
        mass.resize(nb, 0.0);
    }
    count[..nb].fill(0);
    mass[..nb].fill(0.0);
    (&mut count[..nb], &mut mass[..nb])
}
