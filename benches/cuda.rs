//! CUDA token statistics at the reference shape [4096, 151936] (DESIGN.md §6), bf16 and f32, in
//! one run: the plain 16-byte-load read of the same data (the bandwidth reference), the fused
//! statistics without and with the exact top-p count, and the naive composition from candle CUDA
//! ops (`naive::candle_token_stats`: log_softmax, exp, mul, sum, gather; top-p by copying the
//! probabilities to the host and sorting).
//!
//! Data: N(0, σ²) logits drawn on the device (never zeros): σ = 4 is LM-like (a few tokens hold
//! most of the mass, most of the row is pruned by the top-p histogram), σ = 1 is flat (nothing
//! pruned: the worst case). The input (1.2 GB bf16) is far larger than L2, so consecutive calls
//! read device memory. Kernels: median of `RLVR_BENCH_ITERS` (20) CUDA-event-timed calls after 3
//! warm-ups. The naive composition includes host work, so it is timed by the wall clock around a
//! synchronised call, `RLVR_BENCH_NAIVE_RUNS` (1) times after one warm-up without top-p.
//!
//! Then the GRPO loss (benches/grpo/mod.rs): fused forward, forward + backward, the fused
//! forward+backward kernel, against the plain read and the candle composition with autograd,
//! with the peak device memory of each path; its table is printed last.
//!
//! Shape override: `RLVR_BENCH_ROWS`, `RLVR_BENCH_VOCAB`. Without a CUDA device it prints
//! "skipping: ..." and exits 0. The table (printed last) gives ms, bytes of logits per second,
//! speed as a fraction of the plain read, and the speed-up over the candle composition.

mod grpo;

use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::CudaDType;
use candle_core::{DType, Device, Storage, Tensor};
use rlvr_kernels::cuda::cudarc::driver::{CudaStream, DeviceRepr};
use rlvr_kernels::cuda::{self, TokenStatsBuffers};
use rlvr_kernels::{naive, Element, TokenStatsConfig};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One line of the final table.
struct Line {
    kernel: &'static str,
    dtype: &'static str,
    data: &'static str,
    ms: f64,
    /// The plain read's ms on the same data, for the ratio.
    plain_ms: f64,
    /// The matching candle composition's ms, for the speed-up.
    naive_ms: Option<f64>,
}

struct Setup {
    dev: Device,
    stream: Arc<CudaStream>,
    rows: usize,
    vocab: usize,
    iters: usize,
    naive_runs: usize,
}

