//! The statistics over the sampler's kept set K (`cpu::token_stats` with a filter,
//! `cpu::token_stats_masked` with an engine's mask) against `reference::kept_*` (float64), all
//! three dtypes, on the shared row generators (peaked, flat, Zipf/heavy-tailed, ties, LM-like,
//! −inf entries, V from 1 to 2¹⁸, T from 0.1 to 3, offsets and shifts up to ±1000).
//!
//! What is asserted per row:
//! - |K|: top-k alone exactly the reference's; with a top-p step inside `reference::kept_band`
//!   (the crossing within p·(1 ± 1e−5) is below f32 resolution, DESIGN.md §4); top-p = 1 and
//!   top-k ≥ V: every finite token (exactly). K is then rebuilt from |K| by
//!   `reference::kept_top` (which also asserts that the fast K is closed under ties and holds
//!   no −inf logit) and lse_K, H̃, ℓ̃ are compared with `reference::kept_stats` over it.
//! - The outside flag is the reference's for that K; ℓ̃ = ℓ for a target outside.
//! - lse, entropy, logp and the branch count are bit-identical with and without the filter.
//!
//! Tolerances (u = 2⁻²⁴): as in `tests/cpu_token_stats.rs`, over K instead of the row. Each
//! x_i − m is rounded in f32 (3u·|d_i| relative in e_i, d_i = x_i − m_K), e_i carries the f32
//! `exp`'s ε_exp = 1e−7 where the fast path uses it (16-bit histogram, flat rows' bottom mode),
//! sums of f32 e's 36u; so S_K is within δ = ε_exp + 36u + 3u·E_K|d| relative. On flat rows with
//! top-p alone the fast path may take S_K = S − S_c (the complement c of K): the error of S and
//! S_c, δ·(S + S_c), relative to S_K gives the factor a = 1 + 2·S_c/S_K on δ there. Then
//! lse_K within u·|m| + a·δ + u·|lse_K|; ℓ̃ within 3u·|d_y| + a·δ + u·|ℓ̃|; H̃ within
//! a·δ·(1 + E_K|d|) + E_K|d|·(ε_exp + 40u)·a + 3u·E_K[d²] + u·|H̃|; each times 2 (second-order
//! terms) plus 1e−7 absolute (f64 → f32 output rounding near 0).

mod common;

use common::{config, logits_spec, low_temperature, round_to, shifted_spec, temperature, LogitsSpec, RowKind};
use half::{bf16, f16};
use proptest::prelude::*;
use rlvr_kernels::{cpu, reference, Element, KeptMask, SamplingFilter, TokenStatsConfig};

const U: f64 = 1.0 / (1u64 << 24) as f64;
const EPS_EXP: f64 = 1e-7;

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Filters: top-k alone (k from 1 to past V), top-p alone (p = 1 now and then), top-k then
/// top-p (vLLM's order), with the 50 / 0.95 often.
fn filter() -> impl Strategy<Value = SamplingFilter> {
    let k = prop_oneof![3 => 1u32..=64, 2 => 1u32..=5000, 1 => Just(50u32), 1 => 100_000u32..=300_000];
    let p = prop_oneof![1 => Just(0.95f32), 3 => 0.05f32..0.999, 1 => Just(1.0f32)];
    prop_oneof![
        2 => k.clone().prop_map(SamplingFilter::top_k),
        3 => p.clone().prop_map(SamplingFilter::top_p),
        2 => (k, p).prop_map(|(k, p)| SamplingFilter::top_k_top_p(k, p)),
    ]
}

/// The tolerances of one row's kept statistics (see the file comment).
struct Tol {
    lse: f64,
    entropy: f64,
    ds: f64,
}

