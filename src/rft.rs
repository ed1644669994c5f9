//! RFT data selection (DESIGN.md §4): which rollouts a rejection-sampling fine-tuning step trains
//! on. Strategies, from the paper:
//!
//! - **baseline**: every correct response;
//! - **high-entropy** / **high-RBF**: only the top fraction of correct responses by mean token
//!   entropy / mean Rollout Branching Factor (ties to the lower index);
//! - **noise**: add `round(noise · #kept)` incorrect responses, drawn uniformly (seeded,
//!   platform-independent SplitMix64), at most all of them;
//! - combinations, e.g. [`RftStrategy::noise_high_rbf`] (the paper's best).
//!
//! [`select`] is [`crate::reference::rft_select`] itself: selection is a sort of per-response
//! means, O(n log n) in the number of rollouts and negligible next to generating them, so there is
//! no fast twin to keep in step with the spec.

pub use crate::reference::{rft_select, RankBy, RftStrategy, RolloutRecord};

use crate::error::Result;

/// Default fraction of incorrect responses added by noise injection (DESIGN.md §4: 5%).
pub const DEFAULT_NOISE: f64 = 0.05;

/// Default top fraction kept by the high-entropy / high-RBF strategies: the upper half of the
/// correct responses. Our choice for the command line and examples, not a number from the paper;
/// pass another fraction to the constructors.
pub const DEFAULT_TOP_FRACTION: f64 = 0.5;

/// Named constructors. They do not validate: [`select`] (through [`RftStrategy::validate`])
/// rejects a top fraction outside (0, 1] or a noise fraction outside [0, 1].
impl RftStrategy {
    /// All correct responses, no noise.
    pub const fn baseline() -> Self {
        RftStrategy { top: None, noise: 0.0 }
    }

    /// All correct responses plus `noise · #correct` (rounded) incorrect ones; see
    /// [`DEFAULT_NOISE`].
    pub const fn noise(noise: f64) -> Self {
        RftStrategy { top: None, noise }
    }

    /// The top `fraction` (⌈fraction · #correct⌉) of correct responses by mean token entropy;
    /// see [`DEFAULT_TOP_FRACTION`].
    pub const fn high_entropy(fraction: f64) -> Self {
        RftStrategy { top: Some((RankBy::Entropy, fraction)), noise: 0.0 }
    }

    /// The top `fraction` of correct responses by mean Rollout Branching Factor.
    pub const fn high_rbf(fraction: f64) -> Self {
        RftStrategy { top: Some((RankBy::Branch, fraction)), noise: 0.0 }
    }

    /// [`high_rbf`](Self::high_rbf)`(fraction)` plus `round(noise · #kept)` incorrect responses.
    pub const fn noise_high_rbf(noise: f64, fraction: f64) -> Self {
        RftStrategy { top: Some((RankBy::Branch, fraction)), noise }
    }
}

/// Indices (ascending) of the rollouts `strategy` selects, with noise drawn from `seed` (the same
/// seed selects the same rollouts on every platform). Errors: an invalid fraction
/// ([`crate::Error::InvalidConfig`]).
pub fn select(rollouts: &[RolloutRecord], strategy: &RftStrategy, seed: u64) -> Result<Vec<usize>> {
    rft_select(rollouts, strategy, seed)
}
