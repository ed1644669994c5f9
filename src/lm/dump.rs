//! Real logits dumps: rollouts sampled from a chat model with their raw logits, laid out in the
//! format `rlvr stats` reads, for `rlvr example --model` and the real-row benchmarks.
//!
//! **Which rollouts.** `responses` responses, `samples` consecutive ones per prompt: response i
//! answers problem ⌊i / samples⌋ (mod the task's distinct problems) of the list
//! [`problems`]`(task, ⌈responses / samples⌉, seed)`, asked as the tokenizer's chat prompt with its
//! default system prompt; sampled at `temperature` (1 by default) from a generator seeded from
//! `seed`. A seed (with the forward batch size) gives the same responses, so the same file.
//!
//! **Layout** (a padded dump, row b is response b):
//! - `logits` `[B, T, V]`: the sampling step's raw logits z (before the temperature), in f32 as
//!   the model computed them, or narrowed to bf16/f16 with round-to-nearest-even; 0 in padding;
//! - `targets` `[B, T]` i64: the sampled ids, the end-of-turn token included; 0 in padding;
//! - `mask` `[B, T]` u8: 1 for every response token (end-of-turn included), 0 for padding.
//!
//! T is the longest response, at most `max_new`: a column of nothing but padding is not written.
//! Padding rows are zeros, a valid (uniform) row, so `rlvr stats` reads the whole file; only
//! masked rows count in its summary.
//!
//! [`RealRows`] are the response rows alone, flat `[N, V]`, for benchmarks: sampled in memory by
//! [`real_rows`], written as an `[N, V]` dump with an all-ones mask, read back from any dump by
//! [`RealRows::read`].

use std::path::Path;

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::generate::{sample, Response, SampleSettings};
use super::llama::Llama;
use super::task::{problems, TaskKind};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::train::log::io_error;
use crate::DType;

/// Mixed into the seed of the sampler, so that it does not replay the problems' generator.
const SAMPLER_SEED: u64 = 0xD0D0_5EED_0B5E_55ED;

/// Which rollouts a dump holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DumpSettings {
    /// The questions.
    pub task: TaskKind,
    /// B: responses in the dump.
    pub responses: usize,
    /// Consecutive responses per prompt.
    pub samples: usize,
    /// Most tokens per response (the bound on T).
    pub max_new: usize,
    /// Sampling temperature (the logits are stored raw, before it).
    pub temperature: f32,
    /// Rows per forward batch of the sampler.
    pub batch: usize,
    /// Seed of the problems and of the sampler.
    pub seed: u64,
}

impl Default for DumpSettings {
    /// 16 responses to one-digit additions, 4 per prompt, at most 32 tokens each, temperature 1.
    fn default() -> Self {
        Self { task: TaskKind::Add1, responses: 16, samples: 4, max_new: 32, temperature: 1.0, batch: 64, seed: 0 }
    }
}

impl DumpSettings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("responses", self.responses), ("samples", self.samples)] {
            if v == 0 {
                return Err(Error::InvalidConfig { name, value: "0".into(), why: "must be >= 1" });
            }
        }
        self.sample_settings().validate()
    }

    fn sample_settings(&self) -> SampleSettings {
        SampleSettings {
            max_new: self.max_new,
            temperature: self.temperature,
            greedy: false,
            batch: self.batch,
            keep_logits: true,
            filter: None,
        }
    }

    /// One line naming the settings, stored in the file's metadata.
    pub fn describe(&self) -> String {
        format!(
            "rlvr_kernels::lm::dump: task {}, {} responses ({} per prompt), max_new {}, temperature {}, batch {}, seed {}",
            self.task.name(),
            self.responses,
            self.samples,
            self.max_new,
            self.temperature,
            self.batch,
            self.seed
        )
    }
}

