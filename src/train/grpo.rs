//! One GRPO step: sample G rollouts for each of P prompts, verify, compute (shaped) advantages
//! with the CPU sequence pipeline, then optimizer updates on minibatches of whole groups with
//! the GRPO loss op. The step's metrics: entropy, branch and garbage mass of the sampling policy
//! (from the token-stats op during sampling), clip fraction and KL from the loss op's per-token
//! outputs, reward and length from the rollouts.

use std::time::Instant;

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer};
use rand::rngs::StdRng;
use serde::Serialize;

use super::config::{ShapingKind, TrainConfig};
use super::model::Policy;
use super::rollout::{sample, Rollouts};
use super::task::{Problem, Task};
use crate::config::{AdvantageConfig, TokenStatsConfig};
use crate::error::{Error, Result};
use crate::metrics::{masked_mean, mean_by_correctness, sequence_means};
use crate::ops::{GrpoLossInputs, GrpoLossOutput};
use crate::types::{CLIPPED, OUTSIDE_KEPT};

/// Metrics of one GRPO step (one line of `metrics.jsonl`, kind `"grpo"`).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Which shaping this run uses.
    pub shaping: &'static str,
    /// Step, from 1.
    pub step: usize,
    /// Mean verifier reward of the step's rollouts (their Pass@1).
    pub reward: f64,
    /// Mean token entropy over response tokens (the sampling policy).
    pub entropy: f64,
    /// Mean over correct responses of their mean token entropy (`None`: no correct response).
    pub entropy_correct: Option<f64>,
    /// The same over incorrect responses.
    pub entropy_incorrect: Option<f64>,
    /// Mean Rollout Branching Factor (top-p 0.95) over response tokens.
    pub branch: f64,
    /// Mean response length in tokens (with `<eos>`).
    pub response_len: f64,
    /// Fraction of response tokens whose clipped branch was active, over all updates.
    pub clip_frac: f64,
    /// Mean per-token KL (k3) to the SFT model, each token at its first update.
    pub kl: f64,
    /// Mean probability mass on garbage ids when each response token was sampled.
    pub garbage_mass: f64,
    /// Mean loss of the first pass's updates.
    pub loss: f64,
    /// With a sampling filter: the fraction of response tokens that the loss, recomputing the
    /// kept set K from the trainer's logits at each token's first update, found outside K
    /// (0 when sampler and trainer see the same logits). `None` without a filter (and then not
    /// written to `metrics.jsonl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_kept: Option<f64>,
    /// Wall time of the step.
    pub seconds: f64,
}

/// GRPO on one policy against a frozen reference (the SFT model).
pub struct GrpoTrainer<'a> {
    /// The policy being trained.
    pub policy: &'a Policy,
    /// The SFT model: the KL term's reference.
    pub reference: &'a Policy,
    /// The policy's optimizer.
    pub opt: AdamW,
    /// Loop settings.
    pub cfg: &'a TrainConfig,
    /// The task (prompts, verifier).
    pub task: &'a Task,
    /// Which shaping.
    pub shaping: ShapingKind,
}

/// Per-token tensors of one batch, `[B, R]`.
struct Batch {
    seqs: Tensor,
    targets: Tensor,
    mask: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    advantages: Tensor,
}