fn main() -> BenchResult<()> {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            let why = e.to_string();
            println!("skipping: no CUDA device ({})", why.lines().next().unwrap_or(""));
            return Ok(());
        }
    };
    let stream = dev.as_cuda_device()?.cuda_stream();
    let s = Setup {
        dev,
        stream,
        rows: env_usize("RLVR_BENCH_ROWS", 4096),
        vocab: env_usize("RLVR_BENCH_VOCAB", 151_936),
        iters: env_usize("RLVR_BENCH_ITERS", 20),
        naive_runs: env_usize("RLVR_BENCH_NAIVE_RUNS", 1),
    };
    let mut lines = Vec::new();
    for (data, sigma, with_naive) in [("lm σ=4", 4.0, true), ("flat σ=1", 1.0, false)] {
        bench_dtype::<half::bf16>(&s, DType::BF16, "bf16", data, sigma, with_naive, &mut lines)?;
        bench_dtype::<f32>(&s, DType::F32, "f32", data, sigma, with_naive, &mut lines)?;
    }
    let (mut grpo_lines, mut peaks) = (Vec::new(), Vec::new());
    grpo::bench_grpo::<half::bf16>(&s, DType::BF16, "bf16", 4.0, &mut grpo_lines, &mut peaks)?;
    grpo::bench_grpo::<f32>(&s, DType::F32, "f32", 4.0, &mut grpo_lines, &mut peaks)?;
    print_table(&s, &lines);
    grpo::print_grpo(&s, &grpo_lines, &peaks);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_dtype<E: Element + DeviceRepr + CudaDType>(
    s: &Setup,
    dtype: DType,
    dtype_name: &'static str,
    data: &'static str,
    sigma: f64,
    with_naive: bool,
    lines: &mut Vec<Line>,
) -> BenchResult<()> {
    let (n, v) = (s.rows, s.vocab);
    let logits = Tensor::randn(0f32, sigma as f32, (n, v), &s.dev)?.to_dtype(dtype)?;
    let host_targets: Vec<u32> = (0..n as u64).map(|i| ((i * 2_654_435_761) % v as u64) as u32).collect();
    let targets = Tensor::from_slice(&host_targets, n, &s.dev)?;
    let d_targets = s.stream.clone_htod(&host_targets)?;
    let (storage, layout) = logits.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { return Err("logits are not on the CUDA device".into()) };
    let view = cs.as_cuda_slice::<E>()?.slice(layout.start_offset()..layout.start_offset() + n * v);
    let tv = d_targets.as_view();

    let mut plain = s.stream.alloc_zeros::<f32>(n)?;
    let plain_ms = cuda::median_ms(&s.stream, 3, s.iters, |_| cuda::plain_read_into(&s.stream, &view, v, &mut plain))?;
    let fused = |top_p: Option<f32>| -> BenchResult<f64> {
        let cfg = TokenStatsConfig { temperature: 1.0, top_p, check_finite: false };
        let mut out = TokenStatsBuffers::new(&s.stream, n, true, top_p.is_some())?;
        Ok(cuda::median_ms(&s.stream, 3, s.iters, |_| {
            cuda::token_stats_into(&s.stream, &view, v, Some(&tv), &cfg, &mut out)
        })?)
    };
    let fused_ms = fused(None)?;
    let fused_top_p_ms = fused(Some(0.95))?;
    drop(storage);

    let (naive_ms, naive_top_p_ms) = if with_naive {
        let time_naive = |top_p: Option<f32>, runs: usize| -> BenchResult<f64> {
            let cfg = TokenStatsConfig { temperature: 1.0, top_p, check_finite: false };
            let mut ms = Vec::new();
            for _ in 0..runs.max(1) {
                s.dev.synchronize()?;
                let t0 = Instant::now();
                naive::candle_token_stats(&logits, Some(&targets), &cfg)?;
                s.dev.synchronize()?;
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            Ok(ms[ms.len() / 2])
        };
        time_naive(None, 1)?; // warm-up: candle's kernels load on first use
        let no_top_p = time_naive(None, s.naive_runs.max(3))?;
        let with_top_p = time_naive(Some(0.95), s.naive_runs)?;
        let (free, total) = s.stream.context().mem_get_info()?;
        println!(
            "{dtype_name} {data}: device memory in use after the candle composition: {:.2} GiB of {:.2} GiB",
            (total - free) as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        );
        (Some(no_top_p), Some(with_top_p))
    } else {
        (None, None)
    };
    let line = |kernel, ms, naive_ms| Line { kernel, dtype: dtype_name, data, ms, plain_ms, naive_ms };
    lines.push(line("plain read", plain_ms, None));
    lines.push(line("fused stats", fused_ms, naive_ms));
    lines.push(line("fused stats + top-p", fused_top_p_ms, naive_top_p_ms));
    if let (Some(a), Some(b)) = (naive_ms, naive_top_p_ms) {
        lines.push(line("candle composition", a, None));
        lines.push(line("candle + host sort top-p", b, None));
    }
    Ok(())
}

fn print_table(s: &Setup, lines: &[Line]) {
    let dev = s.stream.context().name().unwrap_or_else(|_| "?".into());
    println!("\nCUDA token statistics, [{}, {}], device {dev}, {} timed calls (median)", s.rows, s.vocab, s.iters);
    println!(
        "{:<26} {:<5} {:<9} {:>10} {:>9} {:>10} {:>12}",
        "kernel", "dtype", "data", "ms", "TB/s", "x plain", "vs candle"
    );
    for l in lines {
        let bytes = (s.rows * s.vocab * if l.dtype == "f32" { 4 } else { 2 }) as f64;
        let speedup = l.naive_ms.map_or("-".to_string(), |n| format!("{:.1}x", n / l.ms));
        println!(
            "{:<26} {:<5} {:<9} {:>10.3} {:>9.2} {:>10.2} {:>12}",
            l.kernel,
            l.dtype,
            l.data,
            l.ms,
            bytes / (l.ms * 1e-3) / 1e12,
            l.plain_ms / l.ms,
            speedup
        );
    }
}
