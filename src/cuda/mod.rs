//! Hand-written CUDA kernels (`kernels/*.cu`, compiled by `build.rs` to one fatbin per file: SASS
//! for sm_90 and sm_100, PTX as the fallback) behind safe functions over cudarc device memory
//! (feature `cuda`).
//!
//! Every function takes the caller's `&Arc<CudaStream>` and launches there, so with candle pass
//! `candle_core::CudaDevice::cuda_stream()` and the kernels run in order with candle's work.
//! Inputs are [`CudaView`]s (`slice.as_view()`, or `slice.slice(a..b)`), outputs are new or
//! caller-given [`CudaSlice`]s. Shapes are checked before any launch; every driver error becomes
//! [`crate::Error::Cuda`] naming the operation (out of memory says so). Kernel modules are loaded
//! once per CUDA context. `unsafe` is confined to the kernel launches, each with a `// SAFETY:`
//! line that matches the argument list to the kernel signature.
//!
//! - [`token_stats`] / [`token_stats_into`] / [`token_stats_host`]: lse, entropy, target
//!   log-prob and the exact top-p branch count from one read of each row; with a sampling filter
//!   (or [`token_stats_masked`] and an engine's kept mask) the statistics over the kept set.
//! - [`grpo_forward`] / [`grpo_backward`] / [`grpo_forward_backward`] (and `_into`, `_in_place`,
//!   `_host` variants): the fused shaped-GRPO loss, forward and backward to dlogits.
//! - [`log_ppl`], [`ppl_weight`], [`grpo_advantages`], [`shape_advantages`],
//!   [`token_advantages`], [`aggregation_weights`] (and `_host` variants): the O(N) sequence side.
//! - [`plain_read_into`]: the bandwidth reference (a plain read of the same rows).
//! - [`median_ms`], [`bench_token_stats`]: GPU timing with CUDA events.

/// The cudarc that candle-core uses (re-exported so callers name the same types).
pub use candle_core::cuda_backend::cudarc;
pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView};

mod context;
mod grpo;
mod grpo_types;
mod sequence;
mod timing;
mod token_stats;

pub use context::{default_stream, open_stream};
pub use grpo::{
    grpo_backward, grpo_backward_host, grpo_backward_in_place, grpo_backward_into, grpo_forward, grpo_forward_backward,
    grpo_forward_backward_in_place, grpo_forward_backward_into, grpo_forward_host, grpo_forward_into, CudaGrpoForward,
    CudaGrpoInputs, CudaGrpoSaved, GradLoss,
};
pub use sequence::{
    aggregation_weights, aggregation_weights_host, grpo_advantages, grpo_advantages_host, log_ppl, log_ppl_host,
    ppl_weight, ppl_weight_host, shape_advantages, shape_advantages_host, token_advantages, token_advantages_host,
    Check, MAX_GROUP,
};
pub use timing::{bench_token_stats, median_ms, TokenStatsTimes};
pub use token_stats::{
    check_rows, plain_read_into, token_stats, token_stats_host, token_stats_into, token_stats_masked,
    token_stats_masked_host, token_stats_masked_into, CudaKeptMask, KeptBuffers, TokenStatsBuffers, MAX_TOP_P_VOCAB,
    ROW_ALL_NEG_INF, ROW_BAD_TARGET, ROW_NON_FINITE,
};
