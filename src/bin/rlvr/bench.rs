//! `rlvr bench`: a quick timing of the fused token statistics against a plain one-read
//! log-sum-exp (the floor) and the same math composed from candle ops (the naive baseline), on
//! in-memory generated logits. criterion benches (`cargo bench`) are the careful version; this
//! is the one-command look on whatever machine you are on. Rows are generated (LM-like or flat),
//! or real: a chat model's own logits while it samples (`--rows real`, `lm::dump`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use indicatif::ProgressBar;
use rlvr_kernels::lm::dump::{real_rows, DumpSettings};
use rlvr_kernels::lm::{self, gguf};
use rlvr_kernels::{naive, DType, Element, TokenStatsConfig, DEFAULT_TOP_P};

use crate::device::Device;
use crate::error::{CliError, CliResult};
use crate::example::{generate, Generated, RowKind};
use crate::progress;
use crate::table;

/// Arguments of `rlvr bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Logits shape N,V (rows, vocabulary) [default: 256,151936; with `--rows real`: 256 rows of
    /// the model's vocabulary, which a given V must equal].
    #[arg(long, value_parser = parse_shape)]
    pub shape: Option<(usize, usize)>,
    /// Logits dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: DType,
    /// Rows: `lm` (generated, peaked, LM-like), `flat` (generated, near-uniform: the worst case
    /// for top-p) or `real` (the model's logits while sampling one-digit additions at
    /// temperature 1, 4 samples per prompt, the first N response tokens).
    #[arg(long, value_enum, default_value_t = BenchRows::Lm)]
    pub rows: BenchRows,
    /// The model of `--rows real`: `smollm2` (fetched by `bash scripts/fetch-model.sh`) or a .gguf path.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Top-p of the branch count, in (0, 1).
    #[arg(long, default_value_t = DEFAULT_TOP_P, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Timed runs per variant (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Skip the naive candle composition (slow: it sorts every row for top-p).
    #[arg(long)]
    pub no_naive: bool,
    /// Where everything runs: `cpu`, or `cuda` (GPU kernel times by CUDA events against a plain
    /// GPU read and the candle composition on the GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Seed of the generated logits (of the problems and the sampler with `--rows real`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Which rows are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchRows {
    /// Generated, LM-like: peaked Zipf head plus noise.
    Lm,
    /// Generated, near-flat: Gaussian noise only.
    Flat,
    /// A chat model's own logits while sampling.
    Real,
}

impl BenchRows {
    fn name(self) -> &'static str {
        match self {
            BenchRows::Lm => "lm",
            BenchRows::Flat => "flat",
            BenchRows::Real => "real",
        }
    }
}

/// Parses `N,V` (both ≥ 1).
fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [n, v] = parts[..] else { return Err(format!("expected N,V (two numbers), got `{s}`")) };
    let num = |x: &str| x.parse::<usize>().map_err(|e| format!("`{x}` in `{s}`: {e}"));
    let (n, v) = (num(n)?, num(v)?);
    if n == 0 || v == 0 {
        return Err(format!("N and V must be at least 1, got `{s}`"));
    }
    Ok((n, v))
}

/// One timed variant.
struct Variant<'a> {
    name: String,
    run: Box<dyn Fn() -> CliResult<()> + 'a>,
}

/// Runs `rlvr bench`.
pub fn run(args: &BenchArgs, quiet: bool) -> CliResult<()> {
    TokenStatsConfig { top_p: Some(args.top_p), ..Default::default() }.validate()?;
    args.device.check_available()?;
    if args.iters == 0 {
        return Err(CliError::usage("--iters must be at least 1"));
    }
    match args.dtype {
        DType::F32 => bench_as::<f32>(args, quiet),
        DType::BF16 => bench_as::<bf16>(args, quiet),
        DType::F16 => bench_as::<f16>(args, quiet),
    }
}

/// The rows to time: `[N, V]` logits and a target per row.
fn rows<E: Element>(args: &BenchArgs, quiet: bool) -> CliResult<(usize, usize, Generated<E>)> {
    let kind = match args.rows {
        BenchRows::Lm => RowKind::Lm,
        BenchRows::Flat => RowKind::Flat,
        BenchRows::Real => return real::<E>(args, quiet),
    };
    let (n, v) = args.shape.unwrap_or((256, 151_936));
    let bar = progress::bar(n as u64, "generating logits", quiet);
    let gen = generate::<E>(n, v, kind, args.seed, &bar)?;
    bar.finish_and_clear();
    Ok((n, v, gen))
}

