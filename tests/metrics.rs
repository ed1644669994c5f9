//! Evaluation metrics: Pass@k by the product formula against the reference's exact binomials,
//! k-rollout unsolvable sets and their overlaps, and the per-token aggregates of the training
//! loop. `PROPTEST_CASES` overrides the default of 1000 cases per property.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rlvr_kernels::metrics::{
    entropy_by_position, masked_mean, mean_by_correctness, overlap, pass_at_k, pass_at_k_curve, sequence_means,
    unsolvable,
};
use rlvr_kernels::{reference, Error};

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000))
}

/// 2⁻⁵³, the unit roundoff of f64.
const U: f64 = f64::EPSILON / 2.0;

/// Both are 1 − (a product of ratios in [0, 1]). The product formula has c factors 1 − k/i, each
/// with two roundings, and c multiplications: relative error ≤ 3c·u of a product ≤ 1. The
/// reference rounds C(n−c, k) and C(n, k) (exact u128) to f64 and divides (3u), or for n > 120
/// multiplies k rounded ratios (2k·u). Their sum bounds the difference.
fn pass_tol(n: usize, c: usize, k: usize) -> f64 {
    let reference = if n <= 120 { 3.0 } else { 2.0 * k as f64 + 1.0 };
    (3.0 * c as f64 + reference + 1.0) * U
}

