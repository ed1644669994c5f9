//! Fused per-row token statistics on the CPU: lse, entropy, target log-prob and the exact top-p
//! branch count, rows in parallel (rayon).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::config::TokenStatsConfig;
use crate::cpu::hist16::{self, Hist16};
use crate::cpu::math::{self, SimdKernel, BLOCK};
use crate::cpu::top_p::{Keeper, TopPScratch};
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::types::TokenStats;
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
/// lse = z_max/T + ln S, H = ln S − W/S, logp = (z_y − z_max)/T − ln S. The top-p count then
/// re-reads the row while it is in cache (see [`crate::cpu::top_p`]).
///
/// Error (u = 2⁻²⁴): S and W within ~36u + 1e−7 (exp) relative of the sum of exactly
/// computed terms, for any V (see [`math::exp_sums`]); each term's own error is that of
/// (z_i − m)·(1/T): ≤ 3u·|x_i − m| relative in e_i.
pub(crate) fn row_stats<E: Element>(
    z: &[E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    scratch: &mut Scratch,
) -> RowOut {
    math::dispatch(RowKernel { z, inv_t, target, top_p, scratch })
}

/// [`row_stats`]'s arguments, so the kernel can be compiled twice (see [`math::dispatch`]).
struct RowKernel<'a, E> {
    z: &'a [E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    scratch: &'a mut Scratch,
}

impl<E: Element> SimdKernel for RowKernel<'_, E> {
    type Out = RowOut;

    #[inline(always)]
    fn run<const AVX2: bool>(self) -> RowOut {
        let RowKernel { z, inv_t, target, top_p, scratch } = self;
        if E::DTYPE != DType::F32 {
            return hist16::row_stats::<E, AVX2>(z, inv_t, target, top_p, &mut scratch.hist16);
        }
        if scratch.buf.len() < BLOCK {
            scratch.buf.resize(BLOCK, 0.0);
        }
        let nan = RowOut { lse: f32::NAN, entropy: f32::NAN, logp: f32::NAN, branch: 0, problem: RowProblem::None };
        let mut keeper = top_p.map(|p| scratch.top_p.start(z.len(), p));
        let sums = match keeper.as_mut() {
            Some(k) => sums::<E, AVX2, true>(z, inv_t, &mut scratch.buf, Some(k)),
            None => sums::<E, AVX2, false>(z, inv_t, &mut scratch.buf, None),
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
        let branch = match (keeper, top_p) {
            (Some(k), Some(p)) => k.branch::<AVX2>(m, s, inv_t, p),
            _ => 0,
        };
        RowOut { lse: lse as f32, entropy: entropy as f32, logp: logp as f32, branch, problem: RowProblem::None }
    }
}

/// The running reduction of a row: max logit m, S = Σ e^{(z_i − m)/T}, W = Σ ((z_i − m)/T)·e^{…}.
struct Sums {
    m: f32,
    s: f64,
    w: f64,
}

/// One read of the row in blocks; `None` on a NaN or +inf logit. With a `keeper` (top-p), each
/// block's e_i are also handed to it while in L1.
#[inline(always)]
fn sums<E: Element, const AVX2: bool, const KEEP: bool>(
    z: &[E],
    inv_t: f32,
    buf: &mut [f32],
    mut keeper: Option<&mut Keeper>,
) -> Option<Sums> {
    let mut acc = Sums { m: f32::NEG_INFINITY, s: 0.0, w: 0.0 };
    for block in z.chunks(BLOCK) {
        let zb = math::widen(block, buf);
        let (bmax, bad) = math::max_and_bad::<AVX2>(zb);
        if bad {
            return None;
        }
        if bmax > acc.m {
            if acc.s > 0.0 {
                let delta = (acc.m as f64 - bmax as f64) * inv_t as f64;
                let c = delta.exp();
                acc.w = c * (acc.w + delta * acc.s);
                acc.s *= c;
            }
            acc.m = bmax;
        }
        if acc.m == f32::NEG_INFINITY {
            continue;
        }
        match keeper.as_deref_mut() {
            Some(k) if KEEP => {
                let (s, w) = math::exp_sums::<AVX2, true>(zb, acc.m, inv_t, k.block());
                (acc.s, acc.w) = (acc.s + s as f64, acc.w + w as f64);
                // The block's largest e_i, from its max logit: the same expression as in exp_sums.
                let e_max = math::exp::<AVX2>((bmax - acc.m) * inv_t);
                k.keep_block::<AVX2>(zb.len(), acc.m, acc.s, e_max);
            }
            _ => {
                let (s, w) = math::exp_sums::<AVX2, false>(zb, acc.m, inv_t, &mut []);
                (acc.s, acc.w) = (acc.s + s as f64, acc.w + w as f64);
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

/// Per-token statistics of row-major `[N, V]` logits (bf16, f16 or f32) at temperature
/// `cfg.temperature`: lse, entropy H = lse − W/S, logp = x_y − lse (with `targets`) and the
/// branch count at `cfg.top_p` (exact, ties interchangeable). One pass over each row; rows in
/// parallel.
///
/// Errors: [`Error::EmptyVocab`], [`Error::ShapeMismatch`], [`Error::TargetOutOfRange`],
/// [`Error::InvalidTopP`], [`Error::InvalidTemperature`], and — with `cfg.check_finite` —
/// [`Error::NonFiniteLogits`] / [`Error::AllNegInfRow`] naming the first bad row.
pub fn token_stats<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
) -> Result<TokenStats> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    if let Some(t) = targets {
        validate::targets(t, n, vocab)?;
    }
    let inv_t = 1.0 / cfg.temperature;
    let rows: Vec<RowOut> = logits
        .par_chunks_exact(vocab)
        .enumerate()
        .map(|(r, row)| SCRATCH.with(|s| row_stats(row, inv_t, targets.map(|t| t[r]), cfg.top_p, &mut s.borrow_mut())))
        .collect();
    if cfg.check_finite {
        validate::first_bad_row(n, |r| rows[r].problem.error(r))?;
    }
    Ok(TokenStats {
        lse: rows.iter().map(|r| r.lse).collect(),
        entropy: rows.iter().map(|r| r.entropy).collect(),
        logp: targets.map(|_| rows.iter().map(|r| r.logp).collect()),
        branch: cfg.top_p.map(|_| rows.iter().map(|r| r.branch).collect()),
    })
}
