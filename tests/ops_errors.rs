//! Bad input to the candle ops: every check of `ops::grpo_loss` / `ops::token_stats` returns
//! its exact typed error, and the naive twins return the same error (a trainer switching between
//! them sees the same failures). Never a panic.

use candle_core::{DType, Device, Tensor};
use rlvr_kernels::ops::{self, GrpoLossInputs};
use rlvr_kernels::{Aggregation, Error, GrpoConfig, KlEstimator, KlPenalty, TokenStatsConfig};

const B: usize = 2;
const T: usize = 3;
const V: usize = 5;

/// A valid problem of shape [2, 3, 5] (KL on, so every input is read).
struct Problem {
    logits: Vec<f32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    cfg: GrpoConfig,
}

impl Problem {
    fn new() -> Self {
        Problem {
            logits: (0..B * T * V).map(|k| ((k * 7) % 11) as f32 * 0.3 - 1.5).collect(),
            targets: vec![0, 1, 2, 3, 4, 0],
            mask: vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            old_logp: vec![-1.0, -1.2, -2.0, -1.5, -0.7, -1.1],
            ref_logp: vec![-1.1, -1.0, -2.2, -1.4, -0.9, -1.0],
            advantages: vec![0.5, 0.5, 0.5, -0.5, -0.5, -0.5],
            cfg: GrpoConfig { kl: Some(KlPenalty { coef: 0.1, estimator: KlEstimator::K3 }), ..Default::default() },
        }
    }

    fn per(x: &[f32]) -> Tensor {
        Tensor::from_vec(x.to_vec(), (B, T), &Device::Cpu).unwrap()
    }

    fn tensors(&self) -> [Tensor; 6] {
        [
            Tensor::from_vec(self.logits.clone(), (B, T, V), &Device::Cpu).unwrap(),
            Tensor::from_vec(self.targets.clone(), (B, T), &Device::Cpu).unwrap(),
            Self::per(&self.mask),
            Self::per(&self.old_logp),
            Self::per(&self.ref_logp),
            Self::per(&self.advantages),
        ]
    }
}

/// Both implementations fail with exactly `want`.
fn grpo_err(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig, want: Error) {
    let fused = ops::grpo_loss(logits, inputs, cfg).expect_err("fused: expected an error");
    let naive = ops::naive::grpo_loss(logits, inputs, cfg).expect_err("naive: expected an error");
    assert_eq!(fused, want, "fused");
    assert_eq!(naive, want, "naive");
}

/// `edit` changes one tensor of a valid problem; both implementations fail with `want`.
fn grpo_case(edit: impl FnOnce(&mut [Tensor; 6]), want: Error) {
    let p = Problem::new();
    let mut t = p.tensors();
    edit(&mut t);
    let [z, y, m, o, r, a] = &t;
    let inputs = GrpoLossInputs { targets: y, mask: m, old_logp: o, ref_logp: Some(r), advantages: a, kept_mask: None };
    grpo_err(z, &inputs, &p.cfg, want);
}

/// `edit` changes the host values of a valid problem; both implementations fail with `want`.
fn grpo_value_case(edit: impl FnOnce(&mut Problem), want: Error) {
    let mut p = Problem::new();
    edit(&mut p);
    let [z, y, m, o, r, a] = &p.tensors();
    let inputs = GrpoLossInputs { targets: y, mask: m, old_logp: o, ref_logp: Some(r), advantages: a, kept_mask: None };
    grpo_err(z, &inputs, &p.cfg, want);
}

fn shape_err(name: &'static str, expected: &str, got: &str) -> Error {
    Error::ShapeMismatch { name, expected: expected.into(), got: got.into() }
}

fn dtype_err(name: &'static str, expected: &str, got: &str) -> Error {
    Error::DTypeMismatch { name, expected: expected.into(), got: got.into() }
}

const LEAD: &str = "shape [2, 3] (the logits' leading dimensions)";

#[test]
fn grpo_config_errors() {
    grpo_value_case(|p| p.cfg.temperature = 0.0, Error::InvalidTemperature(0.0));
    grpo_value_case(|p| p.cfg.top_p = Some(1.0), Error::InvalidTopP(1.0));
    grpo_value_case(
        |p| p.cfg.clip_low = 1.0,
        Error::InvalidConfig { name: "clip_low", value: "1".into(), why: "must be in [0, 1)" },
    );
    grpo_value_case(
        |p| p.cfg.aggregation = Aggregation::TokenMean { global_tokens: Some(0.0) },
        Error::InvalidConfig { name: "global_tokens", value: "0".into(), why: "must be finite and > 0" },
    );
}

