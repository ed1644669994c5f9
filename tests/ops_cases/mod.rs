//! Shared seeded cases for the candle-op tests: small `[B, T, V]` GRPO problems (B·T ≤ 30,
//! V ≤ 48, so candle autograd stays fast) covering the whole configuration matrix, with the
//! per-token inputs placed away from the loss's kinks so that f32 and f64 take the same branch.
//!
//! The matrix (1280 combinations, decoded from a case index in mixed radix): 5 aggregations
//! (token-mean, token-mean with a global count, seq-mean-token-mean, seq-mean-token-sum,
//! seq-mean-token-sum-norm) × 4 shapings (none, PPL, position, both; advantages from
//! `cpu::token_advantages`) × 4 KL settings (off, k1, k2, k3) × dual clip off/on × entropy bonus
//! off/on × temperature 1 / 0.7 × f32 / bf16 logits.
//!
//! Inputs: logits uniform in [−4, 4] with occasional −inf entries (never a whole row, never the
//! target); masks with a prompt prefix, a response and padding, some sequences empty;
//! ℓ − ℓ_old uniform in [−1.5, 1.5] (ratios inside and outside [1 − ε_low, 1 + ε_high] and
//! above the dual-clip c = 3), 10% beyond the ±20 ratio clamp; ℓ_ref − ℓ uniform in [−4, 4]
//! (k3 above and below its cap of 10), 10% beyond the ±20 clamp.

#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rlvr_kernels::ops::GrpoLossInputs;
use rlvr_kernels::{cpu, reference};
use rlvr_kernels::{AdvantageConfig, Aggregation, GrpoConfig, GrpoInputs, KlEstimator, KlPenalty, TokenStatsConfig};
use rlvr_kernels::{PositionShaping, PplShaping, Shaping};

/// Number of configuration combinations in the matrix.
pub const MATRIX: usize = 5 * 4 * 4 * 2 * 2 * 2 * 2;

/// Smallest distance of ℓ − ℓ_old (and of u = ℓ_ref − ℓ) from a kink of the loss: far above
/// the f32 error of ℓ (~1e−6), so f32 and f64 evaluations choose the same branch.
const KINK_MARGIN: f64 = 1e-3;

/// `default` cases unless `PROPTEST_CASES` overrides it.
pub fn cases(default: usize) -> usize {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One GRPO problem on the host (logits already rounded to `dtype`).
#[derive(Debug, Clone)]
pub struct GrpoCase {
    pub b: usize,
    pub t: usize,
    pub v: usize,
    pub logits: Vec<f32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub advantages: Vec<f32>,
    pub cfg: GrpoConfig,
    pub shaping: Shaping,
    pub dtype: DType,
}

/// The case's tensors on `dev`; `logits` is a `Var` so autograd tracks it.
pub struct GrpoTensors {
    pub logits: Var,
    pub targets: Tensor,
    pub mask: Tensor,
    pub old_logp: Tensor,
    pub ref_logp: Tensor,
    pub advantages: Tensor,
}

impl GrpoTensors {
    /// The op inputs (ref_logp only when the case's KL is on).
    pub fn inputs(&self, cfg: &GrpoConfig) -> GrpoLossInputs<'_> {
        GrpoLossInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: cfg.kl.map(|_| &self.ref_logp),
            advantages: &self.advantages,
            kept_mask: None,
        }
    }
}

impl GrpoCase {
    /// Tensors of shape `[B, T, V]` / `[B, T]` on `dev`.
    pub fn tensors(&self, dev: &Device) -> GrpoTensors {
        let bt = (self.b, self.t);
        let z = Tensor::from_vec(self.logits.clone(), (self.b, self.t, self.v), dev).unwrap();
        let per = |x: &[f32]| Tensor::from_vec(x.to_vec(), bt, dev).unwrap();
        GrpoTensors {
            logits: Var::from_tensor(&z.to_dtype(self.dtype).unwrap()).unwrap(),
            targets: Tensor::from_vec(self.targets.clone(), bt, dev).unwrap(),
            mask: per(&self.mask),
            old_logp: per(&self.old_logp),
            ref_logp: per(&self.ref_logp),
            advantages: per(&self.advantages),
        }
    }

    /// The logits as f64 (exact: they were rounded to the dtype).
    pub fn logits_f64(&self) -> Vec<f64> {
        self.logits.iter().map(|&z| z as f64).collect()
    }

    /// The host input struct of `reference::`/`cpu::`.
    pub fn inputs(&self) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: self.cfg.kl.map(|_| self.ref_logp.as_slice()),
            advantages: &self.advantages,
            seq_len: self.t,
            kept_mask: None,
        }
    }
}

