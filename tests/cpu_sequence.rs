//! The O(N) sequence side on the CPU (`cpu::log_ppl`, `ppl_weight`, `grpo_advantages`,
//! `shape_advantages`, `token_advantages`, `aggregation_weights`) against the f64 reference,
//! and their errors on bad input.
//!
//! Batches are random in shape (T, G, number of groups), masks (empty sequences, fully empty
//! groups, prompt/response/padding layouts, random bits), log-probs (per-sequence constants that
//! make log-PPL ties, a coarse grid, continuous values) and rewards (0/1, continuous, constant per
//! group). `PROPTEST_CASES` overrides the default of 1000 cases per property.

mod sequence_cases;

use proptest::prelude::*;
use rlvr_kernels::reference::{self, SplitMix64};
use rlvr_kernels::{cpu, AdvantageConfig, Aggregation, Error, PositionShaping, PplShaping, Shaping};
use sequence_cases::{adv, aggregation, check_shaped, ref_factors, shaping, widen, Batch, BOTH, EPS};

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000))
}

fn batch() -> impl Strategy<Value = Batch> {
    (1usize..=40, 1usize..=8, 0usize..=5, any::<u64>()).prop_map(|(t, g, n, seed)| Batch::build(t, g, n, seed))
}

proptest! {
    #![proptest_config(config())]

    /// log PPL = −Σ mℓ / Σ m: same `None`s; values within f32 rounding of the result (ε/2·|ref|)
    /// plus f64 summation noise (≤ T·2⁻⁵³·mean|ℓ| ≪ ε·mean|ℓ|).
    #[test]
    fn log_ppl_matches_reference(batch in batch()) {
        let got = cpu::log_ppl(&batch.logp, &batch.mask, batch.seq_len).unwrap();
        let want = reference::log_ppl(&batch.logp, &batch.mask, batch.seq_len).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(g.is_some(), w.is_some(), "sequence {}", i);
            if let (Some(g), Some(w)) = (g, w) {
                let s = i * batch.seq_len..(i + 1) * batch.seq_len;
                let n: f64 = batch.mask[s.clone()].iter().map(|&m| m as f64).sum();
                let (l, m) = (&batch.logp[s.clone()], &batch.mask[s]);
                let abs_sum: f64 = l.iter().zip(m).map(|(&l, &m)| (l * m).abs() as f64).sum();
                let mean_abs = abs_sum / n;
                let tol = EPS * w.abs().max(mean_abs);
                prop_assert!((*g as f64 - w).abs() <= tol, "sequence {}: {} vs {}", i, g, w);
            }
        }
    }

    /// PPL weight on the same (f32) log-PPL values: the quartiles, the IQR fence and so the kept
    /// set are the reference's exactly (same f64 expressions on the same values); μ and σ may
    /// be summed in another order (relative noise ~G·2⁻⁵³), then w is rounded to f32 once:
    /// |error| ≤ ε/2·|w| + noise, bounded by ε·(1 + |w|).
    #[test]
    fn ppl_weight_matches_reference(batch in batch()) {
        let lp = reference::log_ppl(&batch.logp, &batch.mask, batch.seq_len).unwrap();
        let lp32: Vec<Option<f32>> = lp.iter().map(|v| v.map(|v| v as f32)).collect();
        let lp64: Vec<Option<f64>> = lp32.iter().map(|v| v.map(f64::from)).collect();
        let got = cpu::ppl_weight(&lp32, batch.group).unwrap();
        let want = reference::ppl_weight(&lp64, batch.group).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * (1.0 + w.abs()), "sequence {}: {} vs {} ({:?})", i, g, w, lp64);
        }
    }

    /// GRPO advantages, both std modes: the same f64 group statistics, rounded once (ε/2·|A|).
    #[test]
    fn grpo_advantages_match_reference(batch in batch(), scale_by_std in any::<bool>()) {
        let cfg = AdvantageConfig { group_size: batch.group, scale_by_std };
        let got = cpu::grpo_advantages(&batch.rewards, &cfg).unwrap();
        let want = reference::grpo_advantages(&batch.rewards, &cfg).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * w.abs(), "sequence {}: {} vs {}", i, g, w);
        }
        if batch.group == 1 {
            prop_assert!(got.iter().all(|&a| a == 0.0), "G = 1 must give A = 0");
        }
    }

    /// Shaping on its own, every combination of shapings and coefficients; see [`shape_tol`].
    #[test]
    fn shape_advantages_match_reference(batch in batch(), shaping in shaping()) {
        let w = shaping.ppl.map(|_| batch.weights.as_slice());
        let got = cpu::shape_advantages(&batch.adv, &batch.mask, batch.seq_len, w, &shaping).unwrap();
        let (adv, w64) = (widen(&batch.adv), widen(&batch.weights));
        let w64 = shaping.ppl.map(|_| w64.as_slice());
        let want = reference::shape_advantages(&adv, &batch.mask, batch.seq_len, w64, &shaping).unwrap();
        check_shaped("cpu", &got, &want, &adv, &ref_factors(&batch, w64, &shaping), &batch, &shaping);
    }

    /// The fused pipeline against the reference pipeline; see [`shape_tol`] (A and the PPL factor
    /// are the reference's f64 values rounded once: the fused path keeps log-PPL in f64, so the
    /// IQR filter keeps the same sequences).
    #[test]
    fn token_advantages_match_reference(batch in batch(), shaping in shaping(), scale_by_std in any::<bool>()) {
        let cfg = AdvantageConfig { group_size: batch.group, scale_by_std };
        let (r, l, m, t) = (&batch.rewards, &batch.logp, &batch.mask, batch.seq_len);
        let got = cpu::token_advantages(r, l, m, t, &cfg, &shaping).unwrap();
        let want = reference::token_advantages(r, l, m, t, &cfg, &shaping).unwrap();
        let adv = reference::grpo_advantages(&batch.rewards, &cfg).unwrap();
        let lp = reference::log_ppl(&batch.logp, &batch.mask, batch.seq_len).unwrap();
        let w = reference::ppl_weight(&lp, batch.group).unwrap();
        let factors = ref_factors(&batch, Some(&w), &shaping);
        check_shaped("cpu", &got, &want, &adv, &factors, &batch, &shaping);
    }

    /// Aggregation weights, every mode: the same f64 weight rounded once (ε/2·|a|); an empty batch
    /// gives all zeros.
    #[test]
    fn aggregation_weights_match_reference(batch in batch(), agg in aggregation()) {
        let got = cpu::aggregation_weights(&batch.mask, batch.seq_len, &agg).unwrap();
        let want = reference::aggregation_weights(&batch.mask, batch.seq_len, &agg).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * w.abs(), "token {}: {} vs {}", k, g, w);
        }
        if batch.mask.iter().all(|&m| m == 0.0) {
            prop_assert!(got.iter().all(|&a| a == 0.0));
        }
    }

    /// Bad input, one to three problems at once: every cpu function fails exactly when the
    /// reference fails, with the same error (compared by `Debug`, so NaN values compare equal).
    #[test]
    fn errors_match_reference(
        batch in batch(),
        shaping in shaping(),
        faults in prop::collection::vec((0u8..10, any::<u64>()), 1..=3),
    ) {
        let mut b = batch;
        let (mut group, mut seq_len, mut shaping) = (b.group, b.seq_len, shaping);
        for (fault, seed) in faults {
            let mut rng = SplitMix64(seed);
            let mut pick = |len: usize| (len > 0).then(|| rng.below(len as u64) as usize);
            match fault {
                0 => { if let Some(i) = pick(b.logp.len()) { b.logp[i] = f32::NAN } }
                1 => { if let Some(i) = pick(b.rewards.len()) { b.rewards[i] = f32::INFINITY } }
                2 => { if let Some(i) = pick(b.mask.len()) { b.mask[i] = 0.5 } }
                3 => b.rewards.push(1.0),
                4 => { b.logp.pop(); }
                5 => seq_len = if seed % 2 == 0 { 0 } else { seq_len + 1 },
                6 => group = 0,
                7 => group = b.rewards.len() + 1,
                8 => { b.adv.pop(); b.weights.push(0.0); }
                _ => shaping = match seed % 4 {
                    0 => Shaping { ppl: Some(PplShaping { lo: 1.5, hi: 1.0, alpha: 0.01 }), ..shaping },
                    1 => Shaping { ppl: Some(PplShaping { alpha: f32::NAN, ..Default::default() }), ..shaping },
                    2 => Shaping { position: Some(PositionShaping { beta: -0.1, kappa: 15.0 }), ..shaping },
                    _ => Shaping { position: Some(PositionShaping { beta: 0.1, kappa: f32::INFINITY }), ..shaping },
                },
            }
        }
        let same = |cpu: Result<(), Error>, reference: Result<(), Error>, what: &str| {
            assert_eq!(format!("{:?}", cpu.err()), format!("{:?}", reference.err()), "{}", what);
        };
        let cfg = AdvantageConfig { group_size: group, scale_by_std: true };
        same(
            cpu::log_ppl(&b.logp, &b.mask, seq_len).map(drop),
            reference::log_ppl(&b.logp, &b.mask, seq_len).map(drop),
            "log_ppl",
        );
        let lp: Vec<Option<f32>> = b.rewards.iter().map(|&r| Some(r)).collect();
        let lp64: Vec<Option<f64>> = b.rewards.iter().map(|&r| Some(r as f64)).collect();
        same(cpu::ppl_weight(&lp, group).map(drop), reference::ppl_weight(&lp64, group).map(drop), "ppl_weight");
        same(
            cpu::grpo_advantages(&b.rewards, &cfg).map(drop),
            reference::grpo_advantages(&b.rewards, &cfg).map(drop),
            "grpo_advantages",
        );
        let (adv64, w64) = (widen(&b.adv), widen(&b.weights));
        for with_weights in [false, true] {
            let (w, w64) = if with_weights { (Some(&b.weights[..]), Some(&w64[..])) } else { (None, None) };
            same(
                cpu::shape_advantages(&b.adv, &b.mask, seq_len, w, &shaping).map(drop),
                reference::shape_advantages(&adv64, &b.mask, seq_len, w64, &shaping).map(drop),
                "shape_advantages",
            );
        }
        same(
            cpu::token_advantages(&b.rewards, &b.logp, &b.mask, seq_len, &cfg, &shaping).map(drop),
            reference::token_advantages(&b.rewards, &b.logp, &b.mask, seq_len, &cfg, &shaping).map(drop),
            "token_advantages",
        );
        same(
            cpu::aggregation_weights(&b.mask, seq_len, &Aggregation::SeqMeanTokenMean).map(drop),
            reference::aggregation_weights(&b.mask, seq_len, &Aggregation::SeqMeanTokenMean).map(drop),
            "aggregation_weights",
        );
    }
}

