//! Bad filters and masks (issue 15 §6): each a typed error naming the setting or the mask row,
//! the same from the reference, the CPU statistics and the CPU GRPO forward; and a target
//! outside the kept set gives the documented result (flagged, ℓ̃ = ℓ), never a NaN.

use rlvr_kernels::{
    cpu, reference, Error, GrpoConfig, GrpoInputs, KeptMask, SamplingFilter, TokenStatsConfig, OUTSIDE_KEPT,
};

const V: usize = 6;
const Z: [f32; 12] = [3.0, 1.0, 0.5, -1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 4.0, -2.0, 1.0];

fn z64() -> Vec<f64> {
    Z.iter().map(|&x| x as f64).collect()
}

/// The error of the statistics (reference and CPU, which must agree) under `cfg` and `mask`.
fn stats_error(cfg: &TokenStatsConfig, mask: Option<&KeptMask>) -> Error {
    let want = reference::kept_token_stats(&z64(), V, Some(&[0, 1]), cfg, mask).unwrap_err();
    let got = match mask {
        Some(m) => cpu::token_stats_masked(&Z, V, Some(&[0, 1]), cfg, m).unwrap_err(),
        None => cpu::token_stats(&Z, V, Some(&[0, 1]), cfg).unwrap_err(),
    };
    assert_eq!(got, want);
    got
}

fn config_error(e: &Error) -> &'static str {
    match e {
        Error::InvalidConfig { name, .. } => name,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn bad_filters_name_their_setting() {
    let with = |f: SamplingFilter| TokenStatsConfig { filter: Some(f), ..Default::default() };
    assert_eq!(config_error(&stats_error(&with(SamplingFilter::top_k(0)), None)), "filter.top_k");
    for p in [0.0, -0.1, 1.0001, f32::NAN, f32::INFINITY] {
        assert_eq!(config_error(&stats_error(&with(SamplingFilter::top_p(p)), None)), "filter.top_p", "p = {p}");
    }
    assert_eq!(config_error(&stats_error(&with(SamplingFilter::default()), None)), "filter");
    // A filter with a temperature ≤ 0: greedy decoding has no distribution to replay.
    for t in [0.0, -1.0] {
        let cfg = TokenStatsConfig { temperature: t, ..with(SamplingFilter::top_p(0.9)) };
        assert_eq!(stats_error(&cfg, None), Error::InvalidTemperature(t as f64));
    }
    // The GRPO forward rejects the same.
    let inputs = GrpoInputs {
        targets: &[0, 1],
        mask: &[1.0, 1.0],
        old_logp: &[-1.0, -1.0],
        ref_logp: None,
        advantages: &[1.0, -1.0],
        seq_len: 2,
        kept_mask: None,
    };
    let cfg = GrpoConfig { filter: Some(SamplingFilter::top_k(0)), ..Default::default() };
    assert_eq!(config_error(&cpu::grpo_forward(&Z, V, &inputs, &cfg).unwrap_err()), "filter.top_k");
    assert_eq!(config_error(&reference::grpo_loss(&z64(), V, &inputs, &cfg).unwrap_err()), "filter.top_k");
}

#[test]
fn bad_masks_name_the_row() {
    let cfg = TokenStatsConfig::default();
    let check = |ids: &[u32], offsets: &[u64], row: usize, needle: &str| {
        let m = KeptMask { token_ids: ids, offsets };
        match stats_error(&cfg, Some(&m)) {
            Error::InvalidKeptMask { row: r, why } => {
                assert_eq!(r, row, "{why}");
                assert!(why.contains(needle), "{why} lacks {needle}");
            }
            other => panic!("expected InvalidKeptMask, got {other:?}"),
        }
    };
    check(&[0, 1, 2, 2], &[0, 2, 4], 1, "token id 2 is repeated");
    check(&[0, 1, 2, 6], &[0, 2, 4], 1, "token id 6 is out of range");
    check(&[0, 1, 2, 3], &[0, 0, 4], 0, "keeps no token");
    check(&[0, 1, 2, 3], &[1, 2, 4], 0, "offsets start at 1");
    check(&[0, 1, 2, 3], &[0, 3, 2], 1, "offsets decrease");
    check(&[0, 1, 2, 3], &[0, 2, 3], 1, "offsets end at 3");
    let short = KeptMask { token_ids: &[0, 1], offsets: &[0, 2] };
    assert!(matches!(stats_error(&cfg, Some(&short)), Error::ShapeMismatch { name: "kept_mask.offsets", .. }));
    // A filter and a mask at once: which K was meant is ambiguous.
    let m = KeptMask { token_ids: &[0, 1], offsets: &[0, 1, 2] };
    let both = TokenStatsConfig { filter: Some(SamplingFilter::top_k(2)), ..cfg };
    assert_eq!(config_error(&stats_error(&both, Some(&m))), "filter");
}

#[test]
fn a_target_outside_k_is_flagged_and_keeps_the_unfiltered_logp() {
    // Under top-k 1 row 0 keeps {0} (z = 3.0) and row 1 keeps {3} (z = 4.0): both targets (id 1,
    // z = 1.0 and 0.0) are outside.
    let cfg = TokenStatsConfig { filter: Some(SamplingFilter::top_k(1)), ..Default::default() };
    let s = cpu::token_stats(&Z, V, Some(&[1, 1]), &cfg).unwrap();
    let k = s.kept.unwrap();
    assert_eq!(k.outside.as_deref(), Some(&[1u8, 1][..]));
    assert_eq!(k.logp.as_ref().unwrap(), s.logp.as_ref().unwrap(), "ℓ̃ := ℓ outside K");
    assert_eq!(k.count, vec![1, 1]);
    assert!(k.entropy.iter().all(|&h| h == 0.0), "one kept token: H̃ = 0");
    // In the loss: flagged in the clip flags, a finite loss, ℓ in the ratio.
    let inputs = GrpoInputs {
        targets: &[1, 1],
        mask: &[1.0, 1.0],
        old_logp: &[-1.0, -1.0],
        ref_logp: None,
        advantages: &[1.0, -1.0],
        seq_len: 2,
        kept_mask: None,
    };
    let gcfg = GrpoConfig { filter: Some(SamplingFilter::top_k(1)), ..Default::default() };
    let fwd = cpu::grpo_forward(&Z, V, &inputs, &gcfg).unwrap();
    assert!(fwd.clip_flags.iter().all(|&f| f & OUTSIDE_KEPT != 0));
    assert!(fwd.loss.is_finite());
    assert_eq!(&fwd.logp, s.logp.as_ref().unwrap());
    let want = reference::grpo_loss(&z64(), V, &inputs, &gcfg).unwrap();
    assert!((fwd.loss as f64 - want.loss).abs() < 1e-5);
}
