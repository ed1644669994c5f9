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
//! The naive composition runs on the first `RLVR_BENCH_NAIVE_ROWS` (256) rows only: its top-p
//! sorts every row on one host thread, ~5–10 ms per row of 151936, so all 4096 rows of both
//! dtypes would take ~40–70 s. Its "vs candle" speed-up is taken against the fused kernels timed
//! on those same rows (extra lines of the table, with their row count); nothing is scaled.
//!
//! Then the GRPO loss (benches/grpo/mod.rs): fused forward, forward + backward, the fused
//! forward+backward kernel, against the plain read and the candle composition with autograd,
//! with the peak device memory of each path; its table is printed last.
//!
//! Shape override: `RLVR_BENCH_ROWS`, `RLVR_BENCH_VOCAB`. Without a CUDA device it prints
//! "skipping: ..." and exits 0. The table (printed last) gives per line the rows it covers, ms,
//! bytes of logits per second, that rate as a fraction of the plain read's (all rows), and the
//! speed-up over the candle composition on the same rows.

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
    /// Rows timed (all N, or the naive composition's subset).
    rows: usize,
    ms: f64,
    /// The plain read's ms on the same data (all N rows), for the ratio of rates.
    plain_ms: f64,
    /// The matching candle composition's ms on the same rows, for the speed-up.
    naive_ms: Option<f64>,
}

struct Setup {
    dev: Device,
    stream: Arc<CudaStream>,
    rows: usize,
    vocab: usize,
    iters: usize,
    naive_runs: usize,
    /// Rows of the naive token-statistics composition (at most `rows`; 0: not run).
    naive_rows: usize,
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
    let rows = env_usize("RLVR_BENCH_ROWS", 4096);
    let s = Setup {
        dev,
        stream,
        rows,
        vocab: env_usize("RLVR_BENCH_VOCAB", 151_936),
        iters: env_usize("RLVR_BENCH_ITERS", 20),
        naive_runs: env_usize("RLVR_BENCH_NAIVE_RUNS", 1),
        naive_rows: env_usize("RLVR_BENCH_NAIVE_ROWS", 256).min(rows),
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
    let nr = if with_naive { s.naive_rows } else { 0 };
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
    // The fused statistics of the first `rows` rows.
    let fused = |rows: usize, top_p: Option<f32>| -> BenchResult<f64> {
        let cfg = TokenStatsConfig { temperature: 1.0, top_p, check_finite: false, filter: None };
        let mut out = TokenStatsBuffers::new(&s.stream, rows, true, top_p.is_some())?;
        let (z, y) = (view.slice(..rows * v), tv.slice(..rows));
        Ok(cuda::median_ms(&s.stream, 3, s.iters, |_| {
            cuda::token_stats_into(&s.stream, &z, v, Some(&y), &cfg, &mut out)
        })?)
    };
    let fused_ms = fused(n, None)?;
    let fused_top_p_ms = fused(n, Some(0.95))?;
    let fused_subset = if nr > 0 && nr < n { Some((fused(nr, None)?, fused(nr, Some(0.95))?)) } else { None };
    drop(storage);

    let naive = if nr > 0 { Some(time_naive(s, &logits.narrow(0, 0, nr)?, &targets.narrow(0, 0, nr)?)?) } else { None };
    if let Some(m) = &naive {
        println!("{dtype_name} {data}: {}", m.memory);
    }
    let line = |kernel, rows, ms, naive_ms| Line { kernel, dtype: dtype_name, data, rows, ms, plain_ms, naive_ms };
    let at_n = |ms: Option<f64>| ms.filter(|_| nr == n); // a speed-up only on the same rows
    lines.push(line("plain read", n, plain_ms, None));
    lines.push(line("fused stats", n, fused_ms, at_n(naive.as_ref().map(|m| m.ms))));
    lines.push(line("fused stats + top-p", n, fused_top_p_ms, at_n(naive.as_ref().map(|m| m.top_p_ms))));
    if let (Some((a, b)), Some(m)) = (fused_subset, &naive) {
        lines.push(line("fused stats", nr, a, Some(m.ms)));
        lines.push(line("fused stats + top-p", nr, b, Some(m.top_p_ms)));
    }
    if let Some(m) = naive {
        lines.push(line("candle composition", nr, m.ms, None));
        lines.push(line("candle + host sort top-p", nr, m.top_p_ms, None));
    }
    Ok(())
}

/// The naive composition's median wall-clock ms without and with top-p, and the device memory
/// in use after it (a line to print).
struct Naive {
    ms: f64,
    top_p_ms: f64,
    memory: String,
}

/// `naive::candle_token_stats` on `logits` (the bench's row subset), synchronised and timed by
/// the wall clock: one warm-up, then at least 3 runs without top-p and `naive_runs` with it.
fn time_naive(s: &Setup, logits: &Tensor, targets: &Tensor) -> BenchResult<Naive> {
    let time = |top_p: Option<f32>, runs: usize| -> BenchResult<f64> {
        let cfg = TokenStatsConfig { temperature: 1.0, top_p, check_finite: false, filter: None };
        let mut ms = Vec::new();
        for _ in 0..runs.max(1) {
            s.dev.synchronize()?;
            let t0 = Instant::now();
            naive::candle_token_stats(logits, Some(targets), &cfg)?;
            s.dev.synchronize()?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    time(None, 1)?; // warm-up: candle's kernels load on first use
    let ms = time(None, s.naive_runs.max(3))?;
    let top_p_ms = time(Some(0.95), s.naive_runs)?;
    let (free, total) = s.stream.context().mem_get_info()?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let memory = format!(
        "device memory in use after the candle composition ({} rows): {:.2} GiB of {:.2} GiB",
        logits.dim(0)?,
        gib(total - free),
        gib(total)
    );
    Ok(Naive { ms, top_p_ms, memory })
}

fn print_table(s: &Setup, lines: &[Line]) {
    let dev = s.stream.context().name().unwrap_or_else(|_| "?".into());
    println!("\nCUDA token statistics, [{}, {}], device {dev}, {} timed calls (median)", s.rows, s.vocab, s.iters);
    println!(
        "(candle compositions on the first {} rows, RLVR_BENCH_NAIVE_ROWS; \"vs candle\" = their ms / the fused \
         ms on the same rows; \"x plain\" = TB/s / the plain read's TB/s on all {} rows)",
        s.naive_rows, s.rows
    );
    println!(
        "{:<26} {:<5} {:<9} {:>6} {:>10} {:>9} {:>10} {:>12}",
        "kernel", "dtype", "data", "rows", "ms", "TB/s", "x plain", "vs candle"
    );
    for l in lines {
        let tbs =
            |rows: usize, ms: f64| (rows * s.vocab * if l.dtype == "f32" { 4 } else { 2 }) as f64 / (ms * 1e-3) / 1e12;
        let speedup = l.naive_ms.map_or("-".to_string(), |n| format!("{:.1}x", n / l.ms));
        println!(
            "{:<26} {:<5} {:<9} {:>6} {:>10.3} {:>9.2} {:>10.2} {:>12}",
            l.kernel,
            l.dtype,
            l.data,
            l.rows,
            l.ms,
            tbs(l.rows, l.ms),
            tbs(l.rows, l.ms) / tbs(s.rows, l.plain_ms),
            speedup
        );
    }
}
