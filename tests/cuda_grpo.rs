//! `cuda::grpo_forward` / `grpo_backward*` / `grpo_forward_backward*` against the f64 spec
//! (`reference::grpo_loss`, `reference::grpo_grad`, the latter checked against finite differences
//! by tests/reference_grad.rs) on the cases of tests/grpo_cases: every dtype, aggregation mode, KL
//! estimator, dual clip on/off, shaping none/PPL/position/both, ratios inside and outside the clip
//! range and the ±20 clamp, masks with empty sequences and empty batches. Plus N > 65535 rows, bad
//! input, 10 bit-identical runs, and a small case for compute-sanitizer.
//!
//! Outputs are poisoned (NaN, u32::MAX, 0xff) before every run, so an entry a kernel forgets to
//! write fails. The backward is run five ways (new buffer with a device grad_loss, caller buffer,
//! in place, fused into a caller buffer, fused in place), which must agree bit for bit.
//!
//! Tolerance unit: 2^-15 ≈ 3.1e-5 (tests/cpu_grpo.rs uses 2^-18 for the CPU). The device's row
//! statistics carry the error budget derived in tests/cuda_token_stats.rs: S and W within
//! (12 + n_vec)·2^-21 + (18 + n_vec)·2^-24 relative (ex2.approx at 2^-22, doubled, per exp; one
//! rescale per merge level), n_vec ≤ 3 for V ≤ 8192: 8.5e-6, which moves ln S, lse and ℓ by as
//! much. 2^-15 is that bound times 3.6; every other step is one f32 rounding per operand.
//!
//! Without a CUDA device every test prints "skipping ..." and passes.
#![cfg(feature = "cuda")]

mod common;
mod gpu_env;

use gpu_env::{gpu_for_property, gpu_or_skip};
mod grpo_cases;

use std::sync::Arc;

use grpo_cases::{bits, case, check_forward_values, check_grad, data, dispatch, forward_bits, Case, Data, Offset};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rlvr_kernels::cuda::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use rlvr_kernels::cuda::{self, CudaGrpoForward, CudaGrpoInputs, GradLoss};
use rlvr_kernels::{
    cpu, Aggregation, DType, Element, Error, GrpoConfig, GrpoInputs, KlEstimator, KlPenalty, PositionShaping,
    PplShaping, Shaping,
};

const UNIT: f64 = 1.0 / (1u64 << 15) as f64;

/// The per-token inputs of a case on the device.
struct Device<E> {
    logits: CudaSlice<E>,
    targets: CudaSlice<u32>,
    mask: CudaSlice<f32>,
    old: CudaSlice<f32>,
    refl: CudaSlice<f32>,
    adv: CudaSlice<f32>,
}

impl<E: Element + DeviceRepr> Device<E> {
    fn new(s: &Arc<CudaStream>, d: &Data<E>) -> Self {
        Device {
            logits: s.clone_htod(&d.logits).unwrap(),
            targets: s.clone_htod(&d.targets).unwrap(),
            mask: s.clone_htod(&d.mask).unwrap(),
            old: s.clone_htod(&d.old_logp).unwrap(),
            refl: s.clone_htod(&d.ref_logp).unwrap(),
            adv: s.clone_htod(&d.advantages).unwrap(),
        }
    }

    fn inputs(&self, c: &Case) -> CudaGrpoInputs<'_> {
        CudaGrpoInputs {
            targets: self.targets.as_view(),
            mask: self.mask.as_view(),
            old_logp: self.old.as_view(),
            ref_logp: c.cfg.kl.map(|_| self.refl.as_view()),
            advantages: self.adv.as_view(),
            seq_len: c.seq_len,
        }
    }
}

