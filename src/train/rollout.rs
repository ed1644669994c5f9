//! Batched sampling at temperature 1, with per-token statistics of the sampling policy from the
//! token-stats op: log-prob of the sampled token (`old_logp`), entropy, Rollout Branching Factor
//! at top-p 0.95 and the probability mass on garbage ids. With a sampling filter the tokens are
//! drawn as a rollout engine draws them ([`super::sampler`]) and `old_logp` is the engine's
//! truncated log-prob ℓ̃_old.
//!
//! No KV cache: responses are at most d + 2 tokens, so each step reruns the (tiny) trunk on the
//! whole prefix and sends only the last position through the LM head, the expensive layer.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;

use super::model::Policy;
use super::sampler::{pick_filtered, FilteredPick};
use super::task::{Problem, Task, EOS, PAD, TASK_TOKENS};
use super::LossImpl;
use crate::config::{SamplingFilter, TokenStatsConfig};
use crate::error::Result;

/// Sequences generated per forward batch: bounds the `[chunk, V]` logits held at once.
const CHUNK: usize = 512;

/// A batch of sampled responses. Sequence-major: sequence i owns `seqs[i·(P+R)..]` and
/// `mask[i·R..]` etc. (P = prompt length, R = the task's longest response); consecutive
/// sequences of the same problem form a GRPO group.
#[derive(Debug, Clone, Default)]
pub struct Rollouts {
    /// Prompt length P.
    pub prompt_len: usize,
    /// Response slots R.
    pub resp_len: usize,
    /// Index of each sequence's problem in the problem list it was sampled from.
    pub problems: Vec<usize>,
    /// Prompt + response tokens, `[B, P + R]`, `PAD` after `<eos>`.
    pub seqs: Vec<u32>,
    /// 1 for sampled tokens (through `<eos>`), 0 for padding, `[B, R]`.
    pub mask: Vec<f32>,
    /// Sampling policy's log-prob of each sampled token, `[B, R]` (with a filter: under the
    /// sampler's kept set).
    pub old_logp: Vec<f32>,
    /// Entropy of the sampling distribution, `[B, R]`.
    pub entropy: Vec<f32>,
    /// Rollout Branching Factor (top-p 0.95) of the sampling distribution, `[B, R]`.
    pub branch: Vec<u32>,
    /// Probability mass on garbage ids (≥ [`TASK_TOKENS`]), `[B, R]`.
    pub garbage: Vec<f32>,
    /// Verifier reward per sequence, `[B]`.
    pub rewards: Vec<f32>,
}

impl Rollouts {
    /// Number of sequences B.
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    /// True when there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// Response token ids `[B, R]` (the targets of the loss).
    pub fn targets(&self) -> Vec<u32> {
        let (p, r) = (self.prompt_len, self.resp_len);
        self.seqs.chunks(p + r).flat_map(|s| s[p..].iter().copied()).collect()
    }

    /// Whether each response was verified correct.
    pub fn correct(&self) -> Vec<bool> {
        self.rewards.iter().map(|&r| r > 0.5).collect()
    }

    /// Counted tokens per response.
    pub fn lengths(&self) -> Vec<usize> {
        self.mask.chunks(self.resp_len).map(|m| m.iter().filter(|&&x| x != 0.0).count()).collect()
    }

    /// The mask restricted to correct responses (for statistics over correct responses only).
    pub fn mask_where(&self, keep: &[bool]) -> Vec<f32> {
        let r = self.resp_len;
        self.mask.iter().enumerate().map(|(t, &m)| if keep[t / r] { m } else { 0.0 }).collect()
    }

    /// Mean reward (Pass@1 over these samples).
    pub fn mean_reward(&self) -> f64 {
        self.rewards.iter().map(|&r| r as f64).sum::<f64>() / self.len().max(1) as f64
    }

    fn append(&mut self, other: Rollouts) {
        self.prompt_len = other.prompt_len;
        self.resp_len = other.resp_len;
        self.problems.extend(other.problems);
        self.seqs.extend(other.seqs);
        self.mask.extend(other.mask);
        self.old_logp.extend(other.old_logp);
        self.entropy.extend(other.entropy);
        self.branch.extend(other.branch);
        self.garbage.extend(other.garbage);
        self.rewards.extend(other.rewards);
    }
}

/// How rollouts are drawn: the ops behind the sampler's statistics, and the sampler's filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Fused or naive ops for the per-token statistics.
    pub imp: LossImpl,
    /// Top-k / top-p as an engine applies it (`None`: plain sampling).
    pub filter: Option<SamplingFilter>,
}

/// Samples `per_problem` responses to each problem `set[i]` for i in `ids` (in that order, so
/// the rollouts of one problem are consecutive), scores them with the task's verifier and
/// records the sampling statistics. Uniforms come from `rng` in a fixed order, so a seed gives
/// the same rollouts whatever the thread count.
pub fn sample(
    policy: &Policy,
    task: &Task,
    set: &[Problem],
    ids: &[usize],
    per_problem: usize,
    how: Sampling,
    rng: &mut StdRng,
) -> Result<Rollouts> {
    let Sampling { imp, filter } = how;
    let problems: Vec<usize> = ids.iter().flat_map(|&i| std::iter::repeat_n(i, per_problem)).collect();
    let mut out = Rollouts { prompt_len: task.prompt_len(), resp_len: task.max_response(), ..Default::default() };
    for chunk in problems.chunks(CHUNK) {
        let prompts = chunk.iter().map(|&i| task.prompt(&set[i])).collect();
        let mut part = generate(policy, task, prompts, imp, filter, rng)?;
        let (p, r) = (part.prompt_len, part.resp_len);
        part.rewards = chunk.iter().zip(part.seqs.chunks(p + r)).map(|(&i, s)| task.reward(&set[i], &s[p..])).collect();
        part.problems = chunk.to_vec();
        out.append(part);
    }
    Ok(out)
}

