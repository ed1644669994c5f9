//! Evaluation and data selection: Pass@k, k-rollout unsolvable sets and their overlaps, and
//! RFT data selection. Exact and simple.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// Unbiased Pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k), by exact integer
/// binomials for n ≤ 120 and a product of ratios beyond.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Result<f64> {
    if c > n || k == 0 || k > n {
        return Err(Error::InvalidPassAtK { n, c, k });
    }
    if n - c < k {
        return Ok(1.0);
    }
    if n <= 120 {
        return Ok(1.0 - binomial(n - c, k) as f64 / binomial(n, k) as f64);
    }
    let ratio: f64 = (0..k).map(|i| (n - c - i) as f64 / (n - i) as f64).product();
    Ok(1.0 - ratio)
}

/// C(n, k) exactly (n ≤ 120 keeps every intermediate below 2^128).
fn binomial(n: usize, k: usize) -> u128 {
    let k = k.min(n - k);
    // c · (n − i) / (i + 1) stays an integer at every step: it is C(n, i + 1).
    (0..k).fold(1u128, |c, i| c * (n - i) as u128 / (i as u128 + 1))
}

/// The k-rollout unsolvable set: problems (indices) with no correct answer among their first
/// `k` rollouts. Every problem needs at least `k` rollouts.
pub fn unsolvable(correct: &[Vec<bool>], k: usize) -> Result<BTreeSet<usize>> {
    if k == 0 {
        return Err(Error::InvalidConfig { name: "k", value: "0".into(), why: "must be >= 1" });
    }
    let mut set = BTreeSet::new();
    for (i, rollouts) in correct.iter().enumerate() {
        if rollouts.len() < k {
            return Err(Error::InvalidPassAtK { n: rollouts.len(), c: 0, k });
        }
        if !rollouts[..k].iter().any(|&c| c) {
            set.insert(i);
        }
    }
    Ok(set)
}

/// How two unsolvable sets overlap (the paper's sets are not nested).
#[derive(Debug, Clone, PartialEq)]
pub struct SetOverlap {
    /// A ∩ B.
    pub both: BTreeSet<usize>,
    /// A ∖ B.
    pub only_a: BTreeSet<usize>,
    /// B ∖ A.
    pub only_b: BTreeSet<usize>,
    /// |A ∩ B| / |A ∪ B| (1 for two empty sets).
    pub jaccard: f64,
}

/// Intersection, differences and Jaccard index of two sets.
pub fn overlap(a: &BTreeSet<usize>, b: &BTreeSet<usize>) -> SetOverlap {
    let both: BTreeSet<usize> = a.intersection(b).copied().collect();
    let union = a.union(b).count();
    SetOverlap {
        jaccard: if union == 0 { 1.0 } else { both.len() as f64 / union as f64 },
        only_a: a.difference(b).copied().collect(),
        only_b: b.difference(a).copied().collect(),
        both,
    }
}

/// One rollout as RFT selection sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutRecord {
    /// The problem it answers.
    pub problem: usize,
    /// Whether the verifier accepted it.
    pub correct: bool,
    /// Mean token entropy over the response.
    pub mean_entropy: f64,
    /// Mean branch count (Rollout Branching Factor) over the response.
    pub mean_branch: f64,
}

/// What correct responses are ranked by when only a top fraction is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    /// Mean token entropy.
    Entropy,
    /// Mean branch count.
    Branch,
}

/// An RFT data-selection strategy (DESIGN.md §4); the fields combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RftStrategy {
    /// Keep only the top `fraction` ∈ (0, 1] of correct responses by this mean
    /// (`ceil(fraction · #correct)` of them, ties broken by lower index); `None` keeps all.
    pub top: Option<(RankBy, f64)>,
    /// Add `round(noise · #kept)` incorrect responses, drawn uniformly without replacement
    /// (seeded), at most all of them; 0 = none.
    pub noise: f64,
}

impl RftStrategy {
    /// All correct responses.
    pub const BASELINE: RftStrategy = RftStrategy { top: None, noise: 0.0 };

    /// Checks the fractions.
    pub fn validate(&self) -> Result<()> {
        if let Some((_, f)) = self.top {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::InvalidConfig {
                    name: "top fraction",
                    value: f.to_string(),
                    why: "must be in (0, 1]",
                });
            }
        }
        if !(0.0..=1.0).contains(&self.noise) {
            return Err(Error::InvalidConfig {
                name: "noise",
                value: self.noise.to_string(),
                why: "must be in [0, 1]",
            });
        }
        Ok(())
    }
}

/// SplitMix64: a tiny, fully specified PRNG, so a seed selects the same data on every platform
/// and every version of this crate.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Indices (ascending) of the rollouts `strategy` selects for fine-tuning.
pub fn rft_select(rollouts: &[RolloutRecord], strategy: &RftStrategy, seed: u64) -> Result<Vec<usize>> {
    strategy.validate()?;
    let mut kept: Vec<usize> = (0..rollouts.len()).filter(|&i| rollouts[i].correct).collect();
    if let Some((by, fraction)) = strategy.top {
        let key = |i: usize| match by {
            RankBy::Entropy => rollouts[i].mean_entropy,
            RankBy::Branch => rollouts[i].mean_branch,
        };
        kept.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        kept.truncate((fraction * kept.len() as f64).ceil() as usize);
    }
    let mut wrong: Vec<usize> = (0..rollouts.len()).filter(|&i| !rollouts[i].correct).collect();
    let n_noise = ((strategy.noise * kept.len() as f64).round() as usize).min(wrong.len());
    let mut rng = SplitMix64(seed);
    for i in 0..n_noise {
        // Partial Fisher–Yates: the first n_noise entries become a uniform sample.
        let j = i + rng.below((wrong.len() - i) as u64) as usize;
        wrong.swap(i, j);
        kept.push(wrong[i]);
    }
    kept.sort_unstable();
    Ok(kept)
}
