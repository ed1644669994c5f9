//! `ops::naive` (plain candle ops + candle autograd) against the f64 spec: the loss equals
//! `reference::grpo_loss` and the autograd gradient equals `reference::grpo_grad`, over the whole
//! configuration matrix of `ops_cases`. The naive composition is the oracle of the fused ops'
//! gradient tests (tests/ops_grad.rs), so it is itself checked against the spec here.

mod ops_cases;

use candle_core::{DType, Device};
use ops_cases::{cases, grpo_case, row_scale, MATRIX};
use rlvr_kernels::{ops, reference};

/// Loss tolerance, relative to Σ_t |a_t·total_t| (the sum of the absolute contributions): the
/// f32 log-softmax gives ℓ_t with absolute error ~1e−6 (|x| ≤ 6, V ≤ 48), so ρ = e^{ℓ−ℓ_old}
/// is within ~1e−6 relative, and the f32 sum of ≤ 30 terms adds ≤ 30·2⁻²⁴ relative.
const LOSS_RTOL: f64 = 2e-5;

/// Gradient tolerance per element, relative to the row's scale (`ops_cases::row_scale`: the
/// spec's per-token coefficients g_t, h_t, policy and KL parts of g_t taken apart): p_tj in f32 is within ~1e−6 relative, and the
/// target entry's δ − p cancels to ~2⁻²⁴ absolute. bf16 logits get bf16 gradients: one more
/// rounding of 2⁻⁸ relative to the element itself.
const GRAD_RTOL: f64 = 2e-5;

/// For every case: the naive loss and its autograd dlogits against the f64 reference.
/// 2560 cases by default (each matrix entry twice, with its own random inputs).
#[test]
fn naive_grpo_matches_reference() {
    let dev = Device::Cpu;
    for i in 0..cases(2 * MATRIX) {
        let c = grpo_case(i, 1000 + i as u64);
        let ctx =
            format!("case {i}: b={} t={} v={} cfg={:?} shaping={:?} {:?}", c.b, c.t, c.v, c.cfg, c.shaping, c.dtype);
        let tensors = c.tensors(&dev);
        let out = ops::naive::grpo_loss(tensors.logits.as_tensor(), &tensors.inputs(&c.cfg), &c.cfg).unwrap();
        let want = reference::grpo_loss(&c.logits_f64(), c.v, &c.inputs(), &c.cfg).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        let scale: f64 = want.tokens.iter().zip(&want.weights).map(|(t, a)| (a * t.total).abs()).sum();
        assert!((loss - want.loss).abs() <= LOSS_RTOL * scale + 1e-7, "{ctx}: loss {loss} vs {}", want.loss);

        let grads = out.loss.backward().unwrap();
        let got = grads.get(tensors.logits.as_tensor()).expect("a gradient for the logits");
        assert_eq!(got.dtype(), c.dtype);
        let got: Vec<f32> = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want_grad = reference::grpo_grad(&c.logits_f64(), c.v, &c.inputs(), &c.cfg).unwrap();
        let elem_rtol = if c.dtype == DType::BF16 { 2f64.powi(-8) } else { 0.0 };
        for r in 0..c.b * c.t {
            let row_scale = row_scale(&c, &want, r);
            for j in r * c.v..(r + 1) * c.v {
                let (a, b) = (got[j] as f64, want_grad[j]);
                let tol = GRAD_RTOL * row_scale + elem_rtol * b.abs() + 1e-12;
                assert!((a - b).abs() <= tol, "{ctx}: dlogits[{r}, {}] = {a}, want {b} (tol {tol})", j - r * c.v);
            }
        }
    }
}
