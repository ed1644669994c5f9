//! Generated GRPO-loss cases and their per-token error bounds against the f64 reference, shared by
//! tests/cpu_grpo.rs and the CUDA tests, with the tolerance unit a parameter (the device's exp and
//! sum order have another error budget than the CPU's).
//!
//! A case covers every setting of the loss: the three dtypes; 1..3 groups of 1..3 sequences of
//! 1..5 tokens; V up to 8192; uniform rows of four scales, optionally peaked, optionally with −inf
//! entries; every KL estimator or none; clip ranges; dual clip off/3/any; entropy bonus; top-p;
//! temperatures; every aggregation (with a global token count); masks with whole-zero sequences and
//! all-zero batches; ℓ_old/ℓ_ref inside the clip range, outside it, beyond the ±20 clamp, or mixed;
//! advantages from `reference::token_advantages` with every shaping combination.

#![allow(dead_code)] // each test binary uses its own subset

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rlvr_kernels::reference::{self, GrpoReference, SplitMix64};
use rlvr_kernels::{
    AdvantageConfig, Aggregation, DType, Element, GrpoConfig, GrpoForward, GrpoInputs, KeptMask, KlEstimator,
    KlPenalty, PositionShaping, PplShaping, SamplingFilter, Shaping, CLIPPED, DUAL_CLIPPED, OUTSIDE_KEPT,
};

/// How far ℓ_old (or ℓ_ref) lies from the current ℓ: inside the clip range, outside it, beyond
/// the ±20 clamp, or a per-token mix.
#[derive(Debug, Clone, Copy)]
pub enum Offset {
    Near,
    Far,
    Huge,
    Mixed,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub dtype: DType,
    pub groups: usize,
    pub group: usize,
    pub seq_len: usize,
    pub vocab: usize,
    pub seed: u64,
    pub scale: f32,
    pub peaked: bool,
    pub neg_inf: bool,
    pub cfg: GrpoConfig,
    pub shaping: Shaping,
    pub scale_by_std: bool,
    pub mask_p: f64,
    pub old: Offset,
    pub refo: Offset,
    pub grad_loss: f32,
}

fn offset() -> impl Strategy<Value = Offset> {
    prop_oneof![3 => Just(Offset::Near), 3 => Just(Offset::Far), 1 => Just(Offset::Huge), 4 => Just(Offset::Mixed)]
}

fn aggregation() -> impl Strategy<Value = Aggregation> {
    prop_oneof![
        Just(Aggregation::TOKEN_MEAN),
        (1.0f64..100.0).prop_map(|g| Aggregation::TokenMean { global_tokens: Some(g) }),
        Just(Aggregation::SeqMeanTokenMean),
        Just(Aggregation::SeqMeanTokenSum),
        (1.0f64..50.0).prop_map(|norm| Aggregation::SeqMeanTokenSumNorm { norm }),
    ]
}

fn config() -> impl Strategy<Value = GrpoConfig> {
    let kl = prop_oneof![
        Just(None),
        (0.0f32..0.5, prop_oneof![Just(KlEstimator::K1), Just(KlEstimator::K2), Just(KlEstimator::K3)])
            .prop_map(|(coef, estimator)| Some(KlPenalty { coef, estimator })),
    ];
    let clip = prop_oneof![Just((0.2f32, 0.28f32)), (0.05f32..0.4, 0.05f32..0.5)];
    let dual = prop_oneof![Just(None), Just(Some(3.0f32)), (1.1f32..5.0).prop_map(Some)];
    let ent = prop_oneof![Just(0.0f32), 0.001f32..0.1];
    let top_p = prop_oneof![Just(None), Just(Some(0.95f32)), (0.05f32..0.99).prop_map(Some)];
    let temp = prop_oneof![Just(1.0f32), Just(0.7), Just(1.6), 0.3f32..3.0];
    (kl, clip, dual, ent, top_p, temp, aggregation()).prop_map(|(kl, (lo, hi), dual, ent, top_p, temp, agg)| {
        GrpoConfig {
            clip_low: lo,
            clip_high: hi,
            dual_clip: dual,
            kl,
            entropy_coef: ent,
            temperature: temp,
            top_p,
            aggregation: agg,
            check_finite: true,
            ..Default::default()
        }
    })
}

