//! Evaluation of a checkpoint on held-out problems: n samples each, unbiased Pass@k for
//! k = 1..K, the K-rollout unsolvable set, and token entropy by relative position (over all
//! responses and over correct ones).

use std::collections::BTreeSet;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::config::CommonConfig;
use super::grpo::split_by_correctness;
use super::model::Policy;
use super::rollout::sample;
use super::task::{Problem, Task};
use crate::error::Result;
use crate::metrics::{entropy_by_position, masked_mean, overlap, pass_at_k_curve, unsolvable};

/// One checkpoint's evaluation (one line of `metrics.jsonl`, kind `"eval"`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    /// Checkpoint name (`base`, `sft`, `grpo-none`, `rft-baseline`, ...).
    pub checkpoint: String,
    /// Samples per problem n.
    pub n: usize,
    /// The k of each Pass@k entry (1..=K).
    pub k: Vec<usize>,
    /// Unbiased Pass@k, averaged over problems.
    pub pass_at_k: Vec<f64>,
    /// Correct samples per problem.
    pub correct_counts: Vec<usize>,
    /// The k of the unsolvable set (K).
    pub unsolvable_k: usize,
    /// Problems (held-out indices) with no correct answer among their first K samples.
    pub unsolvable: BTreeSet<usize>,
    /// Mean token entropy per relative-position bin, all responses (0 for an empty bin).
    pub entropy_by_position: Vec<f64>,
    /// Tokens per bin, all responses.
    pub position_counts: Vec<usize>,
    /// Mean token entropy per relative-position bin, correct responses only.
    pub entropy_by_position_correct: Vec<f64>,
    /// Tokens per bin, correct responses only.
    pub position_counts_correct: Vec<usize>,
    /// Mean token entropy over all response tokens.
    pub mean_entropy: f64,
    /// Mean over correct responses of their mean token entropy.
    pub entropy_correct: Option<f64>,
    /// Mean over incorrect responses of their mean token entropy.
    pub entropy_incorrect: Option<f64>,
    /// Mean Rollout Branching Factor over response tokens.
    pub mean_branch: f64,
    /// Mean response length (tokens, with `<eos>`).
    pub response_len: f64,
    /// Mean probability mass on garbage ids per sampled token.
    pub garbage_mass: f64,
    /// Wall time.
    pub seconds: f64,
}

impl EvalResult {
    /// Pass@k for a given k (`None` when k is outside 1..=K).
    pub fn pass_at(&self, k: usize) -> Option<f64> {
        self.k.iter().position(|&x| x == k).map(|i| self.pass_at_k[i])
    }
}

/// Evaluates `policy` on `problems`. The sampler is seeded from `cfg.seed` alone, so every
/// checkpoint is scored on draws from the same seed.
pub fn evaluate(
    name: &str,
    policy: &Policy,
    task: &Task,
    problems: &[Problem],
    cfg: &CommonConfig,
) -> Result<EvalResult> {
    let start = Instant::now();
    let n = cfg.eval_samples;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xE7A1_0000);
    let ids: Vec<usize> = (0..problems.len()).collect();
    let ro = sample(policy, task, problems, &ids, n, cfg.sampling(), &mut rng)?;
    let lengths: Vec<f64> = ro.lengths().iter().map(|&l| l as f64).collect();
    let samples = Samples {
        correct: &ro.correct(),
        entropy: &ro.entropy,
        branch: &ro.branch,
        mask: &ro.mask,
        resp_len: ro.resp_len,
        lengths: &lengths,
        garbage_mass: masked_mean(&ro.garbage, &ro.mask)?.unwrap_or(0.0),
    };
    eval_result(name, n, cfg.eval_k, cfg.bins, &samples, start)
}

/// Sampled responses to a list of problems (n consecutive per problem), in the padded `[B, R]`
/// view, as an evaluation needs them.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a, B> {
    /// Verifier verdict per response.
    pub correct: &'a [bool],
    /// Token entropy, `[B, R]`.
    pub entropy: &'a [f32],
    /// Branching factor, `[B, R]`.
    pub branch: &'a [B],
    /// Response mask, `[B, R]`.
    pub mask: &'a [f32],
    /// R.
    pub resp_len: usize,
    /// Length of each response in tokens.
    pub lengths: &'a [f64],
    /// Mean probability mass on garbage ids (0 where there are none).
    pub garbage_mass: f64,
}

