//! The same functions as [`crate::ops`], composed from plain candle ops and differentiated by
//! candle autograd: the baseline the fused ops are tested and benchmarked against.
//!
//! Every step materialises an `[.., V]` f32 tensor (x = z/T, exp, log-softmax, p·log p, …) and
//! candle's backward materialises more; that is the cost the fused ops remove. The formulas are
//! those of DESIGN.md §4 (and `reference::`): the ratio's ±20 log clamp, clip-higher, dual-clip,
//! the clamped k1/k2/k3 KL estimators, the entropy bonus, and the four aggregations through the
//! aggregation weights a_t (loss = Σ a_t·total_t over counted tokens). Where the spec's value
//! has a kink (clip, dual clip, k3 cap), the branch is chosen as the reference chooses it, so the
//! autograd gradient is the reference's gradient away from exact ties.
//!
//! Inputs are checked exactly as by the fused ops (same errors). The per-token outputs carry no
//! gradient (they are detached); only `loss` (and `lse`/`entropy`/`logp` of [`token_stats`]) do.

use candle_core::{DType, Tensor, D};

use super::{check, GrpoLossInputs, GrpoLossOutput, KeptStatsOutput, TokenStatsOutput};
use crate::config::{GrpoConfig, KlEstimator, TokenStatsConfig};
use crate::cpu;
use crate::cpu::math::LN_P_FLOOR;
use crate::error::{Error, Result};
use crate::reference;
use crate::types::OUTSIDE_KEPT;
use crate::validate;

/// The ratio's log-domain clamp and the k3 estimator's u clamp (DESIGN.md §4).
const LOG_CLAMP: f32 = 20.0;
/// The k3 estimator's value clamp.
const K3_CAP: f32 = 10.0;

/// Token statistics from log_softmax, exp, mul, sum and gather; branch by a host sort.
///
/// Same inputs, outputs and errors as [`super::token_stats()`]; lse, entropy and logp carry
/// candle-autograd gradients w.r.t. `logits`.
pub fn token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<TokenStatsOutput> {
    let shape = check::token_stats(logits, targets, cfg)?;
    let z = logits.to_dtype(DType::F32)?;
    if cfg.check_finite {
        check_rows(&z, shape.rows(), shape.vocab)?;
    }
    let x = (&z / cfg.temperature as f64)?;
    let (lse, log_p) = log_softmax(&x)?;
    let entropy = entropy(&log_p)?;
    let logp = match targets {
        Some(t) => Some(gather_target(&log_p, t)?),
        None => None,
    };
    let branch = match cfg.top_p {
        Some(p) => Some(sorted_branch(&log_p, p, &shape.lead)?),
        None => None,
    };
    Ok(TokenStatsOutput { lse, entropy, logp, branch, kept: None })
}