#[test]
fn grpo_dtype_errors() {
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    grpo_case(|t| t[0] = f64_of(&t[0]), dtype_err("logits", "bf16, f16 or f32", "f64"));
    grpo_case(|t| t[1] = t[1].to_dtype(DType::F32).unwrap(), dtype_err("targets", "u32", "f32"));
    grpo_case(|t| t[2] = t[2].to_dtype(DType::U8).unwrap(), dtype_err("mask", "f32", "u8"));
    grpo_case(|t| t[3] = f64_of(&t[3]), dtype_err("old_logp", "f32", "f64"));
    grpo_case(|t| t[4] = t[4].to_dtype(DType::BF16).unwrap(), dtype_err("ref_logp", "f32", "bf16"));
    grpo_case(|t| t[5] = f64_of(&t[5]), dtype_err("advantages", "f32", "f64"));
}

#[test]
fn grpo_shape_errors() {
    grpo_case(|t| t[0] = t[0].reshape((B * T, V)).unwrap(), shape_err("logits", "rank 3 [B, T, V]", "[6, 5]"));
    grpo_case(|t| t[0] = Tensor::zeros((B, T, 0), DType::F32, &Device::Cpu).unwrap(), Error::EmptyVocab);
    grpo_case(|t| t[1] = t[1].reshape((T, B)).unwrap(), shape_err("targets", LEAD, "[3, 2]"));
    grpo_case(|t| t[2] = t[2].reshape(B * T).unwrap(), shape_err("mask", LEAD, "[6]"));
    grpo_case(|t| t[3] = t[3].reshape((1, B, T)).unwrap(), shape_err("old_logp", LEAD, "[1, 2, 3]"));
    grpo_case(|t| t[4] = t[4].narrow(1, 0, 2).unwrap(), shape_err("ref_logp", LEAD, "[2, 2]"));
    grpo_case(|t| t[5] = t[5].reshape((T, B)).unwrap(), shape_err("advantages", LEAD, "[3, 2]"));
}

#[test]
fn grpo_missing_ref_logp_with_kl() {
    let p = Problem::new();
    let [z, y, m, o, _, a] = &p.tensors();
    let inputs = GrpoLossInputs { targets: y, mask: m, old_logp: o, ref_logp: None, advantages: a, kept_mask: None };
    grpo_err(z, &inputs, &p.cfg, shape_err("ref_logp", "6 elements (the KL penalty is on)", "none"));
}

#[test]
fn grpo_value_errors() {
    grpo_value_case(|p| p.targets[4] = 5, Error::TargetOutOfRange { token: 4, target: 5, vocab: 5 });
    grpo_value_case(|p| p.mask[2] = 0.5, Error::InvalidMask { token: 2, value: 0.5 });
    let inf = f32::INFINITY;
    grpo_value_case(
        |p| p.old_logp[3] = inf,
        Error::NonFiniteInput { name: "old_logp", index: 3, value: f64::INFINITY },
    );
    grpo_value_case(
        |p| p.advantages[1] = -inf,
        Error::NonFiniteInput { name: "advantages", index: 1, value: f64::NEG_INFINITY },
    );
    grpo_value_case(
        |p| p.ref_logp[5] = inf,
        Error::NonFiniteInput { name: "ref_logp", index: 5, value: f64::INFINITY },
    );
}

#[test]
fn grpo_logits_errors() {
    grpo_value_case(|p| p.logits[4 * V + 2] = f32::NAN, Error::NonFiniteLogits { row: 4 });
    grpo_value_case(|p| p.logits[V + 4] = f32::INFINITY, Error::NonFiniteLogits { row: 1 });
    grpo_value_case(|p| p.logits[3 * V..4 * V].fill(f32::NEG_INFINITY), Error::AllNegInfRow { row: 3 });
    // The first bad row is named, whatever its kind.
    grpo_value_case(
        |p| {
            p.logits[2 * V] = f32::NAN;
            p.logits[V..2 * V].fill(f32::NEG_INFINITY);
        },
        Error::AllNegInfRow { row: 1 },
    );
}

