//! The candle ops on a CUDA device (run by scripts/gpu-check.sh on a GPU host): the fused
//! token statistics (`crate::cuda::token_stats` on candle's stream, backward composed from candle
//! ops), the fused GRPO loss (`cuda::grpo_forward` / `grpo_backward`) and the naive GRPO loss
//! equal their CPU results, in values and dlogits; bad rows and inputs on another device are
//! typed errors.
//!
//! Without a CUDA device every test prints "skipping: <why>" and passes.
//!
//! Tolerances: the GPU's exp is `ex2.approx` (2⁻²² relative, stated) against the CPU's within
//! 1e−7, so for |x| ≤ 6 and V ≤ 64 the row sums agree to ~1e−5 relative: 5e−5 absolute on lse,
//! entropy, logp; dlogits within 1e−4 of the row's gradient scale (p relative 1e−5, with margin)
//! plus one unit in the last place of bf16/f16 (each side rounds once).
#![cfg(feature = "cuda")]

mod ops_cases;

use candle_core::{DType, Device, Tensor};
use ops_cases::{cases, grpo_case, round_to, row_scale, stats_case, GrpoCase, StatsCase, MATRIX, STATS_MATRIX};
use rlvr_kernels::ops::{self, GrpoLossInputs};
use rlvr_kernels::{reference, Error};

const VALUE_TOL: f32 = 5e-5;
const GRAD_RTOL: f64 = 1e-4;

/// The CUDA device, or `None` after printing why the test is skipped (no driver, no device).
fn gpu_or_skip(test: &str) -> Option<Device> {
    // cudarc loads libcuda lazily and panics when it cannot: that is "no device" too.
    match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            println!("skipping {test}: no CUDA device ({e})");
            None
        }
        Err(_) => {
            println!("skipping {test}: no CUDA driver");
            None
        }
    }
}

fn host_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn elem_rtol(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-7),
        DType::F16 => 2f64.powi(-10),
        _ => 0.0,
    }
}

/// dlogits on the CPU (`a`) and on CUDA (`b`) agree element by element within the row's
/// tolerance plus one unit in the last place of the dtype.
fn assert_grads_close(ctx: &str, a: &[f32], b: &[f32], v: usize, row_tol: impl Fn(usize) -> f64, dtype: DType) {
    assert_eq!(a.len(), b.len(), "{ctx}: dlogits length");
    for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (r, j, x, y) = (k / v, k % v, x as f64, y as f64);
        let tol = row_tol(r) + elem_rtol(dtype) * x.abs().max(y.abs()) + 1e-12;
        assert!((x - y).abs() <= tol, "{ctx}: dlogits[{r}, {j}] cpu {x}, cuda {y}");
    }
}

fn grad_of(loss: &Tensor, z: &Tensor) -> Vec<f32> {
    let grads = loss.backward().unwrap();
    let g = grads.get(z).expect("a gradient for the logits");
    assert_eq!(g.dtype(), z.dtype());
    host_f32(g)
}

/// Fused token statistics on CUDA vs on the CPU: values, branch counts (in the spec's band),
/// and dlogits of lse + entropy + logp weighted by random per-token weights. 5 × 48 cases.
#[test]
fn token_stats_on_cuda_matches_cpu() {
    let Some(gpu) = gpu_or_skip("token_stats_on_cuda_matches_cpu") else { return };
    for i in 0..cases(5 * STATS_MATRIX) {
        check_stats(&gpu, &stats_case(i, 11_000 + i as u64), &format!("case {i}"));
    }
}