/// `--rows real`: the first N response tokens' logits of seeded rollouts (the rows of
/// `rlvr example --model M --batch 16 --seq-len 32 --seed S`, more rounds if N needs them).
fn real<E: Element>(args: &BenchArgs, quiet: bool) -> CliResult<(usize, usize, Generated<E>)> {
    let path = gguf::resolve(&args.model)?;
    crate::train_cmd::tune_allocator();
    let (model, tok) = lm::load(&path, &candle_core::Device::Cpu)?;
    let vocab = model.config().vocab;
    let n = match args.shape {
        Some((_, v)) if v != vocab => {
            return Err(CliError::usage(format!("--shape V = {v}, but the model's vocabulary has {vocab} tokens")))
        }
        Some((n, _)) => n,
        None => 256,
    };
    let settings = DumpSettings { responses: 16, max_new: 32, seed: args.seed, ..Default::default() };
    let bar = progress::bar(n as u64, "sampling (tokens)", quiet);
    let rows = real_rows(&model, &tok, &settings, n, &mut |k| bar.set_position(k.min(n) as u64))?;
    bar.finish_and_clear();
    let logits = rows.logits.iter().map(|&z| E::from_f32(z)).collect();
    Ok((n, vocab, Generated { logits, targets: rows.targets }))
}

fn bench_as<E: Element + candle_core::WithDType>(args: &BenchArgs, quiet: bool) -> CliResult<()> {
    let (n, v, gen) = rows::<E>(args, quiet)?;
    let (logits, targets) = (&gen.logits[..], &gen.targets[..]);
    let with_p = TokenStatsConfig { top_p: Some(args.top_p), ..Default::default() };
    let no_p = TokenStatsConfig { top_p: None, ..Default::default() };
    let dev = args.device;
    if dev == Device::Cuda {
        return bench_cuda::<E>(args, logits, targets, &with_p);
    }

    // Describes the rows (and checks the fused path works) before anything is timed.
    let probe = dev.token_stats(logits, v, Some(targets), &with_p, None)?;
    let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n as f64;
    let mean_h = mean(&mut probe.entropy.iter().map(|&h| h as f64));
    let mean_k = mean(&mut probe.branch.iter().flatten().map(|&k| k as f64));

    let mut variants = vec![
        Variant {
            name: "plain LSE (one read, cpu)".into(),
            run: Box::new(|| {
                black_box(naive::plain_lse(logits, v));
                Ok(())
            }),
        },
        Variant {
            name: format!("fused stats, no top-p ({})", dev.name()),
            run: Box::new(move || {
                black_box(dev.token_stats(logits, v, Some(targets), &no_p, None)?);
                Ok(())
            }),
        },
        Variant {
            name: format!("fused stats, top-p {} ({})", args.top_p, dev.name()),
            run: Box::new(move || {
                black_box(dev.token_stats(logits, v, Some(targets), &with_p, None)?);
                Ok(())
            }),
        },
    ];
    if !args.no_naive {
        let cpu = candle_core::Device::Cpu;
        let candle_err = |e: candle_core::Error| CliError::runtime(format!("candle: {e}"));
        let t_logits = candle_core::Tensor::from_slice(logits, (n, v), &cpu).map_err(candle_err)?;
        let t_targets = candle_core::Tensor::from_slice(targets, n, &cpu).map_err(candle_err)?;
        variants.push(Variant {
            name: format!("candle composition, sort top-p {} (cpu)", args.top_p),
            run: Box::new(move || {
                black_box(naive::candle_token_stats(&t_logits, Some(&t_targets), &with_p)?);
                Ok(())
            }),
        });
    }

    let bar = progress::bar((variants.len() * (args.iters + 1)) as u64, "benchmarking", quiet);
    let mut medians = Vec::new();
    for variant in &variants {
        medians.push(time(&variant.run, args.iters, &bar)?);
    }
    bar.finish_and_clear();

    let bytes = (n * v * <E as Element>::DTYPE.size()) as f64;
    println!(
        "bench    [N, V] = [{n}, {v}] {} {} rows (mean entropy {mean_h:.3} nats, mean branch {mean_k:.1} at top-p {}), {:.1} MiB of logits",
        <E as Element>::DTYPE,
        args.rows.name(),
        args.top_p,
        bytes / (1 << 20) as f64
    );
    println!("machine  {} rayon threads; median of {} runs after 1 warm-up", rayon::current_num_threads(), args.iters);
    print_table(&variants, &medians, bytes, !args.no_naive);
    Ok(())
}

