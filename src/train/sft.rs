//! Supervised fine-tuning: mean negative log-likelihood of given response tokens, the log-probs
//! coming from the token-stats op (its `logp` output is differentiable, ∂/∂z = δ_y − p). Used for
//! the SFT phase on reference answers and for RFT on selected rollouts.

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::Rng;

use super::model::Policy;
use super::task::{Problem, Task, PAD};
use super::LossImpl;
use crate::config::TokenStatsConfig;
use crate::error::Result;

/// One training sequence: prompt + response tokens (`[P + R]`) and the response mask (`[R]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Prompt and response, padded to P + R.
    pub seq: Vec<u32>,
    /// 1 for response tokens that count.
    pub mask: Vec<f32>,
}

impl Example {
    /// The reference answer to `p`, padded to the task's response slots.
    pub fn reference(task: &Task, p: &Problem) -> Self {
        let r = task.max_response();
        let answer = task.answer(p);
        let mut seq = task.prompt(p);
        let mut mask = vec![0.0; r];
        mask[..answer.len()].iter_mut().for_each(|m| *m = 1.0);
        seq.extend(answer.iter().copied().chain(std::iter::repeat(PAD)).take(r));
        Self { seq, mask }
    }
}

/// AdamW without weight decay: decay would shrink the garbage-token logits by itself and blur
/// what the losses do to them.
pub fn optimizer(vars: Vec<Var>, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })?)
}

/// Supervised fine-tuning on a fixed set of examples: each step draws `batch` examples uniformly
/// (with replacement) and takes one optimizer step on their mean token NLL.
pub struct Trainer<'a> {
    /// The model being trained.
    pub policy: &'a Policy,
    /// Its optimizer.
    pub opt: AdamW,
    /// Prompt length P.
    pub prompt_len: usize,
    /// Fused or naive op.
    pub imp: LossImpl,
}

impl Trainer<'_> {
    /// One step on `batch` examples drawn from `data`; returns the loss (mean NLL per token).
    pub fn step(&mut self, data: &[Example], batch: usize, rng: &mut StdRng) -> Result<f32> {
        let picks: Vec<&Example> = (0..batch).map(|_| &data[rng.random_range(0..data.len())]).collect();
        let len = picks[0].seq.len();
        let r = picks[0].mask.len();
        let seqs: Vec<u32> = picks.iter().flat_map(|e| e.seq.iter().copied()).collect();
        let mask: Vec<f32> = picks.iter().flat_map(|e| e.mask.iter().copied()).collect();
        let targets: Vec<u32> = picks.iter().flat_map(|e| e.seq[len - r..].iter().copied()).collect();
        let device = self.policy.device();
        let seqs = Tensor::from_vec(seqs, (batch, len), device)?;
        let targets = Tensor::from_vec(targets, (batch, r), device)?;
        let mask = Tensor::from_vec(mask, (batch, r), device)?;
        let logits = self.policy.response_logits(&seqs, self.prompt_len)?;
        let cfg = TokenStatsConfig { top_p: None, ..Default::default() };
        let stats = self.imp.token_stats(&logits, Some(&targets), &cfg)?;
        let logp = stats.logp.ok_or_else(|| crate::Error::Candle("token_stats returned no logp".into()))?;
        let tokens = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        let loss = ((logp * &mask)?.sum_all()? * (-1.0 / tokens as f64))?;
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        Ok(loss.to_scalar::<f32>()?)
    }
}