/// One token-statistics case on the CPU and on `gpu`: the property of
/// [`token_stats_on_cuda_matches_cpu`].
fn check_stats(gpu: &Device, c: &StatsCase, ctx: &str) {
    let ctx = format!("{ctx}: lead={:?} v={} {:?} cfg={:?}", c.lead, c.v, c.dtype, c.cfg);
    let mut grads = Vec::new();
    let mut values = Vec::new();
    for dev in [&Device::Cpu, gpu] {
        let (z, y, w) = c.tensors(dev);
        let out = ops::token_stats(z.as_tensor(), y.as_ref(), &c.cfg).unwrap();
        assert!(out.lse.device().same_device(dev), "{ctx}: outputs on the logits' device");
        let mut loss = ((&out.lse * &w[0]).unwrap() + (&out.entropy * &w[1]).unwrap()).unwrap();
        if let Some(l) = &out.logp {
            loss = (loss + (l * &w[2]).unwrap()).unwrap();
        }
        grads.push(grad_of(&loss.sum_all().unwrap(), z.as_tensor()));
        let branch = out.branch.map(|b| b.flatten_all().unwrap().to_vec1::<u32>().unwrap());
        values.push((host_f32(&out.lse), host_f32(&out.entropy), out.logp.map(|l| host_f32(&l)), branch));
    }
    let (cpu, gpu_v) = (&values[0], &values[1]);
    for (name, a, b) in [("lse", &cpu.0, &gpu_v.0), ("entropy", &cpu.1, &gpu_v.1)] {
        for (r, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= VALUE_TOL, "{ctx}: {name}[{r}] cpu {x}, cuda {y}");
        }
    }
    if let (Some(a), Some(b)) = (&cpu.2, &gpu_v.2) {
        for (r, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= VALUE_TOL, "{ctx}: logp[{r}] cpu {x}, cuda {y}");
        }
    }
    if let (Some(p), Some(b)) = (c.cfg.top_p, &gpu_v.3) {
        for (r, row) in c.logits.chunks(c.v).enumerate() {
            let row: Vec<f64> = row.iter().map(|&z| z as f64).collect();
            let (lo, hi) = reference::branch_band(&row, c.cfg.temperature as f64, p as f64);
            assert!((lo..=hi).contains(&b[r]), "{ctx}: cuda branch[{r}] = {} outside [{lo}, {hi}]", b[r]);
        }
    }
    let row_tol = |r: usize| {
        let w = |k: usize| c.weights[k][r].abs() as f64;
        let logp_w = if c.targets.is_some() { w(2) } else { 0.0 };
        GRAD_RTOL * (w(0) + w(1) * (1.0 + 2.0 * (c.v as f64).ln()) + logp_w) / c.cfg.temperature as f64
    };
    assert_grads_close(&ctx, &grads[0], &grads[1], c.v, row_tol, c.dtype);
}

/// The naive GRPO loss (plain candle ops) on CUDA vs on the CPU: loss and dlogits, over the
/// configuration matrix (1280 cases).
#[test]
fn naive_grpo_on_cuda_matches_cpu() {
    let Some(gpu) = gpu_or_skip("naive_grpo_on_cuda_matches_cpu") else { return };
    for i in 0..cases(MATRIX) {
        let c = grpo_case(i, 21_000 + i as u64);
        let ctx = format!("case {i}: b={} t={} v={} {:?} cfg={:?}", c.b, c.t, c.v, c.dtype, c.cfg);
        let spec = reference::grpo_loss(&c.logits_f64(), c.v, &c.inputs(), &c.cfg).unwrap();
        let mut losses = Vec::new();
        let mut grads = Vec::new();
        for dev in [&Device::Cpu, &gpu] {
            let t = c.tensors(dev);
            let out = ops::naive::grpo_loss(t.logits.as_tensor(), &t.inputs(&c.cfg), &c.cfg).unwrap();
            losses.push(out.loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap() as f64);
            grads.push(grad_of(&out.loss, t.logits.as_tensor()));
        }
        let scale: f64 = spec.tokens.iter().zip(&spec.weights).map(|(t, a)| (a * t.total).abs()).sum();
        assert!(
            (losses[0] - losses[1]).abs() <= 1e-4 * scale + 1e-6,
            "{ctx}: loss cpu {}, cuda {}",
            losses[0],
            losses[1]
        );
        let row_tol = |r: usize| GRAD_RTOL * row_scale(&c, &spec, r);
        assert_grads_close(&ctx, &grads[0], &grads[1], c.v, row_tol, c.dtype);
    }
}