impl Tol {
    fn new(z: &[f64], t: f64, kept: &[bool], w: &reference::KeptRow, complement: bool) -> Tol {
        let m = z.iter().zip(kept).filter(|(_, &k)| k).fold(f64::NEG_INFINITY, |a, (&v, _)| a.max(v)) / t;
        let zmax = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) / t;
        let (mut sk, mut sc, mut d1, mut d2) = (0.0, 0.0, 0.0, 0.0);
        for (&zi, &k) in z.iter().zip(kept) {
            let e = (zi / t - zmax).exp();
            if k {
                let d = m - zi / t;
                sk += e;
                d1 += e * d;
                d2 += e * d * d;
            } else {
                sc += e;
            }
        }
        let (d1, d2) = (d1 / sk, d2 / sk);
        let a = if complement { 1.0 + 2.0 * sc / sk } else { 1.0 };
        let ds = a * (EPS_EXP + 36.0 * U + 3.0 * U * d1);
        let lse = U * m.abs() + ds + U * w.lse.abs();
        let entropy = ds * (1.0 + d1) + a * d1 * (EPS_EXP + 40.0 * U) + 3.0 * U * d2 + U * w.entropy.abs();
        Tol { lse: 2.0 * lse + 1e-7, entropy: 2.0 * entropy + 1e-7, ds }
    }

    fn logp(&self, d_y: f64, logp: f64) -> f64 {
        2.0 * (3.0 * U * d_y.abs() + self.ds + U * logp.abs()) + 1e-7
    }
}

fn close(what: &str, row: usize, got: f32, want: f64, tol: f64) -> Result<(), TestCaseError> {
    let ok = if want.is_infinite() { got as f64 == want } else { (got as f64 - want).abs() <= tol };
    prop_assert!(ok, "{what} of row {row}: got {got}, want {want}, tol {tol:e}");
    Ok(())
}

/// The bits of a stats vector, for bit-identity.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `f` as it acts on a row: keeps every finite token (top-p = 1 alone, or top-k ≥ the finite
/// tokens with no top-p step below 1).
fn keeps_all(f: &SamplingFilter, finite: usize) -> bool {
    let p_all = f.top_p.is_none_or(|p| p >= 1.0);
    let k_all = f.top_k.is_none_or(|k| k as usize >= finite);
    p_all && k_all
}

/// The fast kept statistics of `spec` in dtype E under `f` against the reference.
fn check<E: Element>(spec: &LogitsSpec, t: f32, f: SamplingFilter, with_targets: bool) -> Result<(), TestCaseError> {
    let (logits, z) = round_to::<E>(&spec.generate());
    let targets = with_targets.then(|| spec.targets());
    let top_p = f.top_p.filter(|&p| p < 1.0 && spec.seed.is_multiple_of(2));
    let plain = TokenStatsConfig { temperature: t, top_p, check_finite: true, filter: None };
    let cfg = TokenStatsConfig { filter: Some(f), ..plain };
    let fast = cpu::token_stats(&logits, spec.vocab, targets.as_deref(), &cfg).expect("valid input");
    let base = cpu::token_stats(&logits, spec.vocab, targets.as_deref(), &plain).expect("valid input");
    // The filter changes none of the unfiltered outputs.
    prop_assert_eq!(bits(&fast.lse), bits(&base.lse));
    prop_assert_eq!(bits(&fast.entropy), bits(&base.entropy));
    prop_assert_eq!(fast.logp.as_deref().map(bits), base.logp.as_deref().map(bits));
    prop_assert_eq!(&fast.branch, &base.branch);
    prop_assert!(base.kept.is_none());
    let k = fast.kept.expect("kept statistics with a filter");
    prop_assert_eq!(k.logp.is_some(), with_targets);
    prop_assert_eq!(k.outside.is_some(), with_targets);
    let t64 = t as f64;
    for (r, row) in z.chunks_exact(spec.vocab).enumerate() {
        let finite = row.iter().filter(|v| v.is_finite()).count();
        let count = k.count[r];
        if keeps_all(&f, finite) {
            prop_assert_eq!(count as usize, finite, "row {}: every finite token is kept ({})", r, f);
        } else {
            // A top-p step at p = 1 keeps every token it is given: the reference's f64 walk can
            // stop short of that when the tail's probabilities fall below f64 resolution of the
            // running sum (rows at |x| ~ 10³), so it is compared without that step.
            let f = SamplingFilter { top_p: f.top_p.filter(|&p| p < 1.0), ..f };
            let (lo, hi) = reference::kept_band(row, t64, &f);
            prop_assert!(lo <= count && count <= hi, "row {r}: |K| = {count} not in [{lo}, {hi}] ({f})");
        }
        let kept = reference::kept_top(row, count);
        prop_assert!(kept.is_some(), "row {r}: |K| = {count} is not a tie-closed set of finite logits ({f})");
        let kept = kept.unwrap_or_default();
        let y = targets.as_ref().map(|ts| ts[r]);
        let w = reference::kept_stats(row, t64, &kept, y);
        let complement = f.top_k.is_none();
        let tol = Tol::new(row, t64, &kept, &w, complement);
        close("lse_K", r, k.lse[r], w.lse, tol.lse)?;
        close("H~", r, k.entropy[r], w.entropy, tol.entropy)?;
        if let (Some(lp), Some(want), Some(y)) = (&k.logp, w.logp, y) {
            let outside = k.outside.as_ref().map(|o| o[r] == 1);
            prop_assert_eq!(outside, Some(w.outside), "outside flag of row {}", r);
            if w.outside {
                // ℓ̃ = ℓ, the unfiltered log-prob, bit for bit.
                prop_assert_eq!(lp[r].to_bits(), base.logp.as_ref().map_or(0, |b| b[r].to_bits()));
            } else {
                let m = row.iter().zip(&kept).filter(|(_, &k)| k).fold(f64::NEG_INFINITY, |a, (&v, _)| a.max(v));
                close("logp~", r, lp[r], want, tol.logp((row[y as usize] - m) / t64, want))?;
            }
        }
    }
    Ok(())
}

