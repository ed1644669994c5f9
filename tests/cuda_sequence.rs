//! The sequence kernels (`cuda::log_ppl`, `ppl_weight`, `grpo_advantages`, `shape_advantages`,
//! `token_advantages`, `aggregation_weights`) against the f64 reference with the tolerances of
//! tests/cpu_sequence.rs, their errors against `cpu::`'s, hand-checked values, B·T > 65535 with
//! sequences longer than one 1024-token scan chunk, G at its limit, 10 bit-identical runs, and a
//! small case for compute-sanitizer.
//!
//! Batches are those of tests/sequence_cases, shared with tests/cpu_sequence.rs (empty sequences
//! and groups, prompt/response/padding masks, log-prob ties, 0/1 and continuous rewards), with a
//! few percent of long sequences (up to 2100 tokens: more than one scan chunk) and large groups
//! (up to 300).
//!
//! Outputs are new zero-filled buffers written by the kernels: every function's output is
//! compared in full, and its zeros are the documented values of masked entries.
//!
//! Without a CUDA device every test prints "skipping ..." and passes.
#![cfg(feature = "cuda")]

mod common;
mod gpu_env;

use gpu_env::{gpu_for_property, gpu_or_skip};
mod sequence_cases;

use proptest::prelude::*;
use rlvr_kernels::cuda::{self, Check};
use rlvr_kernels::reference;
use rlvr_kernels::{cpu, AdvantageConfig, Aggregation, Error, PositionShaping, PplShaping, Shaping};
use sequence_cases::{adv, aggregation, check_shaped, ref_factors, shaping, widen, Batch, BOTH, EPS};

fn batch() -> impl Strategy<Value = Batch> {
    let t = prop_oneof![19 => 1usize..=40, 1 => 1000usize..=2100];
    let g = prop_oneof![19 => 1usize..=8, 1 => 9usize..=300];
    (t, g, 0usize..=5, any::<u64>()).prop_map(|(t, g, n, seed)| Batch::build(t, g, n.min(1 + 4000 / (t * g)), seed))
}

