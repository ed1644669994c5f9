//! The GRPO policy loss in float64: per-token value and derivative, the aggregated loss, and
//! the analytic gradient with respect to the logits.

use super::kept::{kept_of_row, kept_stats, KeptRow};
use super::sequence::aggregation_weights;
use super::token::{row_stats, softmax};
use crate::config::{GrpoConfig, KlEstimator};
use crate::error::Result;
use crate::types::GrpoInputs;
use crate::validate;

/// One token's loss terms and the derivative of L + β_kl·KL with respect to ℓ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLoss {
    /// The clipped surrogate L (after dual-clip).
    pub policy: f64,
    /// ρ = exp(clamp(ℓ − ℓ_old, −20, 20)).
    pub ratio: f64,
    /// The clipped branch was strictly larger (zero policy gradient).
    pub clipped: bool,
    /// The dual clip capped the loss (zero policy gradient).
    pub dual_clipped: bool,
    /// The KL estimate (0 when off).
    pub kl: f64,
    /// L + β_kl·KL − c_H·H.
    pub total: f64,
    /// ∂(L + β_kl·KL)/∂ℓ (the entropy term is handled through H).
    pub dtotal_dlogp: f64,
}

/// The per-token loss of DESIGN.md §4 at current log-prob `logp` and entropy `entropy`.
pub fn token_loss(
    logp: f64,
    old_logp: f64,
    ref_logp: Option<f64>,
    adv: f64,
    entropy: f64,
    cfg: &GrpoConfig,
) -> TokenLoss {
    let d = logp - old_logp;
    let ratio = d.clamp(-20.0, 20.0).exp();
    let dratio = if d.abs() <= 20.0 { ratio } else { 0.0 };
    let clipped_ratio = ratio.clamp(1.0 - cfg.clip_low as f64, 1.0 + cfg.clip_high as f64);
    let (unclipped, clip_branch) = (-adv * ratio, -adv * clipped_ratio);
    let clipped = clip_branch > unclipped;
    let (mut policy, mut dpolicy) = if clipped { (clip_branch, 0.0) } else { (unclipped, -adv * dratio) };
    let mut dual_clipped = false;
    if let (Some(c), true) = (cfg.dual_clip, adv < 0.0) {
        let cap = -adv * c as f64;
        if policy > cap {
            (policy, dpolicy, dual_clipped) = (cap, 0.0, true);
        }
    }
    let (kl, dkl, beta) = match (cfg.kl, ref_logp) {
        (Some(k), Some(r)) => {
            let (v, dv) = kl_term(logp, r, k.estimator);
            (v, dv, k.coef as f64)
        }
        _ => (0.0, 0.0, 0.0),
    };
    TokenLoss {
        policy,
        ratio,
        clipped,
        dual_clipped,
        kl,
        total: policy + beta * kl - cfg.entropy_coef as f64 * entropy,
        dtotal_dlogp: dpolicy + beta * dkl,
    }
}

/// A KL estimate between current ℓ and reference ℓ_ref, and its derivative w.r.t. ℓ.
pub fn kl_term(logp: f64, ref_logp: f64, est: KlEstimator) -> (f64, f64) {
    let d = logp - ref_logp;
    match est {
        KlEstimator::K1 => (d, 1.0),
        KlEstimator::K2 => (0.5 * d * d, d),
        KlEstimator::K3 => {
            let raw = -d;
            let u = raw.clamp(-20.0, 20.0);
            let v = u.exp() - u - 1.0;
            if v > 10.0 {
                (10.0, 0.0)
            } else if raw.abs() > 20.0 {
                (v, 0.0)
            } else {
                (v, 1.0 - u.exp())
            }
        }
    }
}

/// Reference result of the whole loss.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoReference {
    /// Aggregated loss Σ_t a_t·total_t.
    pub loss: f64,
    /// Per-token terms.
    pub tokens: Vec<TokenLoss>,
    /// Per-token log-prob ℓ_t.
    pub logp: Vec<f64>,
    /// Per-token entropy H_t.
    pub entropy: Vec<f64>,
    /// Per-token lse.
    pub lse: Vec<f64>,
    /// Per-token branch count (when top-p is set).
    pub branch: Option<Vec<u32>>,
    /// Aggregation weights a_t.
    pub weights: Vec<f64>,
    /// With a filter or kept mask: the statistics over each token's K (`logp` then holds ℓ̃).
    pub kept: Option<Vec<KeptRow>>,
    /// With a filter or kept mask: each token's K.
    pub kept_sets: Option<Vec<Vec<bool>>>,
}

