//! Naive baselines the fused kernels are benchmarked against (and the CLI's `bench` runs):
//! the same math composed from candle tensor ops, and a plain single-pass log-sum-exp that only
//! reads each row once (the floor for any fused pass).

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use crate::config::TokenStatsConfig;
use crate::cpu::math::{self, SimdKernel, BLOCK};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::types::TokenStats;
use crate::validate;

/// Token statistics composed from candle tensor ops on the tensor's own device, the way a
/// typical user writes them: x = z/T in f32 (`logits.float() / T`), log_softmax, p = exp,
/// H = −Σ p·log p (with log p of −inf logits clamped to f32::MIN so that 0·(−inf) adds 0, not
/// NaN), lse = logsumexp(x), logp = gather(log p, y); the top-p count by copying p to the host
/// and sorting each row (descending; f64 cumulative sum — an f32 cumsum over 150k terms can be
/// off by more than the 1e−5 band of DESIGN.md §4). Every step materialises an `[N, V]` tensor.
///
/// `logits` is `[N, V]` (any float dtype), `targets` `[N]` u32. Errors: the config's, shapes,
/// targets out of range (checked on the host), and with `cfg.check_finite` the first row whose
/// lse is NaN/+inf ([`Error::NonFiniteLogits`]) or −inf ([`Error::AllNegInfRow`]).
pub fn candle_token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<TokenStats> {
    cfg.validate()?;
    let (n, vocab) = logits.dims2()?;
    if vocab == 0 {
        return Err(Error::EmptyVocab);
    }
    let x = (logits.to_dtype(DType::F32)? / cfg.temperature as f64)?;
    let log_p = candle_nn::ops::log_softmax(&x, D::Minus1)?;
    let p = log_p.exp()?;
    let entropy = (p.mul(&log_p.clamp(f32::MIN, 0.0f32)?)?.sum(D::Minus1)? * -1.0)?;
    let lse = x.log_sum_exp(D::Minus1)?;
    let logp = match targets {
        Some(t) => {
            validate::targets(&t.to_vec1::<u32>()?, n, vocab)?;
            Some(log_p.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.to_vec1::<f32>()?)
        }
        None => None,
    };
    let lse = lse.to_vec1::<f32>()?;
    if cfg.check_finite {
        validate::first_bad_row(n, |row| match lse[row] {
            v if v.is_nan() || v == f32::INFINITY => Some(Error::NonFiniteLogits { row }),
            f32::NEG_INFINITY => Some(Error::AllNegInfRow { row }),
            _ => None,
        })?;
    }
    let branch = match cfg.top_p {
        Some(top_p) => Some(p.to_vec2::<f32>()?.into_iter().map(|row| sorted_branch(row, top_p)).collect()),
        None => None,
    };
    Ok(TokenStats { lse, entropy: entropy.to_vec1()?, logp, branch, kept: None })
}

/// The branch count of one probability row by sorting: the number of cumulative sums (largest
/// first) below `top_p`, plus one.
fn sorted_branch(mut p: Vec<f32>, top_p: f32) -> u32 {
    p.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut cum = 0.0f64;
    let below = p.iter().take_while(|&&v| {
        cum += v as f64;
        cum < top_p as f64
    });
    (below.count() + 1).min(p.iter().filter(|&&v| v > 0.0).count()) as u32
}

/// A plain single-pass (online) log-sum-exp of each row of row-major `[N, V]` logits, rows in
/// parallel: the floor for any fused pass. Online over L1-sized blocks — each block is read from
/// memory once, its max taken, the running sum rescaled (in f64) if the max grew, then its exps
/// summed while it is in L1: one read, one exp per element, nothing else.
///
/// It uses the same polynomial `exp`, widening loads, lane sums and AVX2+FMA dispatch as the
/// fused `cpu::` kernels, so that a benchmark against it measures the fused work (entropy sum,
/// finiteness check, top-p), not the quality of `exp`. With V = 0 it returns no rows; a
/// trailing partial row is ignored. NaN logits give NaN, a row of −inf gives −inf.
pub fn plain_lse<E: Element>(logits: &[E], vocab: usize) -> Vec<f32> {
    if vocab == 0 {
        return Vec::new();
    }
    logits
        .par_chunks_exact(vocab)
        .map_init(|| vec![0.0f32; BLOCK], |buf, row| math::dispatch(PlainLse { row, buf }))
        .collect()
}

/// One row of [`plain_lse`], compiled twice (see `cpu::math::dispatch`).
struct PlainLse<'a, E> {
    row: &'a [E],
    buf: &'a mut [f32],
}

impl<E: Element> SimdKernel for PlainLse<'_, E> {
    type Out = f32;

    #[inline(always)]
    fn run<const AVX2: bool>(self) -> f32 {
        let (mut m, mut s) = (f32::NEG_INFINITY, 0.0f64);
        for block in self.row.chunks(BLOCK) {
            let zb = math::widen(block, self.buf);
            let bmax = math::block_max::<AVX2>(zb);
            if bmax > m {
                s *= (m as f64 - bmax as f64).exp();
                m = bmax;
            }
            if m > f32::NEG_INFINITY {
                s += math::exp_sum::<AVX2>(zb, m, 1.0) as f64;
            }
        }
        (m as f64 + s.ln()) as f32
    }
}