/// NaN / u32::MAX / 0xff into every output of a forward.
fn poison(s: &Arc<CudaStream>, out: &mut CudaGrpoForward) {
    let n = out.rows();
    let nan = vec![f32::NAN; n];
    for buf in [&mut out.token_loss, &mut out.logp, &mut out.ratio] {
        s.memcpy_htod(&nan, buf).unwrap();
    }
    let sv = &mut out.saved;
    for buf in [&mut sv.lse, &mut sv.entropy, &mut sv.grad_logp, &mut sv.grad_entropy] {
        s.memcpy_htod(&nan, buf).unwrap();
    }
    if let Some(k) = out.kl.as_mut() {
        s.memcpy_htod(&nan, k).unwrap();
    }
    if let Some(b) = out.branch.as_mut() {
        s.memcpy_htod(&vec![u32::MAX; n], b).unwrap();
    }
    s.memcpy_htod(&vec![0xffu8; n], &mut out.clip_flags).unwrap();
    s.memcpy_htod(&[f32::NAN], &mut out.loss).unwrap();
}

/// A buffer of `len` elements with every bit set (NaN in every dtype).
fn poisoned<E: Element + DeviceRepr>(s: &Arc<CudaStream>, len: usize) -> CudaSlice<E> {
    let ones: Vec<E> = vec![bytemuck::cast_slice::<u8, E>(&[0xff; 4])[0]; len];
    s.clone_htod(&ones).unwrap()
}

/// The poisoned forward of a case on the device.
fn forward<E: Element + DeviceRepr>(s: &Arc<CudaStream>, dev: &Device<E>, c: &Case) -> CudaGrpoForward {
    let n = dev.targets.len();
    let mut out = CudaGrpoForward::new(s, n, c.seq_len, &c.cfg).unwrap();
    poison(s, &mut out);
    cuda::grpo_forward_into(s, &dev.logits.as_view(), c.vocab, &dev.inputs(c), &c.cfg, &mut out).unwrap();
    out
}

fn check_forward<E: Element + DeviceRepr>(c: &Case) -> Result<(), TestCaseError> {
    let Some(s) = gpu_for_property() else { return Ok(()) };
    let d = data::<E>(c);
    let dev = Device::new(&s, &d);
    let fwd = forward(&s, &dev, c).to_host(&s).unwrap();
    check_forward_values(c, &d, &fwd, UNIT, "cuda")
}

/// dlogits of a case five ways (see the file comment); asserts they agree bit for bit and that
/// the fused forward equals the separate one; returns dlogits.
fn backward_all_ways<E: Element + DeviceRepr + Default>(
    s: &Arc<CudaStream>,
    dev: &Device<E>,
    c: &Case,
    fwd: &CudaGrpoForward,
) -> Result<Vec<E>, TestCaseError> {
    let (v, t, n_elems) = (c.vocab, c.cfg.temperature, dev.logits.len());
    let (lv, tv) = (dev.logits.as_view(), dev.targets.as_view());
    let scalar = s.clone_htod(&[c.grad_loss]).unwrap();
    let g_dev = GradLoss::Device(scalar.as_view());
    let fresh = cuda::grpo_backward(s, &lv, v, &tv, &fwd.saved, t, g_dev).unwrap();
    let mut into = poisoned::<E>(s, n_elems);
    let g = GradLoss::Value(c.grad_loss);
    cuda::grpo_backward_into(s, &lv, v, &tv, &fwd.saved, t, g, &mut into.as_view_mut()).unwrap();
    let mut in_place = dev.logits.try_clone().unwrap();
    cuda::grpo_backward_in_place(s, &mut in_place.as_view_mut(), v, &tv, &fwd.saved, t, c.grad_loss.into()).unwrap();
    let mut fused_out = CudaGrpoForward::new(s, dev.targets.len(), c.seq_len, &c.cfg).unwrap();
    poison(s, &mut fused_out);
    let mut fused = poisoned::<E>(s, n_elems);
    let g = GradLoss::Value(c.grad_loss);
    let inputs = dev.inputs(c);
    cuda::grpo_forward_backward_into(s, &lv, v, &inputs, &c.cfg, g, &mut fused_out, &mut fused.as_view_mut()).unwrap();
    let mut fused_in_place = dev.logits.try_clone().unwrap();
    let fip = cuda::grpo_forward_backward_in_place(
        s,
        &mut fused_in_place.as_view_mut(),
        v,
        &inputs,
        &c.cfg,
        c.grad_loss.into(),
    )
    .unwrap();
    let host = |b: &CudaSlice<E>| s.clone_dtoh(b).unwrap();
    let want = host(&into);
    for (name, other) in
        [("new", &fresh), ("in place", &in_place), ("fused", &fused), ("fused in place", &fused_in_place)]
    {
        prop_assert!(bits(&host(other)) == bits(&want), "dlogits {name} differ from dlogits into a buffer");
    }
    let f0 = forward_bits(&fwd.to_host(s).unwrap());
    prop_assert!(forward_bits(&fused_out.to_host(s).unwrap()) == f0, "fused forward differs");
    prop_assert!(forward_bits(&fip.to_host(s).unwrap()) == f0, "fused in-place forward differs");
    Ok(want)
}

