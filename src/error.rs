//! The crate's one error type. Every variant names the bad input and where it is.

/// Everything that can go wrong in `rlvr_kernels`.
///
/// Indices are 0-based: `row`/`token` index the flattened `[N, V]` view of the logits
/// (N = B·T), `sequence` indexes the `[B, T]` view, `group` indexes GRPO groups.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The vocabulary size V is 0: there is no distribution to compute.
    #[error("vocabulary size V = 0: logits must have at least one column")]
    EmptyVocab,

    /// An input's length or shape does not match what the other inputs imply.
    #[error("shape mismatch for `{name}`: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which input (e.g. `"logits"`, `"targets"`, `"mask"`).
        name: &'static str,
        /// What was expected, in words (e.g. `"4096 elements (N)"`).
        expected: String,
        /// What was given.
        got: String,
    },

    /// An input has the wrong element type.
    #[error("dtype mismatch for `{name}`: expected {expected}, got {got}")]
    DTypeMismatch {
        /// Which input.
        name: &'static str,
        /// Accepted dtypes, in words.
        expected: String,
        /// The dtype given.
        got: String,
    },

    /// A per-token input tensor is on another device than the logits.
    #[error("`{name}` is on {got}, but the logits are on {expected}")]
    DeviceMismatch {
        /// Which input.
        name: &'static str,
        /// The logits' device.
        expected: String,
        /// The input's device.
        got: String,
    },

    /// An input tensor is not contiguous in memory (the kernels need row-major rows).
    #[error("`{name}` is not contiguous; call `.contiguous()` first")]
    NonContiguous {
        /// Which input.
        name: &'static str,
    },

    /// A logit is NaN or +inf (−inf is a valid, masked-out logit).
    #[error("non-finite logit (NaN or +inf) in row {row}")]
    NonFiniteLogits {
        /// The first bad row.
        row: usize,
    },

    /// Every logit of a row is −inf: no token has positive probability.
    #[error("row {row} has every logit = -inf: the softmax is undefined")]
    AllNegInfRow {
        /// The first such row.
        row: usize,
    },

    /// A per-token input (old/ref log-prob, advantage, reward) is NaN or infinite.
    #[error("non-finite value {value} in `{name}` at index {index}")]
    NonFiniteInput {
        /// Which input.
        name: &'static str,
        /// Index of the first bad value.
        index: usize,
        /// The value found.
        value: f64,
    },

    /// A sampled token id is not below the vocabulary size.
    #[error("target {target} at token {token} is out of range for vocabulary size {vocab}")]
    TargetOutOfRange {
        /// Token (row) index.
        token: usize,
        /// The bad id.
        target: u32,
        /// V.
        vocab: usize,
    },

    /// A mask value other than 0 or 1.
    #[error("mask value {value} at token {token} is not 0 or 1")]
    InvalidMask {
        /// Token index.
        token: usize,
        /// The value found.
        value: f64,
    },

    /// A rollout engine's kept mask (CSR `token_ids` + `offsets`) is malformed.
    #[error("kept mask, row {row}: {why}")]
    InvalidKeptMask {
        /// The first bad row (for offsets that do not start at 0 or end at the ids' length: the
        /// row whose boundary is wrong).
        row: usize,
        /// What is wrong (an id out of range, a repeated id, decreasing offsets, an empty row).
        why: String,
    },

    /// top-p must lie in the open interval (0, 1).
    #[error("top_p = {0} is outside (0, 1)")]
    InvalidTopP(f64),

    /// The sampling temperature must be finite and > 0.
    #[error("temperature = {0} must be finite and > 0")]
    InvalidTemperature(f64),

    /// GRPO groups are G consecutive sequences, so B must be a multiple of G.
    #[error("batch of {batch} sequences is not divisible by group size {group}")]
    BatchNotDivisible {
        /// B.
        batch: usize,
        /// G.
        group: usize,
    },

    /// Group size G = 0.
    #[error("group size must be at least 1, got 0")]
    ZeroGroupSize,

    /// A configuration value is out of its valid range.
    #[error("invalid setting `{name}` = {value}: {why}")]
    InvalidConfig {
        /// The setting (e.g. `"clip_low"`).
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// The rule it breaks.
        why: &'static str,
    },

    /// Pass@k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    #[error("pass@k needs c <= n and 1 <= k <= n, got n = {n}, c = {c}, k = {k}")]
    InvalidPassAtK {
        /// Samples.
        n: usize,
        /// Correct samples.
        c: usize,
        /// k.
        k: usize,
    },

    /// A device (CUDA) failure: launch, copy, module load or out of memory.
    #[error("CUDA error in {op}: {msg}")]
    Cuda {
        /// What was being done.
        op: &'static str,
        /// The driver's message.
        msg: String,
    },

    /// An error from candle (tensor ops, I/O through candle).
    #[error("candle: {0}")]
    Candle(String),

    /// File or format errors (safetensors, CSV).
    #[error("{context}: {msg}")]
    Io {
        /// What was being read or written (usually a path).
        context: String,
        /// What went wrong.
        msg: String,
    },

    /// A language-model file (GGUF) is missing, truncated, or not a model this crate can run.
    #[error("model {path}: {msg}")]
    Model {
        /// The file.
        path: String,
        /// What is wrong, and what to do about it (e.g. the command that fetches the model).
        msg: String,
    },

    /// A prompt (with what must be generated after it) does not fit the model's context.
    #[error("prompt {index} has {len} tokens; with {new} new tokens it exceeds the context of {context}")]
    PromptTooLong {
        /// Which prompt.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// Tokens to generate after it.
        new: usize,
        /// The model's context length.
        context: usize,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e.to_string())
    }
}