/// The aggregated loss and per-token terms of `[N, V]` logits (as f64).
pub fn grpo_loss(logits: &[f64], vocab: usize, inputs: &GrpoInputs, cfg: &GrpoConfig) -> Result<GrpoReference> {
    let n = check(logits, vocab, inputs, cfg)?;
    let weights = aggregation_weights(inputs.mask, inputs.seq_len, &cfg.aggregation)?;
    let (t, top_p) = (cfg.temperature as f64, cfg.top_p.map(|p| p as f64));
    let mut out = GrpoReference {
        loss: 0.0,
        tokens: Vec::with_capacity(n),
        logp: Vec::with_capacity(n),
        entropy: Vec::with_capacity(n),
        lse: Vec::with_capacity(n),
        branch: top_p.map(|_| Vec::with_capacity(n)),
        weights,
        kept: None,
        kept_sets: None,
    };
    let filtered = cfg.filter.is_some() || inputs.kept_mask.is_some();
    let (mut kept_rows, mut kept_sets) = (Vec::new(), Vec::new());
    for (r, row) in logits.chunks_exact(vocab).enumerate() {
        let s = row_stats(row, Some(inputs.targets[r]), t, top_p);
        let mut l = s.logp.unwrap_or(f64::NAN);
        let mut bonus_entropy = s.entropy;
        if filtered {
            let kept = kept_of_row(row, t, cfg.filter.as_ref(), inputs.kept_mask.as_ref(), r);
            let k = kept_stats(row, t, &kept, Some(inputs.targets[r]));
            l = k.logp.unwrap_or(f64::NAN);
            if cfg.kept_entropy {
                bonus_entropy = k.entropy;
            }
            kept_rows.push(k);
            kept_sets.push(kept);
        }
        let tl = token_loss(
            l,
            inputs.old_logp[r] as f64,
            inputs.ref_logp.map(|x| x[r] as f64),
            inputs.advantages[r] as f64,
            bonus_entropy,
            cfg,
        );
        if inputs.mask[r] != 0.0 {
            out.loss += out.weights[r] * tl.total;
        }
        out.tokens.push(tl);
        out.logp.push(l);
        out.entropy.push(s.entropy);
        out.lse.push(s.lse);
        if let (Some(b), Some(k)) = (out.branch.as_mut(), s.branch) {
            b.push(k);
        }
    }
    if filtered {
        (out.kept, out.kept_sets) = (Some(kept_rows), Some(kept_sets));
    }
    Ok(out)
}

/// The analytic gradient ∂loss/∂z (`[N, V]`, f64) of DESIGN.md §4:
/// (1/T)·[g_t·(δ_{j,y_t} − p_tj) − h_t·p_tj·(ln p_tj + H_t)] with g_t = a_t·∂(L + β_kl·KL)/∂ℓ_t,
/// h_t = −a_t·c_H; masked tokens get zero rows.
///
/// With a filter or kept mask, for a target in K the log-prob term uses q = p̃·1[j ∈ K]
/// (∂ℓ̃/∂z_j = (δ_jy − p̃_j 1[j ∈ K])/T), and with `kept_entropy` the entropy term is
/// p̃_j(ln p̃_j + H̃)·1[j ∈ K] (∂H̃/∂z_j = −that/T); a target outside K uses p.
pub fn grpo_grad(logits: &[f64], vocab: usize, inputs: &GrpoInputs, cfg: &GrpoConfig) -> Result<Vec<f64>> {
    let fwd = grpo_loss(logits, vocab, inputs, cfg)?;
    let t = cfg.temperature as f64;
    let mut grad = vec![0.0; logits.len()];
    for (r, row) in logits.chunks_exact(vocab).enumerate() {
        if inputs.mask[r] == 0.0 || fwd.weights[r] == 0.0 {
            continue;
        }
        let g = fwd.weights[r] * fwd.tokens[r].dtotal_dlogp;
        let h = -fwd.weights[r] * cfg.entropy_coef as f64;
        let (p, lse) = softmax(row, t);
        let y = inputs.targets[r] as usize;
        // (lse, H, K) of the log-prob term and of the entropy term.
        let full = (lse, fwd.entropy[r], None);
        let (lp, ent) = match (&fwd.kept, &fwd.kept_sets) {
            (Some(k), Some(sets)) => {
                let kept = (k[r].lse, k[r].entropy, Some(&sets[r]));
                (if k[r].outside { full } else { kept }, if cfg.kept_entropy { kept } else { full })
            }
            _ => (full, full),
        };
        // The probability of token j under (lse, K), and its log.
        let prob = |j: usize, (l, _, k): (f64, f64, Option<&Vec<bool>>)| {
            if k.is_some_and(|k| !k[j]) || p[j] == 0.0 {
                (0.0, 0.0)
            } else {
                let ln = row[j] / t - l;
                (ln.exp(), ln)
            }
        };
        for (j, out) in grad[r * vocab..(r + 1) * vocab].iter_mut().enumerate() {
            let (q, _) = prob(j, lp);
            let (pe, ln_pe) = prob(j, ent);
            let e = if pe > 0.0 { pe * (ln_pe + ent.1) } else { 0.0 };
            let delta = if j == y { 1.0 } else { 0.0 };
            *out = (g * (delta - q) - h * e) / t;
        }
    }
    Ok(grad)
}

fn check(logits: &[f64], vocab: usize, inputs: &GrpoInputs, cfg: &GrpoConfig) -> Result<usize> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    inputs.validate(n, vocab, cfg.kl.is_some())?;
    if cfg.check_finite {
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(e) = validate::row_problem(r, row.iter().copied()) {
                return Err(e);
            }
        }
    }
    Ok(n)
}