fn shaping() -> impl Strategy<Value = Shaping> {
    let ppl = (0.01f32..0.3).prop_map(|alpha| PplShaping { alpha, ..Default::default() });
    let pos = (0.05f32..0.5, 5.0f32..20.0).prop_map(|(beta, kappa)| PositionShaping { beta, kappa });
    (prop::option::of(ppl), prop::option::of(pos)).prop_map(|(ppl, position)| Shaping { ppl, position })
}

/// A whole case (see the module documentation).
pub fn case() -> impl Strategy<Value = Case> {
    let dtype = prop_oneof![Just(DType::F32), Just(DType::BF16), Just(DType::F16)];
    let vocab = prop_oneof![10 => 1usize..2048, 1 => 2048usize..8192];
    let shape = (dtype, 1usize..=3, 1usize..=3, 1usize..=5, vocab, any::<u64>());
    let rows = (prop_oneof![Just(0.1f32), Just(1.0), Just(4.0), Just(12.0)], any::<bool>(), any::<bool>());
    let mask_p = prop_oneof![1 => Just(0.0f64), 2 => Just(1.0), 4 => 0.2f64..0.9];
    let grad_loss = prop_oneof![Just(1.0f32), -2.0f32..2.0];
    let rest = (shaping(), any::<bool>(), mask_p, offset(), offset(), grad_loss);
    (shape, rows, config(), rest).prop_map(|(s, r, cfg, x)| Case {
        dtype: s.0,
        groups: s.1,
        group: s.2,
        seq_len: s.3,
        vocab: s.4,
        seed: s.5,
        scale: r.0,
        peaked: r.1,
        neg_inf: r.2,
        cfg,
        shaping: x.0,
        scale_by_std: x.1,
        mask_p: x.2,
        old: x.3,
        refo: x.4,
        grad_loss: x.5,
    })
}

pub fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn offset_value(rng: &mut SplitMix64, mode: Offset) -> f64 {
    let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
    match mode {
        Offset::Near => 0.3 * uniform(rng) - 0.15,
        Offset::Far => sign * (0.3 + 2.7 * uniform(rng)),
        Offset::Huge => sign * (21.0 + 9.0 * uniform(rng)),
        Offset::Mixed => {
            let m = match rng.below(8) {
                0..=3 => Offset::Near,
                4..=6 => Offset::Far,
                _ => Offset::Huge,
            };
            offset_value(rng, m)
        }
    }
}

/// Everything one case feeds to both implementations.
pub struct Data<E> {
    pub logits: Vec<E>,
    pub z64: Vec<f64>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub rewards: Vec<f32>,
    pub advantages: Vec<f32>,
    /// An engine's kept mask (CSR ids, N + 1 offsets); empty offsets = none.
    pub kept_ids: Vec<u32>,
    pub kept_offsets: Vec<u64>,
}

impl<E> Data<E> {
    pub fn inputs(&self, c: &Case) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: c.cfg.kl.map(|_| self.ref_logp.as_slice()),
            advantages: &self.advantages,
            seq_len: c.seq_len,
            kept_mask: (!self.kept_offsets.is_empty())
                .then_some(KeptMask { token_ids: &self.kept_ids, offsets: &self.kept_offsets }),
        }
    }
}

