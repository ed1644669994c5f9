//! Gradient tests of the fused candle ops: for random inputs, the fused ops' values and
//! dlogits (`loss.backward()` and the grad store) equal candle autograd of the same math
//! composed from plain candle ops (`ops::naive`, itself checked against the f64 spec in
//! tests/ops_naive.rs), over every aggregation, shaping, KL estimator, dual clip, entropy bonus,
//! temperature and logits dtype; and the fused op's outputs are exactly `cpu::`'s.
//!
//! Case counts (defaults; `PROPTEST_CASES` overrides): 2 × 1280 GRPO cases (each matrix entry
//! of tests/ops_cases twice), 1280 for the exact-equality test, 25 × 48 token-statistics cases,
//! 1000 empty batches.

mod ops_cases;

use candle_core::{DType, Device, Tensor};
use ops_cases::{cases, grpo_case, row_scale, stats_case, GrpoCase, StatsCase, MATRIX, STATS_MATRIX};
use rlvr_kernels::{cpu, ops, reference, Element, GrpoConfig, GrpoSaved};

/// Loss tolerance relative to Σ_t |a_t·total_t|: both sides are f32 computations within ~1e−6
/// relative of the f64 spec (see tests/ops_naive.rs; the fused side's bound is that of
/// tests/cpu_grpo.rs), plus the f32 sum over ≤ 30 tokens.
const LOSS_RTOL: f64 = 2e-5;
/// dlogits tolerance relative to the row's scale (`ops_cases::row_scale`): each side is within
/// ~1e−6 of the spec there (p in f32, the target's 1 − p to 2⁻²⁴ absolute).
const GRAD_RTOL: f64 = 2e-5;

/// Extra per-element tolerance of a gradient in `dtype`: both sides round an f32 gradient to the
/// dtype once, so they may differ by one unit in the last place (up to 2⁻⁷ relative for bf16's
/// 8-bit significand, 2⁻¹⁰ for f16's 11 bits) when their f32 values straddle a rounding boundary.
fn elem_rtol(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-7),
        DType::F16 => 2f64.powi(-10),
        _ => 0.0,
    }
}

fn host_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// dloss/dlogits as f32, after checking that it has the logits' dtype.
fn grad_of(loss: &Tensor, logits: &Tensor) -> Vec<f32> {
    let grads = loss.backward().unwrap();
    let g = grads.get(logits).expect("a gradient for the logits");
    assert_eq!(g.dtype(), logits.dtype());
    assert_eq!(g.dims(), logits.dims());
    host_f32(g)
}

fn describe(i: usize, c: &GrpoCase) -> String {
    format!("case {i}: b={} t={} v={} {:?} cfg={:?} shaping={:?}", c.b, c.t, c.v, c.dtype, c.cfg, c.shaping)
}

/// The fused GRPO loss, its dlogits and its per-token outputs equal the naive composition's
/// (candle autograd), for every entry of the configuration matrix.
#[test]
fn grpo_fused_matches_naive_autograd() {
    let dev = Device::Cpu;
    for i in 0..cases(2 * MATRIX) {
        let mut c = grpo_case(i, 50_000 + i as u64);
        c.cfg.top_p = (i % 3 == 0).then_some(0.9);
        let ctx = describe(i, &c);
        let t = c.tensors(&dev);
        let z = t.logits.as_tensor();
        let fused = ops::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg).unwrap();
        let naive = ops::naive::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg).unwrap();
        let spec = reference::grpo_loss(&c.logits_f64(), c.v, &c.inputs(), &c.cfg).unwrap();

        let (lf, ln) = (fused.loss.to_scalar::<f32>().unwrap() as f64, naive.loss.to_scalar::<f32>().unwrap() as f64);
        let scale: f64 = spec.tokens.iter().zip(&spec.weights).map(|(t, a)| (a * t.total).abs()).sum();
        assert!((lf - ln).abs() <= LOSS_RTOL * scale + 1e-7, "{ctx}: fused loss {lf}, naive {ln}");

        let (gf, gn) = (grad_of(&fused.loss, z), grad_of(&naive.loss, z));
        for r in 0..c.b * c.t {
            let row_tol = GRAD_RTOL * row_scale(&c, &spec, r);
            for j in r * c.v..(r + 1) * c.v {
                let (a, b) = (gf[j] as f64, gn[j] as f64);
                let tol = row_tol + elem_rtol(c.dtype) * a.abs().max(b.abs()) + 1e-12;
                assert!((a - b).abs() <= tol, "{ctx}: dlogits[{r}, {}] fused {a}, naive {b}", j - r * c.v);
            }
        }
        check_per_token(&ctx, &c, &spec, &fused, &naive);
    }
}

