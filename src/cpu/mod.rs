//! Fast fused CPU implementations over bf16, f16 and f32 logits: f32 arithmetic (wider
//! accumulators where a sum is long), rows in parallel. Same signatures as [`crate::reference`]
//! where the reference has them; every function here is property-tested against it.

mod grpo;
mod hist16;
mod kept;
pub(crate) mod math;
mod sequence;
mod token_stats;
mod top_p;

pub use grpo::{grpo_backward, grpo_backward_in_place, grpo_backward_into, grpo_forward};
pub use sequence::{aggregation_weights, grpo_advantages, log_ppl, ppl_weight, shape_advantages, token_advantages};
pub use token_stats::{token_stats, token_stats_masked};
