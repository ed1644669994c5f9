//! A CPU model of the group algorithms of `kernels/sequence.cu`, step for step, tested against
//! the f64 reference on machines without a GPU (the kernels themselves are tested on a GPU by
//! `tests/cuda_sequence.rs`):
//! - the PPL weight's `group_stats`: the in-block bitonic network (one compare-exchange per thread
//!   and stage, missing values padded with +inf up to the next power of two), the quartiles and
//!   the IQR fence with the reference's roundings, and μ, σ summed in `block_sum`'s order (xor
//!   butterfly inside each warp of 32, then warp 0 over the 32 warp sums);
//! - `shape_sequence`'s positions: the chunked exclusive count of counted tokens (ballot + popc per
//!   warp, warp 0 scans the warp counts), then the bonus with the kernel's f32 expression.
//!
//! What it does not model: thread interleaving (the network and the scans are data-parallel with a
//! barrier between steps, so a sequential run of each step is the same computation) and CUDA's
//! `expf` (std's exp here; both within 2 ulp, inside the tolerance of `tests/cpu_sequence.rs`).

mod common;

use proptest::prelude::*;
use rlvr_kernels::reference::{self, SplitMix64};
use rlvr_kernels::{PositionShaping, PplShaping, Shaping};

const BLOCK: usize = 1024;
const EPS: f64 = f32::EPSILON as f64;

/// `block_sum` of common.cuh over one value per thread (`v.len()` = blockDim = 1024).
fn block_sum(v: &[f64]) -> f64 {
    fn warp(w: &[f64]) -> f64 {
        let mut x = w.to_vec();
        for o in [16, 8, 4, 2, 1] {
            let y = x.clone();
            for (l, xl) in x.iter_mut().enumerate() {
                *xl = y[l] + y[l ^ o];
            }
        }
        x[0]
    }
    let sums: Vec<f64> = v.chunks(32).map(warp).collect();
    warp(&sums)
}

/// The kernel's bitonic network on v[0, p), p a power of two: stage (k, j), thread i < p with
/// partner q = i ^ j > i swaps when (a > b) == ((i & k) == 0).
fn bitonic_sort(v: &mut [f64]) {
    let p = v.len();
    assert!(p.is_power_of_two());
    let mut k = 2;
    while k <= p {
        let mut j = k >> 1;
        while j > 0 {
            for i in 0..p {
                let q = i ^ j;
                if q > i {
                    let up = (i & k) == 0;
                    if (v[i] > v[q]) == up {
                        v.swap(i, q);
                    }
                }
            }
            j >>= 1;
        }
        k <<= 1;
    }
}

/// sequence.cu's `quantile` (explicit roundings; Rust never contracts to FMA).
fn quantile(s: &[f64], n: usize, q: f64) -> f64 {
    let pos = (n - 1) as f64 * q;
    let (lo, hi) = (pos.floor(), pos.ceil());
    let (a, b) = (s[lo as usize], s[hi as usize]);
    a + (b - a) * (pos - lo)
}

/// sequence.cu's `group_stats` + the ppl_weight kernel for one group of G ≤ 1024 values
/// (NaN = none). Returns w and the sorted array.
fn kernel_ppl_weight(group: &[f64]) -> (Vec<f32>, Vec<f64>) {
    let g = group.len();
    let v: Vec<f64> = (0..BLOCK).map(|j| if j < g { group[j] } else { f64::NAN }).collect();
    let valid: Vec<bool> = v.iter().map(|x| !x.is_nan()).collect();
    let n = valid.iter().filter(|&&b| b).count();
    if n == 0 {
        return (vec![0.0; g], vec![]);
    }
    let p = g.next_power_of_two();
    let mut sorted: Vec<f64> = (0..p).map(|i| if valid[i] { v[i] } else { f64::INFINITY }).collect();
    bitonic_sort(&mut sorted);
    let (q1, q3) = (quantile(&sorted, n, 0.25), quantile(&sorted, n, 0.75));
    let iqr = q3 - q1;
    let (lo, hi) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
    let keep: Vec<bool> = (0..BLOCK).map(|j| valid[j] && v[j] >= lo && v[j] <= hi).collect();
    let kept = keep.iter().filter(|&&b| b).count();
    let used: Vec<bool> = if kept == 0 { valid.clone() } else { keep };
    let cnt = if kept == 0 { n } else { kept } as f64;
    let terms: Vec<f64> = (0..BLOCK).map(|j| if used[j] { v[j] } else { 0.0 }).collect();
    let mu = block_sum(&terms) / cnt;
    let sq: Vec<f64> = (0..BLOCK).map(|j| if used[j] { (v[j] - mu) * (v[j] - mu) } else { 0.0 }).collect();
    let sd = (block_sum(&sq) / cnt).sqrt();
    let sigma = if sd <= 1e-6 { 1.0 } else { sd };
    let w = (0..g).map(|j| if valid[j] { ((v[j] - mu) / sigma) as f32 } else { 0.0 }).collect();
    (w, sorted)
}

