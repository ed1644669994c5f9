//! The fused GRPO loss on the CPU: forward (one pass over each row) and backward (one more
//! pass, dlogits in the logits dtype, into a new buffer or in place).
//!
//! Traffic per row of V logits: the forward reads the row once (the token-stats kernel
//! `row_stats`, which also gives the branch count) and does O(1) scalar work per token; the
//! backward reads the row once and writes dlogits once, from the saved lse, H, g_t and h_t, in
//! blocks that stay in L1 (AVX2+FMA and the polynomial exp of `cpu::math` when the CPU has
//! them). Masked rows (g = h = 0) are written as zeros without reading the logits. No `[N, V]`
//! temporary exists besides dlogits.
//!
//! Determinism: rows are independent and the scalar loss is summed in f64 in token order after
//! the parallel part, so results are bit-identical for any thread count.

use rayon::prelude::*;

use super::kept::RowKept;
use super::math::{self, SimdKernel, BLOCK, LN_P_FLOOR};
use super::sequence::aggregation_weights;
use super::token_stats::{kept_stats, row_stats, with_scratch, RowOut};
use crate::config::{check_temperature, GrpoConfig, KlEstimator};
use crate::element::{DType, Element};
use crate::error::Result;
use crate::types::{GrpoForward, GrpoInputs, GrpoSaved, KeptSaved, CLIPPED, DUAL_CLIPPED, OUTSIDE_KEPT};
use crate::validate;

/// The ratio's log-domain clamp and the k3 estimator's u clamp (DESIGN.md §4).
const LOG_CLAMP: f32 = 20.0;
/// The k3 estimator's value clamp.
const K3_CAP: f32 = 10.0;
/// Rows are grouped so that one rayon task covers at least this many logits: for small V the
/// per-task overhead would otherwise dominate the O(V) row work.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

fn rows_per_task(vocab: usize) -> usize {
    (MIN_ELEMS_PER_TASK / vocab.max(1)).max(1)
}

/// One token's loss terms in f32, mirroring [`crate::reference::token_loss`] branch for branch.
#[derive(Debug, Clone, Copy)]
struct TokenLoss {
    ratio: f32,
    kl: f32,
    total: f32,
    /// ∂(L + β_kl·KL)/∂ℓ.
    dtotal_dlogp: f32,
    flags: u8,
}

fn token_loss(logp: f32, old_logp: f32, ref_logp: Option<f32>, adv: f32, entropy: f32, cfg: &GrpoConfig) -> TokenLoss {
    let d = logp - old_logp;
    let ratio = d.clamp(-LOG_CLAMP, LOG_CLAMP).exp();
    // The clamp is flat outside ±20, so the ratio's derivative is 0 there.
    let dratio = if d.abs() <= LOG_CLAMP { ratio } else { 0.0 };
    // clip_low ∈ [0, 1) and clip_high ≥ 0 (validated), so lo ≤ hi and `clamp` cannot panic.
    let clipped_ratio = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let (unclipped, clip_branch) = (-adv * ratio, -adv * clipped_ratio);
    let clipped = clip_branch > unclipped;
    let (mut policy, mut dpolicy) = if clipped { (clip_branch, 0.0) } else { (unclipped, -adv * dratio) };
    let mut dual_clipped = false;
    if let (Some(c), true) = (cfg.dual_clip, adv < 0.0) {
        let cap = -adv * c;
        if policy > cap {
            (policy, dpolicy, dual_clipped) = (cap, 0.0, true);
        }
    }
    let (kl, dkl, beta) = match (cfg.kl, ref_logp) {
        (Some(k), Some(r)) => {
            let (v, dv) = kl_term(logp, r, k.estimator);
            (v, dv, k.coef)
        }
        _ => (0.0, 0.0, 0.0),
    };
    TokenLoss {
        ratio,
        kl,
        total: policy + beta * kl - cfg.entropy_coef * entropy,
        dtotal_dlogp: dpolicy + beta * dkl,
        flags: if clipped { CLIPPED } else { 0 } | if dual_clipped { DUAL_CLIPPED } else { 0 },
    }
}