/// With `check_finite` off, a bad row that is masked out is not an error and does not reach
/// the loss of the fused op (its terms are NaN; the naive op's too, where they are kept apart
/// by the mask).
#[test]
fn grpo_unchecked_bad_row_is_not_an_error() {
    let mut p = Problem::new();
    p.cfg.check_finite = false;
    p.logits[0] = f32::NAN; // row 0 is masked out
    let [z, y, m, o, r, a] = &p.tensors();
    let inputs = GrpoLossInputs { targets: y, mask: m, old_logp: o, ref_logp: Some(r), advantages: a, kept_mask: None };
    let fused = ops::grpo_loss(z, &inputs, &p.cfg).unwrap();
    let naive = ops::naive::grpo_loss(z, &inputs, &p.cfg).unwrap();
    assert!(fused.loss.to_scalar::<f32>().unwrap().is_finite());
    assert!(naive.loss.to_scalar::<f32>().unwrap().is_finite());
    let logp: Vec<Vec<f32>> = fused.logp.to_vec2().unwrap();
    assert!(logp[0][0].is_nan());
}

fn stats_err(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig, want: Error) {
    let fused = ops::token_stats(logits, targets, cfg).expect_err("fused: expected an error");
    let naive = ops::naive::token_stats(logits, targets, cfg).expect_err("naive: expected an error");
    assert_eq!(fused, want, "fused");
    assert_eq!(naive, want, "naive");
}

#[test]
fn token_stats_errors() {
    let dev = Device::Cpu;
    let z = Tensor::from_vec((0..12).map(|k| k as f32 * 0.25).collect::<Vec<_>>(), (3, 4), &dev).unwrap();
    let y = Tensor::new(&[0u32, 3, 1], &dev).unwrap();
    let cfg = TokenStatsConfig::default();
    stats_err(&z, Some(&y), &TokenStatsConfig { temperature: -1.0, ..cfg }, Error::InvalidTemperature(-1.0));
    stats_err(&z, Some(&y), &TokenStatsConfig { top_p: Some(0.0), ..cfg }, Error::InvalidTopP(0.0));
    let u32_logits = z.to_dtype(DType::U32).unwrap();
    stats_err(&u32_logits, Some(&y), &cfg, dtype_err("logits", "bf16, f16 or f32", "u32"));
    let rank_msg = "rank 2 [N, V] or rank 3 [B, T, V]";
    stats_err(&z.flatten_all().unwrap(), None, &cfg, shape_err("logits", rank_msg, "[12]"));
    stats_err(&z.reshape((1, 1, 3, 4)).unwrap(), None, &cfg, shape_err("logits", rank_msg, "[1, 1, 3, 4]"));
    let empty = Tensor::zeros((3, 0), DType::F32, &dev).unwrap();
    stats_err(&empty, None, &cfg, Error::EmptyVocab);
    let y64 = y.to_dtype(DType::I64).unwrap();
    stats_err(&z, Some(&y64), &cfg, dtype_err("targets", "u32", "i64"));
    let y4 = Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap();
    stats_err(&z, Some(&y4), &cfg, shape_err("targets", "shape [3] (the logits' leading dimensions)", "[4]"));
    let y_bad = Tensor::new(&[0u32, 4, 1], &dev).unwrap();
    stats_err(&z, Some(&y_bad), &cfg, Error::TargetOutOfRange { token: 1, target: 4, vocab: 4 });
    let mut v: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    v[9] = f32::NAN;
    let nan = Tensor::from_vec(v.clone(), (3, 4), &dev).unwrap();
    stats_err(&nan, Some(&y), &cfg, Error::NonFiniteLogits { row: 2 });
    v[9] = 0.0;
    v[4..8].fill(f32::NEG_INFINITY);
    let dead = Tensor::from_vec(v, (3, 4), &dev).unwrap();
    stats_err(&dead, Some(&y), &cfg, Error::AllNegInfRow { row: 1 });
    // Unchecked: the bad row's statistics are NaN, the others are finite.
    let unchecked = TokenStatsConfig { check_finite: false, top_p: None, ..cfg };
    for out in [ops::token_stats(&nan, Some(&y), &unchecked), ops::naive::token_stats(&nan, Some(&y), &unchecked)] {
        let lse: Vec<f32> = out.unwrap().lse.to_vec1().unwrap();
        assert!(lse[0].is_finite() && lse[1].is_finite() && lse[2].is_nan(), "{lse:?}");
    }
}