proptest! {
    #![proptest_config(common::config())]

    /// Same `None`s (NaN on the device); values within ε·max(|ref|, mean|ℓ|) as on the CPU.
    #[test]
    fn log_ppl_matches_reference(b in batch()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let got = cuda::log_ppl_host(&s, &b.logp, &b.mask, b.seq_len).unwrap();
        let want = reference::log_ppl(&b.logp, &b.mask, b.seq_len).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(g.is_some(), w.is_some(), "sequence {}", i);
            if let (Some(g), Some(w)) = (g, w) {
                let s = i * b.seq_len..(i + 1) * b.seq_len;
                let n: f64 = b.mask[s.clone()].iter().map(|&m| m as f64).sum();
                let abs: f64 = b.logp[s.clone()].iter().zip(&b.mask[s]).map(|(&l, &m)| (l * m).abs() as f64).sum();
                let tol = EPS * w.abs().max(abs / n);
                prop_assert!((*g as f64 - w).abs() <= tol, "sequence {}: {} vs {}", i, g, w);
            }
        }
    }

    /// On the same f32 log-PPL values: within ε·(1 + |w|) (μ, σ summed in another order, w rounded
    /// once; the quartiles and the fence are the reference's exactly).
    #[test]
    fn ppl_weight_matches_reference(b in batch()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let lp = reference::log_ppl(&b.logp, &b.mask, b.seq_len).unwrap();
        let lp32: Vec<Option<f32>> = lp.iter().map(|v| v.map(|v| v as f32)).collect();
        let lp64: Vec<Option<f64>> = lp32.iter().map(|v| v.map(f64::from)).collect();
        let got = cuda::ppl_weight_host(&s, &lp32, b.group).unwrap();
        let want = reference::ppl_weight(&lp64, b.group).unwrap();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * (1.0 + w.abs()), "sequence {}: {} vs {}", i, g, w);
        }
    }

    /// Both std modes: f64 group statistics rounded once (ε·|A|); G = 1 gives A = 0.
    #[test]
    fn grpo_advantages_match_reference(b in batch(), scale_by_std in any::<bool>()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let cfg = AdvantageConfig { group_size: b.group, scale_by_std };
        let got = cuda::grpo_advantages_host(&s, &b.rewards, &cfg).unwrap();
        let want = reference::grpo_advantages(&b.rewards, &cfg).unwrap();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * w.abs(), "sequence {}: {} vs {}", i, g, w);
        }
        if b.group == 1 {
            prop_assert!(got.iter().all(|&a| a == 0.0));
        }
    }

    /// Every shaping combination on its own; see [`shape_tol`].
    #[test]
    fn shape_advantages_match_reference(b in batch(), shaping in shaping()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let w = shaping.ppl.map(|_| b.weights.as_slice());
        let got = cuda::shape_advantages_host(&s, &b.adv, &b.mask, b.seq_len, w, &shaping).unwrap();
        let (adv, w64) = (widen(&b.adv), widen(&b.weights));
        let w64 = shaping.ppl.map(|_| w64.as_slice());
        let want = reference::shape_advantages(&adv, &b.mask, b.seq_len, w64, &shaping).unwrap();
        check_shaped("cuda", &got, &want, &adv, &ref_factors(&b, w64, &shaping), &b, &shaping);
    }

    /// The fused pipeline against the reference pipeline; see [`shape_tol`].
    #[test]
    fn token_advantages_match_reference(b in batch(), shaping in shaping(), scale_by_std in any::<bool>()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let cfg = AdvantageConfig { group_size: b.group, scale_by_std };
        let (r, l, m, t) = (&b.rewards, &b.logp, &b.mask, b.seq_len);
        let got = cuda::token_advantages_host(&s, r, l, m, t, &cfg, &shaping).unwrap();
        let want = reference::token_advantages(r, l, m, t, &cfg, &shaping).unwrap();
        let adv = reference::grpo_advantages(&b.rewards, &cfg).unwrap();
        let w = reference::ppl_weight(&reference::log_ppl(l, m, t).unwrap(), b.group).unwrap();
        check_shaped("cuda", &got, &want, &adv, &ref_factors(&b, Some(&w), &shaping), &b, &shaping);
    }

    /// Every mode: the CPU's bits (exact counts, the same f64 expression rounded once), so ε/2·|a|
    /// from the reference; all zeros for an empty batch.
    #[test]
    fn aggregation_weights_match_cpu_and_reference(b in batch(), agg in aggregation()) {
        let Some(s) = gpu_for_property() else { return Ok(()) };
        let got = cuda::aggregation_weights_host(&s, &b.mask, b.seq_len, &agg).unwrap();
        let cpu = cpu::aggregation_weights(&b.mask, b.seq_len, &agg).unwrap();
        prop_assert!(got.iter().map(|x| x.to_bits()).eq(cpu.iter().map(|x| x.to_bits())), "not the CPU's bits");
        let want = reference::aggregation_weights(&b.mask, b.seq_len, &agg).unwrap();
        for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - w).abs() <= EPS * w.abs(), "token {}: {} vs {}", k, g, w);
        }
    }
}

#[test]
fn skip_message_or_device() {
    gpu_env::say_device();
}

/// Bad input gives the CPU's error (compared by Debug: the values may be NaN), one fault at a time.
#[test]
fn errors_match_cpu() {
    let Some(s) = gpu_or_skip("errors_match_cpu") else { return };
    let same = |got: Result<(), Error>, want: Result<(), Error>, what: &str| {
        assert_eq!(format!("{:?}", got.err()), format!("{:?}", want.err()), "{what}");
    };
    let mut half = [1.0f32; 6];
    half[4] = 0.5;
    let logp = [0.0, -1.0, f32::NAN, 0.0, -2.0, -1.0];
    let bad_shapings = [
        Shaping { ppl: Some(PplShaping { lo: 1.3, hi: 1.2, alpha: 0.01 }), position: None },
        Shaping { ppl: Some(PplShaping { alpha: f32::NAN, ..Default::default() }), position: None },
        Shaping { ppl: None, position: Some(PositionShaping { beta: -0.1, kappa: 15.0 }) },
    ];
    for (mask, lp, t) in [(&half[..], &[0.0f32; 6][..], 3), (&[1.0; 6], &logp, 3), (&[1.0; 6], &[0.0; 6], 0)] {
        same(cuda::log_ppl_host(&s, lp, mask, t).map(drop), cpu::log_ppl(lp, mask, t).map(drop), "log_ppl");
        for agg in [Aggregation::TOKEN_MEAN, Aggregation::TokenMean { global_tokens: Some(-1.0) }] {
            same(
                cuda::aggregation_weights_host(&s, mask, t, &agg).map(drop),
                cpu::aggregation_weights(mask, t, &agg).map(drop),
                "aggregation_weights",
            );
        }
        for shaping in [BOTH, Shaping::NONE].iter().chain(&bad_shapings) {
            for (rewards, g) in [([1.0f32, 0.0], 2), ([f32::NAN, 1.0], 2), ([1.0, 0.0], 0), ([1.0, 0.0], 3)] {
                same(
                    cuda::token_advantages_host(&s, &rewards, lp, mask, t, &adv(g), shaping).map(drop),
                    cpu::token_advantages(&rewards, lp, mask, t, &adv(g), shaping).map(drop),
                    "token_advantages",
                );
                same(
                    cuda::grpo_advantages_host(&s, &rewards, &adv(g)).map(drop),
                    cpu::grpo_advantages(&rewards, &adv(g)).map(drop),
                    "grpo_advantages",
                );
            }
            for (a, w) in [(&[1.0f32, 0.0][..], Some(&[0.0f32, 1.0][..])), (&[1.0], None), (&[1.0, 0.0], Some(&[0.0]))]
            {
                same(
                    cuda::shape_advantages_host(&s, a, mask, t, w, shaping).map(drop),
                    cpu::shape_advantages(a, mask, t, w, shaping).map(drop),
                    "shape_advantages",
                );
            }
        }
    }
    let e = cuda::ppl_weight_host(&s, &[None; 1025], 1025).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { name: "group_size", .. }), "{e:?}");
    let e = cuda::token_advantages_host(&s, &[0.0; 1025], &[0.0; 1025], &[1.0; 1025], 1, &adv(1025), &BOTH);
    assert!(matches!(e, Err(Error::InvalidConfig { name: "group_size", .. })), "{e:?}");
    same(cuda::ppl_weight_host(&s, &[None; 5], 2).map(drop), cpu::ppl_weight(&[None; 5], 2).map(drop), "ppl_weight");
}

