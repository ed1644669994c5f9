//! `rlvr train --model smollm2`: GRPO on a real chat model with the fused ops.
//!
//! Each step samples G responses to each of P prompts (KV-cached, batched; per-token statistics
//! of the sampling policy from the fused token-stats op), verifies them, computes (shaped)
//! advantages with the CPU sequence pipeline, then runs `epochs` passes of `minibatches` AdamW
//! updates on equal shares of the groups with the fused GRPO loss op ([`crate::ops::grpo_loss`],
//! forward and backward to the logits, then candle's backward through the model). The KL to the
//! initial model (k3) is measured at every update and penalised with `kl_coef` (0 = measured
//! only). Held-out Pass@k is evaluated before and after. The metrics are the toy loop's
//! ([`StepMetrics`], [`EvalResult`]), so its figures draw them.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use super::generate::{sample, Response, SampleSettings};
use super::llama::{Llama, Trainable};
use super::task::{is_correct, problems, Problem, TaskKind};
use super::tokenizer::Tokenizer;
use crate::config::{AdvantageConfig, GrpoConfig, KlEstimator, KlPenalty, SamplingFilter, TokenStatsConfig};
use crate::error::{Error, Result};
use crate::metrics::masked_mean;
use crate::ops::{self, GrpoLossInputs, GrpoLossOutput};
use crate::train::eval::{eval_result, overlaps, EvalResult, OverlapRecord, Samples};
use crate::train::figures;
use crate::train::grpo::{split_by_correctness, StepMetrics, UpdateTally};
use crate::train::log::{MetricsLog, Record};
use crate::train::{Progress, ShapingKind};

/// Settings of GRPO on a real model.
#[derive(Debug, Clone)]
pub struct LmTrainConfig {
    /// The GGUF file.
    pub model: PathBuf,
    /// Which questions.
    pub task: TaskKind,
    /// GRPO steps.
    pub steps: usize,
    /// Prompts per step P.
    pub prompts_per_step: usize,
    /// Responses per prompt G (the group).
    pub group_size: usize,
    /// Passes over each step's rollouts.
    pub epochs: usize,
    /// Optimizer updates per pass, each on an equal share of the groups.
    pub minibatches: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Loss settings (clip-higher, token-mean); `kl` is set from `kl_coef`.
    pub grpo: GrpoConfig,
    /// KL coefficient to the initial model (0 = measured only).
    pub kl_coef: f32,
    /// Divide advantages by the group std (GRPO) or not (Dr. GRPO).
    pub scale_by_std: bool,
    /// Advantage shaping.
    pub shaping: ShapingKind,
    /// Most tokens per response.
    pub max_new: usize,
    /// Sampling temperature (the loss uses the same).
    pub temperature: f32,
    /// Which weights train.
    pub trainable: Trainable,
    /// Held-out problems for Pass@k before and after.
    pub eval_problems: usize,
    /// Samples per held-out problem (n of Pass@k, k = 1..n).
    pub eval_samples: usize,
    /// Relative-position bins of the entropy profile.
    pub bins: usize,
    /// Rows per sampling batch.
    pub batch: usize,
    /// Seed of the problem split, the prompt order and every sampler.
    pub seed: u64,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Where the model and the ops run.
    pub device: Device,
    /// The sampler's filter (top-k / top-p), replayed by the loss (ratio from ℓ̃); `None`: plain
    /// sampling.
    pub filter: Option<SamplingFilter>,
}