#[test]
fn pass_at_k_matches_exact_binomials_for_every_n_up_to_64() {
    for n in 1..=64 {
        for c in 0..=n {
            for k in 1..=n {
                let (got, want) = (pass_at_k(n, c, k).unwrap(), reference::pass_at_k(n, c, k).unwrap());
                assert!((got - want).abs() <= pass_tol(n, c, k), "n {n} c {c} k {k}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn pass_at_k_invalid_arguments() {
    for (n, c, k) in [(5, 2, 0), (5, 2, 6), (5, 6, 3), (0, 0, 0), (0, 0, 1)] {
        assert_eq!(pass_at_k(n, c, k), Err(Error::InvalidPassAtK { n, c, k }));
    }
}

/// Pass@1 = c/n (the product telescopes to (n − c)/n); c = 0 gives exactly 0, n − c < k exactly 1.
#[test]
fn pass_at_one_and_endpoints() {
    for n in 1..=300 {
        for c in 0..=n {
            let got = pass_at_k(n, c, 1).unwrap();
            assert!((got - c as f64 / n as f64).abs() <= (3 * c + 2) as f64 * U, "n {n} c {c}: {got}");
            assert_eq!(pass_at_k(n, 0, 1 + c % n).unwrap(), 0.0);
            if c > 0 {
                assert_eq!(pass_at_k(n, c, n - c + 1).unwrap(), 1.0);
            }
        }
    }
}

#[test]
fn pass_at_k_curve_is_the_mean_over_problems() {
    let counts = [0, 3, 10, 7];
    let curve = pass_at_k_curve(&counts, 10, &[1, 2, 5, 10]).unwrap();
    for (j, &k) in [1usize, 2, 5, 10].iter().enumerate() {
        let mean = counts.iter().map(|&c| pass_at_k(10, c, k).unwrap()).sum::<f64>() / 4.0;
        assert_eq!(curve[j], mean);
    }
    assert_eq!(curve[0], 20.0 / 40.0);
    assert_eq!(curve[3], 0.75); // 3 of 4 problems have a correct sample.
    assert!(matches!(pass_at_k_curve(&[], 10, &[1]), Err(Error::InvalidConfig { name: "correct_counts", .. })));
    assert_eq!(pass_at_k_curve(&[11], 10, &[1]), Err(Error::InvalidPassAtK { n: 10, c: 11, k: 1 }));
    assert_eq!(pass_at_k_curve(&[1], 10, &[0]), Err(Error::InvalidPassAtK { n: 10, c: 1, k: 0 }));
}

fn nck() -> impl Strategy<Value = (usize, usize, usize)> {
    (65usize..5000).prop_flat_map(|n| (Just(n), 0..=n, 1..=n))
}

/// Random n, c, k beyond 64 (so the reference switches to its ratio product above 120).
fn problems() -> impl Strategy<Value = (Vec<Vec<bool>>, Vec<Vec<bool>>, usize)> {
    (0usize..30, 1usize..12).prop_flat_map(|(p, r)| {
        let model =
            move |density: f64| prop::collection::vec(prop::collection::vec(prop::bool::weighted(density), r), p);
        (model(0.15), model(0.3), 1..=r)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pass_at_k_matches_reference_for_large_n((n, c, k) in nck()) {
        let (got, want) = (pass_at_k(n, c, k).unwrap(), reference::pass_at_k(n, c, k).unwrap());
        prop_assert!((got - want).abs() <= pass_tol(n, c, k), "{} vs {}", got, want);
    }

    /// Monotone (non-decreasing) in k and in c, exactly: each factor 1 − k/i is monotone under
    /// rounding, and one more correct sample appends one factor ≤ 1 at the end of the product.
    #[test]
    fn pass_at_k_is_monotone((n, c, k) in nck()) {
        let p = pass_at_k(n, c, k).unwrap();
        prop_assert!((0.0..=1.0).contains(&p));
        if k < n {
            prop_assert!(pass_at_k(n, c, k + 1).unwrap() >= p);
        }
        if c < n {
            prop_assert!(pass_at_k(n, c + 1, k).unwrap() >= p);
        }
    }

    /// Unsolvable sets: p ∈ U_k ⇔ none of p's first k rollouts is correct; U_{k+1} ⊆ U_k; with
    /// n = k samples, mean Pass@k = 1 − |U_k|/#problems. Overlaps: |A∪B| = |A∩B| + |A∖B| + |B∖A|,
    /// the parts are the set operations, Jaccard = |A∩B|/|A∪B| ∈ [0, 1] (1 iff A = B), symmetric.
    #[test]
    fn unsolvable_sets_and_overlaps((m1, m2, k) in problems()) {
        let (a, b) = (unsolvable(&m1, k).unwrap(), unsolvable(&m2, k).unwrap());
        for (p, rollouts) in m1.iter().enumerate() {
            prop_assert_eq!(a.contains(&p), !rollouts[..k].contains(&true));
        }
        if k < m1.first().map_or(0, Vec::len) {
            prop_assert!(unsolvable(&m1, k + 1).unwrap().is_subset(&a));
        }
        if !m1.is_empty() {
            let counts: Vec<usize> = m1.iter().map(|r| r[..k].iter().filter(|&&c| c).count()).collect();
            let curve = pass_at_k_curve(&counts, k, &[k]).unwrap()[0];
            prop_assert!((curve - (1.0 - a.len() as f64 / m1.len() as f64)).abs() <= 1e-12);
        }
        let o = overlap(&a, &b);
        let union: BTreeSet<usize> = a.union(&b).copied().collect();
        prop_assert_eq!(union.len(), o.both.len() + o.only_a.len() + o.only_b.len());
        prop_assert_eq!(&o.both, &a.intersection(&b).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(&o.only_a, &a.difference(&b).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(&o.only_b, &b.difference(&a).copied().collect::<BTreeSet<_>>());
        prop_assert!((0.0..=1.0).contains(&o.jaccard));
        prop_assert_eq!(o.jaccard == 1.0, a == b);
        if !union.is_empty() {
            prop_assert_eq!(o.jaccard, o.both.len() as f64 / union.len() as f64);
        }
        let r = overlap(&b, &a);
        prop_assert_eq!((r.jaccard, &r.both, &r.only_a, &r.only_b), (o.jaccard, &o.both, &o.only_b, &o.only_a));
    }

    /// Position-binned entropy against a naive computation that finds each token's bin by linear
    /// search for the largest b with b/bins ≤ (t − 1)/|o| (exact, in integers). Same tokens in the
    /// same order per bin, so counts are equal and means equal up to f64 summation noise (1e-12).
    #[test]
    fn entropy_by_position_matches_naive(
        (seq_len, rows, bins) in (1usize..20, 0usize..8, 1usize..10),
        seed in any::<u64>(),
    ) {
        let mut rng = reference::SplitMix64(seed);
        let n = seq_len * rows;
        let mask: Vec<f32> = (0..n).map(|_| (rng.below(3) != 0) as u8 as f32).collect();
        let entropy: Vec<f32> = (0..n).map(|_| rng.below(1000) as f32 / 100.0).collect();
        let got = entropy_by_position(&entropy, &mask, seq_len, bins).unwrap();
        let mut naive = vec![(0.0f64, 0usize); bins];
        for i in 0..rows {
            let counted: Vec<usize> = (i * seq_len..(i + 1) * seq_len).filter(|&t| mask[t] == 1.0).collect();
            let len = counted.len();
            for (t, &tok) in counted.iter().enumerate() {
                let b = (0..bins).rev().find(|&b| b * len <= t * bins).unwrap();
                naive[b].0 += entropy[tok] as f64;
                naive[b].1 += 1;
            }
        }
        prop_assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), mask.iter().filter(|&&m| m == 1.0).count());
        for (b, (g, (sum, count))) in got.iter().zip(naive).enumerate() {
            prop_assert_eq!(g.1, count, "bin {}", b);
            let mean = if count == 0 { 0.0 } else { sum / count as f64 };
            prop_assert!((g.0 - mean).abs() <= 1e-12 * (1.0 + mean), "bin {}: {} vs {}", b, g.0, mean);
        }
    }
}

/// |o| = 3 after a prompt token, bins = 3: r = 0, 1/3, 2/3 → one token per bin. |o| = 4, bins = 2:
/// r = 0, ¼ → bin 0; r = ½ (exactly on the edge → upper bin), ¾ → bin 1. Empty bins are (0, 0).
#[test]
fn entropy_by_position_hand_checked() {
    let got = entropy_by_position(&[9.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 1.0, 1.0], 4, 3).unwrap();
    assert_eq!(got, vec![(1.0, 1), (2.0, 1), (3.0, 1)]);
    let got = entropy_by_position(&[1.0, 2.0, 3.0, 5.0], &[1.0; 4], 4, 2).unwrap();
    assert_eq!(got, vec![(1.5, 2), (4.0, 2)]);
    // Two sequences pooled: [1, 3] and [5] (|o| = 1: its only token is at r = 0).
    let got = entropy_by_position(&[1.0, 3.0, 5.0, 7.0], &[1.0, 1.0, 1.0, 0.0], 2, 4).unwrap();
    assert_eq!(got, vec![(3.0, 2), (0.0, 0), (3.0, 1), (0.0, 0)]);
    assert_eq!(entropy_by_position(&[1.0; 4], &[0.0; 4], 2, 2).unwrap(), vec![(0.0, 0); 2]);
}

#[test]
fn entropy_by_position_bad_input() {
    let bins0 = entropy_by_position(&[1.0; 4], &[1.0; 4], 2, 0);
    assert!(matches!(bins0, Err(Error::InvalidConfig { name: "bins", .. })), "{bins0:?}");
    let t = entropy_by_position(&[1.0; 4], &[1.0; 4], 3, 2);
    assert!(matches!(t, Err(Error::ShapeMismatch { name: "seq_len", .. })), "{t:?}");
    let m = entropy_by_position(&[1.0; 4], &[1.0, 0.5, 1.0, 1.0], 2, 2);
    assert_eq!(m, Err(Error::InvalidMask { token: 1, value: 0.5 }));
    let h = entropy_by_position(&[1.0, f32::INFINITY, 1.0, 1.0], &[1.0; 4], 2, 2);
    assert!(matches!(h, Err(Error::NonFiniteInput { name: "entropy", index: 1, .. })), "{h:?}");
}

#[test]
fn masked_means() {
    assert_eq!(masked_mean(&[1.0f32, 100.0, 3.0], &[1.0, 0.0, 1.0]).unwrap(), Some(2.0));
    assert_eq!(masked_mean(&[f32::NAN, 4.0], &[0.0, 1.0]).unwrap(), Some(4.0)); // masked NaN skipped
    assert_eq!(masked_mean(&[1.0f32, 2.0], &[0.0, 0.0]).unwrap(), None);
    assert_eq!(masked_mean(&[3u32, 8, 5], &[1.0, 0.0, 1.0]).unwrap(), Some(4.0));
    let len = masked_mean(&[1.0f32; 3], &[1.0; 2]);
    assert!(matches!(len, Err(Error::ShapeMismatch { name: "mask", .. })), "{len:?}");
    assert_eq!(masked_mean(&[1.0f32; 2], &[1.0, 2.0]), Err(Error::InvalidMask { token: 1, value: 2.0 }));

    let per_seq = sequence_means(&[1.0f32, 3.0, 9.0, 9.0, 2.0, 4.0], &[1.0, 1.0, 0.0, 0.0, 0.0, 1.0], 2).unwrap();
    assert_eq!(per_seq, vec![Some(2.0), None, Some(4.0)]);
    let t = sequence_means(&[1.0f32; 6], &[1.0; 6], 4);
    assert!(matches!(t, Err(Error::ShapeMismatch { name: "seq_len", .. })), "{t:?}");
}

#[test]
fn means_by_correctness() {
    let got = mean_by_correctness(&[1.0f64, 2.0, 4.0, 8.0], &[true, false, true, false]).unwrap();
    assert_eq!(got, (Some(2.5), Some(5.0)));
    assert_eq!(mean_by_correctness(&[1.0f32, 3.0], &[true, true]).unwrap(), (Some(2.0), None));
    assert_eq!(mean_by_correctness::<f32>(&[], &[]).unwrap(), (None, None));
    let len = mean_by_correctness(&[1.0f32, 3.0], &[true]);
    assert!(matches!(len, Err(Error::ShapeMismatch { name: "correct", .. })), "{len:?}");
}

#[test]
fn unsolvable_bad_input() {
    assert!(matches!(unsolvable(&[vec![true]], 0), Err(Error::InvalidConfig { name: "k", .. })));
    assert_eq!(unsolvable(&[vec![true, false], vec![false]], 2), Err(Error::InvalidPassAtK { n: 1, c: 0, k: 2 }));
}
