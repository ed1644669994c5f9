//! Fused per-row token statistics on the CPU: lse, entropy, target log-prob and the exact top-p
//! branch count, rows in parallel (rayon).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::config::{SamplingFilter, TokenStatsConfig};
use crate::cpu::hist16::{self, Hist16};
use crate::cpu::kept::{self, KeptOut, KeptPath, RowKept};
use crate::cpu::math::{self, SimdKernel, BLOCK};
use crate::cpu::top_p::{Keeper, TopPScratch};
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::types::{KeptMask, KeptStats, TokenStats};
use crate::validate;

/// A row's problem, if any (DESIGN.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowProblem {
    /// Finite statistics.
    None,
    /// A NaN or +inf logit.
    NonFinite,
    /// Every logit −inf.
    AllNegInf,
}

impl RowProblem {
    pub(crate) fn error(self, row: usize) -> Option<Error> {
        match self {
            RowProblem::None => None,
            RowProblem::NonFinite => Some(Error::NonFiniteLogits { row }),
            RowProblem::AllNegInf => Some(Error::AllNegInfRow { row }),
        }
    }
}

/// Statistics of one row, in f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowOut {
    pub lse: f32,
    pub entropy: f32,
    /// NaN when no target was given.
    pub logp: f32,
    /// 0 when no top-p was given.
    pub branch: u32,
    pub problem: RowProblem,
    /// The statistics over the kept set, when a filter or kept ids were given (and the row is
    /// finite).
    pub kept: Option<KeptOut>,
}

/// Per-thread scratch reused across rows (no allocation per row once warm).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// One block of the row widened to f32 (bf16/f16 rows).
    buf: Vec<f32>,
    /// The top-p selection's kept tokens and histograms.
    top_p: TopPScratch,
    /// The bit-pattern histogram of 16-bit rows.
    hist16: Hist16,
    /// The kept-set selection's buffer.
    kept: Vec<f32>,
    /// Each block's max (f32 rows with a filter).
    maxima: Vec<f32>,
    /// The block maxima in selection order (f32 rows with a filter).
    order: Vec<f32>,
}

/// The fused statistics of one row `z` at inverse temperature `inv_t` (AVX2+FMA when the CPU
/// has it).
///
/// bf16 and f16 rows are counted by bit pattern and everything is computed per distinct value
/// (see [`crate::cpu::hist16`]: no `exp` per token, the top-p count without any selection).
/// f32 rows take the per-token path below.
///
/// One read of the row from memory: blocks of [`BLOCK`] elements, each first scanned for its
/// max (and NaN/+inf) and then, still in L1, for S = Σ e^{x_i − m} and W = Σ (x_i − m)·e^{x_i − m}
/// relative to the running max m (f32 lanes per block, f64 across blocks; when m grows, S and W
/// are rescaled in f64: S ← cS, W ← c(W + δS) with δ = (m_old − m_new)/T, c = e^δ). So every
/// x_i − m is (z_i − z_max)·(1/T) computed as (z_i − m_block)·(1/T) in f32 plus an f64 shift:
/// no precision is lost to a large common offset of the logits.
/// lse = z_max/T + ln S, H = ln S − W/S, logp = (z_y − z_max)/T − ln S. The top-p count is
/// found from candidates gathered during the pass or from a few blocks read again while in
/// cache (see [`crate::cpu::top_p`]).
///
/// Error (u = 2⁻²⁴): S and W within ~36u + 1e−7 (exp) relative of the sum of exactly
/// computed terms, for any V (see [`math::exp_sums`]); each term's own error is that of
/// (z_i − m)·(1/T): ≤ 3u·|x_i − m| relative in e_i.
///
/// With `kept` (a filter or the engine's ids) the statistics over the kept set K come too, from
/// what the pass left (see [`crate::cpu::kept`]); lse, entropy, logp and the branch count are
/// the same bits with and without it.
pub(crate) fn row_stats<E: Element>(
    z: &[E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    kept: Option<RowKept>,
    scratch: &mut Scratch,
) -> RowOut {
    let filter = match kept {
        Some(RowKept::Filter(f)) => Some(f),
        _ => None,
    };
    let mut out = math::dispatch(RowKernel { z, inv_t, target, top_p, filter, scratch: &mut *scratch });
    if out.problem != RowProblem::None {
        out.kept = None;
        return out;
    }
    match kept {
        Some(RowKept::Ids(ids)) => out.kept = Some(kept::from_ids(z, inv_t, out.logp, target, ids)),
        Some(RowKept::Filter(f)) if out.kept.is_none() => {
            out.kept = Some(kept::plain(z, inv_t, out.logp, target, &f, &mut scratch.kept));
        }
        _ => {}
    }
    out
}

/// [`row_stats`]'s arguments, so the kernel can be compiled twice (see [`math::dispatch`]).
struct RowKernel<'a, E> {
    z: &'a [E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    filter: Option<SamplingFilter>,
    scratch: &'a mut Scratch,
}

