//! `reference::grpo_grad` (the analytic ∂loss/∂z of DESIGN.md §4) against float64 central finite
//! differences of `reference::grpo_loss`, so that the oracle every fast path is tested against is
//! itself checked.
//!
//! The loss is only piecewise smooth: it has kinks where the clip, the dual clip, the ratio's
//! ±20 clamp or the k3 estimator's clamps switch branch, and a finite difference across a kink
//! measures neither side's derivative. Every token is therefore placed at least `MARGIN` (in
//! ℓ = log p of its target) away from every kink, while a step of h moves ℓ by at most
//! 2h/T ≤ 2·2^-16/0.5 ≈ 6e-5 (|∂ℓ/∂z_j| = |δ − p_j|/T ≤ 1/T): both evaluation points lie on
//! the same smooth piece. Clipped and clamped pieces are tested too, where the policy term's
//! gradient is exactly 0.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rlvr_kernels::reference::{self, SplitMix64};
use rlvr_kernels::{
    AdvantageConfig, Aggregation, GrpoConfig, GrpoInputs, KeptMask, KlEstimator, KlPenalty, PositionShaping,
    PplShaping, SamplingFilter, Shaping,
};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000)
}

/// Finite-difference step, a power of two so that z ± H is exact for the generated logits
/// (multiples of 2^-10 in ±3).
const H: f64 = 1.0 / 65536.0;

/// Distance in ℓ kept from every kink; ≫ 2H/T (see the module docs).
const MARGIN: f64 = 0.005;

/// Where a token's ratio ρ = exp(ℓ − ℓ_old) sits relative to the clip range [1−ε_low, 1+ε_high].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Region {
    Inside,
    Above,
    Below,
    /// |ℓ − ℓ_old| > 20: ρ is clamped.
    Clamped,
    /// A per-token mix of the above.
    Mixed,
}

/// Where ℓ_ref − ℓ sits for the k3 estimator: smooth, capped at 10, or beyond the ±20 clamp.
#[derive(Debug, Clone, Copy)]
enum KlRegion {
    Smooth,
    Capped,
    Clamped,
    Mixed,
}

#[derive(Debug, Clone)]
struct Case {
    group: usize,
    groups: usize,
    seq_len: usize,
    vocab: usize,
    seed: u64,
    cfg: GrpoConfig,
    shaping: Shaping,
    region: Region,
    kl_region: KlRegion,
    /// K given as an engine mask (random ids per row, the target in it or not) instead of
    /// `cfg.filter` (which is then `None`).
    given_mask: bool,
}

fn config() -> impl Strategy<Value = GrpoConfig> {
    let agg = prop_oneof![
        Just(Aggregation::TOKEN_MEAN),
        (1.0f64..50.0).prop_map(|g| Aggregation::TokenMean { global_tokens: Some(g) }),
        Just(Aggregation::SeqMeanTokenMean),
        Just(Aggregation::SeqMeanTokenSum),
        (1.0f64..20.0).prop_map(|norm| Aggregation::SeqMeanTokenSumNorm { norm }),
    ];
    let est = prop_oneof![Just(KlEstimator::K1), Just(KlEstimator::K2), Just(KlEstimator::K3)];
    let kl = prop::option::of((0.01f32..0.5, est).prop_map(|(coef, estimator)| KlPenalty { coef, estimator }));
    // ε ≥ 0.05 leaves an inside region; ε_high ≤ 0.4 < c − 1 keeps the dual-clip kink above it.
    let clip = (0.05f32..0.4, 0.05f32..0.4);
    let dual = prop::option::of(1.6f32..4.0);
    let ent = prop_oneof![Just(0.0f32), 0.001f32..0.2];
    let temp = prop_oneof![Just(1.0f32), 0.5f32..2.0];
    (agg, kl, clip, dual, ent, temp).prop_map(|(aggregation, kl, (lo, hi), dual_clip, entropy_coef, temperature)| {
        GrpoConfig {
            clip_low: lo,
            clip_high: hi,
            dual_clip,
            kl,
            entropy_coef,
            temperature,
            aggregation,
            ..GrpoConfig::default()
        }
    })
}