/// The hand-checked values of tests/cpu_sequence.rs (the CPU matches them there): the same within
/// 1e-6 here, including σ := 1 and the IQR fence dropping outliers.
#[test]
fn hand_checked_values() {
    let Some(s) = gpu_or_skip("hand_checked_values") else { return };
    let groups: [&[Option<f32>]; 7] = [
        &[None, Some(2.0), None],
        &[Some(1.0), None, Some(3.0)],
        &[Some(0.0), Some(0.0), Some(10.0)],
        &[Some(0.0), Some(0.0), Some(1.0), Some(0.0)],
        &[Some(1.0), Some(2.0), Some(3.0), Some(100.0)],
        &[Some(0.0), Some(1.0), Some(2.0), Some(3.0), Some(1000.0)],
        &[Some(1.0), Some(1.000_000_5)],
    ];
    for g in groups {
        let got = cuda::ppl_weight_host(&s, g, g.len()).unwrap();
        let want = cpu::ppl_weight(g, g.len()).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{g:?}: cuda {got:?} vs cpu {want:?}");
        }
    }
    let shaping = Shaping { ppl: None, position: Some(PositionShaping::default()) };
    let mask = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
    let got = cuda::shape_advantages_host(&s, &[1.0, -1.0, 0.0, 0.02], &mask, 3, None, &shaping).unwrap();
    let b0 = 0.1 / (1.0 + 7.5f64.exp());
    let want = [1.0, 1.0 + b0, 1.05, -1.0, -1.0 - b0, -1.05, 0.0, 0.0, 0.0, 0.02, 0.02 + b0, 0.03];
    for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-7, "token {k}: {g} vs {w}");
    }
    let empty = cuda::token_advantages_host(&s, &[], &[], &[], 3, &adv(4), &BOTH).unwrap();
    assert!(empty.is_empty() && cuda::log_ppl_host(&s, &[], &[], 3).unwrap().is_empty());
}