/// The configuration of matrix entry `index` (mod [`MATRIX`]) and its shaping and dtype.
/// `mask_total` is the batch's Σ m, from which the global token count is made.
pub fn config_of(index: usize, t: usize, mask_total: f64) -> (GrpoConfig, Shaping, DType) {
    let mut i = index % MATRIX;
    let mut digit = |radix: usize| {
        let d = i % radix;
        i /= radix;
        d
    };
    let aggregation = match digit(5) {
        0 => Aggregation::TOKEN_MEAN,
        1 => Aggregation::TokenMean { global_tokens: Some(mask_total + 3.0) },
        2 => Aggregation::SeqMeanTokenMean,
        3 => Aggregation::SeqMeanTokenSum,
        _ => Aggregation::SeqMeanTokenSumNorm { norm: t as f64 },
    };
    let (ppl, position) = (Some(PplShaping { alpha: 0.3, ..Default::default() }), Some(PositionShaping::default()));
    let shaping = match digit(4) {
        0 => Shaping::NONE,
        1 => Shaping { ppl, position: None },
        2 => Shaping { ppl: None, position },
        _ => Shaping { ppl, position },
    };
    let kl = match digit(4) {
        0 => None,
        1 => Some(KlEstimator::K1),
        2 => Some(KlEstimator::K2),
        _ => Some(KlEstimator::K3),
    };
    let cfg = GrpoConfig {
        kl: kl.map(|estimator| KlPenalty { coef: 0.1, estimator }),
        dual_clip: (digit(2) == 1).then_some(3.0),
        entropy_coef: if digit(2) == 1 { 0.05 } else { 0.0 },
        temperature: if digit(2) == 1 { 0.7 } else { 1.0 },
        aggregation,
        ..Default::default()
    };
    let dtype = if digit(2) == 1 { DType::BF16 } else { DType::F32 };
    (cfg, shaping, dtype)
}

/// The value of k3 = e^u − u − 1 is the cap 10 at u = this (u > 0 root; by bisection).
fn k3_cap_root() -> f64 {
    let (mut lo, mut hi) = (0.0f64, 5.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mid.exp() - mid - 1.0 < 10.0 {
            lo = mid
        } else {
            hi = mid
        }
    }
    lo
}

/// A uniform draw from [lo, hi) that stays [`KINK_MARGIN`] away from every point of `kinks`.
fn away_from(rng: &mut StdRng, lo: f64, hi: f64, kinks: &[f64]) -> f64 {
    loop {
        let x = rng.random_range(lo..hi);
        if kinks.iter().all(|k| (x - k).abs() > KINK_MARGIN) {
            return x;
        }
    }
}

/// Round to the dtype's precision (the op sees exactly these values).
pub fn round_to(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Random logits `[n, v]` in [−4, 4] (rounded to `dtype`) with about 1 in 8 entries −inf, never
/// the target nor a whole row; and the targets.
pub fn logits_and_targets(rng: &mut StdRng, n: usize, v: usize, dtype: DType) -> (Vec<f32>, Vec<u32>) {
    let mut logits = Vec::with_capacity(n * v);
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        let y = rng.random_range(0..v);
        for j in 0..v {
            let z = if j != y && rng.random_range(0..8) == 0 { f32::NEG_INFINITY } else { rng.random_range(-4.0..4.0) };
            logits.push(round_to(z, dtype));
        }
        targets.push(y as u32);
    }
    (logits, targets)
}

/// Case `index` of the matrix with values from `seed`.
pub fn grpo_case(index: usize, seed: u64) -> GrpoCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let (g, t, v) = (2, rng.random_range(1..=5usize), rng.random_range(1..=48usize));
    let b = g * rng.random_range(1..=3usize);
    let n = b * t;
    let mut mask = vec![0.0f32; n];
    for seq in mask.chunks_mut(t) {
        if rng.random_range(0..6) == 0 {
            continue; // an empty sequence
        }
        let start = rng.random_range(0..t);
        let end = rng.random_range(start + 1..=t);
        seq[start..end].fill(1.0);
    }
    let total: f64 = mask.iter().map(|&m| m as f64).sum();
    let (cfg, shaping, dtype) = config_of(index, t, total);
    let (logits, targets) = logits_and_targets(&mut rng, n, v, dtype);
    let tmp = cfg.temperature as f64;
    let (ratio_kinks, k3_kinks) = ([0.8f64.ln(), 1.28f64.ln(), 3f64.ln()], [k3_cap_root()]);
    let mut old_logp = Vec::with_capacity(n);
    let mut ref_logp = Vec::with_capacity(n);
    for (r, row) in logits.chunks(v).enumerate() {
        let row: Vec<f64> = row.iter().map(|&z| z as f64).collect();
        let logp = reference::row_stats(&row, Some(targets[r]), tmp, None).logp.unwrap();
        let beyond = |rng: &mut StdRng| rng.random_range(20.5..25.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let d = if rng.random_bool(0.1) { beyond(&mut rng) } else { away_from(&mut rng, -1.5, 1.5, &ratio_kinks) };
        let u = if rng.random_bool(0.1) { beyond(&mut rng) } else { away_from(&mut rng, -4.0, 4.0, &k3_kinks) };
        old_logp.push((logp - d) as f32);
        ref_logp.push((logp + u) as f32);
    }
    let rewards: Vec<f32> = (0..b).map(|_| rng.random_range(0.0..1.0)).collect();
    let adv_cfg = AdvantageConfig { group_size: g, scale_by_std: true };
    let advantages = cpu::token_advantages(&rewards, &old_logp, &mask, t, &adv_cfg, &shaping).unwrap();
    GrpoCase { b, t, v, logits, targets, mask, old_logp, ref_logp, advantages, cfg, shaping, dtype }
}

