//! RFT data selection: the properties that define each strategy (DESIGN.md §4), seeding, and
//! rejection of invalid fractions. `PROPTEST_CASES` overrides the default of 1000 cases.

use proptest::prelude::*;
use rlvr_kernels::rft::{self, RankBy, RftStrategy, RolloutRecord, DEFAULT_NOISE, DEFAULT_TOP_FRACTION};
use rlvr_kernels::Error;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000))
}

/// Rollouts with a random share of correct ones; means from a coarse grid (many ties) or
/// continuous.
fn rollouts() -> impl Strategy<Value = Vec<RolloutRecord>> {
    let mean = prop_oneof![(0u8..4).prop_map(|k| k as f64 * 0.5), 0.0f64..5.0];
    let record =
        (0usize..10, any::<bool>(), mean.clone(), mean).prop_map(|(problem, correct, mean_entropy, mean_branch)| {
            RolloutRecord { problem, correct, mean_entropy, mean_branch }
        });
    prop::collection::vec(record, 0..60)
}

fn strategy() -> impl Strategy<Value = RftStrategy> {
    let top = prop_oneof![
        Just(None),
        (prop_oneof![Just(RankBy::Entropy), Just(RankBy::Branch)], prop_oneof![Just(1.0), 0.001f64..1.0])
            .prop_map(Some),
    ];
    let noise = prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0];
    (top, noise).prop_map(|(top, noise)| RftStrategy { top, noise })
}

fn key(r: &RolloutRecord, by: RankBy) -> f64 {
    match by {
        RankBy::Entropy => r.mean_entropy,
        RankBy::Branch => r.mean_branch,
    }
}

proptest! {
    #![proptest_config(config())]

    /// Baseline = exactly the correct rollouts.
    #[test]
    fn baseline_is_exactly_the_correct_ones(rollouts in rollouts(), seed in any::<u64>()) {
        let got = rft::select(&rollouts, &RftStrategy::baseline(), seed).unwrap();
        let want: Vec<usize> = (0..rollouts.len()).filter(|&i| rollouts[i].correct).collect();
        prop_assert_eq!(got, want);
    }

    /// Any strategy: indices ascending, distinct, in range; the correct part is all correct ones
    /// or ⌈f·#correct⌉ of them whose keys are ≥ every dropped correct key; the incorrect part has
    /// round(noise·#kept) rollouts (at most all incorrect ones); the same seed selects the same.
    #[test]
    fn selection_properties(rollouts in rollouts(), strategy in strategy(), seed in any::<u64>()) {
        let got = rft::select(&rollouts, &strategy, seed).unwrap();
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "not ascending and distinct: {:?}", got);
        prop_assert!(got.iter().all(|&i| i < rollouts.len()));
        let (kept, noise): (Vec<usize>, Vec<usize>) = got.iter().partition(|&&i| rollouts[i].correct);
        let correct = rollouts.iter().filter(|r| r.correct).count();
        let wrong = rollouts.len() - correct;
        match strategy.top {
            None => prop_assert_eq!(kept.len(), correct),
            Some((by, f)) => {
                // The smallest count ≥ f·#correct.
                let target = f * correct as f64;
                let n = kept.len() as f64;
                prop_assert!(n >= target && n < target + 1.0, "{} of {}", n, correct);
                let dropped = (0..rollouts.len()).filter(|i| rollouts[*i].correct && !kept.contains(i));
                let lowest_kept = kept.iter().map(|&i| key(&rollouts[i], by)).fold(f64::INFINITY, f64::min);
                for i in dropped {
                    prop_assert!(key(&rollouts[i], by) <= lowest_kept, "dropped {} beats a kept one", i);
                }
            }
        }
        let want_noise = (strategy.noise * kept.len() as f64).round() as usize;
        prop_assert_eq!(noise.len(), want_noise.min(wrong));
        prop_assert_eq!(rft::select(&rollouts, &strategy, seed).unwrap(), got);
    }
}

fn with_wrong(correct: usize, wrong: usize) -> Vec<RolloutRecord> {
    (0..correct + wrong)
        .map(|i| RolloutRecord { problem: i, correct: i < correct, mean_entropy: i as f64, mean_branch: -(i as f64) })
        .collect()
}