/// Hand-computed PPL weights for n = 1..5 valid values (with `None`s in the group), an outlier
/// dropped by the IQR fence, all-equal values (σ := 1) and σ just under the 1e-6 floor. Both
/// paths must give them (to 1e-6: the values are printed to 7 digits).
#[test]
fn ppl_weight_hand_checked() {
    let s = (2.0f64 / 3.0).sqrt();
    let cases: Vec<(Vec<Option<f32>>, Vec<f64>)> = vec![
        // n = 1: μ = 2, σ = 0 → 1.
        (vec![None, Some(2.0), None], vec![0.0, 0.0, 0.0]),
        // n = 2: Q1 = 1.5, Q3 = 2.5, fence [0, 4] keeps both; μ = 2, σ = 1.
        (vec![Some(1.0), None, Some(3.0)], vec![-1.0, 0.0, 1.0]),
        // n = 3: Q1 = 0, Q3 = 5, all kept; μ = 10/3, σ = √(200/9).
        (vec![Some(0.0), Some(0.0), Some(10.0)], {
            let sd = (200.0f64 / 9.0).sqrt();
            vec![-10.0 / 3.0 / sd, -10.0 / 3.0 / sd, 20.0 / 3.0 / sd]
        }),
        // n = 4: Q1 = 0, Q3 = 0.25, fence [−0.375, 0.625] drops 1; kept all 0 → μ = 0, σ := 1.
        (vec![Some(0.0), Some(0.0), Some(1.0), Some(0.0)], vec![0.0, 0.0, 1.0, 0.0]),
        // n = 4: Q1 = 1.75, Q3 = 27.25, fence top 65.5 drops 100; μ = 2, σ = √(2/3).
        (vec![Some(1.0), Some(2.0), Some(3.0), Some(100.0)], vec![-1.0 / s, 0.0, 1.0 / s, 98.0 / s]),
        // n = 5: Q1 = 1, Q3 = 3, fence [−2, 6] drops 1000; μ = 1.5, σ = √1.25.
        (
            vec![Some(0.0), Some(1.0), Some(2.0), Some(3.0), Some(1000.0)],
            [0.0, 1.0, 2.0, 3.0, 1000.0].iter().map(|v| (v - 1.5) / 1.25f64.sqrt()).collect(),
        ),
        // All equal: σ = 0 → 1, w = 0.
        (vec![Some(5.0), Some(5.0), None, Some(5.0)], vec![0.0; 4]),
        // σ = 2.4e-7 ≤ 1e-6 → 1: w = ±(difference)/2, not ±1.
        (vec![Some(1.0), Some(1.000_000_5)], {
            let d = (1.000_000_5f32 as f64 - 1.0) / 2.0;
            vec![-d, d]
        }),
    ];
    for (values, want) in cases {
        let g = values.len();
        let got = cpu::ppl_weight(&values, g).unwrap();
        let wide: Vec<Option<f64>> = values.iter().map(|v| v.map(f64::from)).collect();
        let reference = reference::ppl_weight(&wide, g).unwrap();
        for j in 0..g {
            assert!((got[j] as f64 - want[j]).abs() <= 1e-6 * (1.0 + want[j].abs()), "{values:?}: cpu {got:?}");
            assert!((reference[j] - want[j]).abs() <= 1e-9 * (1.0 + want[j].abs()), "{values:?}: ref {reference:?}");
        }
    }
}