fn check_backward<E: Element + DeviceRepr + Default>(c: &Case) -> Result<(), TestCaseError> {
    let Some(s) = gpu_for_property() else { return Ok(()) };
    let d = data::<E>(c);
    let dev = Device::new(&s, &d);
    let fwd = forward(&s, &dev, c);
    let grad = backward_all_ways(&s, &dev, c, &fwd)?;
    check_grad(c, &d, &grad, UNIT, "cuda")
}

proptest! {
    #![proptest_config(common::config())]

    /// Loss, per-token terms, flags and saved scalars match the f64 reference.
    #[test]
    fn forward_matches_reference(c in case()) {
        dispatch(&c, check_forward::<f32>, check_forward::<bf16>, check_forward::<f16>)?;
    }

    /// dlogits match the f64 reference gradient; the five ways agree bit for bit.
    #[test]
    fn backward_matches_reference(c in case()) {
        dispatch(&c, check_backward::<f32>, check_backward::<bf16>, check_backward::<f16>)?;
    }
}

#[test]
fn skip_message_or_device() {
    gpu_env::say_device();
}

/// A case with every option on (KL k3, dual clip, entropy bonus, both shapings, per-sequence
/// aggregation), top-p as given.
fn fixed(dtype: DType, (groups, group, seq_len): (usize, usize, usize), vocab: usize, top_p: Option<f32>) -> Case {
    let cfg = GrpoConfig {
        dual_clip: Some(3.0),
        kl: Some(KlPenalty { coef: 0.1, estimator: KlEstimator::K3 }),
        entropy_coef: 0.01,
        temperature: 0.9,
        top_p,
        aggregation: Aggregation::SeqMeanTokenMean,
        ..GrpoConfig::default()
    };
    let shaping = Shaping { ppl: Some(PplShaping::default()), position: Some(PositionShaping::default()) };
    Case {
        dtype,
        groups,
        group,
        seq_len,
        vocab,
        seed: 7,
        scale: 4.0,
        peaked: true,
        neg_inf: true,
        cfg,
        shaping,
        scale_by_std: true,
        mask_p: 0.7,
        old: Offset::Mixed,
        refo: Offset::Mixed,
        grad_loss: 0.5,
    }
}

fn all_dtypes(
    c: &Case,
    f32_: fn(&Case) -> Result<(), TestCaseError>,
    bf: fn(&Case) -> Result<(), TestCaseError>,
    h: fn(&Case) -> Result<(), TestCaseError>,
) {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let c = Case { dtype, ..c.clone() };
        dispatch(&c, f32_, bf, h).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    }
}

/// Every kernel path in one test small enough for compute-sanitizer (memcheck, racecheck): all
/// dtypes; odd V (unaligned rows) with top-p, V above one 1024·VEC pass without, V = 1; each case
/// runs the forward, the backward (new, into, in place) and the fused kernel (into, in place).
#[test]
fn sanitizer_small_case() {
    let Some(_) = gpu_or_skip("sanitizer_small_case") else { return };
    for (shape, vocab, top_p) in [((1, 2, 3), 37, Some(0.95)), ((1, 1, 2), 9001, None), ((1, 1, 1), 1, Some(0.9))] {
        let c = fixed(DType::F32, shape, vocab, top_p);
        all_dtypes(&c, check_backward::<f32>, check_backward::<bf16>, check_backward::<f16>);
    }
}

/// N = 70000 > 65535 rows of V = 37 (unaligned rows), every option on, against the reference. On
/// the kernel simulator 3500 rows: its grids of 3 to 6 CTAs still loop hundreds of times.
#[test]
fn many_rows() {
    let Some(_) = gpu_or_skip("many_rows") else { return };
    let c = fixed(DType::BF16, (gpu_env::sized(100, 5), 7, 100), 37, Some(0.9));
    check_forward::<bf16>(&c).unwrap();
    check_backward::<bf16>(&c).unwrap();
}