/// The chat prompts of the dump's responses, one per response (see the module docs).
pub fn prompts(tok: &Tokenizer, s: &DumpSettings) -> Result<Vec<Vec<u32>>> {
    s.validate()?;
    let wanted = s.responses.div_ceil(s.samples).min(s.task.distinct());
    let encoded: Vec<Vec<u32>> =
        problems(s.task, wanted, s.seed)?.iter().map(|p| tok.encode(&tok.chat_prompt(None, &p.question))).collect();
    Ok((0..s.responses).map(|i| encoded[(i / s.samples) % encoded.len()].clone()).collect())
}

/// Samples the dump's responses with their logits. `progress` gets the tokens sampled so far.
pub fn sample_responses(
    model: &Llama,
    tok: &Tokenizer,
    s: &DumpSettings,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Response>> {
    let prompts = prompts(tok, s)?;
    let mut rng = StdRng::seed_from_u64(s.seed ^ SAMPLER_SEED);
    // The sampler counts tokens per chunk of prompts; within a chunk the count strictly grows,
    // so a count that does not is the first step of the next chunk.
    let (mut base, mut last) = (0usize, 0usize);
    let mut tick = |done: usize| {
        if done <= last {
            base += last;
        }
        last = done;
        progress(base + done);
    };
    sample(model, &prompts, tok.eos_id(), &s.sample_settings(), &mut rng, &mut tick)
}

/// Samples and lays out a dump (see the module docs).
pub fn sample_dump(model: &Llama, tok: &Tokenizer, s: &DumpSettings, progress: &mut dyn FnMut(usize)) -> Result<Dump> {
    let responses = sample_responses(model, tok, s, progress)?;
    let mut dump = Dump::from_responses(responses, model.config().vocab)?;
    dump.generator = s.describe();
    Ok(dump)
}

/// A padded `[B, T, V]` dump of sampled responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    /// B: responses.
    pub batch: usize,
    /// T: the longest response.
    pub seq_len: usize,
    /// V.
    pub vocab: usize,
    /// `[B, T, V]` raw logits, 0 in padding.
    pub logits: Vec<f32>,
    /// `[B, T]` sampled ids, 0 in padding.
    pub targets: Vec<u32>,
    /// `[B, T]` 1 for response tokens, 0 for padding.
    pub mask: Vec<u8>,
    /// The responses with the statistics the sampler recorded (their logits moved into `logits`).
    pub responses: Vec<Response>,
    /// What made the dump, written to the file's metadata.
    pub generator: String,
}

impl Dump {
    /// Lays out `responses`, each of which must carry its logits (`[len, vocab]`).
    pub fn from_responses(mut responses: Vec<Response>, vocab: usize) -> Result<Self> {
        let (b, t) = (responses.len(), responses.iter().map(|r| r.tokens.len()).max().unwrap_or(0));
        if b == 0 || t == 0 || vocab == 0 {
            return Err(Error::ShapeMismatch {
                name: "responses",
                expected: "at least one response with at least one token, V >= 1".into(),
                got: format!("{b} responses, longest {t} tokens, V = {vocab}"),
            });
        }
        let mut logits = zeros(b * t * vocab)?;
        let (mut targets, mut mask) = (vec![0u32; b * t], vec![0u8; b * t]);
        for (i, r) in responses.iter_mut().enumerate() {
            let z = take_logits(i, r, vocab)?;
            if let Some(j) = r.tokens.iter().position(|&y| y as usize >= vocab) {
                return Err(Error::TargetOutOfRange { token: i * t + j, target: r.tokens[j], vocab });
            }
            logits[i * t * vocab..][..z.len()].copy_from_slice(&z);
            targets[i * t..][..r.tokens.len()].copy_from_slice(&r.tokens);
            mask[i * t..][..r.tokens.len()].fill(1);
        }
        Ok(Self { batch: b, seq_len: t, vocab, logits, targets, mask, responses, generator: String::new() })
    }

    /// Response tokens (mask = 1) in the dump.
    pub fn counted(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }

    /// The response rows alone, in order (response by response).
    pub fn response_rows(&self) -> RealRows {
        let mut rows = RealRows::empty(self.vocab);
        for (r, _) in self.mask.iter().enumerate().filter(|(_, &m)| m == 1) {
            rows.logits.extend_from_slice(&self.logits[r * self.vocab..(r + 1) * self.vocab]);
            rows.targets.push(self.targets[r]);
        }
        rows
    }

    /// Writes the dump (logits in `dtype`) as safetensors to `path`.
    pub fn write(&self, path: &Path, dtype: DType) -> Result<()> {
        let shape = [self.batch, self.seq_len];
        write_file(path, dtype, &self.logits, &shape, &self.targets, &self.mask, &self.generator)
    }
}

fn zeros(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::Io { context: "logits dump".into(), msg: format!("cannot allocate {len} f32 logits") })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// The logits of response `i`, checked to be `[tokens, vocab]`.
fn take_logits(i: usize, r: &mut Response, vocab: usize) -> Result<Vec<f32>> {
    let z = r.logits.take().unwrap_or_default();
    if z.len() != r.tokens.len() * vocab {
        return Err(Error::ShapeMismatch {
            name: "response logits",
            expected: format!("[{}, {vocab}] (sampled with keep_logits)", r.tokens.len()),
            got: format!("{} values in response {i}", z.len()),
        });
    }
    Ok(z)
}

/// Real logits rows `[N, V]` (f32, as the model computed them) and their sampled ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RealRows {
    /// V.
    pub vocab: usize,
    /// `[N, V]` raw logits.
    pub logits: Vec<f32>,
    /// `[N]` sampled ids.
    pub targets: Vec<u32>,
}

impl RealRows {
    fn empty(vocab: usize) -> Self {
        Self { vocab, ..Default::default() }
    }

    /// N.
    pub fn rows(&self) -> usize {
        self.targets.len()
    }

    /// Keeps the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.targets.truncate(n);
        self.logits.truncate(n * self.vocab);
    }

    /// Writes the rows as an `[N, V]` dump (logits in `dtype`, mask all ones); `generator` goes
    /// to the metadata.
    pub fn write(&self, path: &Path, dtype: DType, generator: &str) -> Result<()> {
        let mask = vec![1u8; self.rows()];
        write_file(path, dtype, &self.logits, &[self.rows()], &self.targets, &mask, generator)
    }

    /// The rows with mask 1 (every row when there is no mask) of a dump at `path`: `logits`
    /// (`[N, V]` or `[B, T, V]`, f32/bf16/f16, widened exactly to f32), `targets` (i64, each
    /// checked to be below V) and an optional u8 `mask`.
    pub fn read(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let st =
            SafeTensors::deserialize(&data).map_err(|e| io_error(path, format!("not a safetensors file ({e})")))?;
        let get = |name: &str| st.tensor(name).map_err(|_| io_error(path, format!("no tensor `{name}`")));
        let l = get("logits")?;
        let shape = l.shape().to_vec();
        if !(shape.len() == 2 || shape.len() == 3) || shape[shape.len() - 1] == 0 {
            return Err(Error::ShapeMismatch {
                name: "logits",
                expected: "[N, V] or [B, T, V] with V >= 1".into(),
                got: format!("{shape:?}"),
            });
        }
        let (vocab, token_shape) = (shape[shape.len() - 1], &shape[..shape.len() - 1]);
        let logits = widen(&l)?;
        let t = get("targets")?;
        check_tokens("targets", &t, Dtype::I64, token_shape)?;
        let targets: Vec<i64> = bytemuck::pod_collect_to_vec(t.data());
        let mask: Vec<u8> = match st.tensor("mask") {
            Ok(m) => {
                check_tokens("mask", &m, Dtype::U8, token_shape)?;
                m.data().to_vec()
            }
            Err(_) => vec![1; targets.len()],
        };
        let mut rows = Self::empty(vocab);
        for (r, (&y, _)) in targets.iter().zip(&mask).enumerate().filter(|(_, (_, &m))| m != 0) {
            if y < 0 || y >= vocab as i64 {
                return Err(Error::TargetOutOfRange { token: r, target: y as u32, vocab });
            }
            rows.logits.extend_from_slice(&logits[r * vocab..(r + 1) * vocab]);
            rows.targets.push(y as u32);
        }
        Ok(rows)
    }
}