/// Per-token outputs, fused vs naive: logp, entropy within 1e−5 absolute (f32 log-softmax of
/// |x| ≤ 6 over ≤ 48 terms is within ~1e−6); ratio within 2e−5 relative (e^{Δℓ} with Δℓ within
/// ~2e−6); clip flags equal (inputs stay 1e−3 in log space away from every kink); the token loss
/// and KL within 2e−5 of the sum of their parts' magnitudes.
fn check_per_token(
    ctx: &str,
    c: &GrpoCase,
    spec: &reference::GrpoReference,
    fused: &ops::GrpoLossOutput,
    naive: &ops::GrpoLossOutput,
) {
    let close = |name: &str, a: &Tensor, b: &Tensor, tol: &dyn Fn(usize) -> f64| {
        let (a, b) = (host_f32(a), host_f32(b));
        assert_eq!(a.len(), c.b * c.t, "{ctx}: {name} length");
        for (r, (x, y)) in a.iter().zip(&b).enumerate() {
            let t = tol(r);
            assert!((x - y).abs() as f64 <= t, "{ctx}: {name}[{r}] fused {x}, naive {y} (tol {t})");
        }
    };
    close("logp", &fused.logp, &naive.logp, &|_| 1e-5);
    close("entropy", &fused.entropy, &naive.entropy, &|_| 1e-5);
    close("ratio", &fused.ratio, &naive.ratio, &|r| 2e-5 * spec.tokens[r].ratio);
    let parts = |r: usize| {
        let tk = &spec.tokens[r];
        let beta = c.cfg.kl.map_or(0.0, |k| k.coef as f64);
        tk.policy.abs() + beta * kl_parts(c, spec, r) + c.cfg.entropy_coef as f64 * spec.entropy[r]
    };
    close("token_loss", &fused.token_loss, &naive.token_loss, &|r| 2e-5 * parts(r) + 1e-6);
    let flags = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(flags(&fused.clip_flags), flags(&naive.clip_flags), "{ctx}: clip flags");
    assert_eq!(fused.kl.is_some(), c.cfg.kl.is_some(), "{ctx}: kl present");
    if let (Some(a), Some(b)) = (&fused.kl, &naive.kl) {
        close("kl", a, b, &|r| 2e-5 * kl_parts(c, spec, r) + 1e-6);
    }
    assert_eq!(fused.branch.is_some(), c.cfg.top_p.is_some(), "{ctx}: branch present");
}

/// |k| + |ℓ| + |ℓ_ref| + e^u: the magnitudes a KL value is computed from (its f32 error scale).
fn kl_parts(c: &GrpoCase, spec: &reference::GrpoReference, r: usize) -> f64 {
    let (l, lr) = (spec.logp[r], c.ref_logp[r] as f64);
    spec.tokens[r].kl.abs() + l.abs() + lr.abs() + (lr - l).clamp(-20.0, 20.0).exp()
}