/// The GRPO loss composed from candle ops (same signature as [`super::grpo_loss`]).
///
/// Same inputs, outputs and errors as [`super::grpo_loss`]; `loss` carries the candle-autograd
/// gradient w.r.t. `logits`, the per-token outputs are detached.
pub fn grpo_loss(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<GrpoLossOutput> {
    let host = check::grpo(logits, inputs, cfg)?;
    let n = host.targets.len();
    let z = logits.to_dtype(DType::F32)?;
    if cfg.check_finite {
        check_rows(&z, n, host.vocab)?;
    }
    let x = (&z / cfg.temperature as f64)?;
    let (_, log_p) = log_softmax(&x)?;
    let entropy = entropy(&log_p)?;
    let full_logp = gather_target(&log_p, inputs.targets)?;
    let filtered = cfg.filter.is_some() || inputs.kept_mask.is_some();
    let (mut logp, mut bonus, mut kept) = (full_logp.clone(), entropy.clone(), None);
    let mut outside = None;
    if filtered {
        // K on the host (from the logits' values, as `reference::kept_set`, or the mask), then
        // logits outside K masked to −inf: candle autograd gives ∂ℓ̃ and ∂H̃ through the mask.
        let (k, out) = kept_on_host(&z, &host, cfg)?;
        let k = Tensor::from_vec(k, z.dims(), z.device())?;
        let x_k = k.where_cond(&x, &x.ones_like()?.affine(0.0, f64::NEG_INFINITY)?)?;
        let (lse_k, log_pk) = log_softmax(&x_k)?;
        let entropy_k = self::entropy(&log_pk)?;
        let flag: Vec<u8> = out.iter().map(|&o| o * OUTSIDE_KEPT).collect();
        let flag = Tensor::from_vec(flag, host.lead.as_slice(), z.device())?;
        let out = Tensor::from_vec(out, host.lead.as_slice(), z.device())?;
        logp = out.where_cond(&full_logp, &gather_target(&log_pk, inputs.targets)?)?;
        if cfg.kept_entropy {
            bonus = entropy_k.clone();
        }
        kept = Some(KeptStatsOutput {
            lse: lse_k.detach(),
            entropy: entropy_k.detach(),
            logp: Some(logp.detach()),
            count: k.to_dtype(DType::U32)?.sum(D::Minus1)?,
            outside: Some(out.clone()),
        });
        outside = Some(flag);
    }
    let terms = token_terms(&logp, &bonus, inputs, cfg)?;
    let weights = cpu::aggregation_weights(&host.mask, host.seq_len, &cfg.aggregation)?;
    let weights = Tensor::from_vec(weights, host.lead.as_slice(), logits.device())?;
    // Masked tokens do not count (even if their terms are not finite), as in `reference::`.
    let counted = inputs.mask.ne(0f32)?;
    let weighted = counted.where_cond(&(&terms.total * &weights)?, &weights.zeros_like()?)?;
    let loss = weighted.sum_all()?;
    let branch = match cfg.top_p {
        Some(p) => Some(sorted_branch(&log_p, p, &host.lead)?),
        None => None,
    };
    Ok(GrpoLossOutput {
        loss,
        token_loss: terms.total.detach(),
        logp: logp.detach(),
        entropy: entropy.detach(),
        ratio: terms.ratio.detach(),
        clip_flags: match outside {
            Some(o) => (terms.clip_flags + o)?,
            None => terms.clip_flags,
        },
        kl: terms.kl.map(|k| k.detach()),
        branch,
        kept,
    })
}

/// K as 0/1 (u8, the logits' shape) and the outside-K flag per token (u8), on the host: the
/// filter's K of each row of `z` (as f64, `reference::kept_set`) or the mask's ids.
fn kept_on_host(z: &Tensor, host: &check::HostGrpoInputs, cfg: &GrpoConfig) -> Result<(Vec<u8>, Vec<u8>)> {
    let v = host.vocab;
    let zs: Vec<f64> = check::host_vec::<f32>(z)?.into_iter().map(f64::from).collect();
    let inputs = host.as_inputs();
    let (mut k, mut out) = (Vec::with_capacity(zs.len()), Vec::with_capacity(host.targets.len()));
    for (r, row) in zs.chunks_exact(v.max(1)).enumerate() {
        let kept = match (inputs.kept_mask, cfg.filter) {
            (Some(m), _) => reference::kept_from_ids(v, m.row(r)),
            (None, Some(f)) => reference::kept_set(row, cfg.temperature as f64, &f),
            (None, None) => vec![true; v],
        };
        out.push(!kept[host.targets[r] as usize] as u8);
        k.extend(kept.iter().map(|&b| b as u8));
    }
    Ok((k, out))
}

/// lse (the leading shape) and log p (`[.., V]`) of x along the last dimension. The row max is
/// detached: lse = m + ln Σ e^{x−m} has the same gradient p for any constant m.
fn log_softmax(x: &Tensor) -> Result<(Tensor, Tensor)> {
    // candle refuses max over an empty tensor (no rows); any m will do there.
    let m = if x.elem_count() == 0 { x.sum_keepdim(D::Minus1)? } else { x.max_keepdim(D::Minus1)? }.detach();
    let s = x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?;
    let lse = (s.log()? + m)?;
    let log_p = x.broadcast_sub(&lse)?;
    Ok((lse.squeeze(D::Minus1)?, log_p))
}

/// H = −Σ p·ln p with ln p floored at [`LN_P_FLOOR`].
fn entropy(log_p: &Tensor) -> Result<Tensor> {
    let p = log_p.exp()?;
    Ok(p.mul(&log_p.maximum(LN_P_FLOOR)?)?.sum(D::Minus1)?.neg()?)
}

/// log p of each row's target, with the targets' shape.
fn gather_target(log_p: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let idx = targets.contiguous()?.unsqueeze(D::Minus1)?;
    Ok(log_p.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?)
}

/// The first bad row of the logits (as f32, `[.., V]`), by the rule of DESIGN.md §7, computed
/// on the tensor's device: a count of NaN/+inf per row and a count of entries above −inf.
fn check_rows(z: &Tensor, n: usize, vocab: usize) -> Result<()> {
    let z = z.reshape((n, vocab))?;
    let nan = z.ne(&z)?.to_dtype(DType::F32)?;
    let pos_inf = z.eq(f32::INFINITY)?.to_dtype(DType::F32)?;
    let bad: Vec<f32> = (nan + pos_inf)?.sum(D::Minus1)?.to_vec1()?;
    let alive: Vec<f32> = z.gt(f32::NEG_INFINITY)?.to_dtype(DType::F32)?.sum(D::Minus1)?.to_vec1()?;
    validate::first_bad_row(n, |row| {
        if bad[row] > 0.0 {
            Some(Error::NonFiniteLogits { row })
        } else if alive[row] == 0.0 {
            Some(Error::AllNegInfRow { row })
        } else {
            None
        }
    })
}

/// The branch count of each row by copying p to the host and sorting it
/// ([`reference::branch_count`], in f64): not differentiable, `[.., V]` → `lead` (u32).
fn sorted_branch(log_p: &Tensor, top_p: f32, lead: &[usize]) -> Result<Tensor> {
    let n: usize = lead.iter().product();
    let vocab = log_p.dim(D::Minus1)?;
    let rows = log_p.reshape((n, vocab))?.to_vec2::<f32>()?;
    let branch: Vec<u32> = rows
        .iter()
        .map(|row| {
            let p: Vec<f64> = row.iter().map(|&lp| (lp as f64).exp()).collect();
            reference::branch_count(&p, top_p as f64)
        })
        .collect();
    Ok(Tensor::from_vec(branch, lead, log_p.device())?)
}

/// The per-token terms of the loss as tensors of the leading shape.
struct TokenTerms {
    /// L + β_kl·KL − c_H·H (differentiable).
    total: Tensor,
    ratio: Tensor,
    /// u8: bit 0 clipped, bit 1 dual-clipped.
    clip_flags: Tensor,
    kl: Option<Tensor>,
}

/// ρ, the clipped surrogate with dual clip, the KL estimate and the entropy bonus, composed
/// from elementwise candle ops (DESIGN.md §4).
fn token_terms(logp: &Tensor, entropy: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<TokenTerms> {
    let adv = inputs.advantages;
    let neg_adv = adv.neg()?;
    let ratio = (logp - inputs.old_logp)?.clamp(-LOG_CLAMP, LOG_CLAMP)?.exp()?;
    let clipped_ratio = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)?;
    let unclipped = (&neg_adv * &ratio)?;
    let clip_branch = (&neg_adv * &clipped_ratio)?;
    // The reference takes the clipped branch only when strictly larger (then ∂L/∂ℓ = 0).
    let clipped = clip_branch.gt(&unclipped)?;
    let mut policy = clipped.where_cond(&clip_branch, &unclipped)?;
    let mut flags = clipped;
    if let Some(c) = cfg.dual_clip {
        let cap = (&neg_adv * c as f64)?;
        let dual = (adv.lt(0f32)? * policy.gt(&cap)?)?;
        policy = dual.where_cond(&cap, &policy)?;
        flags = ((&flags + &dual)? + &dual)?;
    }
    let mut total = (policy - (entropy * cfg.entropy_coef as f64)?)?;
    let kl = match (cfg.kl, inputs.ref_logp) {
        (Some(k), Some(r)) => {
            let kl = kl_term(logp, r, k.estimator)?;
            total = (total + (&kl * k.coef as f64)?)?;
            Some(kl)
        }
        _ => None,
    };
    Ok(TokenTerms { total, ratio, clip_flags: flags, kl })
}

/// A KL estimate between current ℓ and reference ℓ_ref (k3 with the u clamp and the value cap).
fn kl_term(logp: &Tensor, ref_logp: &Tensor, est: KlEstimator) -> Result<Tensor> {
    let d = (logp - ref_logp)?;
    Ok(match est {
        KlEstimator::K1 => d,
        KlEstimator::K2 => (d.sqr()? * 0.5)?,
        KlEstimator::K3 => {
            let u = d.neg()?.clamp(-LOG_CLAMP, LOG_CLAMP)?;
            ((u.exp()? - &u)? - 1.0)?.clamp(-K3_CAP, K3_CAP)?
        }
    })
}