/// Position bonus by hand: A = ±1, β = 0.1, κ = 15, |o| = 2 after one prompt token:
/// r = 0 → b = 0.1·σ(−7.5); r = ½ → b = 0.05; the prompt token keeps A. A = 0 gets nothing, and a
/// small |A| caps the bonus at ½|A|.
#[test]
fn position_bonus_hand_checked() {
    let shaping = Shaping { ppl: None, position: Some(PositionShaping::default()) };
    let mask = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
    let got = cpu::shape_advantages(&[1.0, -1.0, 0.0, 0.02], &mask, 3, None, &shaping).unwrap();
    let b0 = 0.1 / (1.0 + 7.5f64.exp());
    let want = [1.0, 1.0 + b0, 1.05, -1.0, -1.0 - b0, -1.05, 0.0, 0.0, 0.0, 0.02, 0.02 + b0, 0.03];
    for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-7, "token {k}: {g} vs {w}");
    }
}

#[test]
fn batch_not_divisible_by_group_size() {
    let e = Error::BatchNotDivisible { batch: 5, group: 2 };
    assert_eq!(cpu::grpo_advantages(&[0.0; 5], &adv(2)), Err(e.clone()));
    assert_eq!(cpu::ppl_weight(&[None; 5], 2), Err(e.clone()));
    assert_eq!(cpu::token_advantages(&[0.0; 5], &[0.0; 10], &[1.0; 10], 2, &adv(2), &BOTH), Err(e));
}