/// A KL estimate and its derivative w.r.t. ℓ, as [`crate::reference::kl_term`].
fn kl_term(logp: f32, ref_logp: f32, est: KlEstimator) -> (f32, f32) {
    let d = logp - ref_logp;
    match est {
        KlEstimator::K1 => (d, 1.0),
        KlEstimator::K2 => (0.5 * d * d, d),
        KlEstimator::K3 => {
            let raw = -d;
            let u = raw.clamp(-LOG_CLAMP, LOG_CLAMP);
            // e^u − u − 1 as expm1(u) − u: in f32 the plain form loses all digits for small u.
            let em1 = u.exp_m1();
            let v = em1 - u;
            if v > K3_CAP {
                (K3_CAP, 0.0)
            } else if raw.abs() > LOG_CLAMP {
                (v, 0.0)
            } else {
                (v, -em1)
            }
        }
    }
}

/// Everything the forward keeps of one token.
#[derive(Debug, Clone, Copy)]
struct TokenOut {
    stats: RowOut,
    loss: TokenLoss,
}

/// Fused GRPO forward over row-major `[N, V]` logits: per row lse, entropy, logp (and the
/// branch count when `cfg.top_p` is set) from one pass, then ratio, clip flags, KL, per-token
/// loss, the aggregated scalar loss and the per-token scalars the backward needs.
///
/// Per-token terms are computed in f32 with the branches of [`crate::reference::token_loss`];
/// the scalar loss Σ a_t·total_t over masked-in tokens is summed in f64 in token order, so it
/// does not depend on the thread count. An empty batch (mask all 0) gives loss 0 and g = h = 0.
///
/// Errors, in this order: the configuration ([`GrpoConfig::validate`]), the logits' shape
/// ([`crate::Error::EmptyVocab`], [`crate::Error::ShapeMismatch`]), the per-token inputs
/// ([`GrpoInputs::validate`]), then — with `cfg.check_finite` — the first row with a NaN/+inf
/// logit ([`crate::Error::NonFiniteLogits`]) or only −inf ([`crate::Error::AllNegInfRow`]).
/// Without `check_finite` such rows give NaN terms (and a NaN loss when masked in).
pub fn grpo_forward<E: Element>(
    logits: &[E],
    vocab: usize,
    inputs: &GrpoInputs,
    cfg: &GrpoConfig,
) -> Result<GrpoForward> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    inputs.validate(n, vocab, cfg.kl.is_some())?;
    let weights = aggregation_weights(inputs.mask, inputs.seq_len, &cfg.aggregation)?;
    if cfg.filter.is_some() && inputs.kept_mask.is_some() {
        validate::filter_or_mask(cfg.filter.as_ref(), inputs.kept_mask.as_ref(), n, vocab)?;
    }
    let how = |r: usize| match (cfg.filter, inputs.kept_mask) {
        (_, Some(m)) => Some(RowKept::Ids(m.row(r))),
        (Some(f), None) => Some(RowKept::Filter(f)),
        (None, None) => None,
    };
    let inv_t = 1.0 / cfg.temperature;
    let tokens: Vec<TokenOut> = logits
        .par_chunks_exact(vocab)
        .with_min_len(rows_per_task(vocab))
        .enumerate()
        .map(|(r, row)| {
            let y = Some(inputs.targets[r]);
            let stats = with_scratch(|scratch| row_stats(row, inv_t, y, cfg.top_p, how(r), scratch));
            let ref_logp = inputs.ref_logp.map(|x| x[r]);
            // With a kept set the ratio (and KL) use ℓ̃, the bonus H̃ when asked.
            let (logp, entropy, outside) = match stats.kept {
                Some(k) => (k.logp, if cfg.kept_entropy { k.entropy } else { stats.entropy }, k.outside),
                None => (stats.logp, stats.entropy, false),
            };
            let mut loss = token_loss(logp, inputs.old_logp[r], ref_logp, inputs.advantages[r], entropy, cfg);
            if outside {
                loss.flags |= OUTSIDE_KEPT;
            }
            TokenOut { stats, loss }
        })
        .collect();
    if cfg.check_finite {
        validate::first_bad_row(n, |r| tokens[r].stats.problem.error(r))?;
    }
    Ok(assemble(&tokens, &weights, inputs, cfg, how(0).is_some()))
}