/// The evaluation of `n` samples per problem: Pass@k for k = 1..`k_max`, the `k_max`-rollout
/// unsolvable set, entropy by relative position (`bins`) over all and over correct responses,
/// the entropy split by correctness, the mean branching factor and length.
pub fn eval_result<B: Copy + Into<f64>>(
    name: &str,
    n: usize,
    k_max: usize,
    bins: usize,
    s: &Samples<'_, B>,
    start: Instant,
) -> Result<EvalResult> {
    let per_problem: Vec<Vec<bool>> = s.correct.chunks(n).map(<[bool]>::to_vec).collect();
    let counts: Vec<usize> = per_problem.iter().map(|c| c.iter().filter(|&&x| x).count()).collect();
    let ks: Vec<usize> = (1..=k_max).collect();
    let r = s.resp_len;
    let all = entropy_by_position(s.entropy, s.mask, r, bins)?;
    let mask_correct: Vec<f32> =
        s.mask.iter().enumerate().map(|(t, &m)| if s.correct[t / r] { m } else { 0.0 }).collect();
    let correct_bins = entropy_by_position(s.entropy, &mask_correct, r, bins)?;
    let (ec, ei) = split_by_correctness(s.entropy, s.mask, r, s.correct)?;
    Ok(EvalResult {
        checkpoint: name.to_string(),
        n,
        pass_at_k: pass_at_k_curve(&counts, n, &ks)?,
        k: ks,
        correct_counts: counts,
        unsolvable_k: k_max,
        unsolvable: unsolvable(&per_problem, k_max)?,
        entropy_by_position: all.iter().map(|b| b.0).collect(),
        position_counts: all.iter().map(|b| b.1).collect(),
        entropy_by_position_correct: correct_bins.iter().map(|b| b.0).collect(),
        position_counts_correct: correct_bins.iter().map(|b| b.1).collect(),
        mean_entropy: masked_mean(s.entropy, s.mask)?.unwrap_or(0.0),
        entropy_correct: ec,
        entropy_incorrect: ei,
        mean_branch: masked_mean(s.branch, s.mask)?.unwrap_or(0.0),
        response_len: s.lengths.iter().sum::<f64>() / s.lengths.len().max(1) as f64,
        garbage_mass: s.garbage_mass,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// How two checkpoints' unsolvable sets overlap (one line of `metrics.jsonl`, kind `"overlap"`).
#[derive(Debug, Clone, Serialize)]
pub struct OverlapRecord {
    /// First checkpoint.
    pub a: String,
    /// Second checkpoint.
    pub b: String,
    /// |A|.
    pub unsolvable_a: usize,
    /// |B|.
    pub unsolvable_b: usize,
    /// |A ∩ B|.
    pub both: usize,
    /// |A ∖ B|: unsolvable for A only (B solved them).
    pub only_a: usize,
    /// |B ∖ A|: unsolvable for B only (A solved them).
    pub only_b: usize,
    /// |A ∩ B| / |A ∪ B|.
    pub jaccard: f64,
}

/// The overlap of every pair (earlier, later) of evaluations, in order.
pub fn overlaps(evals: &[EvalResult]) -> Vec<OverlapRecord> {
    let mut out = Vec::new();
    for (i, a) in evals.iter().enumerate() {
        for b in &evals[i + 1..] {
            let o = overlap(&a.unsolvable, &b.unsolvable);
            out.push(OverlapRecord {
                a: a.checkpoint.clone(),
                b: b.checkpoint.clone(),
                unsolvable_a: a.unsolvable.len(),
                unsolvable_b: b.unsolvable.len(),
                both: o.both.len(),
                only_a: o.only_a.len(),
                only_b: o.only_b.len(),
                jaccard: o.jaccard,
            });
        }
    }
    out
}