#[test]
fn group_size_zero() {
    assert_eq!(cpu::grpo_advantages(&[0.0; 4], &adv(0)), Err(Error::ZeroGroupSize));
    assert_eq!(cpu::ppl_weight(&[None; 4], 0), Err(Error::ZeroGroupSize));
    assert_eq!(cpu::token_advantages(&[0.0; 4], &[0.0; 8], &[1.0; 8], 2, &adv(0), &BOTH), Err(Error::ZeroGroupSize));
}

/// G = 1 is valid: the std of one value is taken as 0 and A = 0 for every sequence, so every
/// token's shaped advantage is 0 too (no bonus for A = 0, and 0·factor = 0).
#[test]
fn group_size_one_gives_zero_advantages() {
    let rewards = [1.0, 0.0, 0.3];
    assert_eq!(cpu::grpo_advantages(&rewards, &adv(1)).unwrap(), vec![0.0; 3]);
    let out = cpu::token_advantages(&rewards, &[-0.5; 6], &[1.0; 6], 2, &adv(1), &BOTH).unwrap();
    assert_eq!(out, vec![0.0; 6]);
}

/// An all-zero mask: no log-PPL anywhere, PPL weights all 0 (factor clip(1, lo, hi)), all
/// aggregation weights 0, and every token carries its sequence's A unchanged.
#[test]
fn mask_all_zero_has_defined_results() {
    let mask = [0.0; 8];
    assert_eq!(cpu::log_ppl(&[-1.0; 8], &mask, 2).unwrap(), vec![None; 4]);
    assert_eq!(cpu::ppl_weight(&[None; 4], 2).unwrap(), vec![0.0; 4]);
    for agg in [Aggregation::TOKEN_MEAN, Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSum] {
        assert_eq!(cpu::aggregation_weights(&mask, 2, &agg).unwrap(), vec![0.0; 8]);
    }
    let rewards = [0.0, 1.0, 1.0, 1.0];
    let a = cpu::grpo_advantages(&rewards, &adv(2)).unwrap();
    let out = cpu::token_advantages(&rewards, &[-1.0; 8], &mask, 2, &adv(2), &BOTH).unwrap();
    assert_eq!(out, a.iter().flat_map(|&a| [a, a]).collect::<Vec<_>>());
}

