//! Float64, obviously-correct implementations of every formula of DESIGN.md §4: **the spec in
//! code**. Every fast path (`cpu::`, `cuda::`) is tested against these functions.
//!
//! Nothing here is fast: rows are copied, sorted and summed in the plainest way.

mod eval;
mod kept;
mod loss;
mod sequence;
mod token;

pub use eval::{
    overlap, pass_at_k, rft_select, unsolvable, RankBy, RftStrategy, RolloutRecord, SetOverlap, SplitMix64,
};
pub use kept::{kept_band, kept_from_ids, kept_set, kept_stats, kept_threshold, kept_token_stats, kept_top, KeptRow};
pub use loss::{grpo_grad, grpo_loss, kl_term, token_loss, GrpoReference, TokenLoss};
pub use sequence::{
    aggregation_weights, grpo_advantages, log_ppl, position_bonus, ppl_factor, ppl_weight, quantile, shape_advantages,
    sigmoid, token_advantages,
};
pub use token::{branch_band, branch_count, row_stats, softmax, token_stats, RowStats};
