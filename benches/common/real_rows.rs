//! The real rows of the CPU token-statistics benchmark: N = 256 rows of SmolLM2-135M-Instruct
//! logits (V = 49152), the first 256 response tokens of the dump
//! `rlvr example --model smollm2 --batch 16 --seq-len 32 --seed 0 --dtype f32` (one-digit
//! additions, 4 samples per prompt, temperature 1), sampled once through `lm::dump` and cached at
//! `target/bench-data/smollm2-real-rows.safetensors` (an `[N, V]` dump `rlvr stats` reads).

use std::path::PathBuf;

use candle_core::Device;
use rlvr_kernels::lm::dump::{real_rows, DumpSettings, RealRows};
use rlvr_kernels::lm::{self, gguf};
use rlvr_kernels::DType;

/// Rows of the real set.
pub const N: usize = 256;

/// Where the rows are cached, under the crate's `target/`.
pub fn cache_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/smollm2-real-rows.safetensors")
}

/// The rollouts the rows come from (`rlvr example --model smollm2 --batch 16 --seq-len 32 --seed 0`).
pub fn settings() -> DumpSettings {
    DumpSettings { responses: 16, max_new: 32, seed: 0, ..Default::default() }
}

/// The cached rows, sampled and cached first when missing; `None` (with one line saying so)
/// when they are not cached and the model has not been fetched.
pub fn load() -> Option<RealRows> {
    let path = cache_path();
    if path.is_file() {
        let mut rows = RealRows::read(&path).unwrap_or_else(|e| panic!("{e}; delete the cache to sample it again"));
        if rows.rows() >= N {
            rows.truncate(N);
            return Some(rows);
        }
    }
    let Ok(model) = gguf::resolve("smollm2") else {
        println!(
            "real-row benchmarks skipped: SmolLM2-135M-Instruct not fetched (bash scripts/fetch-model.sh, or set RLVR_MODEL_DIR)"
        );
        return None;
    };
    println!("sampling {N} real rows from {} into {} (once)", model.display(), path.display());
    let (llama, tok) = lm::load(&model, &Device::Cpu).expect("load the model");
    let rows = real_rows(&llama, &tok, &settings(), N, &mut |_| {}).expect("sample the real rows");
    rows.write(&path, DType::F32, &settings().describe()).expect("write the cache");
    Some(rows)
}
