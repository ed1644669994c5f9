//! The exact top-p branch count (Rollout Branching Factor) of one row without sorting: prune
//! during the statistics pass, narrow large candidate sets with exact vectorised passes, then a
//! radix select on the bits of e_i = e^{x_i − m}.
//!
//! Traffic: none beyond the statistics pass's one read of the row; O(#kept) scratch.
//!
//! 1. **Prune** (DESIGN.md §5): a token with p_i < (1 − p)/V can never be in the top-p set —
//!    all such tokens together hold < 1 − p, and every larger token comes first in sorted
//!    order. During the pass each block's e_i = e^{(z_i − m_run)/T} (relative to the running
//!    max) is at hand, with S_run, the sum so far on the same scale. The final e_i and S are both
//!    these times the same factor e^{(m_run − z_max)/T}, and S ≥ S_run, so a token with
//!    e_i < ½(1 − p)·S_run/V can be dropped at once (the ½ absorbs every rounding): one
//!    vectorised compare per 32 values, and 8-lane compaction of the kept e_i, which are stored
//!    with their block's running max. Peaked (LM-like) rows keep a handful of tokens (plus, before
//!    the row's max is seen, tokens near the running max); flat rows keep all.
//! 2. After the pass, each kept e_i is rescaled to the row max (×e^{(m_run − z_max)/T}, one f32
//!    rounding: tokens with equal logits in blocks with different running maxima may differ by
//!    an ulp, far inside the tolerance band of DESIGN.md §4).
//! 3. **Narrow** (sets > [`DIRECT`] values, e.g. flat rows): sampled windows and exact
//!    vectorised count/sum/compaction passes shrink the set around the crossing (see
//!    [`narrow`]), so that few values reach the histogram's scatter.
//! 4. **Radix select**: e_i ≥ 0, so its f32 bits are an order-preserving integer key. A
//!    histogram of f64 mass over the top ≤ 12 bits of (key − min key), a top-down scan to the
//!    bucket where the cumulative mass reaches p·S, keep only that bucket's members (and count
//!    those above it, vectorised), repeat on the remaining bits until one key value τ is left
//!    (≤ 3 levels from a 2³⁰-wide key range). Then the tie rule of DESIGN.md §4:
//!    k = #{e > τ} + ceil((p·S − M_{>τ}) / τ), capped by the number of ties at τ.
//!
//! Everything runs in row order with f64 masses (f32 lanes per 256 values in the passes):
//! deterministic. Mass errors stay at the level of the statistics pass's S (≲ 3e−6 relative),
//! inside the 1e−5 band.

use crate::cpu::math::{self, BLOCK};

/// Most bits resolved per histogram level (4096 buckets: 32 KB of f64 masses).
const LEVEL_BITS: u32 = 12;

/// Scratch of the selection, reused across rows.
#[derive(Debug, Default)]
pub(crate) struct TopPScratch {
    /// e_i of the current block (written by the statistics pass).
    block: Vec<f32>,
    /// e_i of the kept tokens (then of the crossing bucket's members), with 8 spare slots for
    /// the 8-lane compaction stores.
    kept: Vec<f32>,
    /// The next level's members (swapped with `kept`).
    next: Vec<f32>,
    /// (end in `kept`, running max) of each block with kept tokens.
    blocks: Vec<(usize, f32)>,
    /// Bucket masses of the current level.
    mass: Vec<f64>,
    /// The strided sample of a large candidate set.
    sample_src: Vec<f32>,
    /// How many values the last [`split`] left in `next`.
    partition_len: usize,
}

/// Collects the tokens of one row that may be in its top-p set, block by block.
pub(crate) struct Keeper<'a> {
    sc: &'a mut TopPScratch,
    /// ½(1 − p)/V: times the running sum, the cut on e relative to the running max.
    cut: f64,
    /// Tokens kept so far.
    n: usize,
    vocab: usize,
}

impl TopPScratch {
    /// Starts a row of `vocab` tokens at `top_p`.
    pub(crate) fn start(&mut self, vocab: usize, top_p: f32) -> Keeper<'_> {
        for v in [&mut self.kept, &mut self.next] {
            if v.len() < vocab + 8 {
                v.resize(vocab + 8, 0.0);
            }
        }
        if self.block.len() < BLOCK {
            self.block.resize(BLOCK, 0.0);
        }
        self.blocks.clear();
        let cut = 0.5 * (1.0 - top_p as f64) / vocab as f64;
        Keeper { sc: self, cut, n: 0, vocab }
    }
}