/// Ten runs give the same bits (forward outputs, loss, dlogits of the separate and the fused
/// backward), at V = 151936 with every option on, all dtypes; outputs poisoned before each run.
/// On the kernel simulator 8 rows and 3 runs, each launch in its own thread order.
#[test]
fn repeated_runs_are_bit_identical() {
    let Some(s) = gpu_or_skip("repeated_runs_are_bit_identical") else { return };
    fn ten<E: Element + DeviceRepr + Default>(s: &Arc<CudaStream>, dtype: DType) {
        let shape = gpu_env::sized((2, 4, 8), (1, 2, 4));
        let c = Case { dtype, ..fixed(dtype, shape, 151_936, Some(0.95)) };
        let d = data::<E>(&c);
        let dev = Device::new(s, &d);
        let run = || {
            let fwd = forward(s, &dev, &c);
            let grad = backward_all_ways(s, &dev, &c, &fwd).unwrap();
            (forward_bits(&fwd.to_host(s).unwrap()), bits(&grad))
        };
        let first = run();
        for i in 1..gpu_env::sized(10, 3) {
            assert!(run() == first, "{dtype}: run {i} differs from run 0");
        }
    }
    ten::<f32>(&s, DType::F32);
    ten::<bf16>(&s, DType::BF16);
    ten::<f16>(&s, DType::F16);
}

/// One bad value at a time gives the CPU's error, through device inputs (found on the device) and
/// through the host convenience; several at once give the CPU's first; with `check_finite =
/// false` the device forward returns without error.
#[test]
fn bad_inputs_are_errors() {
    let Some(s) = gpu_or_skip("bad_inputs_are_errors") else { return };
    let c = fixed(DType::F32, (1, 2, 3), 11, Some(0.9));
    type Fault = fn(&mut Data<f32>);
    let faults: [(&str, Fault); 7] = [
        ("target", |d| d.targets[3] = 11),
        ("mask", |d| d.mask[2] = 0.5),
        ("old_logp", |d| d.old_logp[1] = f32::NAN),
        ("advantages", |d| d.advantages[4] = f32::INFINITY),
        ("ref_logp", |d| d.ref_logp[0] = f32::NAN),
        ("nan logit", |d| d.logits[2 * 11 + 5] = f32::NAN),
        ("-inf row", |d| d.logits[5 * 11..].fill(f32::NEG_INFINITY)),
    ];
    let run = |d: &Data<f32>, cfg: &GrpoConfig| {
        let dev = Device::new(&s, d);
        cuda::grpo_forward(&s, &dev.logits.as_view(), c.vocab, &dev.inputs(&c), cfg).map(|_| ())
    };
    // Errors carry NaN values: compare them by Debug.
    let dbg = |e: Error| format!("{e:?}");
    let mut all = data::<f32>(&c);
    for (name, fault) in faults.iter().rev() {
        let mut d = data::<f32>(&c);
        fault(&mut d);
        fault(&mut all);
        let want = dbg(cpu::grpo_forward(&d.logits, c.vocab, &d.inputs(&c), &c.cfg).unwrap_err());
        assert_eq!(dbg(run(&d, &c.cfg).unwrap_err()), want, "{name}, device inputs");
        let host = cuda::grpo_forward_host(&s, &d.logits, c.vocab, &d.inputs(&c), &c.cfg);
        assert_eq!(dbg(host.unwrap_err()), want, "{name}, host inputs");
        let want_all = dbg(cpu::grpo_forward(&all.logits, c.vocab, &all.inputs(&c), &c.cfg).unwrap_err());
        assert_eq!(dbg(run(&all, &c.cfg).unwrap_err()), want_all, "faults from {name} on, device inputs");
        assert!(run(&d, &GrpoConfig { check_finite: false, ..c.cfg }).is_ok(), "{name} without checks");
    }
}

