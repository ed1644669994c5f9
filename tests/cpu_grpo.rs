//! `cpu::grpo_forward` / `cpu::grpo_backward*` against the float64 spec (`reference::grpo_loss`,
//! `reference::grpo_grad`) on the same, dtype-rounded logits (bad input: tests/cpu_grpo_errors.rs).
//!
//! Tolerances come from one unit, `UNIT` = 2^-18, times the magnitudes that an f32 computation
//! of that quantity rounds (derived next to each formula in `Tol::new`, tests/grpo_cases, which
//! also holds the comparisons shared with the CUDA tests). Injected bugs (a wrong
//! sign, factor, clamp or branch) show far above these bounds.

mod grpo_cases;

use grpo_cases::{
    bits, case, check_forward_values, check_grad, data, dispatch, forward_bits, kept_case, kept_data, Case, Data,
    KeptCase,
};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rlvr_kernels::{cpu, Element};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000)
}

/// Tolerance unit: 2^-18 ≈ 3.8e-6. The largest single error is the token-stats kernel's: S and
/// W come from f32 lane sums, within 36·2^-24 + 1e-7 ≈ 2.2e-6 relative (see `cpu::math::exp_sums`),
/// which moves ln S, lse and ℓ by as much in absolute terms; every other step is one f32 rounding
/// (2^-24) or one polynomial exp (≤ 1e-7) per operand magnitude. Observed: with a unit of 2^-20
/// the forward property fails on ℓ of a near-certain token (error 1.0e-6, from ln S), so the unit
/// sits about 4× above the largest error seen.
const UNIT: f64 = 1.0 / (1u64 << 18) as f64;

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn check_forward<E: Element>(c: &Case) -> Result<(), TestCaseError> {
    check_forward_of(c, &data::<E>(c))
}

fn check_forward_of<E: Element>(c: &Case, d: &Data<E>) -> Result<(), TestCaseError> {
    let fwd = cpu::grpo_forward(&d.logits, c.vocab, &d.inputs(c), &c.cfg).expect("valid input");
    check_forward_values(c, d, &fwd, UNIT, "cpu")
}

fn single_thread() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap())
}

fn check_backward<E: Element>(c: &Case) -> Result<(), TestCaseError> {
    check_backward_of(c, &data::<E>(c))
}

fn check_backward_of<E: Element>(c: &Case, d: &Data<E>) -> Result<(), TestCaseError> {
    let inp = d.inputs(c);
    let (v, t) = (c.vocab, c.cfg.temperature);
    let fwd = cpu::grpo_forward(&d.logits, v, &inp, &c.cfg).expect("valid input");
    let grad = cpu::grpo_backward(&d.logits, v, &d.targets, &fwd.saved, t, c.grad_loss).expect("valid input");
    // Same bits: into a caller buffer, in place, again, and on one thread (fixed reduction order).
    let mut into = vec![E::from_f32(7.0); d.logits.len()];
    cpu::grpo_backward_into(&d.logits, v, &d.targets, &fwd.saved, t, c.grad_loss, &mut into).unwrap();
    let mut in_place = d.logits.clone();
    cpu::grpo_backward_in_place(&mut in_place, v, &d.targets, &fwd.saved, t, c.grad_loss).unwrap();
    let (fwd1, grad1) = single_thread().install(|| {
        let f = cpu::grpo_forward(&d.logits, v, &inp, &c.cfg).unwrap();
        let g = cpu::grpo_backward(&d.logits, v, &d.targets, &f.saved, t, c.grad_loss).unwrap();
        (f, g)
    });
    let again = cpu::grpo_forward(&d.logits, v, &inp, &c.cfg).unwrap();
    prop_assert!(bits(&into) == bits(&grad) && bits(&in_place) == bits(&grad), "into/in-place differ");
    prop_assert!(bits(&grad1) == bits(&grad), "gradient depends on the thread count");
    prop_assert!(forward_bits(&fwd1) == forward_bits(&fwd), "forward depends on the thread count");
    prop_assert!(forward_bits(&again) == forward_bits(&fwd), "forward is not repeatable");

    check_grad(c, d, &grad, UNIT, "cpu")
}

fn check_kept_forward<E: Element>(kc: &KeptCase) -> Result<(), TestCaseError> {
    let (c, d) = kept_data::<E>(kc);
    check_forward_of(&c, &d)
}

fn check_kept_backward<E: Element>(kc: &KeptCase) -> Result<(), TestCaseError> {
    let (c, d) = kept_data::<E>(kc);
    check_backward_of(&c, &d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Loss, per-token terms, flags and saved scalars match the f64 reference.
    #[test]
    fn forward_matches_reference(c in case()) {
        dispatch(&c, check_forward::<f32>, check_forward::<bf16>, check_forward::<f16>)?;
    }

    /// dlogits match the f64 reference gradient; new buffer, caller buffer and in place agree
    /// bit for bit, and neither repetition nor the thread count changes a bit.
    #[test]
    fn backward_matches_reference(c in case()) {
        dispatch(&c, check_backward::<f32>, check_backward::<bf16>, check_backward::<f16>)?;
    }

    /// With a filter (top-k, top-p, both) or an engine mask (the filter's own K, or random ids
    /// with the target in or out), H or H̃ in the bonus: the forward's ℓ̃, ratio, flags
    /// (OUTSIDE_KEPT), |K|, lse_K and H̃ match the f64 reference (rows whose top-p crossing is
    /// within f32 resolution only have |K| checked against the band). Same tolerances as above:
    /// lse_K and H̃ are computed in f64 and rounded once.
    #[test]
    fn kept_forward_matches_reference(kc in kept_case()) {
        dispatch_kept(&kc, check_kept_forward::<f32>, check_kept_forward::<bf16>, check_kept_forward::<f16>)?;
    }

    /// The backward over K (dz = (1/T)[g(δ − q) − h·r], q = p̃·1_K or p outside, r from H̃ or
    /// H) matches `reference::grpo_grad`; into, in place, repeated and one-thread runs agree bit
    /// for bit. Tolerance as `backward_matches_reference`, with lse_K/H̃ bounded as lse/H.
    #[test]
    fn kept_backward_matches_reference(kc in kept_case()) {
        dispatch_kept(&kc, check_kept_backward::<f32>, check_kept_backward::<bf16>, check_kept_backward::<f16>)?;
    }
}

type KeptCheck = fn(&KeptCase) -> Result<(), TestCaseError>;

fn dispatch_kept(kc: &KeptCase, f32_: KeptCheck, bf: KeptCheck, h: KeptCheck) -> Result<(), TestCaseError> {
    match kc.case.dtype {
        rlvr_kernels::DType::F32 => f32_(kc),
        rlvr_kernels::DType::BF16 => bf(kc),
        rlvr_kernels::DType::F16 => h(kc),
    }
}
