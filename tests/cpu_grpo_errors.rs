//! Bad input to `cpu::grpo_forward` / `cpu::grpo_backward*`: one typed error each (DESIGN.md §7),
//! the same error as `reference::grpo_loss` reports (so the same precedence: configuration,
//! shapes, per-token inputs, then the first bad logits row), and nothing written on error.

use rlvr_kernels::{
    cpu, reference, Aggregation, Error, GrpoConfig, GrpoForward, GrpoInputs, GrpoSaved, KlEstimator, KlPenalty,
};

/// Errors compared by their printed form: `NonFiniteInput` carries the bad value, and NaN ≠ NaN.
fn same(a: &Error, b: &Error) -> bool {
    format!("{a:?}") == format!("{b:?}")
}
/// A named way to break one field of a `T`.
type Breaker<T> = (&'static str, fn(&mut T));

const V: usize = 4;

/// Two sequences of three tokens over V = 4, all valid; tests break one thing at a time.
#[derive(Clone)]
struct Fx {
    z: Vec<f32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    old: Vec<f32>,
    refl: Option<Vec<f32>>,
    adv: Vec<f32>,
    seq_len: usize,
    cfg: GrpoConfig,
}

fn fx() -> Fx {
    Fx {
        z: (0..24).map(|i| ((i * 7) % 5) as f32 * 0.5 - 1.0).collect(),
        targets: vec![0, 1, 2, 3, 0, 1],
        mask: vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        old: vec![-1.4; 6],
        refl: Some(vec![-1.2; 6]),
        adv: vec![0.5, 0.5, 0.5, -0.7, -0.7, -0.7],
        seq_len: 3,
        cfg: GrpoConfig { kl: Some(KlPenalty { coef: 0.1, estimator: KlEstimator::K3 }), ..Default::default() },
    }
}

impl Fx {
    fn inputs(&self) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old,
            ref_logp: self.refl.as_deref(),
            advantages: &self.adv,
            seq_len: self.seq_len,
            kept_mask: None,
        }
    }

    fn forward(&self, vocab: usize) -> Result<GrpoForward, Error> {
        cpu::grpo_forward(&self.z, vocab, &self.inputs(), &self.cfg)
    }

    /// The forward's error, asserted equal to the reference's.
    fn err(&self) -> Error {
        let got = self.forward(V).expect_err("bad input must be rejected");
        let z64: Vec<f64> = self.z.iter().map(|&v| v as f64).collect();
        let want = reference::grpo_loss(&z64, V, &self.inputs(), &self.cfg).expect_err("reference rejects it too");
        assert!(same(&got, &want), "cpu {got:?} vs reference {want:?}");
        got
    }
}