#[test]
fn mask_value_one_half() {
    let mut mask = [1.0; 6];
    mask[4] = 0.5;
    let e = Err(Error::InvalidMask { token: 4, value: 0.5 });
    assert_eq!(cpu::log_ppl(&[0.0; 6], &mask, 3), e.clone().map(|()| vec![]));
    assert_eq!(cpu::shape_advantages(&[1.0, 0.0], &mask, 3, None, &Shaping::NONE), e.clone().map(|()| vec![]));
    assert_eq!(cpu::token_advantages(&[1.0, 0.0], &[0.0; 6], &mask, 3, &adv(2), &BOTH), e.map(|()| vec![]));
}

#[test]
fn nan_reward() {
    let got = cpu::token_advantages(&[1.0, f32::NAN], &[0.0; 4], &[1.0; 4], 2, &adv(2), &Shaping::NONE);
    assert!(
        matches!(got, Err(Error::NonFiniteInput { name: "rewards", index: 1, value }) if value.is_nan()),
        "{got:?}"
    );
    let got = cpu::grpo_advantages(&[f32::NAN, 1.0], &adv(2));
    assert!(
        matches!(got, Err(Error::NonFiniteInput { name: "rewards", index: 0, value }) if value.is_nan()),
        "{got:?}"
    );
}

#[test]
fn nan_old_logp() {
    let logp = [0.0, -1.0, f32::NAN, 0.0];
    let got = cpu::log_ppl(&logp, &[1.0; 4], 2);
    assert!(
        matches!(got, Err(Error::NonFiniteInput { name: "old_logp", index: 2, value }) if value.is_nan()),
        "{got:?}"
    );
    let got = cpu::token_advantages(&[1.0, 0.0], &logp, &[1.0; 4], 2, &adv(2), &BOTH);
    assert!(
        matches!(got, Err(Error::NonFiniteInput { name: "old_logp", index: 2, value }) if value.is_nan()),
        "{got:?}"
    );
}