impl<E: Element> SimdKernel for RowKernel<'_, E> {
    type Out = RowOut;

    #[inline(always)]
    fn run<const AVX2: bool>(self) -> RowOut {
        let RowKernel { z, inv_t, target, top_p, filter, scratch } = self;
        if E::DTYPE != DType::F32 {
            return hist16::row_stats::<E, AVX2>(z, inv_t, target, top_p, filter, &mut scratch.hist16);
        }
        if scratch.buf.len() < BLOCK {
            scratch.buf.resize(BLOCK, 0.0);
        }
        let nan = RowOut {
            lse: f32::NAN,
            entropy: f32::NAN,
            logp: f32::NAN,
            branch: 0,
            problem: RowProblem::None,
            kept: None,
        };
        // Only f32 rows get here (16-bit rows returned above), so the cast is to the row itself.
        let row: &[f32] = bytemuck::cast_slice(z);
        let filter = filter.map(|f| kept::effective(f, z.len()));
        // A top-p filter alone shares the count's keeper (its bottom mode finds K's crossing on
        // flat rows); without a count it gets one of its own.
        let filter_p = match filter {
            Some(Some(SamplingFilter { top_k: None, top_p: Some(p) })) => Some(p),
            _ => None,
        };
        let keeper_p = match (top_p, filter_p) {
            (Some(q), _) => Some(q),
            (None, p) => p,
        };
        let mut keeper = keeper_p.map(|p| scratch.top_p.start(p, inv_t, row));
        let maxima = filter.is_some().then(|| {
            scratch.maxima.clear();
            &mut scratch.maxima
        });
        let sums = match keeper.as_mut() {
            Some(k) => sums::<E, AVX2, true>(z, inv_t, &mut scratch.buf, Some(k), maxima),
            None => sums::<E, AVX2, false>(z, inv_t, &mut scratch.buf, None, maxima),
        };
        let Some(Sums { m, s, w }) = sums else {
            return RowOut { problem: RowProblem::NonFinite, ..nan };
        };
        if m == f32::NEG_INFINITY {
            return RowOut { problem: RowProblem::AllNegInf, ..nan };
        }
        let ln_s = s.ln();
        let lse = m as f64 * inv_t as f64 + ln_s;
        let entropy = ln_s - w / s;
        let logp = target.map_or(f64::NAN, |y| ((z[y as usize].to_f32() - m) * inv_t) as f64 - ln_s);
        let Some(filter) = filter else {
            let branch = match (keeper, top_p) {
                (Some(k), Some(_)) => k.branch::<AVX2>(m, s),
                _ => 0,
            };
            return RowOut {
                lse: lse as f32,
                entropy: entropy as f32,
                logp: logp as f32,
                branch,
                problem: RowProblem::None,
                kept: None,
            };
        };
        let (logp, entropy, lse) = (logp as f32, entropy as f32, lse as f32);
        let Some(f) = filter else {
            // Every finite token kept.
            let branch = match (keeper, top_p) {
                (Some(k), Some(_)) => k.branch::<AVX2>(m, s),
                _ => 0,
            };
            let kept = kept::all_finite(row, m, inv_t, s, w, target, logp);
            return RowOut { lse, entropy, logp, branch, problem: RowProblem::None, kept: Some(kept) };
        };
        let mut found =
            kept::from_blocks::<AVX2>(row, &scratch.maxima, m, inv_t, s, &f, &mut scratch.order, &mut scratch.kept)
                .map(|k| (k, KeptPath::Blocks));
        // The keeper's p is the filter's when `filter_p == keeper_p`.
        let from_count = found.is_none() && filter_p.is_some() && filter_p == keeper_p;
        let (branch, tau) = match keeper {
            Some(k) => k.finish::<AVX2>(m, s, top_p.is_some(), from_count),
            None => (0, None),
        };
        let branch = if top_p.is_some() { branch } else { 0 };
        if let Some((tau, superset)) = tau {
            let (zc, ec) = scratch.top_p.bottom_logits();
            let path = if superset { KeptPath::Count } else { KeptPath::Complement };
            found = kept::from_split::<AVX2>(zc, ec, superset, z.len(), m, inv_t, s, w, tau).map(|k| (k, path));
        }
        // `None` here: the caller reads the row again (`kept::plain`).
        let kept = found.map(|((thr, sk, wk, count), path)| {
            let target = target.map(|y| (row[y as usize], row[y as usize] >= thr));
            kept::finish(m, inv_t, sk, wk, count, thr, target, logp, path)
        });
        RowOut { lse, entropy, logp, branch, problem: RowProblem::None, kept }
    }
}

