//! `rlvr example`: a synthetic, LM-like logits dump to try `rlvr stats` on, and the row
//! generator `rlvr bench` times against; with `--model`, a dump of real rollouts instead
//! (`lm::dump`: the sampled responses' own logits, padded `[B, T, V]`).
//!
//! Each row is a Zipf-like head over a per-row pseudo-random token order plus Gaussian noise:
//! z_i = c − a·ln(rank_i) + σ·g_i. The sharpness a varies per token (log-uniform; 3/4 of the
//! tokens confident, a in [1.5, 8], 1/4 forking, a in [0.4, 1.5]), so entropies run from near 0 (one dominant token) to near ln V (almost flat), like a real
//! model's mix of confident and forking tokens. Targets are sampled from the softmax of the
//! *stored* (rounded) logits. Everything is seeded with SplitMix64, so a seed gives the same
//! file on every machine and thread count.

use std::path::PathBuf;
use std::time::Instant;

use half::{bf16, f16};
use indicatif::ProgressBar;
use rayon::prelude::*;
use rlvr_kernels::lm::dump::{self, DumpSettings};
use rlvr_kernels::lm::{self, gguf};
use rlvr_kernels::reference::SplitMix64;
use rlvr_kernels::{DType, Element};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::{CliError, CliResult};
use crate::progress;

/// Arguments of `rlvr example`.
#[derive(Debug, clap::Args)]
pub struct ExampleArgs {
    /// Output file (.safetensors) with tensors `logits`, `targets` (i64) and `mask` (u8).
    #[arg(long)]
    pub out: PathBuf,
    /// Real rollouts instead of synthetic rows: `smollm2` (SmolLM2-135M-Instruct, fetched by
    /// `bash scripts/fetch-model.sh`) or a .gguf path; one-digit additions, 4 samples per prompt,
    /// temperature 1.
    #[arg(long)]
    pub model: Option<String>,
    /// B: sequences (with --model: responses) [default: 8, 16 with --model].
    #[arg(long)]
    pub batch: Option<usize>,
    /// T: tokens per sequence (with --model: the most new tokens per response; T is then the
    /// longest response) [default: 256, 32 with --model].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// V: vocabulary size (synthetic rows only; a model has its own) [default: 32768].
    #[arg(long, conflicts_with = "model")]
    pub vocab: Option<usize>,
    /// Logits dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: DType,
    /// Seed of the generator (with --model: of the problems and the sampler).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write flat `[B·T, V]` logits (and `[B·T]` targets/mask) instead of `[B, T, V]`
    /// (synthetic rows only).
    #[arg(long, conflicts_with = "model")]
    pub flat: bool,
}

/// What the rows of generated logits look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowKind {
    /// LM-like: peaked Zipf head plus noise, sharpness varying per row.
    Lm,
    /// Near-flat: Gaussian noise only (the worst case for a top-p count).
    Flat,
}

/// Generated logits (row-major `[rows, V]`) and one sampled target per row.
pub struct Generated<E> {
    /// The logits.
    pub logits: Vec<E>,
    /// Sampled token ids.
    pub targets: Vec<u32>,
}

/// Generates `rows` rows of `vocab` logits, rows in parallel, ticking `bar` once per row.
pub fn generate<E: Element>(
    rows: usize,
    vocab: usize,
    kind: RowKind,
    seed: u64,
    bar: &ProgressBar,
) -> CliResult<Generated<E>> {
    let len = rows.checked_mul(vocab).ok_or_else(|| CliError::usage("rows × vocab overflows"))?;
    let mut logits: Vec<E> = Vec::new();
    logits
        .try_reserve_exact(len)
        .map_err(|_| CliError::runtime(format!("cannot allocate {len} logits ({} bytes)", len * E::DTYPE.size())))?;
    logits.resize(len, E::from_f32(0.0));
    let mut targets = vec![0u32; rows];
    logits.par_chunks_mut(vocab.max(1)).zip(targets.par_iter_mut()).enumerate().for_each(|(r, (row, t))| {
        *t = fill_row(row, r, kind, seed);
        bar.inc(1);
    });
    Ok(Generated { logits, targets })
}

/// Uniform in [0, 1) with 53 random bits.
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal draws by Box–Muller, keeping the second value of each pair.
#[derive(Default)]
struct Gaussian {
    spare: Option<f64>,
}