/// The struct-of-arrays output, the saved backward scalars and the f64 loss sum (token order).
fn assemble(
    tokens: &[TokenOut],
    weights: &[f32],
    inputs: &GrpoInputs,
    cfg: &GrpoConfig,
    filtered: bool,
) -> GrpoForward {
    let (n, mask) = (tokens.len(), inputs.mask);
    let mut loss = 0.0f64;
    let mut saved = GrpoSaved {
        lse: Vec::with_capacity(n),
        entropy: Vec::with_capacity(n),
        grad_logp: Vec::with_capacity(n),
        grad_entropy: Vec::with_capacity(n),
        kept: None,
    };
    for ((t, &a), &m) in tokens.iter().zip(weights).zip(mask) {
        let counts = m != 0.0;
        if counts {
            loss += a as f64 * t.loss.total as f64;
        }
        saved.lse.push(t.stats.lse);
        saved.entropy.push(t.stats.entropy);
        saved.grad_logp.push(if counts { a * t.loss.dtotal_dlogp } else { 0.0 });
        saved.grad_entropy.push(if counts { -a * cfg.entropy_coef } else { 0.0 });
    }
    let rows: Vec<RowOut> = if filtered { tokens.iter().map(|t| t.stats).collect() } else { Vec::new() };
    let kept = filtered.then(|| kept_stats(&rows, true));
    if let Some(k) = &kept {
        saved.kept = Some(KeptSaved {
            lse: k.lse.clone(),
            entropy: k.entropy.clone(),
            threshold: rows.iter().map(|r| r.kept.map_or(f32::NAN, |k| k.threshold)).collect(),
            outside: k.outside.clone().unwrap_or_default(),
            kept_entropy: cfg.kept_entropy,
            token_ids: inputs.kept_mask.map_or(Vec::new(), |m| m.token_ids.to_vec()),
            offsets: inputs.kept_mask.map_or(Vec::new(), |m| m.offsets.to_vec()),
        });
    }
    GrpoForward {
        loss: loss as f32,
        token_loss: tokens.iter().map(|t| t.loss.total).collect(),
        logp: match &kept {
            Some(k) => k.logp.clone().unwrap_or_default(),
            None => tokens.iter().map(|t| t.stats.logp).collect(),
        },
        ratio: tokens.iter().map(|t| t.loss.ratio).collect(),
        clip_flags: tokens.iter().map(|t| t.loss.flags).collect(),
        kl: cfg.kl.map(|_| tokens.iter().map(|t| t.loss.kl).collect()),
        branch: cfg.top_p.map(|_| tokens.iter().map(|t| t.stats.branch).collect()),
        saved,
        kept,
    }
}

/// The per-row constants of the backward: with c = grad_loss/T, γ = −c·g and β = −c·h,
/// dz_j = p_j·(γ + β·(ln p_j + H)) off the target and −c·g·expm1(ln p_y) + β·p_y·(ln p_y + H)
/// at the target (c·g·(1 − p_y) without the cancellation of 1 − p_y when p_y ≈ 1).
#[derive(Debug, Clone, Copy)]
struct RowCoef {
    inv_t: f32,
    lse: f32,
    entropy: f32,
    cg: f32,
    beta: f32,
    /// g = h = 0: the row's gradient is exactly 0.
    zero: bool,
}