/// The scale of row r's spec gradient: (|g_pol| + s_kl + |h|·(1 + ln V))/T with
/// g_pol = a·∂L/∂ℓ, h = a·c_H and s_kl = a·β_kl·(the sum of the absolute parts of ∂KL/∂ℓ:
/// 1 for k1, |ℓ| + |ℓ_ref| for k2, 1 + e^u for k3). Parts, not their sum: ∂k3/∂ℓ = 1 − e^u
/// cancels near u = 0 while its f32 error stays ~2⁻²⁴·(1 + e^u), and the policy and KL parts
/// of g can cancel each other likewise.
pub fn row_scale(c: &GrpoCase, want: &reference::GrpoReference, r: usize) -> f64 {
    let a = want.weights[r];
    let (logp, ref_logp) = (want.logp[r], c.ref_logp[r] as f64);
    let (g_kl, s_kl) = match c.cfg.kl {
        Some(k) => {
            let parts = match k.estimator {
                KlEstimator::K1 => 1.0,
                KlEstimator::K2 => logp.abs() + ref_logp.abs(),
                KlEstimator::K3 => 1.0 + (ref_logp - logp).clamp(-20.0, 20.0).exp(),
            };
            let beta = k.coef as f64;
            (beta * reference::kl_term(logp, ref_logp, k.estimator).1, beta * parts)
        }
        None => (0.0, 0.0),
    };
    let g_pol = want.tokens[r].dtotal_dlogp - g_kl;
    let h = c.cfg.entropy_coef as f64;
    a * (g_pol.abs() + s_kl + h * (1.0 + (c.v as f64).ln())) / c.cfg.temperature as f64
}

/// Number of configuration combinations of [`stats_case`].
pub const STATS_MATRIX: usize = 3 * 2 * 2 * 2 * 2;

/// One token-statistics problem: logits of shape `lead ++ [v]` rounded to `dtype`, optional
/// targets, and the weights w_lse, w_H, w_logp of the random linear combination whose gradient
/// is compared.
#[derive(Debug, Clone)]
pub struct StatsCase {
    pub lead: Vec<usize>,
    pub v: usize,
    pub logits: Vec<f32>,
    pub targets: Option<Vec<u32>>,
    pub cfg: TokenStatsConfig,
    pub dtype: DType,
    pub weights: [Vec<f32>; 3],
}

impl StatsCase {
    /// N.
    pub fn rows(&self) -> usize {
        self.lead.iter().product()
    }

    /// The logits as a `Var` of shape `lead ++ [v]`, the targets and the three weight tensors.
    pub fn tensors(&self, dev: &Device) -> (Var, Option<Tensor>, [Tensor; 3]) {
        let mut dims = self.lead.clone();
        dims.push(self.v);
        let z = Tensor::from_vec(self.logits.clone(), dims, dev).unwrap().to_dtype(self.dtype).unwrap();
        let lead = self.lead.as_slice();
        let targets = self.targets.as_ref().map(|t| Tensor::from_vec(t.clone(), lead, dev).unwrap());
        let w = |i: usize| Tensor::from_vec(self.weights[i].clone(), lead, dev).unwrap();
        (Var::from_tensor(&z).unwrap(), targets, [w(0), w(1), w(2)])
    }
}

/// Case `index` of the token-statistics matrix (f32/bf16/f16 × targets or not × `[N, V]` or
/// `[B, T, V]` × temperature 1 or 0.7 × top-p or not) with values from `seed`.
pub fn stats_case(index: usize, seed: u64) -> StatsCase {
    let mut i = index % STATS_MATRIX;
    let mut digit = |radix: usize| {
        let d = i % radix;
        i /= radix;
        d
    };
    let dtype = [DType::F32, DType::BF16, DType::F16][digit(3)];
    let with_targets = digit(2) == 1;
    let rank3 = digit(2) == 1;
    let temperature = if digit(2) == 1 { 0.7 } else { 1.0 };
    let top_p = (digit(2) == 1).then_some(0.9);
    let mut rng = StdRng::seed_from_u64(seed);
    let lead = if rank3 {
        vec![rng.random_range(1..=4usize), rng.random_range(1..=6usize)]
    } else {
        vec![rng.random_range(1..=24usize)]
    };
    let n: usize = lead.iter().product();
    let v = rng.random_range(1..=64usize);
    let (logits, targets) = logits_and_targets(&mut rng, n, v, dtype);
    let mut weight = || (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<f32>>();
    let weights = [weight(), weight(), weight()];
    let cfg = TokenStatsConfig { temperature, top_p, check_finite: true, filter: None };
    StatsCase { lead, v, logits, targets: with_targets.then_some(targets), cfg, dtype, weights }
}