/// The fused op is `cpu::grpo_forward` + `cpu::grpo_backward`, bit for bit: same loss and
/// per-token outputs, and dlogits of `2.5·loss` equal `cpu::grpo_backward(…, grad_loss = 2.5)`
/// (the upstream gradient reaches the backward). 1280 cases by default.
#[test]
fn grpo_op_is_the_cpu_kernels() {
    let dev = Device::Cpu;
    for i in 0..cases(MATRIX) {
        let mut c = grpo_case(i, 90_000 + i as u64);
        c.cfg.top_p = (i % 2 == 0).then_some(0.95);
        let ctx = describe(i, &c);
        let t = c.tensors(&dev);
        let z = t.logits.as_tensor();
        let out = ops::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg).unwrap();
        let (fwd, dz) = match c.dtype {
            DType::BF16 => cpu_pass::<half::bf16>(&c, 2.5),
            _ => cpu_pass::<f32>(&c, 2.5),
        };
        assert_eq!(out.loss.to_scalar::<f32>().unwrap(), fwd.loss, "{ctx}: loss");
        let vec_f32 = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(vec_f32(&out.token_loss), fwd.token_loss, "{ctx}: token_loss");
        assert_eq!(vec_f32(&out.logp), fwd.logp, "{ctx}: logp");
        assert_eq!(vec_f32(&out.entropy), fwd.saved.entropy, "{ctx}: entropy");
        assert_eq!(vec_f32(&out.ratio), fwd.ratio, "{ctx}: ratio");
        assert_eq!(out.clip_flags.flatten_all().unwrap().to_vec1::<u8>().unwrap(), fwd.clip_flags, "{ctx}: flags");
        assert_eq!(out.kl.as_ref().map(vec_f32), fwd.kl, "{ctx}: kl");
        let branch = out.branch.as_ref().map(|b| b.flatten_all().unwrap().to_vec1::<u32>().unwrap());
        assert_eq!(branch, fwd.branch, "{ctx}: branch");
        for s in [&out.token_loss, &out.logp, &out.entropy, &out.ratio, &out.clip_flags] {
            assert_eq!(s.dims(), &[c.b, c.t], "{ctx}: per-token shape");
        }
        let scaled = out.loss.affine(2.5, 0.0).unwrap();
        assert_eq!(grad_of(&scaled, z), dz, "{ctx}: dlogits of 2.5·loss");
    }
}

/// `cpu::grpo_forward` and `cpu::grpo_backward(grad_loss)` on the case's logits as `E`.
fn cpu_pass<E: Element>(c: &GrpoCase, grad_loss: f32) -> (rlvr_kernels::GrpoForward, Vec<f32>) {
    let z: Vec<E> = c.logits.iter().map(|&x| E::from_f32(x)).collect();
    let fwd = cpu::grpo_forward(&z, c.v, &c.inputs(), &c.cfg).unwrap();
    let saved: &GrpoSaved = &fwd.saved;
    let dz = cpu::grpo_backward(&z, c.v, &c.targets, saved, c.cfg.temperature, grad_loss).unwrap();
    (fwd.clone(), dz.iter().map(|x| x.to_f32()).collect())
}

/// The scale of row r's token-statistics gradient for weights (w_lse, w_H, w_logp):
/// (|w_lse| + |w_H|·(1 + ln V) + |w_logp|)/T (|p·(ln p + H)| sums to ≤ 2H ≤ 2 ln V over a row).
fn stats_row_scale(c: &StatsCase, used: [bool; 3], r: usize) -> f64 {
    let w = |k: usize| if used[k] { c.weights[k][r].abs() as f64 } else { 0.0 };
    (w(0) + w(1) * (1.0 + 2.0 * (c.v as f64).ln()) + w(2)) / c.cfg.temperature as f64
}