fn shaping() -> impl Strategy<Value = Shaping> {
    let ppl = (0.01f32..0.3).prop_map(|alpha| PplShaping { alpha, ..Default::default() });
    let pos = (0.05f32..0.5, 5.0f32..20.0).prop_map(|(beta, kappa)| PositionShaping { beta, kappa });
    (prop::option::of(ppl), prop::option::of(pos)).prop_map(|(ppl, position)| Shaping { ppl, position })
}

fn case() -> impl Strategy<Value = Case> {
    let region = prop_oneof![
        Just(Region::Inside),
        Just(Region::Above),
        Just(Region::Below),
        Just(Region::Clamped),
        Just(Region::Mixed)
    ];
    let kl_region =
        prop_oneof![Just(KlRegion::Smooth), Just(KlRegion::Capped), Just(KlRegion::Clamped), Just(KlRegion::Mixed)];
    (1usize..=2, 1usize..=2, 1usize..=3, 1usize..=8, any::<u64>(), config(), shaping(), region, kl_region).prop_map(
        |(group, groups, seq_len, vocab, seed, cfg, shaping, region, kl_region)| Case {
            group,
            groups,
            seq_len,
            vocab,
            seed,
            cfg,
            shaping,
            region,
            kl_region,
            given_mask: false,
        },
    )
}

/// A case with a kept set: a recomputed filter (top-k, top-p, both; H or H̃ in the bonus) or an
/// engine mask.
fn kept_case() -> impl Strategy<Value = Case> {
    let p = prop_oneof![Just(0.95f32), Just(0.5), 0.1f32..0.99];
    let k = 1u32..=8;
    let filter = prop_oneof![
        p.clone().prop_map(SamplingFilter::top_p),
        k.clone().prop_map(SamplingFilter::top_k),
        (k, p).prop_map(|(k, p)| SamplingFilter::top_k_top_p(k, p)),
    ];
    (case(), filter, any::<bool>(), any::<bool>()).prop_map(|(mut c, f, kept_entropy, given_mask)| {
        c.cfg.filter = (!given_mask).then_some(f);
        c.cfg.kept_entropy = kept_entropy;
        c.given_mask = given_mask;
        c
    })
}

fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn sign(rng: &mut SplitMix64) -> f64 {
    if rng.below(2) == 0 {
        1.0
    } else {
        -1.0
    }
}

/// d = ℓ − ℓ_old in `region`, at least MARGIN from ln(1−ε_low), ln(1+ε_high), ±20 and ln c.
fn ratio_offset(rng: &mut SplitMix64, region: Region, cfg: &GrpoConfig) -> f64 {
    let (lo, hi) = ((1.0 - cfg.clip_low as f64).ln(), (1.0 + cfg.clip_high as f64).ln());
    let d = match region {
        // ≥ 0.1·|ln 0.95| ≈ 0.005 inside either edge.
        Region::Inside => 0.9 * uniform(rng) * if rng.below(2) == 0 { lo } else { hi },
        Region::Above => hi + MARGIN + 1.5 * uniform(rng),
        Region::Below => lo - MARGIN - 1.5 * uniform(rng),
        Region::Clamped => sign(rng) * (20.0 + 10.0 * MARGIN + 5.0 * uniform(rng)),
        Region::Mixed => {
            let r = [Region::Inside, Region::Above, Region::Below, Region::Clamped][rng.below(4) as usize];
            return ratio_offset(rng, r, cfg);
        }
    };
    match cfg.dual_clip.map(|c| (c as f64).ln()) {
        // ln c > ln 1.6 > hi + MARGIN, so moving up stays above the clip range.
        Some(lc) if (d - lc).abs() < MARGIN => lc + 2.0 * MARGIN,
        _ => d,
    }
}