/// B·T = 96000 > 65535 tokens in sequences of 3000 (three scan chunks), groups of 8 and of 1024
/// (the limit), against the reference; then ten runs of every function give the same bits, with
/// and without value checks (three runs on the kernel simulator, each in its own thread order).
#[test]
fn large_batches_and_repeated_runs() {
    let Some(s) = gpu_or_skip("large_batches_and_repeated_runs") else { return };
    for (t, g, groups) in [(3000, 8, 4), (2, 1024, 2)] {
        let b = Batch::build(t, g, groups, 99);
        let cfg = adv(g);
        let (r, l, m) = (&b.rewards, &b.logp, &b.mask);
        let got = cuda::token_advantages_host(&s, r, l, m, t, &cfg, &BOTH).unwrap();
        let want = reference::token_advantages(r, l, m, t, &cfg, &BOTH).unwrap();
        let a = reference::grpo_advantages(r, &cfg).unwrap();
        let w = reference::ppl_weight(&reference::log_ppl(l, m, t).unwrap(), g).unwrap();
        check_shaped("cuda", &got, &want, &a, &ref_factors(&b, Some(&w), &BOTH), &b, &BOTH);
        let up = |v: &[f32]| s.clone_htod(v).unwrap();
        let (dr, dl, dm) = (up(r), up(l), up(m));
        let (rv, lv, mv) = (dr.as_view(), dl.as_view(), dm.as_view());
        let run = |check: Check| {
            let host = |x: rlvr_kernels::cuda::CudaSlice<f32>| -> Vec<u32> {
                s.clone_dtoh(&x).unwrap().iter().map(|v| v.to_bits()).collect()
            };
            let lp = cuda::log_ppl(&s, &lv, &mv, t, check).unwrap();
            let w = cuda::ppl_weight(&s, &lp.as_view(), g).unwrap();
            let a = cuda::grpo_advantages(&s, &rv, &cfg, check).unwrap();
            let shaped = cuda::shape_advantages(&s, &a.as_view(), &mv, t, Some(&w.as_view()), &BOTH, check).unwrap();
            let fused = cuda::token_advantages(&s, &rv, &lv, &mv, t, &cfg, &BOTH, check).unwrap();
            let agg = cuda::aggregation_weights(&s, &mv, t, &Aggregation::SeqMeanTokenMean, check).unwrap();
            [host(lp), host(w), host(a), host(shaped), host(fused), host(agg)]
        };
        let first = run(Check::Values);
        for i in 1..gpu_env::sized(10, 3) {
            assert!(run(Check::Values) == first, "T = {t}, G = {g}: run {i} differs");
        }
        assert!(run(Check::ShapesOnly) == first, "T = {t}, G = {g}: ShapesOnly differs");
    }
    let b = Batch::build(1, 3000, 1, 5);
    let got = cuda::grpo_advantages_host(&s, &b.rewards, &adv(3000)).unwrap();
    let want = reference::grpo_advantages(&b.rewards, &adv(3000)).unwrap();
    for (&g, &w) in got.iter().zip(&want) {
        assert!((g as f64 - w).abs() <= EPS * w.abs(), "G = 3000: {g} vs {w}");
    }
}

/// Every sequence kernel once, small enough for compute-sanitizer (memcheck, racecheck):
/// two scan chunks per sequence, groups of 5, both shapings, with and without value checks, and
/// a bad mask value (the status path).
#[test]
fn sanitizer_small_case() {
    let Some(s) = gpu_or_skip("sanitizer_small_case") else { return };
    let b = Batch::build(1100, 5, 2, 3);
    let (t, cfg) = (b.seq_len, adv(5));
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    let (dr, dl, dm, da, dw) = (up(&b.rewards), up(&b.logp), up(&b.mask), up(&b.adv), up(&b.weights));
    let (rv, lv, mv) = (dr.as_view(), dl.as_view(), dm.as_view());
    for check in [Check::Values, Check::ShapesOnly] {
        let lp = cuda::log_ppl(&s, &lv, &mv, t, check).unwrap();
        cuda::ppl_weight(&s, &lp.as_view(), 5).unwrap();
        cuda::grpo_advantages(&s, &rv, &cfg, check).unwrap();
        cuda::shape_advantages(&s, &da.as_view(), &mv, t, Some(&dw.as_view()), &BOTH, check).unwrap();
        cuda::token_advantages(&s, &rv, &lv, &mv, t, &cfg, &BOTH, check).unwrap();
        cuda::aggregation_weights(&s, &mv, t, &Aggregation::SeqMeanTokenMean, check).unwrap();
    }
    let mut bad = b.mask.clone();
    bad[1234] = 0.5;
    let e = cuda::aggregation_weights_host(&s, &bad, t, &Aggregation::TOKEN_MEAN).unwrap_err();
    assert_eq!(e, Error::InvalidMask { token: 1234, value: 0.5 });
    let got = cuda::token_advantages_host(&s, &b.rewards, &b.logp, &b.mask, t, &cfg, &BOTH).unwrap();
    let want = reference::token_advantages(&b.rewards, &b.logp, &b.mask, t, &cfg, &BOTH).unwrap();
    let a = reference::grpo_advantages(&b.rewards, &cfg).unwrap();
    let w = reference::ppl_weight(&reference::log_ppl(&b.logp, &b.mask, t).unwrap(), 5).unwrap();
    check_shaped("cuda", &got, &want, &a, &ref_factors(&b, Some(&w), &BOTH), &b, &BOTH);
}
