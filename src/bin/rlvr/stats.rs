//! `rlvr stats`: per-token lse, entropy, branch count and target log-prob of a logits dump, and
//! per-sequence log-PPL, streamed from a memory-mapped safetensors file in chunks of rows.

use std::path::PathBuf;
use std::time::Instant;

use half::{bf16, f16};
use rlvr_kernels::{
    cpu, DType, Element, Error, KeptMask, KeptStats, SamplingFilter, TokenStats, TokenStatsConfig, DEFAULT_TOP_P,
};

use crate::device::Device;
use crate::error::{CliError, CliResult};
use crate::io::{self, InputFile, KeptMaskData, Logits};
use crate::output::{self, OutFormat, StatsOutput};
use crate::progress;
use crate::table::{self, Summary};

/// Arguments of `rlvr stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Input .safetensors file.
    #[arg(long)]
    pub input: PathBuf,
    /// Name of the logits tensor ([N, V] or [B, T, V]; bf16, f16 or f32).
    #[arg(long, default_value = "logits")]
    pub logits: String,
    /// Name of the targets tensor (integer token ids, logits shape without V). Default
    /// `targets`, skipped when absent unless named explicitly.
    #[arg(long)]
    pub targets: Option<String>,
    /// Name of the mask tensor (0/1, logits shape without V). Default `mask`, skipped when
    /// absent unless named explicitly.
    #[arg(long)]
    pub mask: Option<String>,
    /// Top-p of the branch count (Rollout Branching Factor), in (0, 1).
    #[arg(long, default_value_t = DEFAULT_TOP_P, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Sampling temperature T > 0 (statistics of softmax(z / T)).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Write per-token results to FILE.safetensors or FILE.csv.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The rollout sampler's filter, recomputed from the logits: `top-p=P`, `top-k=K` or
    /// `top-k=K,top-p=P` (top-k first, then top-p over what it kept: vLLM's order). Adds the
    /// statistics over the kept set K: `logp_kept`, `entropy_kept`, `kept` (|K|), `outside_kept`.
    #[arg(long, value_parser = parse_filter, conflicts_with = "filter_mask")]
    pub filter: Option<SamplingFilter>,
    /// The engine's own kept set, stored in the input as `NAME.token_ids` and `NAME.offsets`
    /// (vLLM's CSR SamplingMask: N + 1 offsets); same outputs as --filter.
    #[arg(long, value_name = "NAME")]
    pub filter_mask: Option<String>,
    /// Where the fused statistics run.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Rows per chunk (default: as many as fit 64 MiB, at most 1024). Hidden: it exists so
    /// tests can make small inputs span several chunks.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_rows: Option<u64>,
}

/// Bytes of logits per chunk: large enough to keep every core busy, small enough that the copy
/// of an unaligned chunk stays modest and the progress bar moves.
const CHUNK_BYTES: usize = 64 << 20;
/// At most this many rows per chunk.
const CHUNK_ROWS: usize = 1024;
/// How many per-sequence log-PPL values the summary prints.
const SHOW_SEQUENCES: usize = 8;

fn parse_filter(s: &str) -> Result<SamplingFilter, String> {
    s.parse::<SamplingFilter>().map_err(|e| e.to_string())
}