/// The fused GRPO op on CUDA (`cuda::grpo_forward` / `grpo_backward` on candle's stream) vs
/// the fused op on the CPU, over the configuration matrix (1280 cases): loss, per-token outputs
/// and the dlogits of 2.5·loss (the upstream gradient reaches the kernel as a device scalar).
#[test]
fn fused_grpo_on_cuda_matches_cpu() {
    let Some(gpu) = gpu_or_skip("fused_grpo_on_cuda_matches_cpu") else { return };
    for i in 0..cases(MATRIX) {
        let mut c = grpo_case(i, 31_000 + i as u64);
        c.cfg.top_p = (i % 2 == 0).then_some(0.9);
        check_fused_grpo(&gpu, &c, &format!("case {i}"));
    }
}

/// One GRPO case through the fused op on the CPU and on `gpu`: the property of
/// [`fused_grpo_on_cuda_matches_cpu`].
fn check_fused_grpo(gpu: &Device, c: &GrpoCase, ctx: &str) {
    let ctx = format!("{ctx}: b={} t={} v={} {:?} cfg={:?}", c.b, c.t, c.v, c.dtype, c.cfg);
    let spec = reference::grpo_loss(&c.logits_f64(), c.v, &c.inputs(), &c.cfg).unwrap();
    let mut runs = Vec::new();
    for dev in [&Device::Cpu, gpu] {
        let t = c.tensors(dev);
        let out = ops::grpo_loss(t.logits.as_tensor(), &t.inputs(&c.cfg), &c.cfg).unwrap();
        assert!(out.token_loss.device().same_device(dev), "{ctx}: outputs on the logits' device");
        let grad = grad_of(&out.loss.affine(2.5, 0.0).unwrap(), t.logits.as_tensor());
        runs.push((out, grad));
    }
    let ((cpu, cpu_grad), (cuda, cuda_grad)) = (&runs[0], &runs[1]);
    let scalar = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
    let scale: f64 = spec.tokens.iter().zip(&spec.weights).map(|(t, a)| (a * t.total).abs()).sum();
    let (lc, lg) = (scalar(&cpu.loss), scalar(&cuda.loss));
    assert!((lc - lg).abs() <= 1e-4 * scale + 1e-6, "{ctx}: loss cpu {lc}, cuda {lg}");
    let close = |name: &str, a: &Tensor, b: &Tensor, tol: &dyn Fn(usize) -> f64| {
        for (r, (x, y)) in host_f32(a).iter().zip(host_f32(b)).enumerate() {
            assert!(((x - y).abs() as f64) <= tol(r), "{ctx}: {name}[{r}] cpu {x}, cuda {y}");
        }
    };
    close("logp", &cpu.logp, &cuda.logp, &|_| VALUE_TOL as f64);
    close("entropy", &cpu.entropy, &cuda.entropy, &|_| VALUE_TOL as f64);
    close("ratio", &cpu.ratio, &cuda.ratio, &|r| 1e-4 * spec.tokens[r].ratio);
    let loss_parts = |r: usize| spec.tokens[r].total.abs() + spec.tokens[r].policy.abs() + spec.tokens[r].kl.abs();
    close("token_loss", &cpu.token_loss, &cuda.token_loss, &|r| 1e-4 * loss_parts(r) + 1e-6);
    if let (Some(a), Some(b)) = (&cpu.kl, &cuda.kl) {
        close("kl", a, b, &|r| 1e-4 * (spec.tokens[r].kl.abs() + 1.0));
    }
    let flags = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(flags(&cpu.clip_flags), flags(&cuda.clip_flags), "{ctx}: clip flags");
    if let (Some(p), Some(b)) = (c.cfg.top_p, &cuda.branch) {
        let b = b.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        for (r, row) in c.logits.chunks(c.v).enumerate() {
            let row: Vec<f64> = row.iter().map(|&z| z as f64).collect();
            let (lo, hi) = reference::branch_band(&row, c.cfg.temperature as f64, p as f64);
            assert!((lo..=hi).contains(&b[r]), "{ctx}: cuda branch[{r}] = {} outside [{lo}, {hi}]", b[r]);
        }
    }
    let row_tol = |r: usize| 2.5 * GRAD_RTOL * row_scale(c, &spec, r);
    assert_grads_close(&ctx, cpu_grad, cuda_grad, c.v, row_tol, c.dtype);
}

