//! Batched, KV-cached sampling from a [`Llama`], with the per-token statistics of the sampling
//! distribution from the fused token-stats op over the full vocabulary: the log-prob of each
//! sampled token, the entropy and the Rollout Branching Factor (top-p 0.95).
//!
//! Prompts are cut into chunks of [`SampleSettings::batch`] rows; a chunk is left-padded to its
//! longest prompt, prefilled in one forward, then decoded one column at a time; a row leaves the
//! cache when it emits the end-of-sequence token. Uniforms come from the caller's generator in a
//! fixed order (chunk, step, active row), so a seed and a batch size give the same responses.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use super::llama::Llama;
use crate::config::{SamplingFilter, TokenStatsConfig, DEFAULT_TOP_P};
use crate::error::{Error, Result};
use crate::ops;
use crate::train::sampler::pick_filtered;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Most tokens generated per response (the end-of-sequence token included).
    pub max_new: usize,
    /// Sampling temperature T > 0 (statistics are of softmax(z / T)).
    pub temperature: f32,
    /// Take the most probable token instead of sampling (statistics unchanged).
    pub greedy: bool,
    /// Rows per forward batch.
    pub batch: usize,
    /// Keep every response's raw logits (`[len, V]` f32 each): for dumps, not for long runs.
    pub keep_logits: bool,
    /// Draw from the top-k / top-p filtered distribution as a rollout engine does
    /// ([`crate::train::sampler`]); `Response::logp` is then the engine's truncated log-prob.
    pub filter: Option<SamplingFilter>,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self { max_new: 48, temperature: 1.0, greedy: false, batch: 64, keep_logits: false, filter: None }
    }
}

impl SampleSettings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        TokenStatsConfig { temperature: self.temperature, filter: self.filter, ..Default::default() }.validate()?;
        if self.max_new == 0 {
            return Err(Error::InvalidConfig { name: "max_new", value: "0".into(), why: "must be >= 1" });
        }
        if self.batch == 0 {
            return Err(Error::InvalidConfig { name: "batch", value: "0".into(), why: "must be >= 1" });
        }
        Ok(())
    }
}

/// One sampled response and the statistics of each of its tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    /// Index of its prompt.
    pub prompt: usize,
    /// Sampled ids, through the end-of-sequence token when it came.
    pub tokens: Vec<u32>,
    /// True when the end-of-sequence token was sampled (false: cut at `max_new`).
    pub finished: bool,
    /// log-prob of each sampled token under softmax(z / T) (with a filter: under the sampler's
    /// kept set, renormalised).
    pub logp: Vec<f32>,
    /// Entropy (nats) of each step's distribution.
    pub entropy: Vec<f32>,
    /// Rollout Branching Factor (top-p 0.95) of each step's distribution.
    pub branch: Vec<u32>,
    /// Raw logits `[tokens.len(), V]` when [`SampleSettings::keep_logits`].
    pub logits: Option<Vec<f32>>,
}

impl Response {
    /// The response text up to (not including) the end-of-sequence token `eos`.
    pub fn text(&self, tok: &super::tokenizer::Tokenizer, eos: u32) -> String {
        let ids: Vec<u32> = self.tokens.iter().copied().take_while(|&t| t != eos).collect();
        tok.decode(&ids)
    }
}

/// Samples one response per prompt (repeat a prompt for several samples). `eos` ends a response;
/// `progress` is called with the number of tokens sampled after every decoding step.
pub fn sample(
    model: &Llama,
    prompts: &[Vec<u32>],
    eos: u32,
    settings: &SampleSettings,
    rng: &mut StdRng,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Response>> {
    settings.validate()?;
    let ctx = model.config().context;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::ShapeMismatch {
                name: "prompt",
                expected: "at least one token".into(),
                got: format!("prompt {i} is empty"),
            });
        }
        if p.len() + settings.max_new > ctx {
            return Err(Error::PromptTooLong { index: i, len: p.len(), new: settings.max_new, context: ctx });
        }
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(settings.batch).enumerate() {
        out.extend(sample_chunk(model, chunk, c * settings.batch, eos, settings, rng, progress)?);
    }
    Ok(out)
}