/// Runs `rlvr stats`.
pub fn run(args: &StatsArgs, quiet: bool) -> CliResult<()> {
    let cfg = TokenStatsConfig {
        temperature: args.temperature,
        top_p: Some(args.top_p),
        check_finite: true,
        filter: args.filter,
    };
    cfg.validate()?;
    args.device.check_available()?;
    let format = args.out.as_deref().map(OutFormat::from_path).transpose()?;

    let file = InputFile::open(&args.input)?;
    let tensors = file.parse()?;
    let logits = Logits::new(&args.logits, tensors.get(&args.logits)?)?;
    let targets_name = args.targets.as_deref().unwrap_or("targets");
    let targets = match tensors.optional(targets_name, args.targets.is_some())? {
        Some(view) => Some(io::targets(targets_name, &view, &logits)?),
        None => None,
    };
    let mask_name = args.mask.as_deref().unwrap_or("mask");
    let mask = match tensors.optional(mask_name, args.mask.is_some())? {
        Some(view) => Some(io::mask(mask_name, &view, &logits)?),
        None => None,
    };

    let kept_mask = match &args.filter_mask {
        Some(name) => Some(io::kept_mask(name, &tensors, &logits)?),
        None => None,
    };

    let start = Instant::now();
    let default_chunk = (CHUNK_BYTES / (logits.vocab * logits.dtype.size()).max(1)).clamp(1, CHUNK_ROWS);
    let chunk = args.chunk_rows.map_or(default_chunk, |c| c as usize);
    let stats = compute(&logits, targets.as_deref(), &cfg, kept_mask.as_ref(), args.device, chunk, quiet)?;
    let elapsed = start.elapsed().as_secs_f64();
    let log_ppl = match (&stats.logp, logits.sequences()) {
        (Some(logp), Some((_, t))) if t > 0 => Some(sequence_log_ppl(logp, mask.as_deref(), t)?),
        _ => None,
    };

    let names = Names { targets: targets.as_ref().map(|_| targets_name), mask: mask.as_ref().map(|_| mask_name) };
    print_summary(args, &logits, &names, &stats, mask.as_deref(), log_ppl.as_deref());
    println!(
        "time     {elapsed:.3} s on {} ({:.2} GB/s of logits)",
        args.device.name(),
        logits.byte_len() as f64 / elapsed.max(1e-9) / 1e9
    );
    if let (Some(path), Some(format)) = (&args.out, format) {
        let out = StatsOutput { logits: &logits, stats: &stats, mask: mask.as_deref(), log_ppl: log_ppl.as_deref() };
        output::write(path, format, &out, &cfg)?;
        println!("wrote    {} ({} tokens)", path.display(), logits.rows);
    }
    Ok(())
}

/// Fused statistics of every row, `chunk` rows at a time.
fn compute(
    logits: &Logits<'_>,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMaskData>,
    device: Device,
    chunk: usize,
    quiet: bool,
) -> CliResult<TokenStats> {
    match logits.dtype {
        DType::F32 => compute_as::<f32>(logits, targets, cfg, mask, device, chunk, quiet),
        DType::BF16 => compute_as::<bf16>(logits, targets, cfg, mask, device, chunk, quiet),
        DType::F16 => compute_as::<f16>(logits, targets, cfg, mask, device, chunk, quiet),
    }
}

fn compute_as<E: Element>(
    logits: &Logits<'_>,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMaskData>,
    device: Device,
    chunk: usize,
    quiet: bool,
) -> CliResult<TokenStats> {
    let n = logits.rows;
    let bar = progress::bar(n as u64, "token stats", quiet);
    let mut all = TokenStats {
        lse: Vec::with_capacity(n),
        entropy: Vec::with_capacity(n),
        logp: targets.map(|_| Vec::with_capacity(n)),
        branch: cfg.top_p.map(|_| Vec::with_capacity(n)),
        kept: (cfg.filter.is_some() || mask.is_some()).then(|| KeptStats {
            logp: targets.map(|_| Vec::with_capacity(n)),
            outside: targets.map(|_| Vec::with_capacity(n)),
            ..KeptStats::default()
        }),
    };
    let mut buf = Vec::new();
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let rows = logits.rows_as::<E>(r0, r1, &mut buf);
        let chunk_mask = mask.map(|m| m.rows(r0, r1));
        let chunk_mask = chunk_mask.as_ref().map(|(ids, offsets)| KeptMask { token_ids: ids, offsets });
        let part = device
            .token_stats(rows, logits.vocab, targets.map(|t| &t[r0..r1]), cfg, chunk_mask.as_ref())
            .map_err(|e| locate(e, r0, logits.sequences()))?;
        if let (Some(a), Some(p)) = (&mut all.kept, part.kept) {
            a.lse.extend(p.lse);
            a.entropy.extend(p.entropy);
            a.count.extend(p.count);
            if let (Some(a), Some(p)) = (&mut a.logp, p.logp) {
                a.extend(p);
            }
            if let (Some(a), Some(p)) = (&mut a.outside, p.outside) {
                a.extend(p);
            }
        }
        all.lse.extend(part.lse);
        all.entropy.extend(part.entropy);
        if let (Some(a), Some(p)) = (&mut all.logp, part.logp) {
            a.extend(p);
        }
        if let (Some(a), Some(p)) = (&mut all.branch, part.branch) {
            a.extend(p);
        }
        bar.inc((r1 - r0) as u64);
    }
    bar.finish_and_clear();
    Ok(all)
}