/// The running reduction of a row: max logit m, S = Σ e^{(z_i − m)/T}, W = Σ ((z_i − m)/T)·e^{…}.
struct Sums {
    m: f32,
    s: f64,
    w: f64,
}

/// One read of the row in blocks; `None` on a NaN or +inf logit. With a `keeper` (top-p), each
/// block is also handed to it while in L1, with its max and the running max and sum.
#[inline(always)]
fn sums<E: Element, const AVX2: bool, const KEEP: bool>(
    z: &[E],
    inv_t: f32,
    buf: &mut [f32],
    mut keeper: Option<&mut Keeper>,
    mut maxima: Option<&mut Vec<f32>>,
) -> Option<Sums> {
    let mut acc = Sums { m: f32::NEG_INFINITY, s: 0.0, w: 0.0 };
    for block in z.chunks(BLOCK) {
        let zb = math::widen(block, buf);
        let (bmax, bad) = match keeper.as_deref_mut() {
            Some(k) if KEEP => k.scan::<AVX2>(zb),
            _ => math::max_and_bad::<AVX2>(zb),
        };
        if bad {
            return None;
        }
        if let Some(mx) = maxima.as_deref_mut() {
            mx.push(bmax);
        }
        if bmax > acc.m {
            if acc.s > 0.0 {
                let delta = (acc.m as f64 - bmax as f64) * inv_t as f64;
                let c = delta.exp();
                acc.w = c * (acc.w + delta * acc.s);
                acc.s *= c;
                if KEEP {
                    if let Some(k) = keeper.as_deref_mut() {
                        k.rescale(c as f32);
                    }
                }
            }
            acc.m = bmax;
        }
        if acc.m != f32::NEG_INFINITY {
            let e_out = if KEEP { keeper.as_deref_mut().and_then(|k| k.e_out(zb.len())) } else { None };
            let (s, w) = match e_out {
                Some(out) => math::exp_sums_into::<AVX2>(zb, acc.m, inv_t, out),
                None => math::exp_sums::<AVX2>(zb, acc.m, inv_t),
            };
            (acc.s, acc.w) = (acc.s + s as f64, acc.w + w as f64);
        }
        if KEEP {
            if let Some(k) = keeper.as_deref_mut() {
                k.block::<AVX2>(zb.len(), bmax, acc.m, acc.s);
            }
        }
    }
    Some(acc)
}