impl Keeper<'_> {
    /// Where the statistics pass writes the current block's e_i.
    #[inline(always)]
    pub(crate) fn block(&mut self) -> &mut [f32] {
        &mut self.sc.block
    }

    /// Keeps the block's first `len` e_i (relative to the running max `m`, with `s_run` the sum
    /// of all e_i so far, this block's included, on the same scale) that pass the cut; `e_max`
    /// is the block's largest e_i (a block entirely below the cut costs nothing more).
    #[inline(always)]
    pub(crate) fn keep_block<const AVX2: bool>(&mut self, len: usize, m: f32, s_run: f64, e_max: f32) {
        let cut = (self.cut * s_run) as f32;
        if e_max < cut {
            return;
        }
        let start = self.n;
        math::compact_range::<AVX2>(&self.sc.block[..len], cut, f32::INFINITY, &mut self.sc.kept, &mut self.n);
        if self.n > start {
            self.sc.blocks.push((self.n, m));
        }
    }

    /// The branch count at `top_p` of the row whose max logit is `zmax` and S = Σ e^{(z_i −
    /// zmax)/T}.
    #[inline(always)]
    pub(crate) fn branch<const AVX2: bool>(self, zmax: f32, s: f64, inv_t: f32, top_p: f32) -> u32 {
        let Keeper { sc, n, vocab, .. } = self;
        let p = top_p as f64;
        // Rescale each block's e_i to the row max, then apply the exact cut into `next`.
        let mut begin = 0;
        for &(end, m) in &sc.blocks {
            let c = ((m as f64 - zmax as f64) * inv_t as f64).exp() as f32;
            if c != 1.0 {
                sc.kept[begin..end].iter_mut().for_each(|e| *e *= c);
            }
            begin = end;
        }
        let need = p * s;
        // Large sets are narrowed by windows (whose passes also drop what is below the cut);
        // small ones get the exact cut e_i ≥ ½(1 − p)·S/V before the histogram.
        let (n, above) = if n > DIRECT {
            narrow::<AVX2>(sc, n, need, Above::default())
        } else {
            let cut = (0.5 * (1.0 - p) * s / vocab as f64) as f32;
            let mut j = 0;
            math::compact_range::<AVX2>(&sc.kept[..n], cut, f32::INFINITY, &mut sc.next, &mut j);
            std::mem::swap(&mut sc.kept, &mut sc.next);
            (j, Above::default())
        };
        match radix::<AVX2>(&mut sc.kept, &mut sc.next, &mut sc.mass, n, need, above) {
            // One value τ left, held by `ties` tokens: the tie rule of DESIGN.md §4.
            Ok(Crossing { tau, ties, above }) => {
                let need_ties = ((need - above.mass) / tau as f64).ceil().max(1.0);
                (above.count + (need_ties as usize).min(ties)) as u32
            }
            // Rounding left the kept total below p·S: count every kept token.
            Err(above) => above.count as u32,
        }
    }
}

/// Tokens known to lie above the current candidate set: how many, and their f64 mass.
#[derive(Debug, Clone, Copy, Default)]
struct Above {
    count: usize,
    mass: f64,
}

/// The value τ at which the descending cumulative mass reaches the goal, its number of ties,
/// and what lies above it.
struct Crossing {
    tau: f32,
    ties: usize,
    above: Above,
}

/// Sets larger than this are first narrowed by sampled windows (vectorised passes); smaller
/// ones go straight to the histogram.
const DIRECT: usize = 4096;
/// Sample size for the window estimate.
const SAMPLE: usize = 2048;
/// Most narrowing rounds (each one or two vectorised passes over the set).
const MAX_ROUNDS: usize = 6;