/// Wrong shapes and settings are typed errors before any launch; N = 0 gives loss 0.
#[test]
fn shape_and_config_errors() {
    let Some(s) = gpu_or_skip("shape_and_config_errors") else { return };
    let c = fixed(DType::F32, (1, 2, 3), 11, None);
    let d = data::<f32>(&c);
    let dev = Device::new(&s, &d);
    let (lv, inp, v) = (dev.logits.as_view(), dev.inputs(&c), c.vocab);
    let mut wrong = CudaGrpoForward::new(&s, 6, 2, &c.cfg).unwrap();
    let e = cuda::grpo_forward_into(&s, &lv, v, &inp, &c.cfg, &mut wrong).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "out", .. }), "{e:?}");
    let no_ref = CudaGrpoInputs { ref_logp: None, ..dev.inputs(&c) };
    let e = cuda::grpo_forward(&s, &lv, v, &no_ref, &c.cfg).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "ref_logp", .. }), "{e:?}");
    assert_eq!(cuda::grpo_forward(&s, &lv, 0, &inp, &c.cfg).unwrap_err(), Error::EmptyVocab);
    let bad_t = GrpoConfig { temperature: 0.0, ..c.cfg };
    assert_eq!(cuda::grpo_forward(&s, &lv, v, &inp, &bad_t).unwrap_err(), Error::InvalidTemperature(0.0));
    let fwd = cuda::grpo_forward(&s, &lv, v, &inp, &c.cfg).unwrap();
    let tv = dev.targets.as_view();
    let e = cuda::grpo_backward(&s, &lv, v, &tv, &fwd.saved, 0.9, f32::NAN.into()).unwrap_err();
    assert!(matches!(e, Error::NonFiniteInput { name: "grad_loss", .. }), "{e:?}");
    let two = s.clone_htod(&[1.0f32, 2.0]).unwrap();
    let e = cuda::grpo_backward(&s, &lv, v, &tv, &fwd.saved, 0.9, GradLoss::Device(two.as_view())).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "grad_loss", .. }), "{e:?}");
    let short = dev.logits.slice(0..5 * v);
    let e = cuda::grpo_backward(&s, &short, v, &tv, &fwd.saved, 0.9, 1.0.into()).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "targets", .. }), "{e:?}");
    let none = GrpoInputs {
        targets: &[],
        mask: &[],
        old_logp: &[],
        ref_logp: Some(&[]),
        advantages: &[],
        seq_len: 3,
        kept_mask: None,
    };
    let empty = cuda::grpo_forward_host::<bf16>(&s, &[], 7, &none, &c.cfg).unwrap();
    assert_eq!((empty.loss, empty.logp.len(), empty.saved.lse.len()), (0.0, 0, 0));
}

/// The host conveniences run the device path: the same bits as the device API, and the CPU's
/// values within the tolerances above.
#[test]
fn host_conveniences_match_device_and_cpu() {
    let Some(s) = gpu_or_skip("host_conveniences_match_device_and_cpu") else { return };
    let c = fixed(DType::BF16, (2, 3, 4), 300, Some(0.95));
    let d = data::<bf16>(&c);
    let dev = Device::new(&s, &d);
    let fwd = forward(&s, &dev, &c);
    let host = cuda::grpo_forward_host(&s, &d.logits, c.vocab, &d.inputs(&c), &c.cfg).unwrap();
    assert!(forward_bits(&host) == forward_bits(&fwd.to_host(&s).unwrap()));
    let grad = cuda::grpo_backward_host(&s, &d.logits, c.vocab, &d.targets, &host.saved, 0.9, 0.5).unwrap();
    let cpu_fwd = cpu::grpo_forward(&d.logits, c.vocab, &d.inputs(&c), &c.cfg).unwrap();
    assert!((host.loss - cpu_fwd.loss).abs() <= 1e-4 * (1.0 + cpu_fwd.loss.abs()), "{} vs {}", host.loss, cpu_fwd.loss);
    let cpu_grad = cpu::grpo_backward(&d.logits, c.vocab, &d.targets, &cpu_fwd.saved, 0.9, 0.5).unwrap();
    for (k, (g, w)) in grad.iter().zip(&cpu_grad).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!((g - w).abs() <= 1e-2 * w.abs() + 1e-6, "dlogits[{k}]: cuda {g} vs cpu {w}");
    }
}