/// The fast kept statistics of `spec` with a random mask (distinct ids per row, the target
/// inside or outside) against `reference::kept_token_stats`.
fn check_mask<E: Element>(spec: &LogitsSpec, t: f32, frac: f64) -> Result<(), TestCaseError> {
    let (logits, z) = round_to::<E>(&spec.generate());
    let targets = spec.targets();
    let mut rnd = lcg(spec.seed);
    let (mut ids, mut offsets) = (Vec::new(), vec![0u64]);
    for (r, row) in z.chunks_exact(spec.vocab).enumerate() {
        // A random subset of the finite tokens (at least one), in random order.
        let mut row_ids: Vec<u32> =
            (0..spec.vocab as u32).filter(|&i| row[i as usize].is_finite() && rnd() < frac).collect();
        if row_ids.is_empty() {
            row_ids.push(row.iter().position(|v| v.is_finite()).unwrap_or(0) as u32);
        }
        if rnd() < 0.5 && row[targets[r] as usize].is_finite() && !row_ids.contains(&targets[r]) {
            row_ids.push(targets[r]);
        }
        for i in (1..row_ids.len()).rev() {
            row_ids.swap(i, (rnd() * (i + 1) as f64) as usize % (i + 1));
        }
        ids.extend(row_ids);
        offsets.push(ids.len() as u64);
    }
    let mask = KeptMask { token_ids: &ids, offsets: &offsets };
    let cfg = TokenStatsConfig { temperature: t, ..Default::default() };
    let fast = cpu::token_stats_masked(&logits, spec.vocab, Some(&targets), &cfg, &mask).expect("valid input");
    let base = cpu::token_stats(&logits, spec.vocab, Some(&targets), &cfg).expect("valid input");
    prop_assert_eq!(bits(&fast.lse), bits(&base.lse));
    prop_assert_eq!(bits(&fast.entropy), bits(&base.entropy));
    let want = reference::kept_token_stats(&z, spec.vocab, Some(&targets), &cfg, Some(&mask)).expect("valid");
    let k = fast.kept.expect("kept statistics with a mask");
    for (r, (row, w)) in z.chunks_exact(spec.vocab).zip(&want).enumerate() {
        let kept = reference::kept_from_ids(spec.vocab, mask.row(r));
        let tol = Tol::new(row, t as f64, &kept, w, false);
        prop_assert_eq!(k.count[r], w.count);
        prop_assert_eq!(k.outside.as_ref().map(|o| o[r] == 1), Some(w.outside));
        close("lse_K", r, k.lse[r], w.lse, tol.lse)?;
        close("H~", r, k.entropy[r], w.entropy, tol.entropy)?;
        if !w.outside {
            let m = row.iter().zip(&kept).filter(|(_, &k)| k).fold(f64::NEG_INFINITY, |a, (&v, _)| a.max(v));
            let want = w.logp.unwrap_or(f64::NAN);
            let d_y = (row[targets[r] as usize] - m) / t as f64;
            close("logp~", r, k.logp.as_ref().map_or(f32::NAN, |l| l[r]), want, tol.logp(d_y, want))?;
        } else {
            prop_assert_eq!(k.logp.as_ref().map(|l| l[r].to_bits()), base.logp.as_ref().map(|l| l[r].to_bits()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kept_stats_match_reference_f32(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check::<f32>(&spec, t, f, y)?;
    }

    #[test]
    fn kept_stats_match_reference_bf16(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check::<bf16>(&spec, t, f, y)?;
    }

    #[test]
    fn kept_stats_match_reference_f16(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check::<f16>(&spec, t, f, y)?;
    }

    /// Shift invariance: rows moved by c up to ±1000 at temperatures down to 0.1 (|z/T| to ~10⁴),
    /// against the reference on the same shifted (rounded) values.
    #[test]
    fn shifted_rows_match_reference(spec in shifted_spec(), t in low_temperature(), f in filter(), d in 0u8..3) {
        match d {
            0 => check::<f32>(&spec, t, f, true)?,
            1 => check::<bf16>(&spec, t, f, true)?,
            _ => check::<f16>(&spec, t, f, true)?,
        }
    }

    /// Shift invariance directly: rows of ties (multiples of 1/4, so z + c is exact in every
    /// dtype for these c) give the same |K| and, within tolerance, the same ℓ̃ and H̃ moved by c.
    #[test]
    fn exact_shifts_give_the_same_kept_set(
        spec in logits_spec(), t in temperature(), f in filter(), c in prop_oneof![Just(-16.0f32), Just(-2.0), Just(4.0), Just(32.0)]
    ) {
        let spec = LogitsSpec { kind: RowKind::Ties, offset: 0.0, ..spec };
        let z = spec.generate();
        let zc: Vec<f32> = z.iter().map(|&v| v + c).collect();
        let targets = spec.targets();
        let cfg = TokenStatsConfig { temperature: t, filter: Some(f), ..Default::default() };
        for (a, b) in [
            (cpu::token_stats(&z, spec.vocab, Some(&targets), &cfg), cpu::token_stats(&zc, spec.vocab, Some(&targets), &cfg)),
        ] {
            let (a, b) = (a.expect("valid").kept.expect("kept"), b.expect("valid").kept.expect("kept"));
            prop_assert_eq!(&a.count, &b.count);
            prop_assert_eq!(&a.outside, &b.outside);
            for r in 0..spec.rows {
                // Same terms e^{x − m} on both sides (x − m is exact for these values): H̃ and ℓ̃
                // agree to the rounding of their f64 → f32 outputs and of lse's c/T (≤ 4u·|·|).
                let (ha, hb) = (a.entropy[r] as f64, b.entropy[r] as f64);
                prop_assert!((ha - hb).abs() <= 4.0 * U * ha.abs().max(1.0), "H~ {ha} vs {hb}");
                let (la, lb) = (a.logp.as_ref().map_or(0.0, |l| l[r]) as f64, b.logp.as_ref().map_or(0.0, |l| l[r]) as f64);
                // (−inf for a target at a −inf logit, on both sides.)
                prop_assert!(la == lb || (la - lb).abs() <= 4.0 * U * la.abs().max(1.0), "logp~ {la} vs {lb}");
                let want = a.lse[r] as f64 + c as f64 / t as f64;
                prop_assert!((b.lse[r] as f64 - want).abs() <= 4.0 * U * want.abs().max(1.0) + 1e-6, "lse_K");
            }
        }
    }

    #[test]
    fn masks_match_reference(spec in logits_spec(), t in temperature(), frac in 0.0f64..1.0, d in 0u8..3) {
        match d {
            0 => check_mask::<f32>(&spec, t, frac)?,
            1 => check_mask::<bf16>(&spec, t, frac)?,
            _ => check_mask::<f16>(&spec, t, frac)?,
        }
    }
}

/// The shape on f32 rows wide enough for every fast path of f32 (bottom mode needs
/// V > 8192, the head a few blocks): flat and LM-like rows, top-p alone, top-k alone and
/// top-k then top-p, against the reference (a few rows: the f64 reference sorts each row).
#[test]
fn wide_rows_match_reference() {
    let mut rnd = lcg(11);
    let v = 60_000;
    let mut rows = Vec::new();
    // Flat (bottom mode), LM-like (head), heavy noise with one spike (fallback).
    rows.extend((0..v).map(|_| (rnd() - 0.5) as f32));
    rows.extend((0..v).map(|i| if i % 9_973 == 5 { 14.0 } else { (4.0 * (rnd() - 0.5)) as f32 }));
    rows.extend((0..v).map(|i| if i == 77 { 12.0 } else { (10.0 * (rnd() - 0.5)) as f32 }));
    let targets = [3u32, 5, 77];
    for f in [
        SamplingFilter::top_p(0.95),
        SamplingFilter::top_p(0.5),
        SamplingFilter::top_k(50),
        SamplingFilter::top_k(3000),
        SamplingFilter::top_k_top_p(50, 0.95),
    ] {
        // The count at the filter's p (the bottom-mode and count paths; the plain one is in
        // `cpu::token_stats`'s own tests).
        for t in [1.0f32, 0.7] {
            let spec_cfg = TokenStatsConfig { temperature: t, top_p: f.top_p, filter: Some(f), ..Default::default() };
            let got = cpu::token_stats(&rows, v, Some(&targets), &spec_cfg).expect("valid");
            let k = got.kept.expect("kept");
            for (r, row) in rows.chunks_exact(v).enumerate() {
                let zf: Vec<f64> = row.iter().map(|&x| x as f64).collect();
                let (lo, hi) = reference::kept_band(&zf, t as f64, &f);
                assert!(lo <= k.count[r] && k.count[r] <= hi, "{f} row {r}: {} not in [{lo}, {hi}]", k.count[r]);
                let kept = reference::kept_top(&zf, k.count[r]).expect("tie-closed");
                let w = reference::kept_stats(&zf, t as f64, &kept, Some(targets[r]));
                let tol = Tol::new(&zf, t as f64, &kept, &w, f.top_k.is_none());
                assert!((w.lse - k.lse[r] as f64).abs() <= tol.lse, "{f} row {r} lse");
                assert!((w.entropy - k.entropy[r] as f64).abs() <= tol.entropy, "{f} row {r} H");
                assert_eq!(w.outside, k.outside.as_ref().expect("targets")[r] == 1, "{f} row {r} outside");
            }
        }
    }
}

/// Unchecked bad rows (NaN, +inf): NaN kept statistics and |K| = 0 for them, no panic, the other
/// rows exact; every dtype.
#[test]
fn unchecked_bad_rows_give_nan() {
    fn run<E: Element>() {
        let v = 700;
        let mut z: Vec<f32> = (0..3 * v).map(|i| ((i * 7919) % 101) as f32 / 25.0).collect();
        z[v + 10] = f32::NAN;
        z[2 * v + 600] = f32::INFINITY;
        let (logits, _) = round_to::<E>(&z);
        let targets = [1u32, 2, 3];
        for f in [SamplingFilter::top_p(0.9), SamplingFilter::top_k(5), SamplingFilter::top_k_top_p(40, 0.5)] {
            let cfg = TokenStatsConfig { check_finite: false, filter: Some(f), ..Default::default() };
            let got = cpu::token_stats(&logits, v, Some(&targets), &cfg).expect("unchecked");
            let k = got.kept.expect("kept");
            assert!(k.lse[0].is_finite() && k.count[0] > 0);
            for r in 1..3 {
                assert!(k.lse[r].is_nan() && k.entropy[r].is_nan(), "{f} row {r}");
                assert!(k.logp.as_ref().expect("targets")[r].is_nan());
                assert_eq!(k.count[r], 0);
            }
            let cfg = TokenStatsConfig { check_finite: true, ..cfg };
            assert_eq!(
                cpu::token_stats(&logits, v, Some(&targets), &cfg).err(),
                Some(rlvr_kernels::Error::NonFiniteLogits { row: 1 })
            );
        }
    }
    run::<f32>();
    run::<bf16>();
    run::<f16>();
}

/// −inf logits are never kept, even when the filter asks for more tokens than are finite; top-p
/// = 1 and top-k ≥ V keep every finite token, with lse_K and H̃ equal to lse and H.
#[test]
fn neg_inf_never_kept_and_all_means_all_finite() {
    fn run<E: Element>() {
        let v = 20_000;
        let z: Vec<f32> =
            (0..v).map(|i| if i % 3 == 0 { f32::NEG_INFINITY } else { ((i % 97) as f32) / 9.0 }).collect();
        let (logits, _) = round_to::<E>(&z);
        let finite = z.iter().filter(|x| x.is_finite()).count() as u32;
        for f in [
            SamplingFilter::top_p(1.0),
            SamplingFilter::top_k(v as u32),
            SamplingFilter::top_k(finite + 1),
            SamplingFilter::top_k_top_p(u32::MAX, 1.0),
        ] {
            let cfg = TokenStatsConfig { filter: Some(f), ..Default::default() };
            let got = cpu::token_stats(&logits, v, Some(&[0]), &cfg).expect("valid");
            let k = got.kept.as_ref().expect("kept");
            assert_eq!(k.count[0], finite, "{f}");
            assert_eq!(k.outside.as_ref().expect("targets")[0], 1, "{f}: a −inf target is outside");
            assert!((k.lse[0] - got.lse[0]).abs() <= 1e-6 * got.lse[0].abs(), "{f}");
            assert!((k.entropy[0] - got.entropy[0]).abs() <= 1e-6 * got.entropy[0].abs().max(1.0), "{f}");
        }
    }
    run::<f32>();
    run::<bf16>();
    run::<f16>();
}

#[test]
fn smoke_filter_and_mask_match_the_reference() {
    let mut r = lcg(7);
    let (n, v) = (6usize, 300usize);
    let z: Vec<f32> = (0..n * v).map(|i| if i % 37 == 0 { 6.0 } else { (4.0 * r() - 2.0) as f32 }).collect();
    let zf: Vec<f64> = z.iter().map(|&x| x as f64).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
    for f in [SamplingFilter::top_p(0.9), SamplingFilter::top_k(5), SamplingFilter::top_k_top_p(20, 0.8)] {
        let cfg = TokenStatsConfig { filter: Some(f), temperature: 0.8, ..Default::default() };
        let got = cpu::token_stats(&z, v, Some(&targets), &cfg).unwrap();
        let k = got.kept.unwrap();
        for row in 0..n {
            let zr = &zf[row * v..(row + 1) * v];
            let (lo, hi) = reference::kept_band(zr, 0.8, &f);
            assert!(lo <= k.count[row] && k.count[row] <= hi, "{f}: {} not in [{lo}, {hi}]", k.count[row]);
            let set = reference::kept_top(zr, k.count[row]).expect("tie-closed");
            let want = reference::kept_stats(zr, 0.8, &set, Some(targets[row]));
            assert!((want.lse - k.lse[row] as f64).abs() < 1e-5, "{f} lse");
            assert!((want.entropy - k.entropy[row] as f64).abs() < 1e-5, "{f} H");
            assert!((want.logp.unwrap() - k.logp.as_ref().unwrap()[row] as f64).abs() < 1e-5, "{f} logp");
            assert_eq!(want.outside, k.outside.as_ref().unwrap()[row] == 1);
        }
    }
    let ids: Vec<u32> = (0..n as u32).flat_map(|r| [r * 37 % 300, r + 1, r + 100]).collect();
    let offsets: Vec<u64> = (0..=n as u64).map(|r| 3 * r).collect();
    let mask = KeptMask { token_ids: &ids, offsets: &offsets };
    let cfg = TokenStatsConfig::default();
    let got = cpu::token_stats_masked(&z, v, Some(&targets), &cfg, &mask).unwrap().kept.unwrap();
    let want = reference::kept_token_stats(&zf, v, Some(&targets), &cfg, Some(&mask)).unwrap();
    for (row, w) in want.iter().enumerate() {
        assert!((w.lse - got.lse[row] as f64).abs() < 1e-5);
        assert!((w.entropy - got.entropy[row] as f64).abs() < 1e-5);
        assert_eq!(w.outside, got.outside.as_ref().unwrap()[row] == 1);
        assert_eq!(w.count, got.count[row]);
    }
}