/// u = ℓ_ref − ℓ for k3: smooth in [−3, 2.3] (e^u − u − 1 ≤ 6.7), capped at 10 in [3, 6] or
/// [−14, −12] (the cap's kinks are at u ≈ 2.64 and u ≈ −11.0), or beyond the ±20 clamp.
fn kl_offset(rng: &mut SplitMix64, region: KlRegion) -> f64 {
    match region {
        KlRegion::Smooth => -3.0 + 5.3 * uniform(rng),
        KlRegion::Capped if rng.below(2) == 0 => 3.0 + 3.0 * uniform(rng),
        KlRegion::Capped => -14.0 + 2.0 * uniform(rng),
        KlRegion::Clamped => sign(rng) * (21.0 + 4.0 * uniform(rng)),
        KlRegion::Mixed => {
            let r = [KlRegion::Smooth, KlRegion::Capped, KlRegion::Clamped][rng.below(3) as usize];
            kl_offset(rng, r)
        }
    }
}

struct Data {
    z: Vec<f64>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    /// An engine mask (empty offsets: none).
    kept_ids: Vec<u32>,
    kept_offsets: Vec<u64>,
}

impl Data {
    fn inputs(&self, seq_len: usize) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: Some(&self.ref_logp),
            advantages: &self.advantages,
            seq_len,
            kept_mask: (!self.kept_offsets.is_empty())
                .then_some(KeptMask { token_ids: &self.kept_ids, offsets: &self.kept_offsets }),
        }
    }
}

/// Whether `filter`'s K of `row` stays the same when any one logit moves by ±H.
///
/// A finite difference across a change of K measures no derivative (ℓ̃ and H̃ jump), so a
/// filtered row must have a clear gap at its crossing. Top-k: the logits of a row are distinct
/// points of the 2^-10 grid, so a step of H = 2^-16 never reorders two of them and the k
/// largest stay the k largest. Top-p: a step moves every probability by a relative ≤ 2H/T ≤
/// 2.5e-4 (T ≥ 0.5), so the cumulative mass (over the top-k set, normalised) before and at the
/// crossing token moves by less than that; the row is accepted when both lie ≥ 1e-3 from p.
fn clear_gap(row: &[f64], t: f64, f: &SamplingFilter) -> bool {
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return false;
    }
    let Some(p) = f.top_p else { return true };
    let (probs, _) = reference::softmax(&sorted, t);
    let set = &probs[..f.top_k.map_or(probs.len(), |k| (k as usize).min(probs.len()))];
    let mass: f64 = set.iter().sum();
    let mut cum = 0.0;
    for &q in set {
        let before = cum / mass;
        cum += q;
        if (before - p as f64).abs() < 1e-3 || (cum / mass - p as f64).abs() < 1e-3 {
            return false;
        }
    }
    true
}