fn sample_chunk(
    model: &Llama,
    prompts: &[Vec<u32>],
    first: usize,
    eos: u32,
    s: &SampleSettings,
    rng: &mut StdRng,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Response>> {
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let start: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    // Pads are the end-of-sequence id: any in-vocabulary id would do, none is attended to.
    let padded: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(eos, width - p.len()).chain(p.iter().copied())).collect();
    let device = model.device().clone();
    let mut cache = model.new_cache(start);
    let mut logits = model.extend(&Tensor::from_vec(padded, (b, width), &device)?, &mut cache)?;
    let mut responses: Vec<Response> = (0..b)
        .map(|i| Response { prompt: first + i, logits: s.keep_logits.then(Vec::new), ..Default::default() })
        .collect();
    // Rows of the cache, in order: which response each one is.
    let mut active: Vec<usize> = (0..b).collect();
    let stats_cfg =
        TokenStatsConfig { temperature: s.temperature, top_p: Some(DEFAULT_TOP_P), check_finite: true, filter: None };
    let vocab = model.config().vocab;
    let mut sampled = 0usize;
    let mut pick_buf = Vec::new();
    for step in 0..s.max_new {
        let stats = ops::token_stats(&logits, None, &stats_cfg)?;
        let lse = stats.lse.to_vec1::<f32>()?;
        let entropy = stats.entropy.to_vec1::<f32>()?;
        let branch = match &stats.branch {
            Some(t) => t.to_vec1::<u32>()?,
            None => vec![0; active.len()],
        };
        let host = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (row, &r) in active.iter().enumerate() {
            let z = &host[row * vocab..(row + 1) * vocab];
            let u = rng.random::<f64>();
            let (y, logp) = match (s.greedy, &s.filter) {
                (true, _) => {
                    let y = argmax(z);
                    (y, z[y as usize] / s.temperature - lse[row])
                }
                (false, None) => {
                    let y = pick(z, s.temperature, lse[row], u);
                    (y, z[y as usize] / s.temperature - lse[row])
                }
                (false, Some(f)) => {
                    let p = pick_filtered(z, s.temperature, f, u, &mut pick_buf);
                    (p.token, p.logp)
                }
            };
            let resp = &mut responses[r];
            resp.tokens.push(y);
            resp.logp.push(logp);
            resp.entropy.push(entropy[row]);
            resp.branch.push(branch[row]);
            if let Some(l) = resp.logits.as_mut() {
                l.extend_from_slice(z);
            }
            sampled += 1;
            if y == eos {
                resp.finished = true;
            } else {
                keep.push(row);
                next.push(y);
            }
        }
        progress(sampled);
        if next.is_empty() || step + 1 == s.max_new {
            break;
        }
        if keep.len() != active.len() {
            cache.retain(&keep)?;
            active = keep.iter().map(|&row| active[row]).collect();
        }
        let n = next.len();
        logits = model.extend(&Tensor::from_vec(next, (n, 1), &device)?, &mut cache)?;
    }
    Ok(responses)
}

fn argmax(z: &[f32]) -> u32 {
    let mut best = 0;
    for (j, &x) in z.iter().enumerate() {
        if x > z[best] {
            best = j;
        }
    }
    best as u32
}

/// Inverse-CDF sampling from softmax(z / T) with its lse: the first id whose cumulative
/// probability exceeds `u` (the last id with p > 0 when rounding leaves the total below `u`).
fn pick(z: &[f32], temperature: f32, lse: f32, u: f64) -> u32 {
    let mut acc = 0.0f64;
    let mut last_positive = 0usize;
    for (j, &x) in z.iter().enumerate() {
        let p = ((x / temperature - lse) as f64).exp();
        if p > 0.0 {
            last_positive = j;
        }
        acc += p;
        if acc > u {
            return j as u32;
        }
    }
    last_positive as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_follows_the_cdf_at_a_temperature() {
        // At T = 2, z = 2·ln p gives p = [0.5, 0.25, 0.25].
        let z = [2.0 * 0.5f32.ln(), 2.0 * 0.25f32.ln(), 2.0 * 0.25f32.ln(), f32::NEG_INFINITY];
        assert_eq!(pick(&z, 2.0, 0.0, 0.1), 0);
        assert_eq!(pick(&z, 2.0, 0.0, 0.6), 1);
        assert_eq!(pick(&z, 2.0, 0.0, 0.9), 2);
        assert_eq!(pick(&z, 2.0, 0.0, 1.0 - 1e-17), 2);
        assert_eq!(argmax(&z), 0);
    }
}