impl RowCoef {
    fn new(r: usize, saved: &GrpoSaved, inv_t: f32, grad_loss: f32) -> Self {
        let (g, h) = (saved.grad_logp[r], saved.grad_entropy[r]);
        let c = grad_loss * inv_t;
        RowCoef {
            inv_t,
            lse: saved.lse[r],
            entropy: saved.entropy[r],
            cg: c * g,
            beta: -c * h,
            zero: g == 0.0 && h == 0.0,
        }
    }

    /// ln p_j, floored so that a −inf logit gives p = 0 and a finite product (a select, not
    /// `f32::max`, so that it vectorises).
    #[inline(always)]
    fn ln_p<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = math::fma::<FMA>(z, self.inv_t, -self.lse);
        if lp > LN_P_FLOOR {
            lp
        } else {
            LN_P_FLOOR
        }
    }

    /// dz_j for j ≠ y: the per-element work of the backward (vectorised polynomial exp).
    #[inline(always)]
    fn off_target<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = self.ln_p::<FMA>(z);
        math::exp::<FMA>(lp) * math::fma::<FMA>(self.beta, lp + self.entropy, -self.cg)
    }

    /// dz_y (once per row, so libm's expm1 is affordable).
    #[inline(always)]
    fn target<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = self.ln_p::<FMA>(z);
        -self.cg * lp.exp_m1() + self.beta * math::exp::<FMA>(lp) * (lp + self.entropy)
    }
}

/// The per-row constants of the backward over a kept set K (DESIGN.md §4, "Sampling filter and
/// replay"): with c = grad_loss/T, dz_j = c·[g·(δ_jy − q_j) − h·r_j] where q = p̃·1_K (p when
/// the target is outside K) and r = p̃(ln p̃ + H̃)·1_K with `kept_entropy`, else p(ln p + H).
#[derive(Debug, Clone, Copy)]
struct KeptCoef<'a> {
    full: RowCoef,
    lse_k: f32,
    entropy_k: f32,
    outside: bool,
    kept_entropy: bool,
    /// K = {j : z_j ≥ threshold} when `ids` is `None`.
    threshold: f32,
    /// A given mask's row.
    ids: Option<&'a [u32]>,
}

impl<'a> KeptCoef<'a> {
    fn new(r: usize, full: RowCoef, kept: &'a KeptSaved) -> Self {
        KeptCoef {
            full,
            lse_k: kept.lse[r],
            entropy_k: kept.entropy[r],
            outside: kept.outside[r] != 0,
            kept_entropy: kept.kept_entropy,
            threshold: kept.threshold[r],
            ids: kept.mask().map(|m| m.row(r)),
        }
    }

    /// ln p̃_j (floored as [`RowCoef::ln_p`]).
    #[inline(always)]
    fn ln_pk(&self, z: f32) -> f32 {
        let lp = z.mul_add(self.full.inv_t, -self.lse_k);
        if lp > LN_P_FLOOR {
            lp
        } else {
            LN_P_FLOOR
        }
    }

    /// dz_j of logit `z`, in K or not, at the target or not.
    #[inline(always)]
    fn dz(&self, z: f32, in_k: bool, is_target: bool) -> f32 {
        let k = &self.full;
        let lp = k.ln_p::<false>(z);
        let lpk = if in_k { self.ln_pk(z) } else { f32::NEG_INFINITY };
        // ln q_j: the log-prob term's distribution.
        let ln_q = if self.outside { lp } else { lpk };
        let policy = if is_target { -k.cg * ln_q.exp_m1() } else { -k.cg * ln_q.exp() };
        let entropy = match (self.kept_entropy, in_k) {
            (true, true) => lpk.exp() * (lpk + self.entropy_k),
            (true, false) => 0.0,
            (false, _) => lp.exp() * (lp + k.entropy),
        };
        policy + k.beta * entropy
    }
}