/// Per-group log-PPL values: ties (a few levels), a coarse grid, continuous, outliers, missing.
fn group_values() -> impl Strategy<Value = Vec<Option<f32>>> {
    (1usize..=300, any::<u64>(), 0u8..4).prop_map(|(g, seed, kind)| {
        let mut rng = SplitMix64(seed);
        let levels: Vec<f32> = (0..1 + rng.below(4)).map(|_| rng.below(40) as f32 * 0.125).collect();
        (0..g)
            .map(|_| {
                if rng.below(6) == 0 {
                    return None;
                }
                Some(match kind {
                    0 => levels[rng.below(levels.len() as u64) as usize],
                    1 => rng.below(64) as f32 / 8.0,
                    2 => (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 10.0,
                    _ => {
                        let base = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                        if rng.below(8) == 0 {
                            base + 50.0
                        } else {
                            base
                        }
                    }
                })
            })
            .collect()
    })
}

/// The exclusive count of `flags` (one chunk of ≤ 1024 tokens) as block_exclusive_count computes
/// it: popc of the ballot below each lane, plus the exclusive scan of the warp counts.
fn chunk_exclusive_count(flags: &[bool]) -> (Vec<u32>, u32) {
    let mut ballots = [0u32; 32];
    for (t, &f) in flags.iter().enumerate() {
        ballots[t / 32] |= (f as u32) << (t % 32);
    }
    let counts: Vec<u32> = ballots.iter().map(|b| b.count_ones()).collect();
    // Warp 0's inclusive scan by shfl_up (o = 1, 2, 4, 8, 16), then exclusive = incl − own.
    let mut incl = counts.clone();
    let mut o = 1;
    while o < 32 {
        let prev = incl.clone();
        for l in o..32 {
            incl[l] = prev[l] + prev[l - o];
        }
        o <<= 1;
    }
    let before = (0..flags.len())
        .map(|t| {
            let (w, lane) = (t / 32, t % 32);
            incl[w] - counts[w] + (ballots[w] & ((1u32 << lane) - 1)).count_ones()
        })
        .collect();
    (before, incl[31])
}

/// shape_sequence of sequence.cu for one sequence (f32, the kernel's expressions).
fn kernel_shape(a: f32, factor: f32, mask: &[f32], p: Option<&PositionShaping>) -> Vec<f32> {
    let plain = a * factor;
    let Some(p) = p.filter(|_| a != 0.0) else { return vec![plain; mask.len()] };
    let len = mask.iter().filter(|&&m| m != 0.0).count() as u32;
    let scale = p.kappa / (2 * len) as f32;
    let (cap, sign) = (0.5 * a.abs(), if a > 0.0 { 1.0 } else { -1.0 });
    let mut out = Vec::with_capacity(mask.len());
    let mut base = 0u32;
    for chunk in mask.chunks(BLOCK) {
        let flags: Vec<bool> = chunk.iter().map(|&m| m != 0.0).collect();
        let (before, total) = chunk_exclusive_count(&flags);
        for (t, &m) in chunk.iter().enumerate() {
            out.push(if m != 0.0 {
                let numerator = (2 * (base + before[t]) as i64 - len as i64) as f32;
                let bonus = (p.beta * (1.0 / (1.0 + (-(scale * numerator)).exp()))).min(cap);
                (a + sign * bonus) * factor
            } else {
                plain
            });
        }
        base += total;
    }
    out
}

proptest! {
    #![proptest_config(common::config())]

    /// The kernel's PPL weight equals the reference's within ε·(1 + |w|) (the tolerance of
    /// tests/cpu_sequence.rs: μ, σ summed in another order, w rounded once), and the network sorts:
    /// the n valid values ascending, then the +inf padding.
    #[test]
    fn group_stats_model_matches_reference(group in group_values()) {
        let wide: Vec<f64> = group.iter().map(|v| v.map_or(f64::NAN, f64::from)).collect();
        let (w, sorted) = kernel_ppl_weight(&wide);
        let lp: Vec<Option<f64>> = group.iter().map(|v| v.map(f64::from)).collect();
        let want = reference::ppl_weight(&lp, group.len()).unwrap();
        for (j, (&g, &r)) in w.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - r).abs() <= EPS * (1.0 + r.abs()), "member {}: {} vs {}", j, g, r);
        }
        let mut valid: Vec<f64> = lp.iter().flatten().copied().collect();
        valid.sort_by(f64::total_cmp);
        if !valid.is_empty() {
            prop_assert_eq!(&sorted[..valid.len()], &valid[..]);
            prop_assert!(sorted[valid.len()..].iter().all(|v| *v == f64::INFINITY));
        }
    }

    /// The chunked block scan gives every counted token its 1-based position, and the kernel's
    /// shaped advantages match reference::shape_advantages within the tolerance of
    /// tests/cpu_sequence.rs (ε·|f|·(4β + 3|A|), doubled, plus one f32 MIN_POSITIVE).
    #[test]
    fn shaping_model_matches_reference(
        len in 1usize..3000,
        seed in any::<u64>(),
        a in prop_oneof![Just(0.0f32), -3.0f32..3.0],
        beta in 0.0f32..1.0,
        kappa in -60.0f32..60.0,
        factor in prop_oneof![Just(1.0f32), 0.8f32..1.2],
    ) {
        let mut rng = SplitMix64(seed);
        let density = rng.below(5);
        let mask: Vec<f32> = (0..len).map(|_| (rng.below(4) < density) as u8 as f32).collect();
        let pos = PositionShaping { beta, kappa };
        let got = kernel_shape(a, factor, &mask, Some(&pos));
        // The reference's PPL factor is clip(1 − α·w): α = 1, w = 1 − factor gives `factor`.
        let ppl = PplShaping { alpha: 1.0, lo: 0.0, hi: 2.0 };
        let shaping = Shaping { ppl: Some(ppl), position: Some(pos) };
        let w = [1.0 - factor as f64];
        let want = reference::shape_advantages(&[a as f64], &mask, len, Some(&w), &shaping).unwrap();
        let f = reference::ppl_factor(w[0], &ppl);
        let tol = 8.0 * EPS * f.abs() * (beta as f64 + a.abs() as f64) + f32::MIN_POSITIVE as f64;
        for (t, (&g, &r)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g as f64 - r).abs() <= tol, "token {}: {} vs {} (tol {:e})", t, g, r, tol);
        }
        let flags: Vec<bool> = mask.iter().map(|&m| m != 0.0).collect();
        let mut base = 0;
        for chunk in flags.chunks(BLOCK) {
            let (before, total) = chunk_exclusive_count(chunk);
            let mut seen = 0;
            for (t, &f) in chunk.iter().enumerate() {
                prop_assert_eq!(before[t], seen);
                seen += f as u32;
            }
            prop_assert_eq!(total, seen);
            base += total;
        }
        prop_assert_eq!(base as usize, flags.iter().filter(|&&f| f).count());
    }
}

/// The network sorts every arrangement of a small multiset and random sizes up to 1024.
#[test]
fn bitonic_network_sorts() {
    let mut rng = SplitMix64(3);
    for p in [1usize, 2, 4, 8, 16, 64, 256, 1024] {
        for _ in 0..50 {
            let mut v: Vec<f64> = (0..p).map(|_| rng.below(7) as f64 - 3.0).collect();
            let mut want = v.clone();
            want.sort_by(f64::total_cmp);
            bitonic_sort(&mut v);
            assert_eq!(v, want, "p = {p}");
        }
    }
}
