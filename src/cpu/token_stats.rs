//! Fused per-row token statistics on the CPU: lse, entropy, target log-prob and the exact top-p
//! branch count, rows in parallel (rayon).

use rayon::prelude::*;

use crate::config::TokenStatsConfig;
use crate::element::Element;
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

/// Per-thread scratch reused across rows (no allocation per row).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// e_i = exp(x_i − m) of the current row.
    pub e: Vec<f32>,
}

/// The fused statistics of one row `z` at inverse temperature `inv_t`.
///
/// x_i − m is computed as (z_i − z_max)·(1/T) so that no precision is lost to a large common
/// offset; lse = z_max/T + ln S, H = ln S − Σ (x_i − m) e_i / S, logp = (z_y − z_max)/T − ln S.
pub(crate) fn row_stats<E: Element>(
    z: &[E],
    inv_t: f32,
    target: Option<u32>,
    top_p: Option<f32>,
    scratch: &mut Scratch,
) -> RowOut {
    let mut zmax = f32::NEG_INFINITY;
    let mut bad = false;
    for &v in z {
        let v = v.to_f32();
        bad |= v.is_nan() || v == f32::INFINITY;
        zmax = zmax.max(v);
    }
    let nan = RowOut { lse: f32::NAN, entropy: f32::NAN, logp: f32::NAN, branch: 0, problem: RowProblem::None };
    if bad {
        return RowOut { problem: RowProblem::NonFinite, ..nan };
    }
    if zmax == f32::NEG_INFINITY {
        return RowOut { problem: RowProblem::AllNegInf, ..nan };
    }
    let keep = top_p.is_some();
    scratch.e.clear();
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for &v in z {
        let d = (v.to_f32() - zmax) * inv_t;
        let e = d.exp();
        s += e as f64;
        if e > 0.0 {
            w += (d * e) as f64;
        }
        if keep {
            scratch.e.push(e);
        }
    }
    let ln_s = s.ln();
    let lse = (zmax * inv_t) as f64 + ln_s;
    let entropy = ln_s - w / s;
    let logp = target.map_or(f32::NAN, |y| (z[y as usize].to_f32() - zmax) * inv_t - ln_s as f32);
    let branch = top_p.map_or(0, |p| top_p_count(&mut scratch.e, p as f64 * s));
    RowOut { lse: lse as f32, entropy: entropy as f32, logp, branch, problem: RowProblem::None }
}

/// The smallest k such that the k largest of `e` sum to ≥ `mass`, ties interchangeable.
/// Placeholder by sorting; replaced by the histogram selection of DESIGN.md §5.
fn top_p_count(e: &mut [f32], mass: f64) -> u32 {
    e.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut cum = 0.0f64;
    let mut tau = *e.iter().rev().find(|&&v| v > 0.0).unwrap_or(&0.0);
    for &v in e.iter() {
        cum += v as f64;
        if cum >= mass {
            tau = v;
            break;
        }
    }
    if tau <= 0.0 {
        return 0;
    }
    let above = e.iter().take_while(|&&v| v > tau).count();
    let ties = e[above..].iter().take_while(|&&v| v == tau).count();
    let m_above: f64 = e[..above].iter().map(|&v| v as f64).sum();
    let need = ((mass - m_above) / tau as f64).ceil().max(1.0) as usize;
    (above + need.min(ties)) as u32
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
        .map_init(Scratch::default, |scratch, (r, row)| {
            row_stats(row, inv_t, targets.map(|t| t[r]), cfg.top_p, scratch)
        })
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