/// Different seeds pick different noise: 10 of 200 incorrect rollouts, so two seeds agree with
/// probability 1/C(200, 10) ≈ 4e-17 per pair; all 50 fixed seeds must give distinct picks.
#[test]
fn different_seeds_pick_different_noise() {
    let rollouts = with_wrong(200, 200);
    let picks: std::collections::BTreeSet<Vec<usize>> =
        (0..50).map(|seed| rft::select(&rollouts, &RftStrategy::noise(DEFAULT_NOISE), seed).unwrap()).collect();
    assert_eq!(picks.len(), 50);
    assert!(picks.iter().all(|p| p.len() == 210));
}

/// Noise is uniform over the incorrect rollouts: 1 of 10 picked under 4000 seeds, each expected
/// 400 times (sd ≈ 19); the bounds are ±6 sd, so a correct sampler fails with probability < 1e-8.
#[test]
fn noise_is_uniform_over_incorrect() {
    let rollouts = with_wrong(20, 10);
    let mut hits = [0usize; 10];
    for seed in 0..4000 {
        let got = rft::select(&rollouts, &RftStrategy::noise(DEFAULT_NOISE), seed).unwrap();
        assert_eq!(got.len(), 21);
        hits[got[20] - 20] += 1;
    }
    assert!(hits.iter().all(|&h| (286..=514).contains(&h)), "{hits:?}");
}

#[test]
fn named_strategies() {
    assert_eq!(RftStrategy::baseline(), RftStrategy::BASELINE);
    assert_eq!(RftStrategy::noise(0.05), RftStrategy { top: None, noise: 0.05 });
    assert_eq!(RftStrategy::high_entropy(0.3), RftStrategy { top: Some((RankBy::Entropy, 0.3)), noise: 0.0 });
    assert_eq!(RftStrategy::high_rbf(0.3), RftStrategy { top: Some((RankBy::Branch, 0.3)), noise: 0.0 });
    assert_eq!(RftStrategy::noise_high_rbf(0.05, 0.3), RftStrategy { top: Some((RankBy::Branch, 0.3)), noise: 0.05 });
    assert_eq!(DEFAULT_NOISE, 0.05);
    RftStrategy::noise_high_rbf(DEFAULT_NOISE, DEFAULT_TOP_FRACTION).validate().unwrap();

    // 4 correct (entropy 0..3, branch 0..−3) and 6 incorrect: the top half by entropy is {2, 3},
    // by branch {0, 1}; noise 0.5 of 2 kept adds one incorrect rollout.
    let rollouts = with_wrong(4, 6);
    assert_eq!(rft::select(&rollouts, &RftStrategy::high_entropy(0.5), 1).unwrap(), vec![2, 3]);
    assert_eq!(rft::select(&rollouts, &RftStrategy::high_rbf(0.5), 1).unwrap(), vec![0, 1]);
    let got = rft::select(&rollouts, &RftStrategy::noise_high_rbf(0.5, 0.5), 1).unwrap();
    assert_eq!((&got[..2], got.len()), (&[0, 1][..], 3));
    assert!(got[2] >= 4);
    assert_eq!(got, rft::rft_select(&rollouts, &RftStrategy::noise_high_rbf(0.5, 0.5), 1).unwrap());
}

#[test]
fn invalid_fractions_are_rejected() {
    let rollouts = with_wrong(3, 3);
    for f in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        for s in [RftStrategy::high_entropy(f), RftStrategy::high_rbf(f), RftStrategy::noise_high_rbf(0.05, f)] {
            let got = rft::select(&rollouts, &s, 0);
            assert!(matches!(got, Err(Error::InvalidConfig { name: "top fraction", .. })), "{f}: {got:?}");
        }
    }
    for noise in [-0.1, 1.5, f64::NAN] {
        for s in [RftStrategy::noise(noise), RftStrategy::noise_high_rbf(noise, 0.5)] {
            let got = rft::select(&rollouts, &s, 0);
            assert!(matches!(got, Err(Error::InvalidConfig { name: "noise", .. })), "{noise}: {got:?}");
        }
    }
}