impl LmTrainConfig {
    /// The defaults: 6 steps of 4 prompts × 8 responses on one-digit additions, every block but
    /// the tied embedding trained, Pass@k on 20 held-out problems × 8 before and after;
    /// ≈ 12 minutes on 2 cores.
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            task: TaskKind::Add1,
            steps: 6,
            prompts_per_step: 4,
            group_size: 8,
            epochs: 1,
            minibatches: 2,
            lr: 2e-6,
            grpo: GrpoConfig::default(),
            kl_coef: 0.0,
            scale_by_std: true,
            shaping: ShapingKind::None,
            max_new: 32,
            temperature: 1.0,
            trainable: Trainable { blocks: usize::MAX, embedding: false },
            eval_problems: 20,
            eval_samples: 8,
            bins: 10,
            batch: 160,
            seed: 0,
            out_dir: PathBuf::from("runs/train-smollm2"),
            device: Device::Cpu,
            filter: None,
        }
    }

    /// Two steps of 2 prompts × 4, the last 2 blocks, 4 held-out problems × 4: about a minute.
    pub fn quick(model: PathBuf) -> Self {
        Self {
            steps: 2,
            prompts_per_step: 2,
            group_size: 4,
            max_new: 24,
            trainable: Trainable { blocks: 2, embedding: false },
            eval_problems: 4,
            eval_samples: 4,
            out_dir: PathBuf::from("runs/train-smollm2-quick"),
            ..Self::new(model)
        }
    }

    /// The loss settings, with the KL term always on (coefficient `kl_coef`, possibly 0) so the
    /// fused op reports the per-token KL at no extra pass.
    pub fn loss_config(&self) -> GrpoConfig {
        GrpoConfig {
            kl: Some(KlPenalty { coef: self.kl_coef, estimator: KlEstimator::K3 }),
            temperature: self.temperature,
            filter: self.filter,
            ..self.grpo
        }
    }

    /// How rollouts are sampled.
    pub fn sample_settings(&self) -> SampleSettings {
        SampleSettings {
            max_new: self.max_new,
            temperature: self.temperature,
            batch: self.batch,
            filter: self.filter,
            ..Default::default()
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, why| Err(Error::InvalidConfig { name, value, why });
        for (name, v) in [
            ("steps", self.steps),
            ("prompts", self.prompts_per_step),
            ("epochs", self.epochs),
            ("minibatches", self.minibatches),
            ("eval_problems", self.eval_problems),
        ] {
            if v == 0 {
                return bad(name, "0".into(), "must be >= 1");
            }
        }
        if !self.prompts_per_step.is_multiple_of(self.minibatches) {
            return bad("minibatches", self.minibatches.to_string(), "must divide --prompts (whole groups per update)");
        }
        if self.group_size < 2 {
            return bad("group_size", self.group_size.to_string(), "must be >= 2: a group of one has advantage 0");
        }
        if self.eval_samples < 1 {
            return bad("eval_samples", "0".into(), "must be >= 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "must be finite and > 0");
        }
        if self.eval_problems >= self.task.distinct() {
            return bad("eval_problems", self.eval_problems.to_string(), "must leave training problems of the task");
        }
        if self.bins == 0 {
            return bad("bins", "0".into(), "must be >= 1");
        }
        self.sample_settings().validate()?;
        self.loss_config().validate()
    }
}

/// What a GRPO run on the real model produced.
#[derive(Debug, Clone)]
pub struct LmTrainReport {
    /// `metrics.jsonl`.
    pub metrics: PathBuf,
    /// Evaluations: `base`, then `grpo-<shaping>`.
    pub evals: Vec<EvalResult>,
    /// Their unsolvable-set overlap.
    pub overlaps: Vec<OverlapRecord>,
    /// Every GRPO step.
    pub steps: Vec<StepMetrics>,
    /// PNG files.
    pub plots: Vec<PathBuf>,
    /// Parameters trained.
    pub trainable_params: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Runs GRPO on the model of `cfg.model`; see the module doc.
pub fn run_lm_train(cfg: &LmTrainConfig, progress: &mut dyn Progress) -> Result<LmTrainReport> {
    cfg.validate()?;
    let start = Instant::now();
    let (mut model, tok) = super::load(&cfg.model, &cfg.device)?;
    train_with(&mut model, &tok, cfg, progress, start)
}

/// [`run_lm_train`] with a model already loaded (tests use a tiny one); `model`'s trainable set
/// is replaced by `cfg.trainable`, and it is trained in place.
pub fn train_with(
    model: &mut Llama,
    tok: &Tokenizer,
    cfg: &LmTrainConfig,
    progress: &mut dyn Progress,
    start: Instant,
) -> Result<LmTrainReport> {
    cfg.validate()?;
    model.set_trainable(cfg.trainable)?;
    let mut log = MetricsLog::create(&cfg.out_dir)?;
    let settings = json!({
        "command": "train", "model": cfg.model.display().to_string(), "task": cfg.task.name(),
        "steps": cfg.steps, "prompts_per_step": cfg.prompts_per_step, "group_size": cfg.group_size,
        "epochs": cfg.epochs, "minibatches": cfg.minibatches, "lr": cfg.lr, "kl_coef": cfg.kl_coef,
        "clip_low": cfg.grpo.clip_low, "clip_high": cfg.grpo.clip_high, "shaping": cfg.shaping.name(),
        "max_new": cfg.max_new, "temperature": cfg.temperature, "train_blocks": cfg.trainable.blocks.min(model.config().layers),
        "train_embedding": cfg.trainable.embedding, "trainable_params": model.trainable_params(),
        "eval_problems": cfg.eval_problems, "eval_samples": cfg.eval_samples, "seed": cfg.seed,
    });
    log.write(&Record::Config(&settings))?;
    // The task's problems, shuffled once: the first `eval_problems` are held out.
    let all = problems(cfg.task, cfg.task.distinct(), cfg.seed)?;
    let (held_out, train) = all.split_at(cfg.eval_problems);
    let model: &Llama = model;
    let mut evals = vec![evaluate("base", model, tok, held_out, cfg, progress)?];
    log.write(&Record::Eval(&evals[0]))?;
    let reference = model.deep_copy()?;
    let params = ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() };
    let mut trainer = Trainer { opt: AdamW::new(model.vars(), params)?, model, reference: &reference, tok, cfg };
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6770_0000);
    order.shuffle(&mut rng);
    let mut steps = Vec::new();
    progress.start(&format!("grpo {}", cfg.shaping.name()), cfg.steps as u64);
    for step in 1..=cfg.steps {
        let ids: Vec<usize> =
            (0..cfg.prompts_per_step).map(|i| order[((step - 1) * cfg.prompts_per_step + i) % order.len()]).collect();
        let m = trainer.step(step, train, &ids, &mut rng)?;
        log.write(&Record::Grpo(&m))?;
        progress.step(&format!("reward {:.2}", m.reward));
        steps.push(m);
    }
    progress.finish();
    let name = format!("grpo-{}", cfg.shaping.name());
    evals.push(evaluate(&name, model, tok, held_out, cfg, progress)?);
    log.write(&Record::Eval(&evals[1]))?;
    let overlaps = overlaps(&evals);
    for o in &overlaps {
        log.write(&Record::Overlap(o))?;
    }
    let plots = figures::train(&cfg.out_dir, &steps, &evals)?;
    Ok(LmTrainReport {
        metrics: log.path().to_path_buf(),
        evals,
        overlaps,
        steps,
        plots,
        trainable_params: model.trainable_params(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Sampled responses to a list of problems, verified, in the padded `[B, W + R]` layout of the
/// loss: row b is its prompt right-aligned in W columns (W = the longest prompt), then its
/// response padded to R (the longest response).
pub struct Rollouts {
    /// Problem of each response (index into the list it was sampled from).
    pub problems: Vec<usize>,
    /// The responses and their sampling statistics.
    pub responses: Vec<Response>,
    /// Verifier reward (1 or 0) of each response.
    pub rewards: Vec<f32>,
    /// Prompt columns W.
    pub width: usize,
    /// Response columns R.
    pub resp_len: usize,
    /// First real column of each row (W − prompt length).
    pub start: Vec<usize>,
    /// Tokens `[B, W + R]` (pads: the end-of-turn id).
    pub seqs: Vec<u32>,
    /// Response targets `[B, R]` (0 in padding).
    pub targets: Vec<u32>,
    /// 1 for response tokens (end-of-turn included), `[B, R]`.
    pub mask: Vec<f32>,
    /// The sampler's log-prob of each target, `[B, R]` (0 in padding).
    pub old_logp: Vec<f32>,
    /// Entropy, `[B, R]`.
    pub entropy: Vec<f32>,
    /// Branching factor, `[B, R]`.
    pub branch: Vec<f32>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts")
            .field("rows", &self.rewards.len())
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl Rollouts {
    /// Samples `per_problem` responses to each of `set[i]`, i in `ids` (consecutive per
    /// problem), and lays them out.
    pub fn sample(
        model: &Llama,
        tok: &Tokenizer,
        set: &[Problem],
        ids: &[usize],
        per_problem: usize,
        cfg: &LmTrainConfig,
        rng: &mut StdRng,
    ) -> Result<Self> {
        let problems: Vec<usize> = ids.iter().flat_map(|&i| std::iter::repeat_n(i, per_problem)).collect();
        let prompts: Vec<Vec<u32>> =
            problems.iter().map(|&i| tok.encode(&tok.chat_prompt(None, &set[i].question))).collect();
        let responses = sample(model, &prompts, tok.eos_id(), &cfg.sample_settings(), rng, &mut |_| {})?;
        let eos = tok.eos_id();
        let rewards: Vec<f32> = responses
            .iter()
            .zip(&problems)
            .map(|(r, &i)| if is_correct(&set[i], &r.text(tok, eos), r.finished) { 1.0 } else { 0.0 })
            .collect();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let resp_len = responses.iter().map(|r| r.tokens.len()).max().unwrap_or(1);
        let b = responses.len();
        let mut out = Self {
            problems,
            rewards,
            width,
            resp_len,
            start: prompts.iter().map(|p| width - p.len()).collect(),
            seqs: Vec::with_capacity(b * (width + resp_len)),
            targets: vec![0; b * resp_len],
            mask: vec![0.0; b * resp_len],
            old_logp: vec![0.0; b * resp_len],
            entropy: vec![0.0; b * resp_len],
            branch: vec![0.0; b * resp_len],
            responses: Vec::new(),
        };
        for (i, (p, r)) in prompts.iter().zip(&responses).enumerate() {
            out.seqs.extend(std::iter::repeat_n(eos, width - p.len()));
            out.seqs.extend(p);
            out.seqs.extend(&r.tokens);
            out.seqs.extend(std::iter::repeat_n(eos, resp_len - r.tokens.len()));
            for (t, &y) in r.tokens.iter().enumerate() {
                let at = i * resp_len + t;
                out.targets[at] = y;
                out.mask[at] = 1.0;
                out.old_logp[at] = r.logp[t];
                out.entropy[at] = r.entropy[t];
                out.branch[at] = r.branch[t] as f32;
            }
        }
        out.responses = responses;
        Ok(out)
    }

    /// Whether each response was verified correct.
    pub fn correct(&self) -> Vec<bool> {
        self.rewards.iter().map(|&r| r > 0.5).collect()
    }
}

/// The GRPO loop's state.
struct Trainer<'a> {
    model: &'a Llama,
    reference: &'a Llama,
    opt: AdamW,
    tok: &'a Tokenizer,
    cfg: &'a LmTrainConfig,
}

impl Trainer<'_> {
    fn step(&mut self, step: usize, set: &[Problem], ids: &[usize], rng: &mut StdRng) -> Result<StepMetrics> {
        let start = Instant::now();
        let cfg = self.cfg;
        let ro = Rollouts::sample(self.model, self.tok, set, ids, cfg.group_size, cfg, rng)?;
        let adv_cfg = AdvantageConfig { group_size: cfg.group_size, scale_by_std: cfg.scale_by_std };
        let adv = crate::cpu::token_advantages(
            &ro.rewards,
            &ro.old_logp,
            &ro.mask,
            ro.resp_len,
            &adv_cfg,
            &cfg.shaping.shaping(),
        )?;
        let rows = ro.rewards.len();
        let per_update = rows / cfg.minibatches;
        let mut tally = UpdateTally::new(cfg.filter.is_some());
        for epoch in 0..cfg.epochs {
            for mb in 0..cfg.minibatches {
                let range = mb * per_update..(mb + 1) * per_update;
                let out = self.update(&ro, &adv, range.clone())?;
                tally.add(&out, &ro.mask[range.start * ro.resp_len..range.end * ro.resp_len], epoch == 0)?;
            }
        }
        let (ec, ei) = split_by_correctness(&ro.entropy, &ro.mask, ro.resp_len, &ro.correct())?;
        let mut m = StepMetrics {
            shaping: cfg.shaping.name(),
            step,
            reward: ro.rewards.iter().map(|&r| r as f64).sum::<f64>() / rows as f64,
            entropy: masked_mean(&ro.entropy, &ro.mask)?.unwrap_or(0.0),
            entropy_correct: ec,
            entropy_incorrect: ei,
            branch: masked_mean(&ro.branch, &ro.mask)?.unwrap_or(0.0),
            response_len: ro.responses.iter().map(|r| r.tokens.len() as f64).sum::<f64>() / rows as f64,
            clip_frac: 0.0,
            kl: 0.0,
            garbage_mass: 0.0,
            loss: 0.0,
            seconds: 0.0,
            outside_kept: None,
        };
        tally.finish(&mut m, &ro.mask, cfg.epochs, cfg.minibatches);
        m.seconds = start.elapsed().as_secs_f64();
        Ok(m)
    }

    /// One AdamW update on the rows `range` (whole groups).
    fn update(&mut self, ro: &Rollouts, adv: &[f32], range: std::ops::Range<usize>) -> Result<GrpoLossOutput> {
        let (out, _) = minibatch_loss(self.model, self.reference, ro, adv, range, self.cfg)?;
        let grads = out.loss.backward()?;
        self.opt.step(&grads)?;
        Ok(out)
    }
}

/// What one minibatch's loss was computed from.
#[derive(Debug, Clone)]
pub struct MinibatchInputs {
    /// The policy's response logits `[n, R, V]` (differentiable).
    pub logits: Tensor,
    /// Targets `[n, R]`.
    pub targets: Vec<u32>,
    /// Mask `[n, R]`.
    pub mask: Vec<f32>,
    /// The sampler's log-probs `[n, R]`.
    pub old_logp: Vec<f32>,
    /// The reference model's log-probs `[n, R]`.
    pub ref_logp: Vec<f32>,
    /// Advantages `[n, R]`.
    pub advantages: Vec<f32>,
}

/// The fused GRPO loss of the rows `range` of `ro` (with per-token advantages `adv`): the
/// reference model's log-probs from a no-gradient forward, the policy's response logits from a
/// differentiable one, then [`crate::ops::grpo_loss`]. Returns the op's outputs and its inputs.
pub fn minibatch_loss(
    model: &Llama,
    reference: &Llama,
    ro: &Rollouts,
    adv: &[f32],
    range: std::ops::Range<usize>,
    cfg: &LmTrainConfig,
) -> Result<(GrpoLossOutput, MinibatchInputs)> {
    let (r, w) = (ro.resp_len, ro.width + ro.resp_len);
    let n = range.len();
    let device = model.device();
    let seqs = Tensor::from_vec(ro.seqs[range.start * w..range.end * w].to_vec(), (n, w), device)?;
    let start = &ro.start[range.clone()];
    let rows = |v: &[f32]| v[range.start * r..range.end * r].to_vec();
    let host_targets = ro.targets[range.start * r..range.end * r].to_vec();
    let targets = Tensor::from_vec(host_targets.clone(), (n, r), device)?;
    let (mask, old_logp, advantages) = (rows(&ro.mask), rows(&ro.old_logp), rows(adv));
    let t = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (n, r), device);
    let ref_logits = reference.logits_of(&seqs, start, ro.width, false)?;
    // With a filter the KL compares truncated log-probs: the reference's over its own K.
    let ref_cfg =
        TokenStatsConfig { temperature: cfg.temperature, top_p: None, check_finite: true, filter: cfg.filter };
    let ref_stats = ops::token_stats(&ref_logits, Some(&targets), &ref_cfg)?;
    let ref_logp = match cfg.filter {
        Some(_) => ref_stats.kept.and_then(|k| k.logp),
        None => ref_stats.logp,
    };
    let ref_logp = ref_logp.ok_or_else(|| Error::Candle("token_stats returned no logp".into()))?.detach();
    drop(ref_logits);
    let logits = model.logits_of(&seqs, start, ro.width, true)?;
    let inputs = GrpoLossInputs {
        targets: &targets,
        mask: &t(&mask)?,
        old_logp: &t(&old_logp)?,
        ref_logp: Some(&ref_logp),
        advantages: &t(&advantages)?,
        kept_mask: None,
    };
    let out = ops::grpo_loss(&logits, &inputs, &cfg.loss_config())?;
    let ref_logp = ref_logp.flatten_all()?.to_vec1::<f32>()?;
    Ok((out, MinibatchInputs { logits, targets: host_targets, mask, old_logp, ref_logp, advantages }))
}

/// Pass@k (k = 1..n) and the per-token statistics of n samples per held-out problem. The sampler
/// is seeded from the run's seed alone, so every checkpoint is scored on the same draws.
pub fn evaluate(
    name: &str,
    model: &Llama,
    tok: &Tokenizer,
    problems: &[Problem],
    cfg: &LmTrainConfig,
    progress: &mut dyn Progress,
) -> Result<EvalResult> {
    let start = Instant::now();
    let n = cfg.eval_samples;
    progress.start(&format!("eval {name}"), 1);
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xE7A1_0000);
    let ids: Vec<usize> = (0..problems.len()).collect();
    let ro = Rollouts::sample(model, tok, problems, &ids, n, cfg, &mut rng)?;
    progress.step("");
    progress.finish();
    let lengths: Vec<f64> = ro.responses.iter().map(|r| r.tokens.len() as f64).collect();
    let samples = Samples {
        correct: &ro.correct(),
        entropy: &ro.entropy,
        branch: &ro.branch,
        mask: &ro.mask,
        resp_len: ro.resp_len,
        lengths: &lengths,
        garbage_mass: 0.0,
    };
    eval_result(name, n, n, cfg.bins, &samples, start)
}