/// Autoregressive sampling of one chunk of prompts (all of length P).
fn generate(
    policy: &Policy,
    task: &Task,
    prompts: Vec<Vec<u32>>,
    imp: LossImpl,
    filter: Option<SamplingFilter>,
    rng: &mut StdRng,
) -> Result<Rollouts> {
    let (b, p, r) = (prompts.len(), task.prompt_len(), task.max_response());
    let vocab = policy.config().vocab;
    let mut rows = prompts;
    let mut out = Rollouts {
        prompt_len: p,
        resp_len: r,
        mask: vec![0.0; b * r],
        old_logp: vec![0.0; b * r],
        entropy: vec![0.0; b * r],
        branch: vec![0; b * r],
        garbage: vec![0.0; b * r],
        ..Default::default()
    };
    let mut done = vec![false; b];
    let cfg = TokenStatsConfig::default();
    for step in 0..r {
        if done.iter().all(|&d| d) {
            rows.iter_mut().for_each(|row| row.push(PAD));
            continue;
        }
        let len = p + step;
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let tokens = Tensor::from_vec(flat, (b, len), policy.device())?;
        let last = policy.hidden(&tokens)?.narrow(1, len - 1, 1)?.squeeze(1)?.contiguous()?;
        let logits = policy.logits(&last)?;
        let stats = imp.token_stats(&logits, None, &cfg)?;
        let lse = stats.lse.to_vec1::<f32>()?;
        let entropy = stats.entropy.to_vec1::<f32>()?;
        let branch = match &stats.branch {
            Some(t) => t.to_vec1::<u32>()?,
            None => vec![0; b],
        };
        let host = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let uniforms: Vec<f64> = (0..b).map(|_| rng.random::<f64>()).collect();
        let picks: Vec<Pick> = host
            .par_chunks(vocab)
            .zip(&lse)
            .zip(&uniforms)
            .map_init(Vec::new, |buf, ((row, &l), &u)| match &filter {
                None => pick(row, l, u),
                Some(f) => {
                    // The garbage mass is of the unfiltered distribution, as without a filter.
                    let FilteredPick { token, logp, .. } = pick_filtered(row, 1.0, f, u, buf);
                    Pick { token, logp, garbage: pick(row, l, 0.0).garbage }
                }
            })
            .collect();
        for (i, row) in rows.iter_mut().enumerate() {
            if done[i] {
                row.push(PAD);
                continue;
            }
            let t = i * r + step;
            let pk = picks[i];
            out.mask[t] = 1.0;
            out.old_logp[t] = pk.logp;
            out.entropy[t] = entropy[i];
            out.branch[t] = branch[i];
            out.garbage[t] = pk.garbage;
            row.push(pk.token);
            done[i] = pk.token == EOS;
        }
    }
    out.seqs = rows.into_iter().flatten().collect();
    Ok(out)
}

/// A sampled token, its log-prob and the row's garbage mass.
#[derive(Debug, Clone, Copy)]
struct Pick {
    token: u32,
    logp: f32,
    garbage: f32,
}

/// Inverse-CDF sampling of one row of logits with its lse: the first id whose cumulative
/// probability exceeds `u` (the last id with p > 0 if rounding leaves the total below `u`).
/// The same pass sums the garbage mass directly (1 − task mass would lose it below f32 ε).
fn pick(row: &[f32], lse: f32, u: f64) -> Pick {
    let (mut acc, mut garbage) = (0.0f64, 0.0f64);
    let (mut token, mut last_positive) = (None, 0usize);
    for (j, &x) in row.iter().enumerate() {
        let p = (x - lse).exp() as f64;
        if j >= TASK_TOKENS {
            garbage += p;
        }
        if token.is_none() {
            acc += p;
            if p > 0.0 {
                last_positive = j;
            }
            if acc > u {
                token = Some(j);
            }
        }
    }
    let y = token.unwrap_or(last_positive);
    Pick { token: y as u32, logp: row[y] - lse, garbage: garbage as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_follows_the_cdf() {
        // p = [0.5, 0.25, 0.25] in the first three ids, 0 elsewhere (−inf logits).
        let mut row = vec![f32::NEG_INFINITY; TASK_TOKENS + 2];
        row[0] = 0.5f32.ln();
        row[1] = 0.25f32.ln();
        row[TASK_TOKENS] = 0.25f32.ln();
        let lse = 0.0;
        assert_eq!(pick(&row, lse, 0.1).token, 0);
        assert_eq!(pick(&row, lse, 0.6).token, 1);
        let g = pick(&row, lse, 0.9);
        assert_eq!(g.token as usize, TASK_TOKENS);
        assert!((g.garbage - 0.25).abs() < 1e-6);
        assert!((g.logp - 0.25f32.ln()).abs() < 1e-6);
        // u at the very top of [0, 1) still lands on an id with p > 0.
        assert_eq!(pick(&row, lse, 1.0 - 1e-17).token as usize, TASK_TOKENS);
    }
}