#[test]
fn seq_len_zero_or_not_dividing() {
    for seq_len in [0, 4] {
        let is_seq_len = |e: Error| matches!(e, Error::ShapeMismatch { name: "seq_len", .. });
        assert!(is_seq_len(cpu::log_ppl(&[0.0; 6], &[1.0; 6], seq_len).unwrap_err()));
        assert!(is_seq_len(cpu::shape_advantages(&[0.0; 2], &[1.0; 6], seq_len, None, &Shaping::NONE).unwrap_err()));
        let got = cpu::token_advantages(&[0.0; 2], &[0.0; 6], &[1.0; 6], seq_len, &adv(2), &BOTH);
        assert!(is_seq_len(got.unwrap_err()));
        assert!(is_seq_len(cpu::aggregation_weights(&[1.0; 6], seq_len, &Aggregation::TOKEN_MEAN).unwrap_err()));
    }
}

#[test]
fn ppl_shaping_without_ppl_weight() {
    let got = cpu::shape_advantages(&[1.0, 0.0], &[1.0; 4], 2, None, &BOTH);
    assert!(matches!(got, Err(Error::ShapeMismatch { name: "ppl_weight", .. })), "{got:?}");
}

#[test]
fn per_sequence_vector_of_wrong_length() {
    let got = cpu::shape_advantages(&[1.0], &[1.0; 4], 2, None, &Shaping::NONE);
    assert!(matches!(got, Err(Error::ShapeMismatch { name: "advantages", .. })), "{got:?}");
    let got = cpu::shape_advantages(&[1.0, 0.0], &[1.0; 4], 2, Some(&[0.0; 3]), &BOTH);
    assert!(matches!(got, Err(Error::ShapeMismatch { name: "ppl_weight", .. })), "{got:?}");
    let got = cpu::token_advantages(&[1.0, 0.0, 1.0], &[0.0; 4], &[1.0; 4], 2, &adv(1), &BOTH);
    assert!(matches!(got, Err(Error::ShapeMismatch { name: "rewards", .. })), "{got:?}");
    let got = cpu::token_advantages(&[1.0, 0.0], &[0.0; 3], &[1.0; 4], 2, &adv(1), &BOTH);
    assert!(matches!(got, Err(Error::ShapeMismatch { name: "old_logp", .. })), "{got:?}");
}

#[test]
fn invalid_shaping_configs() {
    let ppl = |p: PplShaping| Shaping { ppl: Some(p), position: None };
    let bad = [
        (ppl(PplShaping { lo: 1.3, hi: 1.2, alpha: 0.01 }), "ppl.lo"),
        (ppl(PplShaping { alpha: f32::NAN, ..Default::default() }), "ppl.alpha"),
        (Shaping { ppl: None, position: Some(PositionShaping { beta: -0.1, kappa: 15.0 }) }, "position.beta"),
    ];
    for (shaping, field) in bad {
        for got in [
            cpu::shape_advantages(&[1.0, 0.0], &[1.0; 4], 2, Some(&[0.0; 2]), &shaping),
            cpu::token_advantages(&[1.0, 0.0], &[0.0; 4], &[1.0; 4], 2, &adv(2), &shaping),
        ] {
            assert!(matches!(got, Err(Error::InvalidConfig { name, .. }) if name == field), "{field}: {got:?}");
        }
    }
}

/// An empty batch (B = 0) is valid everywhere and gives empty outputs.
#[test]
fn empty_batch() {
    assert_eq!(cpu::log_ppl(&[], &[], 3).unwrap(), vec![]);
    assert_eq!(cpu::grpo_advantages(&[], &adv(4)).unwrap(), Vec::<f32>::new());
    assert_eq!(cpu::token_advantages(&[], &[], &[], 3, &adv(4), &BOTH).unwrap(), Vec::<f32>::new());
    assert_eq!(cpu::aggregation_weights(&[], 3, &Aggregation::TOKEN_MEAN).unwrap(), Vec::<f32>::new());
}
