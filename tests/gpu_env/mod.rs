//! The CUDA device of the GPU tests: one stream shared by every test of a binary, and the skip
//! messages of a run without a device (scripts/gpu-check.sh fails a GPU host's run whose logs
//! say "skipping").
//!
//! The device may be the kernel simulator (scripts/kernel-sim.sh: the kernels' own source built
//! for the host and run on the CPU behind a simulated driver). The tests are the same there; only
//! the sizes of a few fixed cases shrink to what a CPU can afford ([`sized`]), and what the
//! simulator does not have (candle's own CUDA backend) skips with a message saying so.

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

/// True when the device is the kernel simulator (sim/driver.cpp names itself so).
pub fn simulated() -> bool {
    static SIM: OnceLock<bool> = OnceLock::new();
    *SIM.get_or_init(|| {
        gpu().ok().and_then(|s| s.context().name().ok()).is_some_and(|n| n.starts_with("rlvr kernel simulator"))
    })
}

/// `on_gpu` on a GPU, `on_sim` on the kernel simulator: the size of a fixed case (rows, runs)
/// where the GPU's size would take the simulator minutes. Each use says what the smaller size
/// still covers.
pub fn sized<T>(on_gpu: T, on_sim: T) -> T {
    if simulated() {
        on_sim
    } else {
        on_gpu
    }
}

/// candle's CUDA device, or `None` after printing why the test is skipped: no device, or the
/// kernel simulator, which runs this crate's kernels but not candle's own CUDA backend (cuBLAS,
/// cuRAND, candle's PTX kernels).
pub fn candle_or_skip(test: &str) -> Option<candle_core::Device> {
    gpu_or_skip(test)?;
    if simulated() {
        println!("skipping {test}: not simulated (candle's own CUDA backend does not run on the kernel simulator)");
        return None;
    }
    Some(candle_core::Device::new_cuda(0).expect("candle opens the CUDA device the tests run on"))
}

/// Says which device runs the tests, or that every CUDA test skips and why: the one message a
/// CPU-only run always prints.
pub fn say_device() {
    match gpu() {
        Ok(s) => println!("CUDA device: {:?}", s.context().name()),
        Err(why) => println!("skipping all CUDA tests: no CUDA device ({why})"),
    }
}