/// The crate's error for a chunk starting at row `r0`, with the row made global and, for
/// `[B, T, V]` logits, the sequence and position added.
fn locate(e: Error, r0: usize, seqs: Option<(usize, usize)>) -> CliError {
    let at = |row: usize| seqs.map_or(String::new(), |(_, t)| format!(" (sequence {}, position {})", row / t, row % t));
    match e {
        Error::NonFiniteLogits { row } => {
            CliError::runtime(format!("{}{}", Error::NonFiniteLogits { row: row + r0 }, at(row + r0)))
        }
        Error::AllNegInfRow { row } => {
            CliError::runtime(format!("{}{}", Error::AllNegInfRow { row: row + r0 }, at(row + r0)))
        }
        Error::TargetOutOfRange { token, target, vocab } => {
            CliError::runtime(Error::TargetOutOfRange { token: token + r0, target, vocab })
        }
        Error::InvalidKeptMask { row, why } => CliError::runtime(Error::InvalidKeptMask { row: row + r0, why }),
        other => other.into(),
    }
}

/// Per-sequence log-PPL −Σ m·logp / Σ m of the `[B, T]` view (every token counts without a
/// mask); `None` for a sequence without counted tokens, +inf for one whose counted tokens
/// include a target of probability 0 (logp = −inf, possible with −inf logits).
fn sequence_log_ppl(logp: &[f32], mask: Option<&[f32]>, seq_len: usize) -> CliResult<Vec<Option<f32>>> {
    let ones;
    let mask = match mask {
        Some(m) => m,
        None => {
            ones = vec![1.0f32; logp.len()];
            &ones
        }
    };
    // Uncounted tokens may hold anything; the log-PPL function rightly rejects non-finite input.
    let finite: Vec<f32> =
        logp.iter().zip(mask).map(|(&l, &m)| if m != 0.0 && l.is_finite() { l } else { 0.0 }).collect();
    let lp = cpu::log_ppl(&finite, mask, seq_len)?;
    let infinite = |b: usize| {
        let s = b * seq_len..(b + 1) * seq_len;
        logp[s.clone()].iter().zip(&mask[s]).any(|(&l, &m)| m != 0.0 && !l.is_finite())
    };
    Ok(lp.into_iter().enumerate().map(|(b, v)| if infinite(b) { Some(f32::INFINITY) } else { v }).collect())
}

/// Tensor names actually used.
struct Names<'a> {
    targets: Option<&'a str>,
    mask: Option<&'a str>,
}

