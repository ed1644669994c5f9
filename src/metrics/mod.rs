//! Evaluation metrics (DESIGN.md §4) and the per-token aggregates the training loop reports:
//!
//! - [`pass_at_k`], [`pass_at_k_curve`]: unbiased Pass@k from n samples with c correct;
//! - [`unsolvable`], [`overlap`], [`SetOverlap`]: k-rollout unsolvable sets and how two models'
//!   sets overlap (they are not nested, so compare by intersections, differences, Jaccard);
//! - [`entropy_by_position`], [`masked_mean`], [`sequence_means`], [`mean_by_correctness`]:
//!   token entropy (or branch count) by relative position, over masked tokens, per sequence, and
//!   split by correct vs incorrect responses.
//!
//! All sums are f64 in index order, so results do not depend on the thread count.

mod pass_at_k;
mod tokens;

pub use crate::reference::{overlap, unsolvable, SetOverlap};
pub use pass_at_k::{pass_at_k, pass_at_k_curve};
pub use tokens::{entropy_by_position, masked_mean, mean_by_correctness, sequence_means};