/// Narrows the candidate set `sc.kept[..n]` (with `above` known above it) to a smaller set that
/// still holds the crossing of `need`, with vectorised passes instead of the histogram's
/// scatter (which costs ~3× more per value: on a flat row every token would go through it).
///
/// A strided sample of the set stands for its body. Its 8 largest values mark the head: one
/// exact pass measures the mass at or above the 8th (on peaked rows, the few tokens that hold
/// most of the mass, which a sample cannot weigh). The rest of the sample then places a window
/// [lo, hi] around the crossing, and one exact pass counts and sums everything above the window
/// and compacts its members. Since the passes are exact, a window that misses (the sample is
/// only an estimate) is detected and the side holding the crossing is kept instead. At most
/// [`MAX_ROUNDS`] rounds; the histogram finishes whatever is left.
#[inline(always)]
fn narrow<const AVX2: bool>(sc: &mut TopPScratch, mut n: usize, need: f64, mut above: Above) -> (usize, Above) {
    for _ in 0..MAX_ROUNDS {
        if n <= DIRECT {
            break;
        }
        sc.sample_src.clear();
        sc.sample_src.extend(sc.kept[..n].iter().step_by(n / SAMPLE).take(SAMPLE));
        let h = eighth_largest(&sc.sample_src);
        // A flat sample (effective size ≥ half its length) has no heavy head to measure.
        let (s1, s2) = sc.sample_src.iter().fold((0.0f64, 0.0f64), |(a, b), &e| (a + e as f64, b + (e as f64).powi(2)));
        let (head, m_head) =
            if s1 * s1 >= s2 * (SAMPLE / 2) as f64 { (0, 0.0) } else { math::sum_at_least::<AVX2>(&sc.kept[..n], h) };
        let (from, to) = if above.mass + m_head >= need {
            // The crossing is in the head.
            (h, f32::INFINITY)
        } else {
            if head > 0 {
                sc.sample_src.retain(|&e| e < h);
            }
            let (lo, hi) = sample_window(sc, n - head, need - above.mass - m_head);
            let (cnt, m_hi, m_in) = split::<AVX2>(sc, n, lo, hi);
            let window = sc.partition_len;
            if above.mass + m_hi >= need {
                (next_up(hi), f32::INFINITY)
            } else if above.mass + m_hi + m_in < need {
                above = Above { count: above.count + cnt + window, mass: above.mass + m_hi + m_in };
                (0.0, f32::from_bits(lo.to_bits().saturating_sub(1)))
            } else {
                // The window holds the crossing: it becomes the set.
                above = Above { count: above.count + cnt, mass: above.mass + m_hi };
                std::mem::swap(&mut sc.kept, &mut sc.next);
                n = window;
                continue;
            }
        };
        let mut k = 0;
        math::compact_range::<AVX2>(&sc.kept[..n], from, to, &mut sc.next, &mut k);
        std::mem::swap(&mut sc.kept, &mut sc.next);
        let progress = k < n;
        n = k;
        if !progress {
            break;
        }
    }
    (n, above)
}

/// The 8th largest of `values` (their smallest if fewer), by a running top-8: no sort.
fn eighth_largest(values: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; 8];
    for &v in values {
        if v > top[7] {
            let mut i = 7;
            while i > 0 && top[i - 1] < v {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = v;
        }
    }
    top.iter().rev().copied().find(|v| v.is_finite()).unwrap_or(0.0)
}

/// One exact pass over `sc.kept[..n]` (see [`math::partition`]); the members of [lo, hi] go
/// to `sc.next[..sc.partition_len]`.
#[inline(always)]
fn split<const AVX2: bool>(sc: &mut TopPScratch, n: usize, lo: f32, hi: f32) -> (usize, f64, f64) {
    let mut j = 0;
    let r = math::partition::<AVX2>(&sc.kept[..n], lo, hi, &mut sc.next, &mut j);
    sc.partition_len = j;
    r
}

/// The next larger f32 (for e ≥ 0, whose bits are ordered).
fn next_up(v: f32) -> f32 {
    f32::from_bits(v.to_bits() + 1)
}