/// Logits on a 2^-10 grid in ±3, ℓ_old/ℓ_ref at offsets from the exact ℓ chosen by `pick`
/// (which sees the sign of the sequence's advantage), advantages from
/// `reference::token_advantages`. Rounding ℓ_old to f32 moves d by ≤ 2^-24·|ℓ_old| ≪ MARGIN.
fn data(c: &Case, mut pick: impl FnMut(&mut SplitMix64, f64) -> f64) -> Data {
    let mut rng = SplitMix64(c.seed);
    let (b, v) = (c.group * c.groups, c.vocab);
    let n = b * c.seq_len;
    let t = c.cfg.temperature as f64;
    let grid = |rng: &mut SplitMix64| (rng.below(6145) as f64 - 3072.0) / 1024.0;
    let mut z: Vec<f64> = (0..n * v).map(|_| grid(&mut rng)).collect();
    if let Some(f) = c.cfg.filter {
        // Redraw a row until its K has a clear gap (a few draws at most: the rejected band is
        // ≈ 2e-3 of the mass per token).
        for row in z.chunks_mut(v) {
            while !clear_gap(row, t, &f) {
                row.iter_mut().for_each(|x| *x = grid(&mut rng));
            }
        }
    }
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let (mut kept_ids, mut kept_offsets) = (Vec::new(), Vec::new());
    if c.given_mask {
        // A random non-empty subset of each row, with the target in it or not.
        kept_offsets.push(0u64);
        for &y in &targets {
            let mut ids: Vec<u32> = (0..v as u32).filter(|&i| i != y && rng.below(2) == 0).collect();
            if ids.is_empty() || rng.below(2) == 0 {
                ids.push(y);
            }
            kept_ids.extend(ids);
            kept_offsets.push(kept_ids.len() as u64);
        }
    }
    let mask_of = KeptMask { token_ids: &kept_ids, offsets: &kept_offsets };
    let given = c.given_mask.then_some(&mask_of);
    let mut mask: Vec<f32> = (0..n).map(|_| (rng.below(4) != 0) as u8 as f32).collect();
    if rng.below(4) == 0 {
        mask[..c.seq_len].fill(0.0); // a sequence without counted tokens
    }
    let rewards: Vec<f32> = (0..b).map(|_| rng.below(3) as f32 * 0.5).collect();
    let adv_cfg = AdvantageConfig { group_size: c.group, scale_by_std: rng.below(2) == 0 };
    // The shapings keep the sign of A (the PPL factor is in [0.8, 1.2]), so the sequence
    // advantage's sign is the sign of every token's shaped advantage.
    let seq_adv = reference::grpo_advantages(&rewards, &adv_cfg).unwrap();
    let mut old_logp = Vec::with_capacity(n);
    let mut ref_logp = Vec::with_capacity(n);
    for (k, row) in z.chunks(v).enumerate() {
        // The ratio's ℓ: ℓ̃ over K when a filter or mask is on (ℓ when the target is outside K).
        let l = match (c.cfg.filter, given) {
            (None, None) => reference::row_stats(row, Some(targets[k]), t, None).logp.unwrap(),
            (f, m) => {
                let kept = match m {
                    Some(m) => reference::kept_from_ids(v, m.row(k)),
                    None => reference::kept_set(row, t, &f.unwrap()),
                };
                reference::kept_stats(row, t, &kept, Some(targets[k])).logp.unwrap()
            }
        };
        old_logp.push((l - pick(&mut rng, seq_adv[k / c.seq_len])) as f32);
        ref_logp.push((l + kl_offset(&mut rng, c.kl_region)) as f32);
    }
    let advantages = reference::token_advantages(&rewards, &old_logp, &mask, c.seq_len, &adv_cfg, &c.shaping)
        .unwrap()
        .iter()
        .map(|&a| a as f32)
        .collect();
    Data { z, targets, mask, old_logp, ref_logp, advantages, kept_ids, kept_offsets }
}

