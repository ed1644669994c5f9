//! Real language models on the CPU (and on CUDA with the `cuda` feature): a llama-architecture
//! model read from a GGUF file (SmolLM2-135M-Instruct, fetched by `scripts/fetch-model.sh`), its
//! byte-level BPE tokenizer from the GGUF's own vocabulary and merges, KV-cached batched sampling,
//! and the exploration analysis of arXiv 2508.07534 run on it with the fused ops.

pub mod gguf;
pub mod tiny;
pub mod tokenizer;
