//! RFT data selection (DESIGN.md §4): baseline, noise injection, high-entropy, high-RBF.

pub use crate::reference::{rft_select, RankBy, RftStrategy, RolloutRecord};