/// Central differences of the reference loss in every logit.
fn finite_differences(d: &Data, c: &Case) -> Vec<f64> {
    let inp = d.inputs(c.seq_len);
    let loss = |z: &[f64]| reference::grpo_loss(z, c.vocab, &inp, &c.cfg).unwrap().loss;
    let mut z = d.z.clone();
    (0..z.len())
        .map(|i| {
            let z0 = z[i];
            z[i] = z0 + H;
            let up = loss(&z);
            z[i] = z0 - H;
            let down = loss(&z);
            z[i] = z0;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Bound on |FD − analytic| for every logit of token `k`. The central difference errs by
/// H²/6·|f'''| (truncation) plus ≈ 2^-53·(terms summed)·|loss terms|/H (rounding). Along one
/// logit, each derivative of p or ℓ brings a factor ≤ 1/T and the outer functions (ρ, k2, k3,
/// H) bring their own magnitudes, so |f'''| ≤ 50·a_t·(|Ã|ρ + β·(1 + |ℓ−ℓ_ref| + e^u) + c_H·(1 + ln V))/T³
/// with room; that makes truncation ≤ 2e-8·scale. Rounding, with loss terms ≤ 1e9 (ρ ≤ e^20
/// only in the flat clamped piece), is ≤ 2^-53·100·Σ|a·total|/H ≈ 7e-10·Σ|a·total|.
fn tolerance(k: usize, r: &reference::GrpoReference, d: &Data, c: &Case) -> f64 {
    let t = c.cfg.temperature as f64;
    let tk = &r.tokens[k];
    let beta = c.cfg.kl.map_or(0.0, |kl| kl.coef as f64);
    let dk = r.logp[k] - d.ref_logp[k] as f64;
    let eu = (-dk).clamp(-20.0, 20.0).exp().min(14.0);
    let adv = d.advantages[k].abs() as f64;
    let scale = r.weights[k]
        * (adv * tk.ratio.min(1e2)
            + beta * (1.0 + dk.abs() + eu)
            + c.cfg.entropy_coef as f64 * (1.0 + (c.vocab as f64).ln()))
        / t.powi(3);
    let loss_terms: f64 = r.weights.iter().zip(&r.tokens).map(|(a, tk)| a * tk.total.abs()).sum();
    H * H / 6.0 * 50.0 * scale + 1e-9 * (1.0 + loss_terms)
}

fn check_gradient(c: &Case) -> Result<(), TestCaseError> {
    let d = data(c, |rng, _| ratio_offset(rng, c.region, &c.cfg));
    let inp = d.inputs(c.seq_len);
    let r = reference::grpo_loss(&d.z, c.vocab, &inp, &c.cfg).unwrap();
    let grad = reference::grpo_grad(&d.z, c.vocab, &inp, &c.cfg).unwrap();
    let fd = finite_differences(&d, c);
    for (i, (&g, &f)) in grad.iter().zip(&fd).enumerate() {
        let k = i / c.vocab;
        let tol = tolerance(k, &r, &d, c);
        prop_assert!(
            (g - f).abs() <= tol,
            "dz[{}, {}]: analytic {:e} vs FD {:e} (tol {:e})",
            k,
            i % c.vocab,
            g,
            f,
            tol
        );
    }
    Ok(())
}

/// d = ℓ − ℓ_old on a flat piece of the policy term for advantage sign `a`: clipped (ρ above
/// the range for Ã > 0, below it for Ã < 0), dual-clipped (Ã < 0, ρ > c), or clamped.
fn flat_offset(rng: &mut SplitMix64, a: f64, cfg: &GrpoConfig) -> f64 {
    match (rng.below(3), cfg.dual_clip) {
        (0, _) => ratio_offset(rng, Region::Clamped, cfg),
        (1, Some(c)) if a < 0.0 => (c as f64).ln() + MARGIN + uniform(rng),
        _ if a > 0.0 => ratio_offset(rng, Region::Above, cfg),
        _ => ratio_offset(rng, Region::Below, cfg),
    }
}

fn check_flat(c: &Case) -> Result<(), TestCaseError> {
    let cfg = GrpoConfig { kl: None, entropy_coef: 0.0, ..c.cfg };
    let c = Case { cfg, ..c.clone() };
    let d = data(&c, |rng, a| flat_offset(rng, a, &c.cfg));
    let inp = d.inputs(c.seq_len);
    let r = reference::grpo_loss(&d.z, c.vocab, &inp, &c.cfg).unwrap();
    for (k, tk) in r.tokens.iter().enumerate() {
        prop_assert_eq!(tk.dtotal_dlogp, 0.0, "token {} is on a flat piece: {:?}", k, tk);
    }
    let grad = reference::grpo_grad(&d.z, c.vocab, &inp, &c.cfg).unwrap();
    prop_assert!(grad.iter().all(|&g| g == 0.0), "analytic gradient on a flat piece: {:?}", grad);
    // The loss is then the same number at z ± H (each token's policy value does not depend on
    // z), so the finite differences are exactly 0 too.
    let fd = finite_differences(&d, &c);
    prop_assert!(fd.iter().all(|&f| f == 0.0), "finite differences on a flat piece: {:?}", fd);
    Ok(())
}

/// Central differences of `f` (a function of one row) in every logit of `z`.
fn fd_row(z: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut z = z.to_vec();
    (0..z.len())
        .map(|i| {
            let z0 = z[i];
            z[i] = z0 + H;
            let up = f(&z);
            z[i] = z0 - H;
            let down = f(&z);
            z[i] = z0;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// The token-level identities over a fixed K (any non-empty subset, the target in it or not):
/// ∂lse_K/∂z_i = p̃_i·1_K/T, ∂ℓ̃/∂z_i = (1[i=y] − p̃_i·1_K)/T (the unfiltered (1[i=y] − p_i)/T
/// when y ∉ K), ∂H̃/∂z_i = −p̃_i(ln p̃_i + H̃)·1_K/T, against central differences of
/// `reference::kept_stats`. Tolerance: truncation H²/6·|f'''| with |f'''| ≤ 50·(1 + ln V)/T³
/// (each derivative of p̃ brings ≤ 1/T; the entropy's ln p̃ factor ≤ ln V plus O(1)), and
/// rounding 2^-53·(|f| + V)/H ≈ 1.5e-12·(|f| + V), rounded up to 1e-9·(1 + |f|).
fn check_kept_identities(z: &[f64], t: f64, kept: &[bool], y: u32) -> Result<(), TestCaseError> {
    let v = z.len();
    let r = reference::kept_stats(z, t, kept, Some(y));
    let (p, lse) = reference::softmax(z, t);
    let tol = |f: f64| H * H / 6.0 * 50.0 * (1.0 + (v as f64).ln()) / t.powi(3) + 1e-9 * (1.0 + f.abs());
    let fd_lse = fd_row(z, |z| reference::kept_stats(z, t, kept, None).lse);
    let fd_h = fd_row(z, |z| reference::kept_stats(z, t, kept, None).entropy);
    let fd_l = fd_row(z, |z| reference::kept_stats(z, t, kept, Some(y)).logp.unwrap());
    for i in 0..v {
        let pk = if kept[i] { (z[i] / t - r.lse).exp() } else { 0.0 };
        let delta = if i == y as usize { 1.0 } else { 0.0 };
        let want_lse = pk / t;
        let want_h = if pk > 0.0 { -pk * (pk.ln() + r.entropy) / t } else { 0.0 };
        let want_l = if r.outside { (delta - p[i]) / t } else { (delta - pk) / t };
        prop_assert!((fd_lse[i] - want_lse).abs() <= tol(r.lse), "∂lse_K/∂z[{i}]: {} vs {}", fd_lse[i], want_lse);
        prop_assert!((fd_h[i] - want_h).abs() <= tol(r.entropy), "∂H̃/∂z[{i}]: {} vs {}", fd_h[i], want_h);
        let l = r.logp.unwrap();
        prop_assert!(
            (fd_l[i] - want_l).abs() <= tol(l),
            "∂ℓ̃/∂z[{i}] (outside {}): {} vs {}",
            r.outside,
            fd_l[i],
            want_l
        );
    }
    prop_assert!(lse >= r.lse - 1e-12, "lse_K ≤ lse");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The filtered loss's analytic gradient (ℓ̃ in the ratio and KL, H or H̃ in the bonus,
    /// targets inside and outside K, K recomputed by top-k/top-p/both or given as a mask)
    /// equals central differences on every smooth piece where K does not change (see
    /// `clear_gap`). Same tolerance as the unfiltered property: |∂ℓ̃/∂z_j| ≤ 1/T as well, and
    /// each further derivative of p̃ brings ≤ 1/T as for p.
    #[test]
    fn kept_gradient_matches_finite_differences(c in kept_case()) {
        check_gradient(&c)?;
    }

    /// Token-level identities of ℓ̃, H̃ and lse_K over a fixed K (see `check_kept_identities`).
    #[test]
    fn kept_token_identities(
        seed in any::<u64>(),
        vocab in 1usize..=12,
        t in prop_oneof![Just(1.0f64), 0.5f64..2.0],
    ) {
        let mut rng = SplitMix64(seed);
        let z: Vec<f64> = (0..vocab).map(|_| (rng.below(6145) as f64 - 3072.0) / 1024.0).collect();
        let mut kept: Vec<bool> = (0..vocab).map(|_| rng.below(2) == 0).collect();
        let y = rng.below(vocab as u64) as u32;
        if !kept.iter().any(|&k| k) {
            kept[rng.below(vocab as u64) as usize] = true;
        }
        check_kept_identities(&z, t, &kept, y)?;
    }

    /// The analytic gradient equals central differences on every smooth piece: each aggregation
    /// mode, KL estimator (and KL off), entropy bonus, temperature, dual clip and shaping.
    #[test]
    fn analytic_gradient_matches_finite_differences(c in case()) {
        check_gradient(&c)?;
    }

    /// Where clipping, dual clipping or the ratio clamp is active (KL and entropy bonus off),
    /// the gradient is exactly 0, and so are the finite differences.
    #[test]
    fn gradient_is_zero_where_the_policy_term_is_flat(c in case()) {
        check_flat(&c)?;
    }
}