/// `--device cuda`: GPU kernel times (CUDA events, inputs rotated past L2, no host copies timed)
/// of the plain read, the fused statistics without and with top-p, and the candle composition
/// on the GPU (its top-p sort runs on the host, as a typical user's code would).
#[cfg(feature = "cuda")]
fn bench_cuda<E: Element + candle_core::WithDType>(
    args: &BenchArgs,
    logits: &[E],
    targets: &[u32],
    with_p: &TokenStatsConfig,
) -> CliResult<()> {
    let (n, v) = (targets.len(), logits.len() / targets.len().max(1));
    let stream = rlvr_kernels::cuda::default_stream()?;
    let times = rlvr_kernels::cuda::bench_token_stats(&stream, logits, v, Some(targets), with_p, 3, args.iters)?;
    let naive_ms = if args.no_naive {
        None
    } else {
        let candle_err = |e: candle_core::Error| CliError::runtime(format!("candle: {e}"));
        let gpu = candle_core::Device::new_cuda(0).map_err(candle_err)?;
        let t_logits = candle_core::Tensor::from_slice(logits, (n, v), &gpu).map_err(candle_err)?;
        let t_targets = candle_core::Tensor::from_slice(targets, n, &gpu).map_err(candle_err)?;
        let run = || -> CliResult<()> {
            black_box(naive::candle_token_stats(&t_logits, Some(&t_targets), with_p)?);
            gpu.synchronize().map_err(candle_err)
        };
        let bar = progress::bar(args.iters as u64 + 1, "benchmarking candle on cuda", false);
        let d = time(&run, args.iters, &bar)?;
        bar.finish_and_clear();
        Some(d.as_secs_f64() * 1e3)
    };
    println!(
        "bench    [N, V] = [{n}, {v}] {} on cuda: GPU time by CUDA events, median of {} runs",
        <E as Element>::DTYPE,
        args.iters
    );
    let mut rows = vec![("plain read (bandwidth reference)".to_string(), times.plain_ms)];
    rows.push(("fused stats, no top-p".into(), times.fused_ms));
    if let Some(ms) = times.fused_top_p_ms {
        rows.push((format!("fused stats, top-p {}", args.top_p), ms));
    }
    if let Some(ms) = naive_ms {
        rows.push((format!("candle composition, host-sort top-p {} (wall)", args.top_p), ms));
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, ms)| {
            vec![
                name.clone(),
                format!("{ms:.3} ms"),
                format!("{:.2}", times.bytes_per_s(*ms) / 1e12),
                format!("{:.2}x", ms / times.plain_ms),
                naive_ms.map_or("-".into(), |c| format!("{:.1}x", c / ms)),
            ]
        })
        .collect();
    table::print(&["variant", "median", "TB/s", "time / plain read", "speed-up vs candle"], &table_rows);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda<E: Element>(_: &BenchArgs, _: &[E], _: &[u32], _: &TokenStatsConfig) -> CliResult<()> {
    // `check_available` has already rejected `--device cuda` in a build without the feature.
    Err(CliError::usage("this rlvr was built without the `cuda` feature; rebuild with --features cuda"))
}

/// Median wall time of `iters` runs after one warm-up run.
fn time(run: &dyn Fn() -> CliResult<()>, iters: usize, bar: &ProgressBar) -> CliResult<Duration> {
    run()?;
    bar.inc(1);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed());
        bar.inc(1);
    }
    times.sort_unstable();
    let mid = times.len() / 2;
    Ok(if times.len() % 2 == 1 { times[mid] } else { (times[mid - 1] + times[mid]) / 2 })
}

fn print_table(variants: &[Variant<'_>], medians: &[Duration], bytes: f64, has_naive: bool) {
    let secs = |d: &Duration| d.as_secs_f64();
    let plain = secs(&medians[0]);
    let naive = has_naive.then(|| secs(&medians[medians.len() - 1]));
    let rows: Vec<Vec<String>> = variants
        .iter()
        .zip(medians)
        .map(|(variant, d)| {
            let t = secs(d);
            vec![
                variant.name.clone(),
                format!("{:.3} ms", t * 1e3),
                format!("{:.2}", bytes / t / 1e9),
                format!("{:.2}x", t / plain),
                naive.map_or("-".into(), |c| format!("{:.1}x", c / t)),
            ]
        })
        .collect();
    table::print(&["variant", "median", "GB/s", "time / plain LSE", "speed-up vs candle"], &rows);
}