fn shape_name(e: Error) -> &'static str {
    match e {
        Error::ShapeMismatch { name, .. } => name,
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

fn config_name(e: Error) -> &'static str {
    match e {
        Error::InvalidConfig { name, .. } => name,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn fixture_is_valid() {
    assert!(fx().forward(V).is_ok());
}

#[test]
fn invalid_mask_value() {
    let mut f = fx();
    f.mask[2] = 0.5;
    assert_eq!(f.err(), Error::InvalidMask { token: 2, value: 0.5 });
}

#[test]
fn targets_of_wrong_length() {
    let mut f = fx();
    f.targets.pop();
    assert_eq!(shape_name(f.err()), "targets");
}

#[test]
fn mask_of_wrong_length() {
    let mut f = fx();
    f.mask.push(1.0);
    assert_eq!(shape_name(f.err()), "mask");
}

#[test]
fn old_logp_of_wrong_length() {
    let mut f = fx();
    f.old.pop();
    assert_eq!(shape_name(f.err()), "old_logp");
}

#[test]
fn advantages_of_wrong_length() {
    let mut f = fx();
    f.adv.truncate(2);
    assert_eq!(shape_name(f.err()), "advantages");
}

#[test]
fn ref_logp_of_wrong_length() {
    let mut f = fx();
    f.refl.as_mut().unwrap().push(0.0);
    assert_eq!(shape_name(f.err()), "ref_logp");
}

#[test]
fn kl_without_ref_logp() {
    let mut f = fx();
    f.refl = None;
    assert_eq!(shape_name(f.err()), "ref_logp");
    f.cfg.kl = None; // without the KL penalty ℓ_ref is not needed
    assert!(f.forward(V).is_ok());
}

#[test]
fn nan_old_logp() {
    let mut f = fx();
    f.old[4] = f32::NAN;
    assert!(matches!(f.err(), Error::NonFiniteInput { name: "old_logp", index: 4, .. }));
}

#[test]
fn nan_advantages() {
    let mut f = fx();
    f.adv[1] = f32::NAN;
    assert!(matches!(f.err(), Error::NonFiniteInput { name: "advantages", index: 1, .. }));
}

#[test]
fn infinite_ref_logp() {
    let mut f = fx();
    f.refl.as_mut().unwrap()[5] = f32::NEG_INFINITY;
    assert!(matches!(f.err(), Error::NonFiniteInput { name: "ref_logp", index: 5, .. }));
}

#[test]
fn target_out_of_range() {
    let mut f = fx();
    f.targets[3] = V as u32;
    assert_eq!(f.err(), Error::TargetOutOfRange { token: 3, target: V as u32, vocab: V });
}

#[test]
fn nan_or_inf_logit_row() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut f = fx();
        f.z[2 * V + 1] = bad;
        f.z[4 * V + 3] = bad;
        assert_eq!(f.err(), Error::NonFiniteLogits { row: 2 }, "{bad}");
        f.cfg.check_finite = false; // then the row's terms are NaN and the others unaffected
        let (got, clean) = (f.forward(V).unwrap(), fx().forward(V).unwrap());
        assert!(got.logp[2].is_nan() && got.logp[4].is_nan());
        assert_eq!(got.logp[..2], clean.logp[..2]);
    }
}

#[test]
fn all_neg_inf_row_and_first_bad_row_wins() {
    let mut f = fx();
    f.z[V..2 * V].fill(f32::NEG_INFINITY);
    f.z[3 * V] = f32::NAN;
    assert_eq!(f.err(), Error::AllNegInfRow { row: 1 });
    f.z[V] = f32::INFINITY;
    assert_eq!(f.err(), Error::NonFiniteLogits { row: 1 });
}

#[test]
fn seq_len_not_dividing_n() {
    for seq_len in [0, 4, 7] {
        let mut f = fx();
        f.seq_len = seq_len;
        assert_eq!(shape_name(f.err()), "seq_len", "T = {seq_len}");
    }
}

#[test]
fn logits_shape() {
    let mut f = fx();
    f.z.pop();
    assert_eq!(shape_name(f.err()), "logits");
    assert_eq!(fx().forward(0).unwrap_err(), Error::EmptyVocab);
}

#[test]
fn invalid_configs() {
    let cases: [Breaker<GrpoConfig>; 6] = [
        ("clip_low", |c| c.clip_low = 1.0),
        ("dual_clip", |c| c.dual_clip = Some(1.0)),
        ("kl.coef", |c| c.kl = Some(KlPenalty { coef: -0.1, estimator: KlEstimator::K1 })),
        ("global_tokens", |c| c.aggregation = Aggregation::TokenMean { global_tokens: Some(0.0) }),
        ("norm", |c| c.aggregation = Aggregation::SeqMeanTokenSumNorm { norm: 0.0 }),
        ("entropy_coef", |c| c.entropy_coef = f32::NAN),
    ];
    for (name, break_it) in cases {
        let mut f = fx();
        break_it(&mut f.cfg);
        f.mask[0] = 2.0; // the configuration is checked before the inputs
        assert_eq!(config_name(f.err()), name);
    }
    let mut f = fx();
    f.cfg.temperature = 0.0;
    assert_eq!(f.err(), Error::InvalidTemperature(0.0));
    f.cfg.temperature = 1.0;
    f.cfg.top_p = Some(1.0);
    assert_eq!(f.err(), Error::InvalidTopP(1.0));
}