thread_local! {
    /// Each worker thread's scratch, kept across calls: the top-p buffers (2·(V + 8) f32, 1.2 MB
    /// at V = 151936) are allocated and touched once per thread, not once per call or per rayon
    /// split. `row_stats` never re-enters `token_stats`, so the borrow cannot conflict.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`] (for callers of [`row_stats`]: the buffers — 1.2 MB
/// of top-p candidates at V = 151936, 1.4 MB for the 16-bit histogram path — are allocated once
/// per thread, not once per call or per rayon split). `f` must not call back into a function
/// that borrows the scratch again (`row_stats` does not).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// Per-token statistics of row-major `[N, V]` logits (bf16, f16 or f32) at temperature
/// `cfg.temperature`: lse, entropy H = lse − W/S, logp = x_y − lse (with `targets`) and the
/// branch count at `cfg.top_p` (exact, ties interchangeable). One pass over each row; rows in
/// parallel.
///
/// With `cfg.filter` the statistics over the sampler's kept set K come too
/// ([`TokenStats::kept`]: lse_K, H̃, ℓ̃, |K|, the outside-K flags); without it the results are
/// exactly those of a build without filters.
///
/// Errors: [`Error::EmptyVocab`], [`Error::ShapeMismatch`], [`Error::TargetOutOfRange`],
/// [`Error::InvalidTopP`], [`Error::InvalidTemperature`], [`Error::InvalidConfig`] (the filter),
/// and — with `cfg.check_finite` — [`Error::NonFiniteLogits`] / [`Error::AllNegInfRow`] naming
/// the first bad row.
pub fn token_stats<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
) -> Result<TokenStats> {
    stats(logits, vocab, targets, cfg, None)
}

/// [`token_stats`] with the rollout engine's kept set per row (vLLM's CSR `SamplingMask`) in
/// place of a recomputed filter: the statistics over K come in [`TokenStats::kept`]. `cfg.filter`
/// must be `None`.
///
/// Errors: those of [`token_stats`], [`Error::InvalidKeptMask`] naming the first bad row of the
/// mask, and [`Error::InvalidConfig`] when `cfg.filter` is set too.
pub fn token_stats_masked<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: &KeptMask,
) -> Result<TokenStats> {
    stats(logits, vocab, targets, cfg, Some(mask))
}

fn stats<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMask>,
) -> Result<TokenStats> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    if let Some(t) = targets {
        validate::targets(t, n, vocab)?;
    }
    let filtered = cfg.filter.is_some() || mask.is_some();
    if filtered {
        validate::filter_or_mask(cfg.filter.as_ref(), mask, n, vocab)?;
    }
    let how = |r: usize| match (cfg.filter, mask) {
        (_, Some(m)) => Some(RowKept::Ids(m.row(r))),
        (Some(f), None) => Some(RowKept::Filter(f)),
        (None, None) => None,
    };
    let inv_t = 1.0 / cfg.temperature;
    let rows: Vec<RowOut> = logits
        .par_chunks_exact(vocab)
        .enumerate()
        .map(|(r, row)| with_scratch(|s| row_stats(row, inv_t, targets.map(|t| t[r]), cfg.top_p, how(r), s)))
        .collect();
    if cfg.check_finite {
        validate::first_bad_row(n, |r| rows[r].problem.error(r))?;
    }
    Ok(TokenStats {
        lse: rows.iter().map(|r| r.lse).collect(),
        entropy: rows.iter().map(|r| r.entropy).collect(),
        logp: targets.map(|_| rows.iter().map(|r| r.logp).collect()),
        branch: cfg.top_p.map(|_| rows.iter().map(|r| r.branch).collect()),
        kept: filtered.then(|| kept_stats(&rows, targets.is_some())),
    })
}

