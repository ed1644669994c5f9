//! Shared proptest generators for logits rows: peaked (near one-hot), flat, heavy-tailed
//! (Zipf-like), full of ties, LM-like (Gaussian noise plus a few spikes), with optional −inf
//! entries; any V from 1 to 2¹⁸; temperatures in [0.3, 3]; f32/bf16/f16 by rounding.
//!
//! A case is a small [`LogitsSpec`] (kind, shape, seed, a few parameters) from which the values
//! are synthesised with a seeded RNG: proptest shrinks the spec (smaller V, fewer rows, simpler
//! kind) instead of a 262144-element vector, and generation stays cheap.
//!
//! Range of [`logits_spec`]: |z| ≤ ~60 and T ∈ [0.3, 3], so |x| = |z/T| ≤ ~200. That covers real LM logits (O(10))
//! with margin, while f32 evaluation stays meaningful: the rounding of x − m is ≤ 3·2⁻²⁴·|x − m|
//! ≈ 4e−5 absolute at worst, and tolerances grow with |x − m| (see the tests). Much larger |z/T|
//! would only test f32 resolution, not the kernels — except for the top-p count, whose algorithm
//! must not depend on where the row sits: [`shifted_spec`] with [`low_temperature`] takes |z| to
//! ~1000 and T to 0.1 for the shift-invariance properties, and [`review_row`] is the one row that
//! showed it did.

#![allow(dead_code)] // each test binary uses its own subset

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rlvr_kernels::Element;

/// Proptest settings: 1000 cases unless `PROPTEST_CASES` says otherwise.
pub fn config() -> ProptestConfig {
    ProptestConfig::with_cases(cases(1000))
}

/// `default` cases unless `PROPTEST_CASES` overrides it (for expensive properties that run
/// fewer cases by default, e.g. the candle composition).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The shape of a row's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// One spike 8..30 above noise of std 0.1..2: near one-hot.
    Peaked,
    /// Uniform in [−a, a], a ∈ [0, 0.5] (a = 0: every logit tied).
    Flat,
    /// z = −s·ln(rank) for a random permutation of ranks, s ∈ [0.6, 1.6]: p ∝ rank^−s.
    Zipf,
    /// 1..8 distinct values, multiples of 1/4 in [−5, 5]: ties everywhere, also at the crossing.
    Ties,
    /// Gaussian noise of std 1..3 plus 1..8 spikes 3σ..3σ+12 above the mean.
    LmLike,
}

/// One generated batch of logits: `rows` rows of `vocab` values.
#[derive(Debug, Clone)]
pub struct LogitsSpec {
    /// Distribution shape.
    pub kind: RowKind,
    /// Rows N.
    pub rows: usize,
    /// Vocabulary V ≥ 1.
    pub vocab: usize,
    /// Seed of the values.
    pub seed: u64,
    /// Common offset added to every logit (tests that x − m loses nothing to it).
    pub offset: f32,
    /// Fraction of entries set to −inf (at least one finite entry per row is kept).
    pub neg_inf: f64,
}

/// V: mostly ≤ 4096, a few percent up to 2¹⁸ (keeps the f64 sort-based reference affordable),
/// and tiny V (1..8) often enough to hit the edge cases.
pub fn vocab() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..=8,
        80 => 9usize..=4096,
        9 => 4097usize..=65536,
        3 => 65537usize..=262_144,
    ]
}

/// A row kind, uniformly.
pub fn row_kind() -> impl Strategy<Value = RowKind> {
    prop_oneof![
        Just(RowKind::Peaked),
        Just(RowKind::Flat),
        Just(RowKind::Zipf),
        Just(RowKind::Ties),
        Just(RowKind::LmLike),
    ]
}

/// A batch: 1..=3 rows (1 row when V > 65536), offset in [−20, 20], −inf entries in a quarter of
/// the cases.
pub fn logits_spec() -> impl Strategy<Value = LogitsSpec> {
    (row_kind(), vocab(), 1usize..=3, any::<u64>(), -20.0f32..20.0, prop_oneof![3 => Just(0.0), 1 => 0.0f64..0.9])
        .prop_map(|(kind, vocab, rows, seed, offset, neg_inf)| LogitsSpec {
            kind,
            rows: if vocab > 65536 { 1 } else { rows },
            vocab,
            seed,
            offset,
            neg_inf,
        })
}

/// Temperatures T ∈ [0.3, 3], with T = 1 a third of the time.
pub fn temperature() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(1.0f32), 2 => 0.3f32..3.0]
}

/// Top-p: none, the paper's 0.95, or any value in [0.05, 0.999].
pub fn top_p() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(0.95f32)), 2 => (0.05f32..0.999).prop_map(Some)]
}