#[test]
fn empty_batch() {
    let mut f = fx();
    f.mask.fill(0.0);
    f.cfg.entropy_coef = 0.01;
    let fwd = f.forward(V).unwrap();
    assert_eq!(fwd.loss, 0.0);
    let grad = cpu::grpo_backward(&f.z, V, &f.targets, &fwd.saved, 1.0, 1.0).unwrap();
    assert!(grad.iter().all(|&g| g.to_bits() == 0));
    // N = 0 rows: nothing to do, loss 0.
    let none = GrpoInputs {
        targets: &[],
        mask: &[],
        old_logp: &[],
        ref_logp: Some(&[]),
        advantages: &[],
        seq_len: 3,
        kept_mask: None,
    };
    let fwd = cpu::grpo_forward::<f32>(&[], V, &none, &f.cfg).unwrap();
    assert_eq!((fwd.loss, fwd.token_loss.len()), (0.0, 0));
    assert!(cpu::grpo_backward::<f32>(&[], V, &[], &fwd.saved, 1.0, 1.0).unwrap().is_empty());
}

/// Runs the three backward entry points on `f` with `saved`, asserting they all fail with the
/// same error and write nothing.
fn backward_err(f: &Fx, saved: &GrpoSaved, out_len: usize, temp: f32, grad_loss: f32) -> Error {
    let mut out = vec![9.0f32; out_len];
    let e = cpu::grpo_backward_into(&f.z, V, &f.targets, saved, temp, grad_loss, &mut out).unwrap_err();
    assert!(out.iter().all(|&v| v == 9.0), "nothing may be written on error");
    if out_len == f.z.len() {
        assert!(same(&cpu::grpo_backward(&f.z, V, &f.targets, saved, temp, grad_loss).unwrap_err(), &e));
        let mut z = f.z.clone();
        assert!(same(&cpu::grpo_backward_in_place(&mut z, V, &f.targets, saved, temp, grad_loss).unwrap_err(), &e));
        assert_eq!(z, f.z, "nothing may be overwritten on error");
    }
    e
}

#[test]
fn backward_bad_input() {
    let f = fx();
    let saved = f.forward(V).unwrap().saved;
    let n = f.z.len();
    let fields: [Breaker<GrpoSaved>; 4] = [
        ("saved.lse", |s| s.lse.truncate(5)),
        ("saved.entropy", |s| s.entropy.push(0.0)),
        ("saved.grad_logp", |s| s.grad_logp.clear()),
        ("saved.grad_entropy", |s| s.grad_entropy.truncate(1)),
    ];
    for (name, break_it) in fields {
        let mut s = saved.clone();
        break_it(&mut s);
        assert_eq!(shape_name(backward_err(&f, &s, n, 1.0, 1.0)), name);
    }
    assert_eq!(shape_name(backward_err(&f, &saved, n - 1, 1.0, 1.0)), "dlogits");
    assert_eq!(backward_err(&f, &saved, n, -1.0, 1.0), Error::InvalidTemperature(-1.0));
    assert!(matches!(backward_err(&f, &saved, n, 1.0, f32::NAN), Error::NonFiniteInput { name: "grad_loss", .. }));
    let mut g = f.clone();
    g.targets[5] = 9;
    assert_eq!(backward_err(&g, &saved, n, 1.0, 1.0), Error::TargetOutOfRange { token: 5, target: 9, vocab: V });
    g.targets.pop();
    assert_eq!(shape_name(backward_err(&g, &saved, n, 1.0, 1.0)), "targets");
    let mut h = f.clone();
    h.z.pop();
    assert_eq!(shape_name(backward_err(&h, &saved, n - 1, 1.0, 1.0)), "logits");
}