/// One row of the backward over a kept set (scalar; `src = None` means in place). Each dz_j
/// depends on z_j alone, so the in-place pass reads each logit before overwriting it.
fn kept_row<E: Element>(src: Option<&[E]>, dst: &mut [E], target: usize, k: KeptCoef, s: &mut BackScratch) {
    if k.full.zero {
        dst.fill(E::from_f32(0.0));
        return;
    }
    // Membership of a given mask's row, as 1.0 in a row-long buffer (cleared afterwards).
    let member = &mut s.wide;
    if let Some(ids) = k.ids {
        member.clear();
        member.resize(dst.len(), 0.0);
        ids.iter().for_each(|&i| member[i as usize] = 1.0);
    }
    for j in 0..dst.len() {
        let z = src.map_or(dst[j], |s| s[j]).to_f32();
        let in_k = match k.ids {
            Some(_) => member[j] != 0.0,
            None => z >= k.threshold,
        };
        dst[j] = E::from_f32(k.dz(z, in_k, j == target));
    }
}

/// Per-thread block buffers of the backward (bf16/f16 rows are widened to f32, transformed,
/// narrowed back).
#[derive(Debug, Default)]
struct BackScratch {
    wide: Vec<f32>,
    dz: Vec<f32>,
}

/// One row of the backward, compiled twice by [`math::dispatch`]. `src = None` means in place:
/// `dst` holds the logits and is overwritten.
struct BackwardRow<'a, E> {
    src: Option<&'a [E]>,
    dst: &'a mut [E],
    target: usize,
    k: RowCoef,
    scratch: &'a mut BackScratch,
}

impl<E: Element> SimdKernel for BackwardRow<'_, E> {
    type Out = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let BackwardRow { src, dst, target, k, scratch } = self;
        if k.zero {
            dst.fill(E::from_f32(0.0));
            return;
        }
        // Read before an in-place pass overwrites it.
        let dy = k.target::<FMA>(src.unwrap_or(dst)[target].to_f32());
        scratch.wide.resize(BLOCK, 0.0);
        scratch.dz.resize(BLOCK, 0.0);
        for (b, out) in dst.chunks_mut(BLOCK).enumerate() {
            let zb = src.map(|s| &s[b * BLOCK..b * BLOCK + out.len()]);
            backward_block::<E, FMA>(&k, zb, out, scratch);
        }
        dst[target] = E::from_f32(dy);
    }
}

/// dz of one block: `out = dz(src)`, or `out = dz(out)` when `src` is `None`. f32 rows are
/// transformed directly; bf16/f16 go through f32 buffers that stay in L1.
#[inline(always)]
fn backward_block<E: Element, const FMA: bool>(k: &RowCoef, src: Option<&[E]>, out: &mut [E], s: &mut BackScratch) {
    if E::DTYPE == DType::F32 {
        let o: &mut [f32] = bytemuck::cast_slice_mut(out);
        match src {
            Some(z) => {
                o.iter_mut().zip(bytemuck::cast_slice::<E, f32>(z)).for_each(|(o, &z)| *o = k.off_target::<FMA>(z))
            }
            None => o.iter_mut().for_each(|o| *o = k.off_target::<FMA>(*o)),
        }
        return;
    }
    let dz = &mut s.dz[..out.len()];
    let zb = math::widen(src.unwrap_or(out), &mut s.wide);
    dz.iter_mut().zip(zb).for_each(|(d, &z)| *d = k.off_target::<FMA>(z));
    math::narrow(dz, out);
}

/// Checks of every backward input; returns N.
fn check_backward(len: usize, vocab: usize, targets: &[u32], saved: &GrpoSaved, temperature: f32) -> Result<usize> {
    check_temperature(temperature)?;
    let n = validate::rows(len, vocab)?;
    validate::targets(targets, n, vocab)?;
    validate::len("saved.lse", saved.lse.len(), n, "one per row")?;
    validate::len("saved.entropy", saved.entropy.len(), n, "one per row")?;
    validate::len("saved.grad_logp", saved.grad_logp.len(), n, "one per row")?;
    validate::len("saved.grad_entropy", saved.grad_entropy.len(), n, "one per row")?;
    if let Some(k) = &saved.kept {
        validate::len("saved.kept.lse", k.lse.len(), n, "one per row")?;
        validate::len("saved.kept.entropy", k.entropy.len(), n, "one per row")?;
        validate::len("saved.kept.threshold", k.threshold.len(), n, "one per row")?;
        validate::len("saved.kept.outside", k.outside.len(), n, "one per row")?;
        match k.mask() {
            Some(m) => m.validate(n, vocab)?,
            None => validate::len("saved.kept.token_ids", k.token_ids.len(), 0, "none without offsets")?,
        }
    }
    Ok(n)
}

