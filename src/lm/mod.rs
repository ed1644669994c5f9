//! Real language models on the CPU (and on CUDA with the `cuda` feature): a llama-architecture
//! model read from a GGUF file (SmolLM2-135M-Instruct, fetched by `scripts/fetch-model.sh`), its
//! byte-level BPE tokenizer from the GGUF's own vocabulary and merges, KV-cached batched sampling,
//! and the exploration analysis of arXiv 2508.07534 run on it with the fused ops.
//!
//! - [`gguf`]: reading GGUF files (metadata, tensors dequantized to f32), clear errors;
//! - [`tokenizer`]: the byte-level BPE tokenizer and the ChatML prompt;
//! - [`llama`]: the model, differentiable for training and KV-cached for sampling;
//! - [`generate`]: batched sampling with per-token statistics from the fused token-stats op;
//! - [`task`]: arithmetic questions with an exact verifier;
//! - [`analyze`]: `rlvr analyze`, the paper's exploration analysis;
//! - [`grpo`]: `rlvr train --model`, GRPO on the real model with the fused ops;
//! - [`tiny`]: a tiny llama GGUF written on the fly, for tests.

pub mod analyze;
pub mod dump;
pub mod generate;
pub mod gguf;
pub mod grpo;
pub mod llama;
pub mod task;
pub mod tiny;
pub mod tokenizer;

use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use gguf::Gguf;
use llama::Llama;
use tokenizer::Tokenizer;

/// Opens a llama GGUF file and reads its model (onto `device`) and its tokenizer; a vocabulary
/// size that differs between the two is an [`Error::Model`].
pub fn load(path: &Path, device: &Device) -> Result<(Llama, Tokenizer)> {
    let mut g = Gguf::open(path)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let model = Llama::from_gguf(&mut g, device)?;
    if tok.vocab_size() != model.config().vocab {
        return Err(Error::Model {
            path: path.display().to_string(),
            msg: format!("the tokenizer has {} tokens but the model {} logits", tok.vocab_size(), model.config().vocab),
        });
    }
    Ok((model, tok))
}