/// A NaN row and an all −inf row on CUDA are the CPU's typed errors (through the op's side
/// channel, not candle's error string).
#[test]
fn cuda_bad_rows_are_typed_errors() {
    let Some(gpu) = gpu_or_skip("cuda_bad_rows_are_typed_errors") else { return };
    let cfg = rlvr_kernels::TokenStatsConfig::default();
    let mut v: Vec<f32> = (0..12).map(|k| k as f32 * 0.25).collect();
    v[9] = f32::NAN;
    let z = Tensor::from_vec(v.clone(), (3, 4), &gpu).unwrap();
    assert_eq!(ops::token_stats(&z, None, &cfg).unwrap_err(), Error::NonFiniteLogits { row: 2 });
    assert_eq!(ops::naive::token_stats(&z, None, &cfg).unwrap_err(), Error::NonFiniteLogits { row: 2 });
    v[9] = 0.0;
    v[0..4].fill(f32::NEG_INFINITY);
    let z = Tensor::from_vec(v, (3, 4), &gpu).unwrap();
    assert_eq!(ops::token_stats(&z, None, &cfg).unwrap_err(), Error::AllNegInfRow { row: 0 });
    assert_eq!(ops::naive::token_stats(&z, None, &cfg).unwrap_err(), Error::AllNegInfRow { row: 0 });
    grpo_nan_row_is_an_error(&gpu);
}

/// Per-token inputs on another device than the logits: [`Error::DeviceMismatch`] naming the
/// input, from the fused and the naive functions.
#[test]
fn inputs_on_another_device_are_rejected() {
    let Some(gpu) = gpu_or_skip("inputs_on_another_device_are_rejected") else { return };
    let want = |name| Error::DeviceMismatch {
        name,
        expected: format!("{:?}", gpu.location()),
        got: format!("{:?}", Device::Cpu.location()),
    };
    let c = grpo_case(3, 2);
    let on_gpu = c.tensors(&gpu);
    let on_cpu = c.tensors(&Device::Cpu);
    let inputs = GrpoLossInputs { mask: &on_cpu.mask, ..on_gpu.inputs(&c.cfg) };
    let z = on_gpu.logits.as_tensor();
    assert_eq!(ops::grpo_loss(z, &inputs, &c.cfg).unwrap_err(), want("mask"));
    assert_eq!(ops::naive::grpo_loss(z, &inputs, &c.cfg).unwrap_err(), want("mask"));
    let cfg = rlvr_kernels::TokenStatsConfig::default();
    let y = &on_cpu.targets;
    let z = z.reshape((c.b * c.t, c.v)).unwrap();
    let y = y.flatten_all().unwrap();
    assert_eq!(ops::token_stats(&z, Some(&y), &cfg).unwrap_err(), want("targets"));
    assert_eq!(ops::naive::token_stats(&z, Some(&y), &cfg).unwrap_err(), want("targets"));
}

