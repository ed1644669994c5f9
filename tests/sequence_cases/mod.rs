//! Random sequence batches and the shaping tolerance, shared by tests/cpu_sequence.rs and the
//! CUDA tests of the same kernels (tests/cuda_sequence.rs): each file keeps its own batch-shape
//! strategy and calls [`Batch::build`].

#![allow(dead_code)] // each test binary uses its own subset

use proptest::prelude::*;
use rlvr_kernels::reference::{self, SplitMix64};
use rlvr_kernels::{AdvantageConfig, Aggregation, PositionShaping, PplShaping, Shaping};

/// f32 unit roundoff ×2 (machine epsilon).
pub const EPS: f64 = f32::EPSILON as f64;

/// A random `[B, T]` batch with B = groups·G, and per-sequence advantages and PPL weights for
/// testing the shaping step on its own.
#[derive(Debug, Clone)]
pub struct Batch {
    pub seq_len: usize,
    pub group: usize,
    pub mask: Vec<f32>,
    pub logp: Vec<f32>,
    pub rewards: Vec<f32>,
    pub adv: Vec<f32>,
    pub weights: Vec<f32>,
}

pub fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

impl Batch {
    pub fn b(&self) -> usize {
        self.rewards.len()
    }

    pub fn build(seq_len: usize, group: usize, groups: usize, seed: u64) -> Batch {
        let mut rng = SplitMix64(seed);
        let (reward_kind, logp_kind, adv_kind) = (rng.below(4), rng.below(3), rng.below(4));
        let b = groups * group;
        let mut batch =
            Batch { seq_len, group, mask: vec![], logp: vec![], rewards: vec![], adv: vec![], weights: vec![] };
        for _ in 0..groups {
            let empty_group = rng.below(5) == 0;
            let group_reward = rng.below(3) as f32 * 0.5;
            for _ in 0..group {
                let mask_kind = if empty_group { 0 } else { rng.below(5) };
                let (start, len) = (rng.below(seq_len as u64) as usize, 1 + rng.below(seq_len as u64) as usize);
                let constant = -(rng.below(4) as f32) * 0.5;
                for t in 0..seq_len {
                    batch.mask.push(match mask_kind {
                        0 => 0.0,
                        1 => 1.0,
                        2 | 3 => (t >= start && t < start + len) as u8 as f32,
                        _ => rng.below(2) as f32,
                    });
                    batch.logp.push(match logp_kind {
                        0 => constant,
                        1 => -(rng.below(64) as f32) / 8.0,
                        _ => -10.0 * uniform(&mut rng),
                    });
                }
                batch.rewards.push(match reward_kind {
                    0 => rng.below(2) as f32,
                    1 => 2.0 * uniform(&mut rng) - 0.5,
                    2 => group_reward,
                    _ => rng.below(5) as f32 / 4.0,
                });
                batch.adv.push(match (adv_kind, rng.below(6)) {
                    (_, 0) => 0.0,
                    (0, _) => 1e-30 * (uniform(&mut rng) - 0.5),
                    (1, k) => k as f32 * 0.25 - 0.75,
                    _ => 6.0 * uniform(&mut rng) - 3.0,
                });
                batch.weights.push(if rng.below(4) == 0 { 0.0 } else { 8.0 * uniform(&mut rng) - 4.0 });
            }
        }
        assert_eq!(batch.mask.len(), b * seq_len);
        batch
    }
}

/// Every shaping combination: off, default coefficients, non-default coefficients.
pub fn shaping() -> impl Strategy<Value = Shaping> {
    let ppl = prop_oneof![
        Just(None),
        Just(Some(PplShaping::default())),
        (-5.0f32..5.0, 0.0f32..1.0, 1.0f32..2.0).prop_map(|(alpha, lo, hi)| Some(PplShaping { alpha, lo, hi })),
    ];
    let position = prop_oneof![
        Just(None),
        Just(Some(PositionShaping::default())),
        (0.0f32..1.0, -60.0f32..60.0).prop_map(|(beta, kappa)| Some(PositionShaping { beta, kappa })),
    ];
    (ppl, position).prop_map(|(ppl, position)| Shaping { ppl, position })
}

pub fn aggregation() -> impl Strategy<Value = Aggregation> {
    prop_oneof![
        Just(Aggregation::TOKEN_MEAN),
        (0.5f64..1000.0).prop_map(|g| Aggregation::TokenMean { global_tokens: Some(g) }),
        Just(Aggregation::SeqMeanTokenMean),
        Just(Aggregation::SeqMeanTokenSum),
        (0.5f64..100.0).prop_map(|norm| Aggregation::SeqMeanTokenSumNorm { norm }),
    ]
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The f64 PPL factor of each sequence, as the reference pipeline computes it (1 when PPL
/// shaping is off).
pub fn ref_factors(batch: &Batch, w: Option<&[f64]>, shaping: &Shaping) -> Vec<f64> {
    (0..batch.b()).map(|i| shaping.ppl.zip(w).map_or(1.0, |(p, w)| reference::ppl_factor(w[i], &p))).collect()
}

/// Tolerance of a shaped advantage Ã = (A + sign(A)·b)·f against the f64 reference. The f32 path
/// rounds A and f once each, and σ(κ(r − ½)) carries two roundings in its argument (whose effect
/// σ(1−σ)|x|·2ε is below 0.23·2ε for every x) plus ≲ 3 ulp from exp, the add and the divide:
/// |error of β·σ| ≤ 4εβ. With the final add and multiply, |error| ≤ ε·|f|·(4β + 3|A|); we allow
/// twice that. Subnormal results (A ~ 1e-30 times tiny bonuses) get one f32 MIN_POSITIVE more.
pub fn shape_tol(a: f64, factor: f64, shaping: &Shaping) -> f64 {
    let beta = shaping.position.map_or(0.0, |p| p.beta as f64);
    8.0 * EPS * factor.abs() * (beta + a.abs()) + f32::MIN_POSITIVE as f64
}

pub fn check_shaped(
    who: &str,
    got: &[f32],
    want: &[f64],
    adv: &[f64],
    factors: &[f64],
    batch: &Batch,
    shaping: &Shaping,
) {
    assert_eq!(got.len(), want.len());
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let i = k / batch.seq_len;
        let tol = shape_tol(adv[i], factors[i], shaping);
        assert!((g as f64 - w).abs() <= tol, "token {k}: {who} {g} vs reference {w} (tol {tol:e}), {shaping:?}");
    }
}

pub fn adv(g: usize) -> AdvantageConfig {
    AdvantageConfig { group_size: g, scale_by_std: true }
}

pub const BOTH: Shaping = Shaping {
    ppl: Some(PplShaping { alpha: 0.01, lo: 0.8, hi: 1.2 }),
    position: Some(PositionShaping { beta: 0.1, kappa: 15.0 }),
};
