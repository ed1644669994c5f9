//! Evaluation metrics: Pass@k, k-rollout unsolvable sets and overlaps.

pub use crate::reference::{overlap, unsolvable, SetOverlap};