/// The rows, targets, ℓ_old/ℓ_ref, mask, rewards and shaped advantages of a case (as in
/// the module documentation; −inf entries are never the target, so every ℓ is finite).
pub fn data<E: Element>(c: &Case) -> Data<E> {
    let mut rng = SplitMix64(c.seed);
    let (n, v) = (c.groups * c.group * c.seq_len, c.vocab);
    let mut z = vec![0.0f32; n * v];
    let mut targets = vec![0u32; n];
    for (row, y) in z.chunks_mut(v).zip(&mut targets) {
        for x in row.iter_mut() {
            *x = c.scale * (2.0 * uniform(&mut rng) as f32 - 1.0);
        }
        let peak = rng.below(v as u64) as usize;
        if c.peaked {
            row[peak] += 6.0 + 10.0 * uniform(&mut rng) as f32;
        }
        *y = if rng.below(2) == 0 { peak as u32 } else { rng.below(v as u64) as u32 };
        if c.neg_inf {
            for (j, x) in row.iter_mut().enumerate() {
                if j != *y as usize && rng.below(8) == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
    let logits: Vec<E> = z.iter().map(|&x| E::from_f32(x)).collect();
    let z64: Vec<f64> = logits.iter().map(|x| x.to_f32() as f64).collect();
    let t = c.cfg.temperature as f64;
    let logp: Vec<f64> = z64
        .chunks(v)
        .zip(&targets)
        .map(|(row, &y)| reference::row_stats(row, Some(y), t, None).logp.unwrap())
        .collect();
    let old_logp: Vec<f32> = logp.iter().map(|l| (l + offset_value(&mut rng, c.old)) as f32).collect();
    let ref_logp: Vec<f32> = logp.iter().map(|l| (l + offset_value(&mut rng, c.refo)) as f32).collect();
    let mut mask: Vec<f32> = (0..n).map(|_| (uniform(&mut rng) < c.mask_p) as u8 as f32).collect();
    for s in mask.chunks_mut(c.seq_len) {
        if rng.below(5) == 0 {
            s.fill(0.0);
        }
    }
    let rewards: Vec<f32> = (0..c.groups * c.group)
        .map(|_| if rng.below(2) == 0 { rng.below(2) as f32 } else { uniform(&mut rng) as f32 })
        .collect();
    let adv_cfg = AdvantageConfig { group_size: c.group, scale_by_std: c.scale_by_std };
    let advantages = reference::token_advantages(&rewards, &old_logp, &mask, c.seq_len, &adv_cfg, &c.shaping)
        .expect("valid advantage inputs")
        .iter()
        .map(|&a| a as f32)
        .collect();
    Data { logits, z64, targets, mask, old_logp, ref_logp, rewards, advantages, kept_ids: vec![], kept_offsets: vec![] }
}

/// How a kept-set case defines K.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeptKind {
    /// Recomputed from `cfg.filter`.
    Filter,
    /// An engine mask equal to the filter's own K (replay of the same logits).
    MaskOfFilter,
    /// An engine mask of random ids (1..=40 per row, the target in it or not).
    RandomMask,
}

/// A GRPO case with a kept set: a [`Case`] whose `cfg.filter` / `cfg.kept_entropy` are set (for
/// the mask kinds `cfg.filter` is cleared when the data are built), and how K is given.
#[derive(Debug, Clone)]
pub struct KeptCase {
    pub case: Case,
    pub kind: KeptKind,
}

/// Top-k (k up to 64 or V), top-p (including 1 and small p) or both.
pub fn filter() -> impl Strategy<Value = SamplingFilter> {
    let p = prop_oneof![Just(0.95f32), Just(1.0), Just(0.5), 0.05f32..1.0];
    let k = prop_oneof![Just(1u32), 1u32..64, Just(50), 1u32..10_000];
    prop_oneof![
        p.clone().prop_map(SamplingFilter::top_p),
        k.clone().prop_map(SamplingFilter::top_k),
        (k, p).prop_map(|(k, p)| SamplingFilter::top_k_top_p(k, p)),
    ]
}

/// A [`KeptCase`] (see there).
pub fn kept_case() -> impl Strategy<Value = KeptCase> {
    let kind =
        prop_oneof![2 => Just(KeptKind::Filter), 1 => Just(KeptKind::MaskOfFilter), 1 => Just(KeptKind::RandomMask)];
    (case(), filter(), any::<bool>(), kind).prop_map(|(mut case, f, kept_entropy, kind)| {
        case.cfg.filter = Some(f);
        case.cfg.kept_entropy = kept_entropy;
        KeptCase { case, kind }
    })
}

/// The data of a [`KeptCase`]: [`data`], then for the mask kinds the mask (and `cfg.filter`
/// cleared in the returned case), and ℓ_old/ℓ_ref moved by ℓ̃ − ℓ so that their offsets are
/// relative to the ratio's ℓ̃ (advantages recomputed, the PPL shaping reads ℓ_old).
pub fn kept_data<E: Element>(kc: &KeptCase) -> (Case, Data<E>) {
    let mut c = kc.case.clone();
    let mut d = data::<E>(&c);
    let v = c.vocab;
    let t = c.cfg.temperature as f64;
    let f = c.cfg.filter.expect("a kept case has a filter");
    if kc.kind != KeptKind::Filter {
        let mut rng = SplitMix64(c.seed ^ 0x6b65_7074);
        let mut offsets = vec![0u64];
        for (row, &y) in d.z64.chunks(v).zip(&d.targets) {
            let ids: Vec<u32> = match kc.kind {
                KeptKind::MaskOfFilter => {
                    let k = reference::kept_set(row, t, &f);
                    (0..v as u32).filter(|&i| k[i as usize]).collect()
                }
                _ => {
                    let want = 1 + rng.below(40.min(v) as u64) as usize;
                    // A random permutation's prefix; the target first (kept) or dropped.
                    let mut all: Vec<u32> = (0..v as u32).collect();
                    for i in (1..v).rev() {
                        all.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    let mut ids: Vec<u32> = all.into_iter().filter(|&i| i != y).take(want).collect();
                    if rng.below(2) == 0 || ids.is_empty() {
                        ids.insert(0, y);
                        ids.truncate(want.max(1));
                    }
                    // At least one finite logit (the target's always is).
                    if ids.iter().all(|&i| row[i as usize] == f64::NEG_INFINITY) {
                        ids.push(y);
                    }
                    ids
                }
            };
            d.kept_ids.extend(ids);
            offsets.push(d.kept_ids.len() as u64);
        }
        d.kept_offsets = offsets;
        c.cfg.filter = None;
    }
    let r = reference::grpo_loss(&d.z64, v, &d.inputs(&c), &c.cfg).expect("valid kept case");
    let full: Vec<f64> = d
        .z64
        .chunks(v)
        .zip(&d.targets)
        .map(|(row, &y)| reference::row_stats(row, Some(y), t, None).logp.unwrap())
        .collect();
    for (k, l) in full.iter().enumerate() {
        let shift = r.logp[k] - l;
        d.old_logp[k] = (d.old_logp[k] as f64 + shift) as f32;
        d.ref_logp[k] = (d.ref_logp[k] as f64 + shift) as f32;
    }
    let adv_cfg = AdvantageConfig { group_size: c.group, scale_by_std: c.scale_by_std };
    d.advantages = reference::token_advantages(&d.rewards, &d.old_logp, &d.mask, c.seq_len, &adv_cfg, &c.shaping)
        .expect("valid advantage inputs")
        .iter()
        .map(|&a| a as f32)
        .collect();
    (c, d)
}

/// Whether row `k`'s recomputed K is uncertain at f32 resolution: a top-p crossing within
/// p·(1 ± 1e-5) of the mass ([`reference::kept_band`] wider than one count). A fast path may then
/// keep another K; its value is not compared. A given mask is never ambiguous.
pub fn kept_ambiguous(c: &Case, row: &[f64]) -> bool {
    c.cfg.filter.is_some_and(|f| {
        let (lo, hi) = reference::kept_band(row, c.cfg.temperature as f64, &f);
        lo != hi
    })
}

/// Per-token error bounds against the f64 reference, in multiples of `unit` times the magnitudes
/// an f32 computation rounds (derived next to each formula), and whether a branch decision
/// of `reference::token_loss` lies within those bounds of its threshold.
#[derive(Debug, Default)]
pub struct Tol {
    pub lse: f64,
    pub logp: f64,
    pub entropy: f64,
    pub ratio: f64,
    pub kl: f64,
    pub total: f64,
    pub g: f64,
    /// Bound on |dz_tj(fast) − dz_tj(ref)| before the rounding to the output dtype.
    pub grad_row: f64,
    /// The f32 path may take the other branch: flags, g_t and the gradient row are not compared.
    pub ambiguous: bool,
}

impl Tol {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        row: &[f64],
        k: usize,
        r: &GrpoReference,
        inp: &GrpoInputs,
        cfg: &GrpoConfig,
        grad_loss: f32,
        unit: f64,
    ) -> Tol {
        let temp = cfg.temperature as f64;
        let (p, lse) = reference::softmax(row, temp);
        let x: Vec<f64> = row.iter().map(|v| v / temp).collect();
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let x_abs = x.iter().filter(|v| v.is_finite()).fold(0.0f64, |a, v| a.max(v.abs()));
        // E_p|x − m| and E_p(x − m)²: each e_i = exp(x_i − m) carries a relative error of
        // ≈ ulp·|x_i − m| from rounding its argument; weighted by p these bound the error of
        // ln S (first moment) and of W/S (second moment).
        let (mut ead, mut ed2) = (0.0, 0.0);
        for (&xi, &pi) in x.iter().zip(&p) {
            if pi > 0.0 {
                ead += pi * (m - xi);
                ed2 += pi * (m - xi) * (m - xi);
            }
        }
        let (h, tk, y) = (r.entropy[k], &r.tokens[k], inp.targets[k] as usize);
        let mut t = Tol {
            lse: unit * (1.0 + m.abs() + lse.abs()),
            logp: unit * (1.0 + (x[y] - m).abs() + (lse - m) + ead),
            entropy: unit * (1.0 + h + (lse - m) + ead + ed2),
            ..Tol::default()
        };
        let d = r.logp[k] - inp.old_logp[k] as f64;
        // ρ = exp(clamp(d)): exp and the clamp are ρ- and 1-Lipschitz in d.
        let tol_d = t.logp + unit * d.abs();
        t.ratio = tk.ratio * (1.01 * tol_d + unit);
        let (beta, adv) = (cfg.kl.map_or(0.0, |k| k.coef as f64), inp.advantages[k] as f64);
        // KL: (Lipschitz constant, bound on the second derivative) per estimator; k3 is capped at
        // 10, which bounds e^u by 13.5 wherever its derivative is nonzero.
        if let (Some(kp), Some(rl)) = (cfg.kl, inp.ref_logp) {
            let dk = r.logp[k] - rl[k] as f64;
            let tol_dk = t.logp + unit * dk.abs();
            let (l1, l2) = match kp.estimator {
                KlEstimator::K1 => (1.0, 0.0),
                KlEstimator::K2 => (dk.abs() + tol_dk, 1.0),
                KlEstimator::K3 => (12.5, 13.5),
            };
            t.kl = l1 * tol_dk + unit * (1.0 + tk.kl.abs());
            t.g = beta * (l2 * tol_dk + unit * (1.0 + l1));
            if kp.estimator == KlEstimator::K3 {
                let u = (-dk).clamp(-20.0, 20.0);
                let v = u.exp() - u - 1.0;
                t.ambiguous |= ((dk.abs() - 20.0).abs() <= tol_dk) || (v - 10.0).abs() <= t.kl;
            }
        }
        let c = cfg.dual_clip.map_or(0.0, |c| c as f64);
        let ce = cfg.entropy_coef as f64;
        t.total = adv.abs() * (t.ratio + unit * (tk.ratio + 1.5 + c))
            + beta * t.kl
            + ce * t.entropy
            + unit * (tk.policy.abs() + beta * tk.kl.abs() + ce * h + tk.total.abs());
        let a = r.weights[k];
        let (g, hh) = (a * tk.dtotal_dlogp, a * ce);
        t.g = a * (adv.abs() * (t.ratio + unit * tk.ratio) + t.g) + unit * g.abs();
        // With a kept set, ln p̃ = x − lse_K and H̃ enter too (both computed in f64 and rounded
        // once to f32): the larger of the two magnitudes bounds either; without one they are
        // lse and H themselves (the bound is unchanged).
        let (lse_k, h_k) = r.kept.as_ref().map_or((lse, h), |kr| (kr[k].lse, kr[k].entropy));
        let (lse_m, h) = (lse.abs().max(lse_k.abs()), h.max(h_k));
        let tol_lnp = unit * (1.0 + x_abs + lse_m) + t.lse.max(unit * (1.0 + m.abs() + lse_m));
        let scale = g.abs() + hh * (1.5 + h);
        t.grad_row = (grad_loss as f64).abs() / temp
            * (t.g
                + unit * hh * (1.5 + h)
                + scale * (1.1 * tol_lnp + t.entropy.max(unit * (1.0 + h)) + unit)
                + unit * scale);
        let (lo, hi) = (1.0 - cfg.clip_low as f64, 1.0 + cfg.clip_high as f64);
        let near = |v: f64, edge: f64| (v - edge).abs() <= t.ratio + unit * edge;
        t.ambiguous |= (d.abs() - 20.0).abs() <= tol_d;
        t.ambiguous |= adv != 0.0 && (near(tk.ratio, lo) || near(tk.ratio, hi));
        t.ambiguous |= adv < 0.0 && cfg.dual_clip.is_some() && near(tk.ratio.max(lo), c);
        t
    }
}

/// Round-to-nearest unit and half the subnormal spacing of the output dtype.
pub fn dtype_rounding(d: DType) -> (f64, f64) {
    match d {
        DType::F32 => (2f64.powi(-24), 2f64.powi(-150)),
        DType::BF16 => (2f64.powi(-8), 2f64.powi(-134)),
        DType::F16 => (2f64.powi(-11), 2f64.powi(-25)),
    }
}

/// dlogits of a fast path (`who`: "cpu", "cuda"), in the case's dtype, against
/// `reference::grpo_grad` scaled by the case's ∂loss: masked rows exactly zero; elsewhere within
/// the row's bound `Tol::grad_row` (tolerance `unit`) plus the output dtype's rounding, except
/// where a clip or clamp decision is ambiguous at that tolerance.
pub fn check_grad<E: Element>(c: &Case, d: &Data<E>, grad: &[E], unit: f64, who: &str) -> Result<(), TestCaseError> {
    let (v, inp) = (c.vocab, d.inputs(c));
    let r = reference::grpo_loss(&d.z64, v, &inp, &c.cfg).unwrap();
    let want = reference::grpo_grad(&d.z64, v, &inp, &c.cfg).unwrap();
    let (u, sub) = dtype_rounding(E::DTYPE);
    let scale = c.grad_loss as f64;
    for (k, (row, (got, want))) in d.z64.chunks(v).zip(grad.chunks(v).zip(want.chunks(v))).enumerate() {
        if inp.mask[k] == 0.0 {
            prop_assert!(got.iter().all(|x| x.to_f32() == 0.0), "masked row {k} is not zero");
            continue;
        }
        let tol = Tol::new(row, k, &r, &inp, &c.cfg, c.grad_loss, unit);
        if tol.ambiguous || kept_ambiguous(c, row) {
            continue;
        }
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            // Output rounding: ≤ u·|v32| with |v32| ≤ |ref| + grad_row, plus underflow.
            let w = scale * w;
            let bound = u * w.abs() + (1.0 + u) * tol.grad_row + sub;
            let g = g.to_f32() as f64;
            prop_assert!((g - w).abs() <= bound, "dlogits[{k}, {j}]: {who} {g} vs reference {w} (tol {bound:e})");
        }
    }
    Ok(())
}

/// Runs the check of the case's dtype.
pub fn dispatch(
    c: &Case,
    f32_: fn(&Case) -> Result<(), TestCaseError>,
    bf: fn(&Case) -> Result<(), TestCaseError>,
    h: fn(&Case) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match c.dtype {
        DType::F32 => f32_(c),
        DType::BF16 => bf(c),
        DType::F16 => h(c),
    }
}

macro_rules! close {
    ($who:expr, $what:expr, $k:expr, $got:expr, $want:expr, $tol:expr) => {{
        let (got, want, tol) = ($got as f64, $want as f64, $tol as f64);
        prop_assert!(
            (got - want).abs() <= tol,
            "{} of token {}: {} {} vs reference {} (tol {:e})",
            $what,
            $k,
            $who,
            got,
            want,
            tol
        );
    }};
}

/// The forward of a fast path (`who`: "cpu", "cuda"), on the host, against
/// `reference::grpo_loss`: every per-token output and saved scalar within its bound of
/// [`Tol`] (tolerance `unit`), the branch count in the band of DESIGN.md §4, clip flags where the
/// decision is unambiguous, masked tokens' saved gradient 0 and no stray flag bits, and the loss
/// within the weighted sum of the per-token bounds (0 for an empty batch).
pub fn check_forward_values<E: Element>(
    c: &Case,
    d: &Data<E>,
    fwd: &GrpoForward,
    unit: f64,
    who: &str,
) -> Result<(), TestCaseError> {
    let inp = d.inputs(c);
    let r = reference::grpo_loss(&d.z64, c.vocab, &inp, &c.cfg).expect("valid input");
    let mut loss_tol = unit * r.loss.abs();
    for (k, row) in d.z64.chunks(c.vocab).enumerate() {
        let t = Tol::new(row, k, &r, &inp, &c.cfg, c.grad_loss, unit);
        let tk = &r.tokens[k];
        if let Some(kr) = &r.kept {
            let got = fwd.kept.as_ref().expect("kept statistics with a filter or mask");
            if kept_ambiguous(c, row) {
                let (lo, hi) = reference::kept_band(row, c.cfg.temperature as f64, &c.cfg.filter.unwrap());
                prop_assert!(
                    (lo..=hi).contains(&got.count[k]),
                    "|K| of token {k}: {} not in [{lo}, {hi}]",
                    got.count[k]
                );
                loss_tol = f64::INFINITY; // the loss may sum another K's terms
                continue;
            }
            let kr = &kr[k];
            prop_assert_eq!(got.count[k], kr.count, "|K| of token {}", k);
            prop_assert_eq!(got.outside.as_ref().unwrap()[k] != 0, kr.outside, "outside flag of token {}", k);
            prop_assert_eq!(fwd.clip_flags[k] & OUTSIDE_KEPT != 0, kr.outside, "OUTSIDE_KEPT of token {}", k);
            close!(who, "kept lse", k, got.lse[k], kr.lse, unit * (1.0 + kr.lse.abs()));
            close!(who, "kept entropy", k, got.entropy[k], kr.entropy, unit * (1.0 + kr.entropy));
        }
        close!(who, "lse", k, fwd.saved.lse[k], r.lse[k], t.lse);
        close!(who, "logp", k, fwd.logp[k], r.logp[k], t.logp);
        close!(who, "entropy", k, fwd.saved.entropy[k], r.entropy[k], t.entropy);
        close!(who, "ratio", k, fwd.ratio[k], tk.ratio, t.ratio);
        close!(who, "token_loss", k, fwd.token_loss[k], tk.total, t.total);
        if let Some(kl) = &fwd.kl {
            close!(who, "kl", k, kl[k], tk.kl, t.kl);
        }
        if let (Some(b), Some(top_p)) = (&fwd.branch, c.cfg.top_p) {
            let (lo, hi) = reference::branch_band(row, c.cfg.temperature as f64, top_p as f64);
            prop_assert!((lo..=hi).contains(&b[k]), "branch of token {k}: {} not in [{lo}, {hi}]", b[k]);
        }
        let want_h = -r.weights[k] * c.cfg.entropy_coef as f64;
        close!(who, "grad_entropy", k, fwd.saved.grad_entropy[k], want_h, 2.0 * unit * r.weights[k]);
        if inp.mask[k] == 0.0 {
            prop_assert_eq!(fwd.saved.grad_logp[k], 0.0);
            prop_assert_eq!(fwd.clip_flags[k] & !(CLIPPED | DUAL_CLIPPED | OUTSIDE_KEPT), 0);
            continue;
        }
        loss_tol += r.weights[k] * (t.total + unit * tk.total.abs());
        if !t.ambiguous {
            let flags = if tk.clipped { CLIPPED } else { 0 } | if tk.dual_clipped { DUAL_CLIPPED } else { 0 };
            prop_assert_eq!(fwd.clip_flags[k] & !OUTSIDE_KEPT, flags, "clip flags of token {}", k);
            close!(who, "grad_logp", k, fwd.saved.grad_logp[k], r.weights[k] * tk.dtotal_dlogp, t.g);
        }
    }
    prop_assert_eq!(fwd.kl.is_some(), c.cfg.kl.is_some());
    prop_assert_eq!(fwd.branch.is_some(), c.cfg.top_p.is_some());
    if d.mask.iter().all(|&m| m == 0.0) {
        prop_assert_eq!(fwd.loss, 0.0, "an empty batch has loss 0");
    }
    close!(who, "loss", "all", fwd.loss, r.loss, loss_tol);
    Ok(())
}

/// The bytes of a dlogits buffer (for bit-identity checks).
pub fn bits<E: Element>(v: &[E]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Every output of a forward as bits (for bit-identity checks).
pub fn forward_bits(f: &GrpoForward) -> Vec<u32> {
    let s = &f.saved;
    let vecs = [&f.token_loss, &f.logp, &f.ratio, &s.lse, &s.entropy, &s.grad_logp, &s.grad_entropy];
    let mut out: Vec<u32> = vecs.iter().flat_map(|v| v.iter().map(|x| x.to_bits())).collect();
    out.push(f.loss.to_bits());
    out.extend(f.clip_flags.iter().map(|&b| b as u32));
    out.extend(f.kl.iter().flatten().map(|x| x.to_bits()));
    out.extend(f.branch.iter().flatten());
    out
}