/// The fused token statistics and the dlogits of a random linear combination of a random
/// subset of lse, entropy and logp equal the naive composition's (candle autograd); branch
/// counts equal `cpu::token_stats`'s and lie in the spec's band. 25 × 48 = 1200 cases by default.
#[test]
fn token_stats_fused_matches_naive_autograd() {
    let dev = Device::Cpu;
    for i in 0..cases(25 * STATS_MATRIX) {
        let c = stats_case(i, 7_000 + i as u64);
        let ctx = format!(
            "case {i}: lead={:?} v={} {:?} targets={} cfg={:?}",
            c.lead,
            c.v,
            c.dtype,
            c.targets.is_some(),
            c.cfg
        );
        let (z, targets, w) = c.tensors(&dev);
        let z = z.as_tensor();
        let fused = ops::token_stats(z, targets.as_ref(), &c.cfg).unwrap();
        let naive = ops::naive::token_stats(z, targets.as_ref(), &c.cfg).unwrap();
        for (name, a, b) in [("lse", &fused.lse, &naive.lse), ("entropy", &fused.entropy, &naive.entropy)]
            .into_iter()
            .chain(fused.logp.as_ref().zip(naive.logp.as_ref()).map(|(a, b)| ("logp", a, b)))
        {
            assert_eq!(a.dims(), c.lead.as_slice(), "{ctx}: {name} shape");
            for (r, (x, y)) in host_f32(a).iter().zip(host_f32(b)).enumerate() {
                // f32 log-softmax of |x| ≤ 6 over ≤ 64 terms: ~1e−6 absolute on each side.
                assert!((x - y).abs() <= 1e-5, "{ctx}: {name}[{r}] fused {x}, naive {y}");
            }
        }
        assert_eq!(fused.logp.is_some(), c.targets.is_some(), "{ctx}: logp present");
        check_branch(&ctx, &c, &fused);

        // A subset (never empty) of the three outputs enters the combination; the others get
        // no upstream gradient at all (candle's narrow backward pads zeros).
        let bits = i % 7 + 1;
        let mut used = [(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0];
        used[2] &= c.targets.is_some();
        if !used.iter().any(|&u| u) {
            used[0] = true;
        }
        let combo = |o: &ops::TokenStatsOutput| {
            let outs = [Some(&o.lse), Some(&o.entropy), o.logp.as_ref()];
            let mut sum: Option<Tensor> = None;
            for k in 0..3 {
                if let (true, Some(x)) = (used[k], outs[k]) {
                    let term = (x * &w[k]).unwrap().sum_all().unwrap();
                    sum = Some(match sum {
                        Some(s) => (s + term).unwrap(),
                        None => term,
                    });
                }
            }
            sum.unwrap()
        };
        let (gf, gn) = (grad_of(&combo(&fused), z), grad_of(&combo(&naive), z));
        for r in 0..c.rows() {
            let row_tol = GRAD_RTOL * stats_row_scale(&c, used, r);
            for j in r * c.v..(r + 1) * c.v {
                let (a, b) = (gf[j] as f64, gn[j] as f64);
                let tol = row_tol + elem_rtol(c.dtype) * a.abs().max(b.abs()) + 1e-12;
                assert!(
                    (a - b).abs() <= tol,
                    "{ctx} used={used:?}: dlogits[{r}, {}] fused {a}, naive {b}",
                    j - r * c.v
                );
            }
        }
    }
}

/// The fused op's branch counts are `cpu::token_stats`'s and lie in the f64 spec's band.
fn check_branch(ctx: &str, c: &StatsCase, fused: &ops::TokenStatsOutput) {
    let Some(p) = c.cfg.top_p else {
        assert!(fused.branch.is_none(), "{ctx}: branch without top-p");
        return;
    };
    let branch = fused.branch.as_ref().expect("branch with top-p");
    assert_eq!(branch.dims(), c.lead.as_slice(), "{ctx}: branch shape");
    let got = branch.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let want = match c.dtype {
        DType::BF16 => cpu_branch::<half::bf16>(c),
        DType::F16 => cpu_branch::<half::f16>(c),
        _ => cpu_branch::<f32>(c),
    };
    assert_eq!(got, want, "{ctx}: branch vs cpu::token_stats");
    for (r, row) in c.logits.chunks(c.v).enumerate() {
        let row: Vec<f64> = row.iter().map(|&z| z as f64).collect();
        let (lo, hi) = reference::branch_band(&row, c.cfg.temperature as f64, p as f64);
        assert!((lo..=hi).contains(&got[r]), "{ctx}: branch[{r}] = {} outside [{lo}, {hi}]", got[r]);
    }
}

fn cpu_branch<E: Element>(c: &StatsCase) -> Vec<u32> {
    let z: Vec<E> = c.logits.iter().map(|&x| E::from_f32(x)).collect();
    cpu::token_stats(&z, c.v, c.targets.as_deref(), &c.cfg).unwrap().branch.unwrap()
}

/// An empty batch (mask all 0): loss 0 and dlogits exactly 0, fused and naive, over the
/// configuration matrix (1000 cases by default).
#[test]
fn empty_batch_has_zero_loss_and_gradient() {
    let dev = Device::Cpu;
    for i in 0..cases(1000) {
        let mut c = grpo_case(i * 7, 3_000 + i as u64);
        c.mask.fill(0.0);
        let t = c.tensors(&dev);
        let z = t.logits.as_tensor();
        for out in [ops::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg), ops::naive::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg)] {
            let out = out.unwrap();
            assert_eq!(out.loss.to_scalar::<f32>().unwrap(), 0.0, "case {i}");
            assert!(grad_of(&out.loss, z).iter().all(|&g| g == 0.0), "case {i}: nonzero dlogits");
        }
    }
}