/// Shifts c of the shift-invariance properties: small ones and |c| up to 1000, where |z/T| runs to
/// ~10^4 at the smallest temperatures (a top-p count must not depend on where the row sits).
pub fn shift() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => -20.0f32..20.0,
        3 => -1000.0f32..1000.0,
        1 => prop_oneof![Just(-1000.0f32), Just(-250.0), Just(64.0), Just(128.0), Just(500.0), Just(1000.0)],
    ]
}

/// Temperatures down to 0.1, for the shift-invariance properties.
pub fn low_temperature() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.1f32), 1 => Just(0.5), 3 => 0.1f32..3.0]
}

/// Top-p always on: the paper's 0.95 or any value in [0.05, 0.999].
pub fn top_p_on() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.95f32), 2 => 0.05f32..0.999]
}

/// A batch of [`logits_spec`] shifted by c ([`shift`]) instead of its small offset.
pub fn shifted_spec() -> impl Strategy<Value = LogitsSpec> {
    (logits_spec(), shift()).prop_map(|(s, offset)| LogitsSpec { offset, ..s })
}

/// The row of the top-p review (issue 12): `vocab` logits from N(58, 1) with five of them at 64.
/// At T = 0.5 the coarse bucket of the max spans [64, 80) while every logit sits below 64, the
/// case where a mass measured from the bucket's upper edge lost every bit (k = 2312 instead of
/// ≈ 39360 at V = 151936).
pub fn review_row(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut row: Vec<f32> = (0..vocab).map(|_| 58.0 + normal(&mut rng)).collect();
    for _ in 0..5 {
        row[rng.random_range(0..vocab)] = 64.0;
    }
    row
}

/// A standard normal sample (Box–Muller; `rand_distr` is not a dependency).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl LogitsSpec {
    /// The `rows × vocab` logits as f32 (row-major), deterministic in the spec.
    pub fn generate(&self) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = Vec::with_capacity(self.rows * self.vocab);
        for _ in 0..self.rows {
            let mut row = self.row(&mut rng);
            if self.neg_inf > 0.0 {
                for v in row.iter_mut() {
                    if rng.random_bool(self.neg_inf) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                if row.iter().all(|v| *v == f32::NEG_INFINITY) {
                    row[rng.random_range(0..self.vocab)] = self.offset;
                }
            }
            out.extend(row);
        }
        out
    }

    fn row(&self, rng: &mut StdRng) -> Vec<f32> {
        let v = self.vocab;
        let mut row: Vec<f32> = match self.kind {
            RowKind::Peaked => {
                let sigma = rng.random_range(0.1f32..2.0);
                let mut r: Vec<f32> = (0..v).map(|_| sigma * normal(rng)).collect();
                r[rng.random_range(0..v)] = rng.random_range(8.0f32..30.0);
                r
            }
            RowKind::Flat => {
                let a = if rng.random_bool(0.2) { 0.0 } else { rng.random_range(0.0f32..0.5) };
                (0..v).map(|_| a * rng.random_range(-1.0f32..1.0)).collect()
            }
            RowKind::Zipf => {
                let s = rng.random_range(0.6f32..1.6);
                let mut ranks: Vec<usize> = (1..=v).collect();
                for i in (1..v).rev() {
                    ranks.swap(i, rng.random_range(0..=i));
                }
                ranks.iter().map(|&k| -s * (k as f32).ln()).collect()
            }
            RowKind::Ties => {
                let levels: Vec<f32> =
                    (0..rng.random_range(1..=8)).map(|_| rng.random_range(-20i32..=20) as f32 * 0.25).collect();
                (0..v).map(|_| levels[rng.random_range(0..levels.len())]).collect()
            }
            RowKind::LmLike => {
                let sigma = rng.random_range(1.0f32..3.0);
                let mut r: Vec<f32> = (0..v).map(|_| sigma * normal(rng)).collect();
                for _ in 0..rng.random_range(1..=8) {
                    r[rng.random_range(0..v)] = 3.0 * sigma + rng.random_range(0.0f32..12.0);
                }
                r
            }
        };
        row.iter_mut().for_each(|x| *x += self.offset);
        row
    }

    /// One valid target per row (it may point at a −inf logit: logp = −inf then).
    pub fn targets(&self) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x9E37_79B9_7F4A_7C15);
        (0..self.rows).map(|_| rng.random_range(0..self.vocab) as u32).collect()
    }
}

/// `values` rounded to the dtype E, and exactly those rounded values as f64 (what the reference
/// must see).
pub fn round_to<E: Element>(values: &[f32]) -> (Vec<E>, Vec<f64>) {
    let e: Vec<E> = values.iter().map(|&v| E::from_f32(v)).collect();
    let f = e.iter().map(|v| v.to_f32() as f64).collect();
    (e, f)
}