/// The struct-of-arrays [`KeptStats`] of rows computed with a kept set (NaN statistics and
/// |K| = 0 for rows that had none: unchecked bad rows).
pub(crate) fn kept_stats(rows: &[RowOut], with_targets: bool) -> KeptStats {
    let none = KeptOut {
        lse: f32::NAN,
        entropy: f32::NAN,
        logp: f32::NAN,
        count: 0,
        outside: false,
        threshold: f32::NAN,
        path: KeptPath::Plain,
    };
    let k = |r: &RowOut| r.kept.unwrap_or(none);
    KeptStats {
        lse: rows.iter().map(|r| k(r).lse).collect(),
        entropy: rows.iter().map(|r| k(r).entropy).collect(),
        logp: with_targets.then(|| rows.iter().map(|r| k(r).logp).collect()),
        count: rows.iter().map(|r| k(r).count).collect(),
        outside: with_targets.then(|| rows.iter().map(|r| k(r).outside as u8).collect()),
    }
}

#[cfg(test)]
mod tests {
    //! Each step of the f32 top-p count (see [`crate::cpu::top_p`]) on rows built to take it,
    //! with and without AVX2: the step taken, and the count inside the reference's band.

    use super::*;
    use crate::config::SamplingFilter;
    use crate::cpu::kept::{KeptPath, RowKept};
    use crate::cpu::top_p::Path;
    use crate::reference;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// (count, step) of one f32 row, with the `AVX2` copy of the kernels.
    struct PathKernel<'a> {
        z: &'a [f32],
        inv_t: f32,
        top_p: f32,
        avx2: bool,
    }

    impl SimdKernel for PathKernel<'_> {
        type Out = (u32, Path);

        #[inline(always)]
        fn run<const AVX2: bool>(self) -> (u32, Path) {
            let PathKernel { z, inv_t, top_p, avx2 } = self;
            if avx2 != AVX2 {
                return (u32::MAX, Path::Fallback);
            }
            let mut scratch = Scratch::default();
            let Scratch { buf, top_p: tp, .. } = &mut scratch;
            buf.resize(BLOCK, 0.0);
            let mut k = tp.start(top_p, inv_t, z);
            let Sums { m, s, .. } = sums::<f32, AVX2, true>(z, inv_t, buf, Some(&mut k), None).expect("finite row");
            k.branch_path::<AVX2>(m, s)
        }
    }

    /// The count and step of `z` with the baseline kernels and (where the CPU has it) AVX2, which
    /// must agree on both; the count is checked against the reference band.
    fn count(z: &[f32], t: f32, p: f32) -> Path {
        let base = PathKernel { z, inv_t: 1.0 / t, top_p: p, avx2: false }.run::<false>();
        let fast = math::dispatch(PathKernel { z, inv_t: 1.0 / t, top_p: p, avx2: true });
        if fast.0 != u32::MAX {
            assert_eq!(fast, base, "AVX2 and baseline kernels disagree");
        }
        let zf: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let (lo, hi) = reference::branch_band(&zf, t as f64, p as f64);
        assert!(lo <= base.0 && base.0 <= hi, "count {} not in [{lo}, {hi}] ({:?})", base.0, base.1);
        base.1
    }

    fn uniform(n: usize, a: f32, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-a..a)).collect()
    }

    /// The kept set of `z` under `f` (top-p count `top_p` too): its path, and its |K| inside
    /// the reference's band and its lse_K / H̃ / ℓ̃ within 2e−5 of the plain second read's
    /// (which is exact in f64 on the same K; 2e−5 covers the f32 `exp` and the complement's
    /// S − S_c at these rows' |x| ≤ 12).
    fn kept_path(z: &[f32], t: f32, top_p: Option<f32>, f: SamplingFilter) -> KeptPath {
        let y = (z.len() / 3) as u32;
        let mut scratch = Scratch::default();
        let out = row_stats(z, 1.0 / t, Some(y), top_p, Some(RowKept::Filter(f)), &mut scratch);
        let k = out.kept.expect("kept");
        let zf: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let (lo, hi) = reference::kept_band(&zf, t as f64, &f);
        assert!(lo <= k.count && k.count <= hi, "{f}: {} not in [{lo}, {hi}] ({:?})", k.count, k.path);
        let want = crate::cpu::kept::plain(z, 1.0 / t, out.logp, Some(y), &f, &mut Vec::new());
        if want.count == k.count {
            assert_eq!(want.threshold, k.threshold, "{f} ({:?})", k.path);
            assert_eq!(want.outside, k.outside);
            for (a, b, what) in [(k.lse, want.lse, "lse"), (k.entropy, want.entropy, "H"), (k.logp, want.logp, "logp")]
            {
                assert!((a - b).abs() <= 2e-5 * b.abs().max(1.0), "{f} {what}: {a} vs {b} ({:?})", k.path);
            }
        }
        k.path
    }

    #[test]
    fn kept_sets_of_f32_rows_take_their_fast_paths() {
        let mut rng = StdRng::seed_from_u64(9);
        let flat = uniform(151_936, 0.5, &mut rng);
        let mut lm: Vec<f32> = (0..151_936).map(|_| 2.0 * rng.random_range(-1.7f32..1.7)).collect();
        for i in [5, 70_000, 150_000] {
            lm[i] = 16.0;
        }
        let mut heavy: Vec<f32> = (0..100_000).map(|_| 3.0 * rng.random_range(-1.7f32..1.7)).collect();
        heavy[77] = 12.0;
        let (p, kp) = (SamplingFilter::top_p(0.95), SamplingFilter::top_k_top_p(50, 0.95));
        for top_p in [None, Some(0.95)] {
            // Flat rows: top-p alone from the count's bottom mode, top-k from 50 blocks.
            assert_eq!(kept_path(&flat, 1.0, top_p, p), KeptPath::Complement);
            assert_eq!(kept_path(&flat, 0.7, top_p, kp), KeptPath::Blocks);
            assert_eq!(kept_path(&flat, 1.0, top_p, SamplingFilter::top_k(1000)), KeptPath::Plain);
            // LM-like rows: the head blocks.
            assert_eq!(kept_path(&lm, 1.0, top_p, p), KeptPath::Blocks);
            assert_eq!(kept_path(&lm, 1.0, top_p, kp), KeptPath::Blocks);
            assert_eq!(kept_path(&lm, 1.0, top_p, SamplingFilter::top_k(20)), KeptPath::Blocks);
            // Heavy noise holding most of the mass: the count's fallback candidates.
            assert_eq!(kept_path(&heavy, 1.0, top_p, p), KeptPath::Count);
            // Every finite token.
            assert_eq!(kept_path(&lm, 1.0, top_p, SamplingFilter::top_p(1.0)), KeptPath::All);
        }
        // A count at another p than the filter's: the flat row's K has no bottom mode.
        assert_eq!(kept_path(&flat, 1.0, Some(0.9), p), KeptPath::Plain);
    }

    #[test]
    fn flat_rows_take_bottom_mode() {
        let mut rng = StdRng::seed_from_u64(1);
        for (n, a, t, p) in
            [(60_000, 0.5, 1.0, 0.95), (151_936, 1.0, 0.7, 0.9), (20_000, 0.05, 1.0, 0.8), (9_000, 2.0, 1.5, 0.99)]
        {
            let z = uniform(n, a, &mut rng);
            assert_eq!(count(&z, t, p), Path::Bottom, "n = {n}, a = {a}");
        }
    }

    #[test]
    fn a_bad_logit_deep_in_a_flat_row_is_caught_by_the_compacting_scan() {
        // Past phase 0 a flat row's max pass is the one that also compacts the candidates: a NaN
        // or +inf there must still fail the row (checked) or give NaN statistics (unchecked),
        // and never become a candidate.
        let mut rng = StdRng::seed_from_u64(1);
        let clean = uniform(60_000, 0.5, &mut rng);
        assert_eq!(count(&clean, 1.0, 0.95), Path::Bottom);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut z = clean.clone();
            z[40_000] = bad;
            let cfg = TokenStatsConfig { temperature: 1.0, top_p: Some(0.95), check_finite: true, filter: None };
            let got = crate::cpu::token_stats(&z, z.len(), None, &cfg).err();
            assert_eq!(got, Some(Error::NonFiniteLogits { row: 0 }), "{bad}");
            let cfg = TokenStatsConfig { check_finite: false, ..cfg };
            let got = crate::cpu::token_stats(&z, z.len(), None, &cfg).expect("unchecked");
            assert!(got.lse[0].is_nan() && got.entropy[0].is_nan(), "{bad}");
        }
    }

    #[test]
    fn bottom_mode_survives_a_max_that_keeps_growing() {
        // Every 1000th token of a flat row rises above the rest, ever higher along the row, so
        // the max grows in phase 0 (whose e_i are rescaled) and all through bottom mode (whose
        // logit threshold and candidates must not be: their e_i are taken after the pass, from
        // the row's final max).
        let mut rng = StdRng::seed_from_u64(6);
        for (n, t) in [(151_936, 1.0), (60_000, 0.5)] {
            let mut z = uniform(n, 0.5, &mut rng);
            z.iter_mut().step_by(1000).enumerate().for_each(|(k, v)| *v = 0.5 + 0.3 * (1000 * k) as f32 / n as f32);
            assert_eq!(count(&z, t, 0.95), Path::Bottom, "n = {n}");
        }
    }

    #[test]
    fn a_spike_after_phase_0_sends_the_row_to_the_head() {
        // (Bottom mode is also abandoned during the pass when the spike arrives; that only
        // saves work, the result would be the same without it.)
        let mut rng = StdRng::seed_from_u64(2);
        let mut z = uniform(60_000, 0.5, &mut rng);
        z[40_000] = 30.0;
        assert_eq!(count(&z, 1.0, 0.95), Path::Head);
        // Several spikes, the crossing among them.
        z[50_000] = 29.0;
        z[59_999] = 29.5;
        assert_eq!(count(&z, 1.0, 0.95), Path::Head);
    }

    #[test]
    fn a_missed_estimate_falls_back() {
        // Phase 0 (the first 8192 tokens) is spread wider than the rest, which sits near its
        // top: bottom mode's threshold lies below the crossing (the mass above it exceeds p·S),
        // and no few blocks hold p·S.
        let mut rng = StdRng::seed_from_u64(3);
        let mut z = uniform(60_000, 0.5, &mut rng);
        z[10_000..].iter_mut().for_each(|v| *v = 0.4 + *v / 5.0);
        assert_eq!(count(&z, 1.0, 0.95), Path::Fallback);
    }

    #[test]
    fn peaked_rows_take_the_head() {
        let mut rng = StdRng::seed_from_u64(4);
        for spikes in [1, 4, 16] {
            let mut z: Vec<f32> = (0..151_936).map(|_| 2.0 * rng.random_range(-1.7f32..1.7)).collect();
            for _ in 0..spikes {
                let i = rng.random_range(0..z.len());
                z[i] = rng.random_range(18.0..22.0);
            }
            assert_eq!(count(&z, 1.0, 0.95), Path::Head, "{spikes} spikes");
        }
    }

    #[test]
    fn rows_whose_crossing_is_deep_in_heavy_noise_fall_back() {
        // Heavy noise (its max far above its mean: no bottom mode) holding most of the mass,
        // one spike: neither the spike's block nor 64 blocks' maxima hold p·S.
        let mut rng = StdRng::seed_from_u64(5);
        let mut z: Vec<f32> = (0..100_000).map(|_| 3.0 * rng.random_range(-1.7f32..1.7)).collect();
        z[77] = 12.0;
        assert_eq!(count(&z, 1.0, 0.95), Path::Fallback);
        // Short rows (no phase 0) and rows of ties: exact through whichever step.
        count(&z[..5_000], 1.0, 0.95);
        let ties: Vec<f32> = (0..30_000).map(|i| (i % 3) as f32).collect();
        count(&ties, 1.0, 0.95);
        count(&ties, 1.0, 0.5);
    }
}