impl Gaussian {
    fn next(&mut self, rng: &mut SplitMix64) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (1.0 - uniform(rng), uniform(rng)); // u1 in (0, 1]: ln is finite
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// Log-uniform in [lo, hi].
fn log_uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    (lo.ln() + uniform(rng) as f32 * (hi / lo).ln()).exp()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride coprime to `v`, so that i ↦ (i·stride + offset) mod v is a cheap permutation: the
/// head tokens land at different ids in every row without an O(V) shuffle.
fn coprime_stride(rng: &mut SplitMix64, v: u64) -> u64 {
    for _ in 0..64 {
        let s = 1 + rng.below(v);
        if gcd(s, v) == 1 {
            return s;
        }
    }
    1
}

/// Fills one row and returns a target sampled from its (stored) softmax.
fn fill_row<E: Element>(row: &mut [E], index: usize, kind: RowKind, seed: u64) -> u32 {
    let v = row.len() as u64;
    if v == 0 {
        return 0;
    }
    let mut rng = SplitMix64(seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let (sharpness, sigma): (f32, f32) = match kind {
        // Mostly confident tokens with some forks, as in real rollouts (the paper: most tokens
        // have low entropy, a minority are high-entropy "forking" tokens).
        RowKind::Lm if uniform(&mut rng) < 0.75 => (log_uniform(&mut rng, 1.5, 8.0), 0.5),
        RowKind::Lm => (log_uniform(&mut rng, 0.4, 1.5), 0.5),
        RowKind::Flat => (0.0, 1.0),
    };
    // Real logits sit at an arbitrary offset; it must not matter to any statistic.
    let offset = (-5.0 + 20.0 * uniform(&mut rng)) as f32;
    let (stride, shift) = (coprime_stride(&mut rng, v), rng.below(v));
    let mut gauss = Gaussian::default();
    for (i, z) in row.iter_mut().enumerate() {
        let rank = (i as u64 * stride + shift) % v + 1;
        let x = offset - sharpness * (rank as f32).ln() + sigma * gauss.next(&mut rng) as f32;
        *z = E::from_f32(x);
    }
    sample(row, uniform(&mut rng))
}

/// Inverse-CDF draw from softmax(row) with u ∈ [0, 1).
fn sample<E: Element>(row: &[E], u: f64) -> u32 {
    let m = row.iter().map(|z| z.to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = row.iter().map(|z| (z.to_f32() - m).exp() as f64).sum();
    let goal = u * total;
    let mut cum = 0.0;
    for (i, z) in row.iter().enumerate() {
        cum += (z.to_f32() - m).exp() as f64;
        if cum > goal {
            return i as u32;
        }
    }
    (row.len() - 1) as u32
}

/// Prompt/response mask of B sequences of T tokens: a prompt of 1..=T/2 tokens (0), a response
/// of varying length (1), then padding (0). Every sequence has at least one response token.
pub fn response_mask(batch: usize, seq_len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed ^ 0x6D61_736B_6D61_736B);
    let mut mask = vec![0u8; batch * seq_len];
    for seq in mask.chunks_mut(seq_len.max(1)) {
        let t = seq.len() as u64;
        let prompt = if t <= 1 { 0 } else { (1 + rng.below(t / 2)).min(t - 1) };
        let response = 1 + rng.below(t - prompt);
        seq[prompt as usize..(prompt + response) as usize].fill(1);
    }
    mask
}

/// Runs `rlvr example`.
pub fn run(args: &ExampleArgs, quiet: bool) -> CliResult<()> {
    if let Some(model) = &args.model {
        return write_real(args, model, quiet);
    }
    let (batch, seq_len, vocab) = (args.batch.unwrap_or(8), args.seq_len.unwrap_or(256), args.vocab.unwrap_or(32768));
    if batch == 0 || seq_len == 0 || vocab == 0 {
        return Err(CliError::usage("--batch, --seq-len and --vocab must all be at least 1"));
    }
    if vocab > u32::MAX as usize {
        return Err(CliError::usage("--vocab must fit token ids in u32"));
    }
    let shape = Shape { batch, seq_len, vocab };
    match args.dtype {
        DType::F32 => write::<f32>(args, shape, quiet),
        DType::BF16 => write::<bf16>(args, shape, quiet),
        DType::F16 => write::<f16>(args, shape, quiet),
    }
}

/// B, T, V of a synthetic dump.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    seq_len: usize,
    vocab: usize,
}

/// `--model`: samples real rollouts with their logits and writes them as a padded dump.
fn write_real(args: &ExampleArgs, model: &str, quiet: bool) -> CliResult<()> {
    let settings = DumpSettings {
        responses: args.batch.unwrap_or(16),
        max_new: args.seq_len.unwrap_or(32),
        seed: args.seed,
        ..Default::default()
    };
    if settings.responses == 0 || settings.max_new == 0 {
        return Err(CliError::usage("--batch and --seq-len must be at least 1"));
    }
    let path = gguf::resolve(model)?;
    let start = Instant::now();
    crate::train_cmd::tune_allocator();
    let (llama, tok) = lm::load(&path, &candle_core::Device::Cpu)?;
    let bar = progress::bar((settings.responses * settings.max_new) as u64, "sampling (tokens)", quiet);
    let dump = dump::sample_dump(&llama, &tok, &settings, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    dump.write(&args.out, args.dtype)?;
    let finished = dump.responses.iter().filter(|r| r.finished).count();
    println!(
        "wrote {}: logits {:?} {} ({:.1} MiB), targets {:?} i64, mask {:?} u8 ({} of {} tokens are response tokens; {} responses from {}, {finished} finished within {} tokens) in {:.2} s",
        args.out.display(),
        [dump.batch, dump.seq_len, dump.vocab],
        args.dtype,
        (dump.logits.len() * args.dtype.size()) as f64 / (1 << 20) as f64,
        [dump.batch, dump.seq_len],
        [dump.batch, dump.seq_len],
        dump.counted(),
        dump.mask.len(),
        dump.batch,
        path.display(),
        settings.max_new,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write<E: Element>(args: &ExampleArgs, shape: Shape, quiet: bool) -> CliResult<()> {
    let start = Instant::now();
    let Shape { batch, seq_len, vocab } = shape;
    let rows = batch.checked_mul(seq_len).ok_or_else(|| CliError::usage("batch × seq-len overflows"))?;
    let bar = progress::bar(rows as u64, "generating logits", quiet);
    let gen = generate::<E>(rows, vocab, RowKind::Lm, args.seed, &bar)?;
    bar.finish_and_clear();
    let mask = response_mask(batch, seq_len, args.seed);
    let targets: Vec<i64> = gen.targets.iter().map(|&t| t as i64).collect();
    let (tok_shape, logit_shape) =
        if args.flat { (vec![rows], vec![rows, vocab]) } else { (vec![batch, seq_len], vec![batch, seq_len, vocab]) };
    let dtype = match E::DTYPE {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    };
    let view = |d, shape: &Vec<usize>, bytes| {
        TensorView::new(d, shape.clone(), bytes).map_err(|e| CliError::runtime(format!("internal: {e}")))
    };
    let tensors = vec![
        ("logits", view(dtype, &logit_shape, bytemuck::cast_slice(&gen.logits))?),
        ("targets", view(Dtype::I64, &tok_shape, bytemuck::cast_slice(&targets))?),
        ("mask", view(Dtype::U8, &tok_shape, &mask[..])?),
    ];
    // One metadata entry: safetensors writes the metadata map in hash order, and a seed must
    // give a byte-identical file.
    let meta = [("generator".to_string(), format!("rlvr example --seed {}", args.seed))].into_iter().collect();
    safetensors::serialize_to_file(tensors, Some(meta), &args.out)
        .map_err(|e| CliError::runtime(format!("cannot write `{}`: {e}", args.out.display())))?;
    let counted = mask.iter().filter(|&&m| m == 1).count();
    println!(
        "wrote {}: logits {:?} {} ({:.1} MiB), targets {:?} i64, mask {:?} u8 ({counted} of {rows} tokens are response tokens) in {:.2} s",
        args.out.display(),
        logit_shape,
        E::DTYPE,
        (gen.logits.len() * E::DTYPE.size()) as f64 / (1 << 20) as f64,
        tok_shape,
        tok_shape,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