/// Places a window [lo, hi] around the crossing of `goal` in the body of `n` values that
/// `sc.sample_src` samples: hi where the sample's mass, scaled by n/len, reaches goal·(1 − ε),
/// lo where it reaches goal·(1 + ε) (0 if it never does). ε = 3/√ESS (clamped to [2%, 50%]),
/// with ESS = (Σe)²/Σe² the sample's effective size: three standard errors of a sampled sum,
/// small on flat rows, wide on heavy-tailed ones. One histogram of the sample (≤ 4096 buckets)
/// places both ends, rounded outwards to bucket edges.
#[inline(always)]
fn sample_window(sc: &mut TopPScratch, n: usize, goal: f64) -> (f32, f32) {
    let sample = &sc.sample_src;
    let (s1, s2) = sample.iter().fold((0.0f64, 0.0f64), |(a, b), &e| (a + e as f64, b + (e as f64).powi(2)));
    if sample.is_empty() || s1 <= 0.0 {
        return (0.0, 0.0);
    }
    let eps = (3.0 / (s1 * s1 / s2).sqrt()).clamp(0.02, 0.5);
    let scale = n as f64 / sample.len() as f64;
    let (upper, lower) = (goal * (1.0 - eps) / scale, goal * (1.0 + eps) / scale);
    let (lo_key, hi_key) = key_range(sample);
    let width = u32::BITS - (hi_key - lo_key).leading_zeros();
    let shift = width.saturating_sub(LEVEL_BITS);
    let nb = ((hi_key - lo_key) >> shift) as usize + 1;
    if sc.mass.len() < nb {
        sc.mass.resize(nb, 0.0);
    }
    let mass = &mut sc.mass[..nb];
    mass.fill(0.0);
    for &e in sample {
        mass[((e.to_bits() - lo_key) >> shift) as usize] += e as f64;
    }
    let edge = |b: usize| lo_key + ((b as u32) << shift);
    let (mut hi, mut lo) = (f32::from_bits(hi_key), 0.0);
    let mut cum = 0.0;
    let mut placed_hi = false;
    for (b, &m) in mass.iter().enumerate().rev() {
        cum += m;
        if !placed_hi && cum >= upper {
            hi = f32::from_bits(hi_key.min(edge(b + 1) - 1));
            placed_hi = true;
        }
        if cum >= lower {
            lo = f32::from_bits(edge(b));
            break;
        }
    }
    (lo, hi)
}

/// Radix select: narrows `a[..n]` (all > 0; `above` known above them) to the single value τ at
/// which the descending cumulative mass reaches `need`; `Err` with everything counted when the
/// set's total falls short. `b` is the second buffer (both hold ≥ n + 8 values).
#[inline(always)]
fn radix<const AVX2: bool>(
    a: &mut Vec<f32>,
    b: &mut Vec<f32>,
    mass: &mut Vec<f64>,
    mut n: usize,
    need: f64,
    mut above: Above,
) -> Result<Crossing, Above> {
    if n == 0 {
        return Err(above);
    }
    let (mut lo, mut hi) = key_range(&a[..n]);
    while lo < hi {
        let width = u32::BITS - (hi - lo).leading_zeros();
        // About 2 buckets per value (at least 2), at most 2^LEVEL_BITS: small sets stay cheap.
        let bits = width.min(LEVEL_BITS).min(usize::BITS - n.leading_zeros() + 1);
        let shift = width - bits;
        let nb = ((hi - lo) >> shift) as usize + 1;
        if mass.len() < nb {
            mass.resize(nb, 0.0);
        }
        let mass = &mut mass[..nb];
        mass.fill(0.0);
        for &e in &a[..n] {
            mass[((e.to_bits() - lo) >> shift) as usize] += e as f64;
        }
        // Top-down to the bucket where the cumulative mass reaches `need`.
        let mut crossing = None;
        for (k, &m) in mass.iter().enumerate().rev() {
            if above.mass + m >= need {
                crossing = Some(k);
                break;
            }
            above.mass += m;
        }
        let Some(k) = crossing else { return Err(Above { count: above.count + n, ..above }) };
        // Keep only the crossing bucket's members; count the values above it.
        let k_lo = lo + ((k as u32) << shift);
        let k_hi = hi.min(k_lo + ((1u32 << shift) - 1));
        let mut j = 0;
        above.count += math::compact_range::<AVX2>(&a[..n], f32::from_bits(k_lo), f32::from_bits(k_hi), b, &mut j);
        std::mem::swap(a, b);
        n = j;
        (lo, hi) = key_range(&a[..n]);
    }
    Ok(Crossing { tau: f32::from_bits(lo), ties: n, above })
}

/// (min, max) of the keys (f32 bits, order-preserving for e ≥ 0) of `kept`.
#[inline(always)]
fn key_range(kept: &[f32]) -> (u32, u32) {
    kept.iter().fold((u32::MAX, 0), |(lo, hi), e| (lo.min(e.to_bits()), hi.max(e.to_bits())))
}
