//! The CUDA device of the GPU tests: one stream shared by every test of a binary, and the skip
//! messages of a run without a device (scripts/gpu-check.sh fails a GPU host's run whose logs
//! say "skipping").

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, Once, OnceLock};

use rlvr_kernels::cuda::{self, cudarc::driver::CudaStream};

/// The device stream shared by all tests, or why there is none.
pub fn gpu() -> Result<Arc<CudaStream>, String> {
    static GPU: OnceLock<Result<Arc<CudaStream>, String>> = OnceLock::new();
    GPU.get_or_init(|| cuda::open_stream(0).map_err(|e| e.to_string())).clone()
}

/// The stream, or `None` after printing why the test is skipped.
pub fn gpu_or_skip(test: &str) -> Option<Arc<CudaStream>> {
    match gpu() {
        Ok(s) => Some(s),
        Err(why) => {
            println!("skipping {test}: no CUDA device ({why})");
            None
        }
    }
}

/// The stream, or `None` after saying once that the property tests skip.
pub fn gpu_for_property() -> Option<Arc<CudaStream>> {
    static SAID: Once = Once::new();
    let s = gpu().ok();
    if s.is_none() {
        SAID.call_once(|| drop(gpu_or_skip("the property tests")));
    }
    s
}

/// Says which device runs the tests, or that every CUDA test skips and why: the one message a
/// CPU-only run always prints.
pub fn say_device() {
    match gpu() {
        Ok(s) => println!("CUDA device: {:?}", s.context().name()),
        Err(why) => println!("skipping all CUDA tests: no CUDA device ({why})"),
    }
}