fn print_summary(
    args: &StatsArgs,
    logits: &Logits<'_>,
    names: &Names<'_>,
    stats: &TokenStats,
    mask: Option<&[f32]>,
    log_ppl: Option<&[Option<f32>]>,
) {
    let n = logits.rows;
    println!("input    {}", args.input.display());
    println!("logits   `{}` {:?} {}: N = {n} tokens, V = {}", logits.name, logits.shape, logits.dtype, logits.vocab);
    let counted: Vec<usize> = match mask {
        Some(m) => (0..n).filter(|&i| m[i] != 0.0).collect(),
        None => (0..n).collect(),
    };
    let scope = match names.mask {
        Some(name) => format!("{} of {n} tokens counted (mask `{name}` = 1)", counted.len()),
        None => format!("all {n} tokens counted (no mask)"),
    };
    let targets = names.targets.map_or("none (no logp, no log-PPL)".to_string(), |t| format!("`{t}`"));
    println!("targets  {targets}; {scope}");
    println!("settings temperature {}, top-p {}, device {}", args.temperature, args.top_p, args.device.name());
    if let Some(k) = &stats.kept {
        let what = match (&args.filter, &args.filter_mask) {
            (Some(f), _) => format!("filter {f} (recomputed from the logits; all ties at the crossing kept)"),
            (None, Some(name)) => format!("the engine's mask `{name}` (`{name}.token_ids`, `{name}.offsets`)"),
            (None, None) => String::new(),
        };
        println!("kept set {what}");
        if let Some(out) = &k.outside {
            let outside = counted.iter().filter(|&&i| out[i] != 0).count();
            println!(
                "outside  {outside} of {} counted targets are outside the kept set ({:.2}%): their logp_kept is the \
                 unfiltered logp",
                counted.len(),
                100.0 * outside as f64 / counted.len().max(1) as f64
            );
        }
    }

    let mut rows = Vec::new();
    let mut row = |label: String, s: Option<Summary>, digits| {
        let cells = s.map_or_else(|| vec!["-".to_string(); 5], |s| s.cells(digits));
        rows.push([vec![label], cells].concat());
    };
    row("entropy (nats)".into(), Summary::of(counted.iter().map(|&i| stats.entropy[i] as f64)), 4);
    if let Some(branch) = &stats.branch {
        row(format!("branch (top-{})", args.top_p), Summary::of(counted.iter().map(|&i| branch[i] as f64)), 1);
    }
    if let Some(logp) = &stats.logp {
        row("logp".into(), Summary::of(counted.iter().map(|&i| logp[i] as f64)), 4);
    }
    if let Some(k) = &stats.kept {
        row("entropy kept (nats)".into(), Summary::of(counted.iter().map(|&i| k.entropy[i] as f64)), 4);
        row("kept |K|".into(), Summary::of(counted.iter().map(|&i| k.count[i] as f64)), 1);
        if let Some(logp) = &k.logp {
            row("logp kept".into(), Summary::of(counted.iter().map(|&i| logp[i] as f64)), 4);
        }
    }
    table::print(&["over counted tokens", "mean", "p5", "p50", "p95", "max"], &rows);
    if let Some(logp) = &stats.logp {
        let mean = counted.iter().map(|&i| logp[i] as f64).sum::<f64>() / counted.len().max(1) as f64;
        println!("mean logp {mean:.6} over {} counted tokens", counted.len());
    }
    if let Some(lp) = log_ppl {
        print_log_ppl(lp);
    }
}

fn print_log_ppl(lp: &[Option<f32>]) {
    let valid: Vec<f64> = lp.iter().flatten().map(|&v| v as f64).collect();
    match Summary::of(valid.iter().copied()) {
        Some(s) => {
            let min = valid.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "log-PPL  {} sequences ({} with counted tokens): min {min:.4}, mean {:.4}, max {:.4}",
                lp.len(),
                s.count,
                s.mean,
                s.max
            )
        }
        None => println!("log-PPL  {} sequences, none with counted tokens", lp.len()),
    }
    let first: Vec<String> = lp
        .iter()
        .take(SHOW_SEQUENCES)
        .enumerate()
        .map(|(b, v)| v.map_or(format!("[{b}] -"), |v| format!("[{b}] {v:.4}")))
        .collect();
    let more = if lp.len() > SHOW_SEQUENCES { " ..." } else { "" };
    println!("         {}{more}", first.join("  "));
}