/// Backward into a new buffer: dlogits = grad_loss · ∂loss/∂z, in the logits dtype.
/// ∂loss/∂z_tj = (1/T)·[g_t·(δ_{j,y_t} − p_tj) − h_t·p_tj·(ln p_tj + H_t)], masked rows zero.
///
/// Errors as [`grpo_backward_into`].
pub fn grpo_backward<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
) -> Result<Vec<E>> {
    let mut out = vec![E::from_f32(0.0); logits.len()];
    grpo_backward_into(logits, vocab, targets, saved, temperature, grad_loss, &mut out)?;
    Ok(out)
}

/// Backward into a caller-given buffer of the logits' shape (see [`grpo_backward`]): one read of
/// each logit, one write of each gradient, rows in parallel; p_tj = exp(z_tj/T − lse_t) from the
/// saved lse. `temperature` must be the forward's.
///
/// Errors: [`crate::Error::InvalidTemperature`], [`crate::Error::EmptyVocab`],
/// [`crate::Error::ShapeMismatch`] (logits not a multiple of V, `out`, `targets` or a `saved`
/// vector of the wrong length), [`crate::Error::TargetOutOfRange`],
/// [`crate::Error::NonFiniteInput`] for a NaN/infinite `grad_loss`. Nothing is written on error.
pub fn grpo_backward_into<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
    out: &mut [E],
) -> Result<()> {
    check_backward(logits.len(), vocab, targets, saved, temperature)?;
    validate::len("dlogits", out.len(), logits.len(), "the logits' shape")?;
    validate::finite("grad_loss", &[grad_loss])?;
    let inv_t = 1.0 / temperature;
    out.par_chunks_exact_mut(vocab)
        .zip(logits.par_chunks_exact(vocab))
        .with_min_len(rows_per_task(vocab))
        .enumerate()
        .for_each_init(BackScratch::default, |scratch, (r, (dst, z))| {
            let k = RowCoef::new(r, saved, inv_t, grad_loss);
            match &saved.kept {
                None => math::dispatch(BackwardRow { src: Some(z), dst, target: targets[r] as usize, k, scratch }),
                Some(kept) => kept_row(Some(z), dst, targets[r] as usize, KeptCoef::new(r, k, kept), scratch),
            }
        });
    Ok(())
}

/// Backward in place: the logits buffer is overwritten with dlogits (saves one `[N, V]` buffer).
/// Bit-identical to [`grpo_backward`]; errors as [`grpo_backward_into`] (nothing is overwritten
/// on error).
pub fn grpo_backward_in_place<E: Element>(
    logits: &mut [E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
) -> Result<()> {
    check_backward(logits.len(), vocab, targets, saved, temperature)?;
    validate::finite("grad_loss", &[grad_loss])?;
    let inv_t = 1.0 / temperature;
    logits.par_chunks_exact_mut(vocab).with_min_len(rows_per_task(vocab)).enumerate().for_each_init(
        BackScratch::default,
        |scratch, (r, dst)| {
            let k = RowCoef::new(r, saved, inv_t, grad_loss);
            match &saved.kept {
                None => math::dispatch(BackwardRow { src: None, dst, target: targets[r] as usize, k, scratch }),
                Some(kept) => kept_row(None, dst, targets[r] as usize, KeptCoef::new(r, k, kept), scratch),
            }
        },
    );
    Ok(())
}