impl GrpoTrainer<'_> {
    /// One step on the problems `set[i]`, i in `ids` (P prompts, G rollouts each): sample,
    /// compute advantages on the whole batch, then `epochs` passes of `minibatches` updates,
    /// each on an equal share of the groups.
    pub fn step(&mut self, step: usize, set: &[Problem], ids: &[usize], rng: &mut StdRng) -> Result<StepMetrics> {
        let start = Instant::now();
        let cfg = self.cfg;
        let ro = sample(self.policy, self.task, set, ids, cfg.group_size, cfg.common.sampling(), rng)?;
        let batch = self.batch(&ro)?;
        let per_update = ro.len() / cfg.minibatches;
        let mut tally = UpdateTally::new(cfg.common.filter.is_some());
        for epoch in 0..cfg.epochs {
            for mb in 0..cfg.minibatches {
                let rows = mb * per_update..(mb + 1) * per_update;
                let out = self.update(&batch, rows.clone(), ro.prompt_len)?;
                tally.add(&out, &ro.mask[rows.start * ro.resp_len..rows.end * ro.resp_len], epoch == 0)?;
            }
        }
        let mut m = self.rollout_metrics(&ro, step)?;
        tally.finish(&mut m, &ro.mask, cfg.epochs, cfg.minibatches);
        m.seconds = start.elapsed().as_secs_f64();
        Ok(m)
    }

    /// One optimizer update on the sequences `rows` of the batch; returns the op's outputs.
    fn update(&mut self, b: &Batch, rows: std::ops::Range<usize>, prompt_len: usize) -> Result<GrpoLossOutput> {
        let take = |t: &Tensor| t.narrow(0, rows.start, rows.len());
        let (seqs, targets, mask) = (take(&b.seqs)?, take(&b.targets)?, take(&b.mask)?);
        let (old_logp, ref_logp, advantages) = (take(&b.old_logp)?, take(&b.ref_logp)?, take(&b.advantages)?);
        let logits = self.policy.response_logits(&seqs, prompt_len)?;
        let inputs = GrpoLossInputs {
            targets: &targets,
            mask: &mask,
            old_logp: &old_logp,
            ref_logp: Some(&ref_logp),
            advantages: &advantages,
            kept_mask: None,
        };
        let out = self.cfg.common.loss.grpo_loss(&logits, &inputs, &self.cfg.loss_config())?;
        let grads = out.loss.backward()?;
        self.opt.step(&grads)?;
        Ok(out)
    }

    /// The loss inputs: advantages from the CPU sequence pipeline (rewards → group-normalised
    /// A → shaping), reference log-probs from the frozen SFT model.
    fn batch(&self, ro: &Rollouts) -> Result<Batch> {
        let (b, r) = (ro.len(), ro.resp_len);
        let device = self.policy.device();
        let adv_cfg = AdvantageConfig { group_size: self.cfg.group_size, scale_by_std: self.cfg.scale_by_std };
        let adv =
            crate::cpu::token_advantages(&ro.rewards, &ro.old_logp, &ro.mask, r, &adv_cfg, &self.shaping.shaping())?;
        let seqs = Tensor::from_vec(ro.seqs.clone(), (b, ro.prompt_len + r), device)?;
        let targets = Tensor::from_vec(ro.targets(), (b, r), device)?;
        let ref_logits = self.reference.response_logits(&seqs, ro.prompt_len)?;
        // With a filter the KL compares truncated log-probs: the reference's over its own K.
        let ref_cfg = TokenStatsConfig { top_p: None, filter: self.cfg.common.filter, ..Default::default() };
        let ref_stats = self.cfg.common.loss.token_stats(&ref_logits, Some(&targets), &ref_cfg)?;
        let ref_logp = match self.cfg.common.filter {
            Some(_) => ref_stats.kept.and_then(|k| k.logp),
            None => ref_stats.logp,
        };
        let ref_logp = ref_logp.ok_or_else(|| Error::Candle("token_stats returned no logp".into()))?.detach();
        Ok(Batch {
            seqs,
            targets,
            mask: Tensor::from_vec(ro.mask.clone(), (b, r), device)?,
            old_logp: Tensor::from_vec(ro.old_logp.clone(), (b, r), device)?,
            ref_logp,
            advantages: Tensor::from_vec(adv, (b, r), device)?,
        })
    }

    /// Reward, entropy (all, correct, incorrect), branch, length and garbage mass of the
    /// rollouts, as the sampling policy saw them (the token-stats op during sampling).
    fn rollout_metrics(&self, ro: &Rollouts, step: usize) -> Result<StepMetrics> {
        let (ec, ei) = split_by_correctness(&ro.entropy, &ro.mask, ro.resp_len, &ro.correct())?;
        let lengths = ro.lengths();
        Ok(StepMetrics {
            shaping: self.shaping.name(),
            step,
            reward: ro.mean_reward(),
            entropy: masked_mean(&ro.entropy, &ro.mask)?.unwrap_or(0.0),
            entropy_correct: ec,
            entropy_incorrect: ei,
            branch: masked_mean(&ro.branch, &ro.mask)?.unwrap_or(0.0),
            response_len: lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64,
            clip_frac: 0.0,
            kl: 0.0,
            garbage_mass: masked_mean(&ro.garbage, &ro.mask)?.unwrap_or(0.0),
            loss: 0.0,
            outside_kept: None,
            seconds: 0.0,
        })
    }
}