/// Samples rounds of the dump's responses (round r with seed `seed + r`) until `n` response rows
/// are in hand, and keeps the first `n`. `progress` gets the tokens sampled so far.
pub fn real_rows(
    model: &Llama,
    tok: &Tokenizer,
    s: &DumpSettings,
    n: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<RealRows> {
    let vocab = model.config().vocab;
    let mut rows = RealRows::empty(vocab);
    let mut done = 0usize;
    for round in 0u64.. {
        if rows.rows() >= n {
            break;
        }
        let settings = DumpSettings { seed: s.seed.wrapping_add(round), ..*s };
        let responses = sample_responses(model, tok, &settings, &mut |k| progress(done + k))?;
        for (i, mut r) in responses.into_iter().enumerate() {
            rows.logits.extend(take_logits(i, &mut r, vocab)?);
            rows.targets.extend(&r.tokens);
            done += r.tokens.len();
        }
    }
    rows.truncate(n);
    Ok(rows)
}

/// Every logit as f32 (exact for bf16 and f16).
fn widen(view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(data),
        Dtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => {
            return Err(Error::DTypeMismatch {
                name: "logits",
                expected: "f32, bf16 or f16".into(),
                got: format!("{other:?}"),
            })
        }
    })
}

fn check_tokens(name: &'static str, view: &TensorView<'_>, dtype: Dtype, shape: &[usize]) -> Result<()> {
    if view.dtype() != dtype {
        return Err(Error::DTypeMismatch { name, expected: format!("{dtype:?}"), got: format!("{:?}", view.dtype()) });
    }
    if view.shape() != shape {
        return Err(Error::ShapeMismatch {
            name,
            expected: format!("{shape:?} (the logits' shape without V)"),
            got: format!("{:?}", view.shape()),
        });
    }
    Ok(())
}

/// Writes `logits` (`token_shape` + `[V]`, narrowed to `dtype` by round-to-nearest-even),
/// `targets` (i64) and `mask` (u8), with one metadata entry: safetensors writes its metadata map
/// in hash order, and a seed must give a byte-identical file.
fn write_file(
    path: &Path,
    dtype: DType,
    logits: &[f32],
    token_shape: &[usize],
    targets: &[u32],
    mask: &[u8],
    generator: &str,
) -> Result<()> {
    let narrowed: Vec<u16>;
    let (st_dtype, bytes): (Dtype, &[u8]) = match dtype {
        DType::F32 => (Dtype::F32, bytemuck::cast_slice(logits)),
        DType::BF16 => {
            narrowed = logits.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
            (Dtype::BF16, bytemuck::cast_slice(&narrowed))
        }
        DType::F16 => {
            narrowed = logits.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            (Dtype::F16, bytemuck::cast_slice(&narrowed))
        }
    };
    let tokens: usize = token_shape.iter().product();
    let vocab = logits.len().checked_div(tokens).unwrap_or(0);
    let logit_shape = [token_shape, &[vocab]].concat();
    let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let view = |d, shape: &[usize], b| TensorView::new(d, shape.to_vec(), b).map_err(|e| io_error(path, e));
    let tensors = vec![
        ("logits", view(st_dtype, &logit_shape, bytes)?),
        ("targets", view(Dtype::I64, token_shape, bytemuck::cast_slice(&ids))?),
        ("mask", view(Dtype::U8, token_shape, mask)?),
    ];
    let meta = [("generator".to_string(), generator.to_string())].into_iter().collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    safetensors::serialize_to_file(tensors, Some(meta), path).map_err(|e| io_error(path, e))
}