/// Every path of the candle ops on CUDA in one test small enough for compute-sanitizer
/// (memcheck, racecheck; scripts/gpu-check.sh runs it under both): the token statistics with and
/// without top-p, with and without targets, `[N, V]` and `[B, T, V]`, at T = 1 and 0.7, in f32,
/// bf16 and f16 (12 cases: forward kernel, backward composed from candle ops); the fused GRPO
/// loss forward and backward with every option on (KL k3, dual clip, entropy bonus, PPL and
/// position shaping), with and without top-p, in f32, bf16 and f16 (6 cases); then a NaN row
/// through each op's device status word. Each case is checked against the CPU op with the
/// tolerances of the tests above.
#[test]
fn sanitizer_small_case() {
    let Some(gpu) = gpu_or_skip("sanitizer_small_case") else { return };
    for (dtype, targets, top_p) in (0..3).flat_map(|d| (0..2).flat_map(move |y| (0..2).map(move |p| (d, y, p)))) {
        // stats_case's mixed radix: dtype (3), targets, rank 3 (with targets), T = 0.7 (without top-p), top-p.
        let i = dtype + 3 * (targets + 2 * (targets + 2 * ((1 - top_p) + 2 * top_p)));
        check_stats(&gpu, &stats_case(i, 41_000 + i as u64), &format!("stats case {i}"));
    }
    for (k, top_p) in [None, Some(0.9)].into_iter().enumerate() {
        // config_of's mixed radix: aggregation (5), shaping 3 = both, KL 3 = k3, dual clip on,
        // entropy on, T = 0.7, then the dtype digit (0 = f32, 1 = bf16).
        let index = |agg: usize, bf16: usize| agg + 5 * (3 + 4 * (3 + 4 * (1 + 2 * (1 + 2 * (1 + 2 * bf16)))));
        let mut f32_case = grpo_case(index(2 * k, 0), 51_000 + k as u64);
        let mut bf16_case = grpo_case(index(2 * k + 1, 1), 52_000 + k as u64);
        f32_case.cfg.top_p = top_p;
        bf16_case.cfg.top_p = top_p;
        let f16_case = as_f16(&f32_case);
        for c in [&f32_case, &bf16_case, &f16_case] {
            check_fused_grpo(&gpu, c, &format!("grpo {:?} top-p {top_p:?}", c.dtype));
        }
    }
    let mut nan = vec![0.5f32; 3 * 5];
    nan[7] = f32::NAN;
    let z = Tensor::from_vec(nan, (3, 5), &gpu).unwrap();
    let cfg = rlvr_kernels::TokenStatsConfig { top_p: Some(0.9), ..Default::default() };
    assert_eq!(ops::token_stats(&z, None, &cfg).unwrap_err(), Error::NonFiniteLogits { row: 1 });
    grpo_nan_row_is_an_error(&gpu);
}

/// `c` (an f32 case) with its logits rounded to f16 (the matrix has no f16), and ℓ_old, ℓ_ref
/// moved with each row's ℓ, so that the ratios and KL arguments keep their distance from the
/// loss's kinks (the CPU and CUDA ops then take the same branch).
fn as_f16(c: &GrpoCase) -> GrpoCase {
    assert_eq!(c.dtype, DType::F32, "as_f16 starts from an f32 case");
    let mut h = GrpoCase { dtype: DType::F16, ..c.clone() };
    let temperature = c.cfg.temperature as f64;
    for (r, (row, row16)) in c.logits.chunks(c.v).zip(h.logits.chunks_mut(c.v)).enumerate() {
        row16.iter_mut().for_each(|z| *z = round_to(*z, DType::F16));
        let logp = |x: &[f32]| {
            let x: Vec<f64> = x.iter().map(|&z| z as f64).collect();
            reference::row_stats(&x, Some(c.targets[r]), temperature, None).logp.expect("a target")
        };
        let shift = (logp(row16) - logp(row)) as f32;
        h.old_logp[r] += shift;
        h.ref_logp[r] += shift;
    }
    h
}

/// The GRPO op's device status words give the CPU's typed error for a NaN logit.
fn grpo_nan_row_is_an_error(gpu: &Device) {
    let c = grpo_case(0, 4);
    let mut bad = c.clone();
    bad.logits[c.v + 1] = f32::NAN;
    let t = bad.tensors(gpu);
    let err = ops::grpo_loss(t.logits.as_tensor(), &t.inputs(&c.cfg), &c.cfg).unwrap_err();
    assert_eq!(err, Error::NonFiniteLogits { row: 1 });
}
