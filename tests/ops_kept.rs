//! `ops::grpo_loss` with a sampling filter (`GrpoConfig::filter`) or an engine mask
//! (`GrpoLossInputs::kept_mask`): loss, per-token ℓ̃ and kept statistics against
//! `reference::grpo_loss`, and `loss.backward()` against `reference::grpo_grad` and against
//! candle autograd of the naive composition (`ops::naive::grpo_loss`, K masked to −inf).
//! Bad masks give typed errors from both, never a panic.

use candle_core::{DType, Device, Tensor};
use rlvr_kernels::ops::{self, GrpoLossInputs, KeptMaskTensors};
use rlvr_kernels::{
    reference, Error, GrpoConfig, GrpoInputs, KeptMask, KlEstimator, KlPenalty, SamplingFilter, OUTSIDE_KEPT,
};

const B: usize = 2;
const T: usize = 4;
const V: usize = 40;
const N: usize = B * T;

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Problem {
    z: Vec<f32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    /// An engine mask: 3..12 ids per token, the target in it for even tokens only.
    ids: Vec<u32>,
    offsets: Vec<u64>,
}

impl Problem {
    fn new(seed: u64) -> Self {
        let mut r = lcg(seed);
        let z: Vec<f32> = (0..N * V).map(|i| if i % 13 == 0 { 3.0 } else { (4.0 * r() - 2.0) as f32 }).collect();
        let targets: Vec<u32> = (0..N).map(|k| (k as u32 * 7 + 1) % V as u32).collect();
        let (mut ids, mut offsets) = (Vec::new(), vec![0u64]);
        for (k, &y) in targets.iter().enumerate() {
            let want = 3 + (r() * 9.0) as usize;
            let mut row: Vec<u32> = (0..V as u32).filter(|&i| i != y && r() < 0.3).take(want).collect();
            if k % 2 == 0 || row.is_empty() {
                row.push(y);
            }
            ids.extend(row);
            offsets.push(ids.len() as u64);
        }
        Problem {
            z,
            targets,
            mask: (0..N).map(|k| (k % 5 != 4) as u8 as f32).collect(),
            old_logp: (0..N).map(|_| (-2.0 * r() - 0.2) as f32).collect(),
            ref_logp: (0..N).map(|_| (-2.0 * r() - 0.2) as f32).collect(),
            advantages: (0..N).map(|_| (2.0 * r() - 1.0) as f32).collect(),
            ids,
            offsets,
        }
    }

    fn host_inputs(&self, with_mask: bool) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: Some(&self.ref_logp),
            advantages: &self.advantages,
            seq_len: T,
            kept_mask: with_mask.then_some(KeptMask { token_ids: &self.ids, offsets: &self.offsets }),
        }
    }
}