/// Non-contiguous logits (a transposed view) and per-token inputs (a transposed `[T, B]`
/// tensor) give exactly the contiguous results, loss and dlogits.
#[test]
fn non_contiguous_inputs_give_the_contiguous_results() {
    let dev = Device::Cpu;
    let c = grpo_case(11, 77);
    let t = c.tensors(&dev);
    let z = t.logits.as_tensor();
    let want = ops::grpo_loss(z, &t.inputs(&c.cfg), &c.cfg).unwrap();
    let want_grad = grad_of(&want.loss, z);
    // The same values through views with other strides.
    let zt = z.transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap();
    assert!(!zt.is_contiguous());
    let strided = |x: &Tensor| x.t().unwrap().contiguous().unwrap().t().unwrap();
    let (mask, old, adv, refl, tg) =
        (strided(&t.mask), strided(&t.old_logp), strided(&t.advantages), strided(&t.ref_logp), strided(&t.targets));
    assert!(!mask.is_contiguous() || c.b == 1 || c.t == 1);
    let inputs = ops::GrpoLossInputs {
        targets: &tg,
        mask: &mask,
        old_logp: &old,
        ref_logp: c.cfg.kl.map(|_| &refl),
        advantages: &adv,
        kept_mask: None,
    };
    type LossFn = fn(&Tensor, &ops::GrpoLossInputs, &GrpoConfig) -> rlvr_kernels::Result<ops::GrpoLossOutput>;
    let both: [LossFn; 2] = [ops::grpo_loss, ops::naive::grpo_loss];
    for f in both {
        let got = f(&zt, &inputs, &c.cfg).unwrap();
        let reference_loss = f(z, &t.inputs(&c.cfg), &c.cfg).unwrap().loss.to_scalar::<f32>().unwrap();
        assert_eq!(got.loss.to_scalar::<f32>().unwrap(), reference_loss);
    }
    let got = ops::grpo_loss(&zt, &inputs, &c.cfg).unwrap();
    assert_eq!(got.loss.to_scalar::<f32>().unwrap(), want.loss.to_scalar::<f32>().unwrap());
    assert_eq!(grad_of(&got.loss, z), want_grad);
    let s = stats_case(5, 5);
    let (sz, st, _) = s.tensors(&dev);
    let base = ops::token_stats(sz.as_tensor(), st.as_ref(), &s.cfg).unwrap();
    let view = sz.as_tensor().t().unwrap().contiguous().unwrap().t().unwrap();
    let got = ops::token_stats(&view, st.as_ref(), &s.cfg).unwrap();
    assert_eq!(host_f32(&got.entropy), host_f32(&base.entropy));
    assert_eq!(host_f32(&got.lse), host_f32(&base.lse));
}

/// No rows at all (`[0, V]` statistics, a `[0, T, V]` batch): empty outputs, loss 0, and an
/// empty gradient or none (candle skips the graph of some ops on empty tensors), from both
/// implementations.
#[test]
fn zero_rows_give_empty_outputs() {
    let dev = Device::Cpu;
    let z = candle_core::Var::zeros((0, 5), DType::F32, &dev).unwrap();
    let y = Tensor::zeros(0, DType::U32, &dev).unwrap();
    let cfg = rlvr_kernels::TokenStatsConfig::default();
    for out in [ops::token_stats(z.as_tensor(), Some(&y), &cfg), ops::naive::token_stats(z.as_tensor(), Some(&y), &cfg)]
    {
        let out = out.unwrap();
        assert_eq!(out.lse.dims(), &[0]);
        assert_eq!(out.branch.unwrap().dims(), &[0]);
        assert!(no_or_empty_grad(&out.entropy.sum_all().unwrap(), z.as_tensor()));
    }
    let z = candle_core::Var::zeros((0, 3, 5), DType::BF16, &dev).unwrap();
    let per = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
    let y = Tensor::zeros((0, 3), DType::U32, &dev).unwrap();
    let inputs = ops::GrpoLossInputs {
        targets: &y,
        mask: &per,
        old_logp: &per,
        ref_logp: None,
        advantages: &per,
        kept_mask: None,
    };
    let cfg = GrpoConfig::default();
    for out in [ops::grpo_loss(z.as_tensor(), &inputs, &cfg), ops::naive::grpo_loss(z.as_tensor(), &inputs, &cfg)] {
        let out = out.unwrap();
        assert_eq!(out.loss.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(out.token_loss.dims(), &[0, 3]);
        assert!(no_or_empty_grad(&out.loss, z.as_tensor()));
    }
}

fn no_or_empty_grad(loss: &Tensor, z: &Tensor) -> bool {
    loss.backward().unwrap().get(z).is_none_or(|g| g.elem_count() == 0)
}