/// The loss op's outputs summed over a step's updates: clipped tokens (every pass), KL and loss
/// (first pass only, so each token counts once).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateTally {
    clipped: usize,
    /// Tokens flagged outside the kept set at their first update; `None` without a filter.
    outside: Option<usize>,
    kl_sum: f64,
    loss_sum: f64,
}

impl UpdateTally {
    /// An empty tally; `filtered`: the loss replays a sampling filter (count outside-K tokens).
    pub fn new(filtered: bool) -> Self {
        Self { outside: filtered.then_some(0), ..Self::default() }
    }

    /// Adds one update's outputs; `mask` is its rows' response mask.
    pub fn add(&mut self, out: &GrpoLossOutput, mask: &[f32], first_pass: bool) -> Result<()> {
        let flags = out.clip_flags.flatten_all()?.to_vec1::<u8>()?;
        self.clipped += flags.iter().zip(mask).filter(|(&f, &m)| m != 0.0 && f & CLIPPED != 0).count();
        if first_pass {
            if let Some(o) = self.outside.as_mut() {
                *o += flags.iter().zip(mask).filter(|(&f, &m)| m != 0.0 && f & OUTSIDE_KEPT != 0).count();
            }
            if let Some(kl) = &out.kl {
                let kl = kl.flatten_all()?.to_vec1::<f32>()?;
                self.kl_sum += kl.iter().zip(mask).map(|(&k, &m)| k as f64 * m as f64).sum::<f64>();
            }
            self.loss_sum += out.loss.to_scalar::<f32>()? as f64;
        }
        Ok(())
    }

    /// Sets the step's clip fraction, mean KL per token and mean first-pass loss; `mask` is the
    /// whole step's response mask.
    pub fn finish(&self, m: &mut StepMetrics, mask: &[f32], epochs: usize, minibatches: usize) {
        let tokens: f64 = mask.iter().map(|&x| x as f64).sum::<f64>().max(1.0);
        m.clip_frac = self.clipped as f64 / (tokens * epochs as f64);
        m.kl = self.kl_sum / tokens;
        m.loss = self.loss_sum / minibatches as f64;
        m.outside_kept = self.outside.map(|o| o as f64 / tokens);
    }
}

/// Mean over correct and over incorrect responses of each response's mean token value, in the
/// padded `[B, R]` view (R = `resp_len`).
pub fn split_by_correctness(
    values: &[f32],
    mask: &[f32],
    resp_len: usize,
    correct: &[bool],
) -> Result<(Option<f64>, Option<f64>)> {
    let per_seq = sequence_means(values, mask, resp_len)?;
    // Every sampled response has at least one token, so `None` (no tokens) does not occur;
    // such a sequence would simply be left out.
    let (v, c): (Vec<f64>, Vec<bool>) = per_seq.iter().zip(correct).filter_map(|(m, &c)| m.map(|m| (m, c))).unzip();
    mean_by_correctness(&v, &c)
}