fn per(x: &[f32]) -> Tensor {
    Tensor::from_vec(x.to_vec(), (B, T), &Device::Cpu).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// The gradient of `loss` w.r.t. the variable `z`.
fn grad_of(loss: &Tensor, z: &Tensor) -> Vec<f32> {
    host(loss.backward().unwrap().get(z).expect("a gradient"))
}

fn configs() -> Vec<GrpoConfig> {
    let base = GrpoConfig {
        kl: Some(KlPenalty { coef: 0.1, estimator: KlEstimator::K3 }),
        entropy_coef: 0.05,
        temperature: 0.8,
        ..Default::default()
    };
    let mut out = Vec::new();
    for f in [
        None,
        Some(SamplingFilter::top_p(0.9)),
        Some(SamplingFilter::top_k(5)),
        Some(SamplingFilter::top_k_top_p(12, 0.8)),
    ] {
        for kept_entropy in [false, true] {
            out.push(GrpoConfig { filter: f, kept_entropy, ..base });
        }
    }
    out
}

/// Fused op vs f64 reference vs naive autograd, for each filter (None = the engine mask, as
/// u32 and as i64 offsets) and H or H̃ in the bonus.
///
/// Tolerances (f32 logits, all three computed from the same values): the loss and every
/// per-token value within 2e-5·(1 + |value|) of the reference — the f32 kernels' errors are
/// ≤ 2^-18 times magnitudes ≤ 10 here (tests/cpu_grpo.rs derives the unit); dlogits within
/// 2e-5·max|row| + 1e-7 of the reference and of candle autograd (the same unit times the row's
/// gradient scale; 1e-7 for entries that round to tiny values).
#[test]
fn fused_loss_and_gradient_match_reference_and_naive() {
    for seed in [1u64, 2, 3] {
        let p = Problem::new(seed);
        let zt = candle_core::Var::from_vec(p.z.clone(), (B, T, V), &Device::Cpu).unwrap();
        let (y, m, o, r, a) = (
            Tensor::from_vec(p.targets.clone(), (B, T), &Device::Cpu).unwrap(),
            per(&p.mask),
            per(&p.old_logp),
            per(&p.ref_logp),
            per(&p.advantages),
        );
        let ids = Tensor::from_vec(p.ids.clone(), p.ids.len(), &Device::Cpu).unwrap();
        let off_u32: Vec<u32> = p.offsets.iter().map(|&o| o as u32).collect();
        let off_u32 = Tensor::from_vec(off_u32, N + 1, &Device::Cpu).unwrap();
        let off_i64: Vec<i64> = p.offsets.iter().map(|&o| o as i64).collect();
        let off_i64 = Tensor::from_vec(off_i64, N + 1, &Device::Cpu).unwrap();
        for cfg in configs() {
            for offsets in [&off_u32, &off_i64] {
                let with_mask = cfg.filter.is_none();
                if !with_mask && offsets.dtype() == DType::I64 {
                    continue;
                }
                let inputs = GrpoLossInputs {
                    targets: &y,
                    mask: &m,
                    old_logp: &o,
                    ref_logp: Some(&r),
                    advantages: &a,
                    kept_mask: with_mask.then_some(KeptMaskTensors { token_ids: &ids, offsets }),
                };
                let ctx = format!("seed {seed}, filter {:?}, kept_entropy {}", cfg.filter, cfg.kept_entropy);
                let fused = ops::grpo_loss(zt.as_tensor(), &inputs, &cfg).unwrap();
                let naive = ops::naive::grpo_loss(zt.as_tensor(), &inputs, &cfg).unwrap();
                let z64: Vec<f64> = p.z.iter().map(|&v| v as f64).collect();
                let spec = reference::grpo_loss(&z64, V, &p.host_inputs(with_mask), &cfg).unwrap();
                let close = |got: f32, want: f64| (got as f64 - want).abs() <= 2e-5 * (1.0 + want.abs());
                let loss = host(&fused.loss)[0];
                assert!(close(loss, spec.loss), "{ctx}: loss {loss} vs {}", spec.loss);
                assert!(close(host(&naive.loss)[0], spec.loss), "{ctx}: naive loss");
                let kept = fused.kept.as_ref().expect("kept statistics");
                let spec_kept = spec.kept.as_ref().unwrap();
                let flags: Vec<u8> = fused.clip_flags.flatten_all().unwrap().to_vec1().unwrap();
                let naive_flags: Vec<u8> = naive.clip_flags.flatten_all().unwrap().to_vec1().unwrap();
                let count: Vec<u32> = kept.count.flatten_all().unwrap().to_vec1().unwrap();
                let naive_count: Vec<u32> =
                    naive.kept.as_ref().unwrap().count.flatten_all().unwrap().to_vec1().unwrap();
                let (logp, lse_k, h_k) = (host(&fused.logp), host(&kept.lse), host(&kept.entropy));
                let (n_logp, n_lse_k, n_h_k) = (
                    host(&naive.logp),
                    host(&naive.kept.as_ref().unwrap().lse),
                    host(&naive.kept.as_ref().unwrap().entropy),
                );
                let mut outside_seen = 0;
                for k in 0..N {
                    let s = &spec_kept[k];
                    assert_eq!(count[k], s.count, "{ctx}: |K| of token {k}");
                    assert_eq!(naive_count[k], s.count, "{ctx}: naive |K| of token {k}");
                    assert_eq!(flags[k] & OUTSIDE_KEPT != 0, s.outside, "{ctx}: outside flag of token {k}");
                    assert_eq!(naive_flags[k], flags[k], "{ctx}: naive flags of token {k}");
                    outside_seen += s.outside as usize;
                    for (what, got, want) in [
                        ("logp", logp[k], spec.logp[k]),
                        ("lse_K", lse_k[k], s.lse),
                        ("H̃", h_k[k], s.entropy),
                        ("naive logp", n_logp[k], spec.logp[k]),
                        ("naive lse_K", n_lse_k[k], s.lse),
                        ("naive H̃", n_h_k[k], s.entropy),
                    ] {
                        assert!(close(got, want), "{ctx}: {what} of token {k}: {got} vs {want}");
                    }
                }
                if with_mask {
                    assert!(outside_seen > 0, "{ctx}: the mask case must have targets outside K");
                }
                let g = grad_of(&fused.loss, zt.as_tensor());
                let gn = grad_of(&naive.loss, zt.as_tensor());
                let want = reference::grpo_grad(&z64, V, &p.host_inputs(with_mask), &cfg).unwrap();
                for (k, ((g, gn), w)) in g.chunks(V).zip(gn.chunks(V)).zip(want.chunks(V)).enumerate() {
                    let scale = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                    let tol = 2e-5 * scale + 1e-7;
                    for j in 0..V {
                        assert!((g[j] as f64 - w[j]).abs() <= tol, "{ctx}: dz[{k}, {j}] {} vs ref {}", g[j], w[j]);
                        assert!(
                            (gn[j] as f64 - w[j]).abs() <= tol,
                            "{ctx}: naive dz[{k}, {j}] {} vs ref {}",
                            gn[j],
                            w[j]
                        );
                    }
                }
            }
        }
    }
}

/// One bad mask (ids, offsets) on the valid problem: both implementations fail with `want`.
fn mask_err(ids: Tensor, offsets: Tensor, cfg: &GrpoConfig, want: Error) {
    let p = Problem::new(1);
    let z = Tensor::from_vec(p.z.clone(), (B, T, V), &Device::Cpu).unwrap();
    let (y, m, o, r, a) = (
        Tensor::from_vec(p.targets.clone(), (B, T), &Device::Cpu).unwrap(),
        per(&p.mask),
        per(&p.old_logp),
        per(&p.ref_logp),
        per(&p.advantages),
    );
    let inputs = GrpoLossInputs {
        targets: &y,
        mask: &m,
        old_logp: &o,
        ref_logp: Some(&r),
        advantages: &a,
        kept_mask: Some(KeptMaskTensors { token_ids: &ids, offsets: &offsets }),
    };
    let cfg = GrpoConfig { kl: Some(KlPenalty { coef: 0.1, estimator: KlEstimator::K3 }), ..*cfg };
    let fused = ops::grpo_loss(&z, &inputs, &cfg).expect_err("fused: expected an error");
    let naive = ops::naive::grpo_loss(&z, &inputs, &cfg).expect_err("naive: expected an error");
    assert_eq!(fused, want, "fused");
    assert_eq!(naive, want, "naive");
}

fn u32s(v: &[u32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

/// Two ids per token: token r keeps {r, r + 1}.
fn good() -> (Vec<u32>, Vec<i64>) {
    ((0..N as u32).flat_map(|r| [r, r + 1]).collect(), (0..=N as i64).map(|r| 2 * r).collect())
}

#[test]
fn bad_masks_give_typed_errors() {
    let cfg = GrpoConfig::default();
    let bad = |row: usize| move |e: &Error| matches!(e, Error::InvalidKeptMask { row: r, .. } if *r == row);
    let run = |ids: Vec<u32>, off: Vec<i64>| {
        let p = Problem::new(1);
        let _ = p;
        (u32s(&ids), i64s(&off))
    };
    // Each case: (ids, offsets, the expected row of InvalidKeptMask).
    let mut cases: Vec<(Vec<u32>, Vec<i64>, usize)> = Vec::new();
    let (ids, off) = good();
    // An id ≥ V in token 3.
    let mut i = ids.clone();
    i[7] = V as u32;
    cases.push((i, off.clone(), 3));
    // A repeated id in token 5.
    let mut i = ids.clone();
    i[11] = i[10];
    cases.push((i, off.clone(), 5));
    // An empty token 2 (its start equals its end), the rest shifted.
    let mut o = off.clone();
    o[3] = o[2];
    cases.push((ids.clone(), o, 2));
    // Decreasing offsets at token 4.
    let mut o = off.clone();
    o[5] = o[4] - 1;
    cases.push((ids.clone(), o, 3));
    // A negative offset (i64) at position 6.
    let mut o = off.clone();
    o[6] = -1;
    cases.push((ids.clone(), o, 6));
    for (ids, off, row) in cases {
        let (it, ot) = run(ids.clone(), off.clone());
        let p = Problem::new(1);
        let z = Tensor::from_vec(p.z.clone(), (B, T, V), &Device::Cpu).unwrap();
        let (y, m, o, r, a) = (
            Tensor::from_vec(p.targets.clone(), (B, T), &Device::Cpu).unwrap(),
            per(&p.mask),
            per(&p.old_logp),
            per(&p.ref_logp),
            per(&p.advantages),
        );
        let inputs = GrpoLossInputs {
            targets: &y,
            mask: &m,
            old_logp: &o,
            ref_logp: Some(&r),
            advantages: &a,
            kept_mask: Some(KeptMaskTensors { token_ids: &it, offsets: &ot }),
        };
        for (who, res) in [
            ("fused", ops::grpo_loss(&z, &inputs, &cfg).map(|_| ())),
            ("naive", ops::naive::grpo_loss(&z, &inputs, &cfg).map(|_| ())),
        ] {
            let e = res.expect_err("a bad mask");
            // Decreasing offsets may be reported at either boundary row; the others are exact.
            let ok =
                bad(row)(&e) || (off.windows(2).any(|w| w[1] < w[0]) && matches!(e, Error::InvalidKeptMask { .. }));
            assert!(ok, "{who}: ids {ids:?} offsets {off:?}: got {e:?}, want InvalidKeptMask at row {row}");
        }
    }
    // Offsets of the wrong length, and not ending at the ids' length.
    let (ids, off) = good();
    let short = off[..N].to_vec();
    mask_err(
        u32s(&ids),
        i64s(&short),
        &cfg,
        Error::ShapeMismatch {
            name: "kept_mask.offsets",
            expected: format!("{} elements (N + 1 row starts)", N + 1),
            got: format!("{N} elements"),
        },
    );
    // Wrong dtypes and ranks.
    let f = Tensor::from_vec(vec![0f32; N + 1], N + 1, &Device::Cpu).unwrap();
    mask_err(
        u32s(&ids),
        f,
        &cfg,
        Error::DTypeMismatch { name: "kept_mask.offsets", expected: "u32 or i64".into(), got: "f32".into() },
    );
    let ids_i64 = i64s(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
    mask_err(
        ids_i64,
        i64s(&off),
        &cfg,
        Error::DTypeMismatch { name: "kept_mask.token_ids", expected: "u32".into(), got: "i64".into() },
    );
    let ids2 = Tensor::from_vec(ids.clone(), (N, 2), &Device::Cpu).unwrap();
    mask_err(
        ids2,
        i64s(&off),
        &cfg,
        Error::ShapeMismatch { name: "kept_mask.token_ids", expected: "rank 1".into(), got: format!("[{N}, 2]") },
    );
    // A filter together with a mask.
    let both = GrpoConfig { filter: Some(SamplingFilter::top_p(0.9)), ..cfg };
    mask_err(
        u32s(&ids),
        i64s(&off),
        &both,
        Error::InvalidConfig {
            name: "filter",
            value: "a filter and a kept mask".into(),
            why: "give one: the filter recomputes K, the mask is the engine's K",
        },
    );
}
