//! GRPO on the real model's code path, run on a tiny GGUF written here: the rollout layout, one
//! minibatch's fused loss against `reference::grpo_loss` on the model's own logits, that an
//! update moves the trainable weights only, and the whole `rlvr train --model` pipeline.

use std::path::PathBuf;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rlvr_kernels::lm::grpo::{minibatch_loss, train_with, LmTrainConfig, Rollouts};
use rlvr_kernels::lm::llama::Trainable;
use rlvr_kernels::lm::task::{problems, TaskKind};
use rlvr_kernels::lm::tiny::{write_tiny_llama, TinySpec};
use rlvr_kernels::{cpu, lm, reference, AdvantageConfig, GrpoInputs, SamplingFilter, OUTSIDE_KEPT};

struct Tiny {
    path: PathBuf,
    dir: PathBuf,
}

impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tiny(name: &str) -> (Tiny, LmTrainConfig) {
    let base = std::env::temp_dir().join(format!("rlvr-lm-grpo-{}-{name}", std::process::id()));
    let t = Tiny { path: base.with_extension("gguf"), dir: base };
    write_tiny_llama(&t.path, &TinySpec::default()).unwrap();
    let cfg = LmTrainConfig {
        steps: 2,
        prompts_per_step: 2,
        group_size: 4,
        max_new: 10,
        // The tiny model's random weights are peaked at T = 1; T = 6 makes groups differ.
        temperature: 6.0,
        eval_problems: 3,
        eval_samples: 3,
        lr: 1e-3,
        trainable: Trainable { blocks: 1, embedding: false },
        out_dir: t.dir.clone(),
        ..LmTrainConfig::new(t.path.clone())
    };
    (t, cfg)
}

#[test]
fn one_minibatch_loss_matches_the_reference_on_the_models_logits() {
    let (t, cfg) = tiny("loss");
    let (model, tok) = lm::load(&t.path, &Device::Cpu).unwrap();
    let set = problems(TaskKind::Add1, 4, 1).unwrap();
    let ro = Rollouts::sample(&model, &tok, &set, &[0, 1], 4, &cfg, &mut StdRng::seed_from_u64(3)).unwrap();
    let (b, r) = (ro.rewards.len(), ro.resp_len);
    assert_eq!(b, 8);
    assert_eq!(ro.seqs.len(), b * (ro.width + r));
    // Layout: the prompt right-aligned, then the response, then padding with mask 0.
    for (i, resp) in ro.responses.iter().enumerate() {
        let row = &ro.seqs[i * (ro.width + r)..(i + 1) * (ro.width + r)];
        assert_eq!(&row[ro.width..ro.width + resp.tokens.len()], &resp.tokens[..]);
        let m = &ro.mask[i * r..(i + 1) * r];
        assert!(m.iter().enumerate().all(|(t, &v)| v == if t < resp.tokens.len() { 1.0 } else { 0.0 }));
        assert_eq!(ro.problems[i], [0, 1][i / 4]);
    }
    // Advantages are not all zero only if a group is mixed; force a signal for the check.
    let rewards: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    let adv_cfg = AdvantageConfig { group_size: 4, scale_by_std: true };
    let adv = cpu::token_advantages(&rewards, &ro.old_logp, &ro.mask, r, &adv_cfg, &cfg.shaping.shaping()).unwrap();
    // At ratio 1 a group's token-mean loss is −mean(A), ~0 for equal lengths: shift A so the
    // comparison is of a loss well away from 0.
    let adv: Vec<f32> = adv.iter().zip(&ro.mask).map(|(&a, &m)| a + 0.3 * m).collect();
    let reference_model = model.deep_copy().unwrap();
    let (out, inputs) = minibatch_loss(&model, &reference_model, &ro, &adv, 0..4, &cfg).unwrap();
    let v = model.config().vocab;
    let logits: Vec<f64> =
        inputs.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
    assert_eq!(logits.len(), 4 * r * v);
    let want = reference::grpo_loss(
        &logits,
        v,
        &GrpoInputs {
            targets: &inputs.targets,
            mask: &inputs.mask,
            old_logp: &inputs.old_logp,
            ref_logp: Some(&inputs.ref_logp),
            advantages: &inputs.advantages,
            seq_len: r,
            kept_mask: None,
        },
        &cfg.loss_config(),
    )
    .unwrap();
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0), "fused {got} vs reference {}", want.loss);
    assert!(want.loss.abs() > 1e-6, "the check needs a non-zero loss");
    // The policy and the reference are the same weights: the sampler's and the reference's
    // log-probs agree with the policy's own (ratio 1, KL 0) up to f32 rounding.
    for (t, &m) in inputs.mask.iter().enumerate() {
        if m != 0.0 {
            assert!((inputs.old_logp[t] as f64 - want.logp[t]).abs() < 1e-4, "token {t}");
            assert!((inputs.ref_logp[t] as f64 - want.logp[t]).abs() < 1e-4, "token {t}");
        }
    }
}

#[test]
fn training_moves_the_trainable_weights_only_and_writes_its_outputs() {
    let (t, mut cfg) = tiny("train");
    // The tiny model never answers correctly, so every advantage is 0; an entropy bonus gives
    // every trainable weight a gradient.
    cfg.grpo.entropy_coef = 0.01;
    let (mut model, tok) = lm::load(&t.path, &Device::Cpu).unwrap();
    let before = model.deep_copy().unwrap();
    let report =
        train_with(&mut model, &tok, &cfg, &mut rlvr_kernels::train::NoProgress, std::time::Instant::now()).unwrap();
    assert_eq!(model.vars().len(), 9 + 1, "the top block's nine weights and the final norm");
    assert_eq!(report.steps.len(), 2);
    assert_eq!(report.evals.len(), 2);
    assert_eq!(report.evals[0].checkpoint, "base");
    assert_eq!(report.trainable_params, model.trainable_params());
    for name in ["metrics.jsonl", "reward.png", "pass_at_k.png"] {
        assert!(cfg.out_dir.join(name).is_file(), "{name}");
    }
    let text = std::fs::read_to_string(cfg.out_dir.join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["config", "eval", "grpo", "grpo", "eval", "overlap"]);
    // Every weight of the top block and the final norm moved; nothing else did.
    let layers = model.config().layers;
    let weights = |m: &rlvr_kernels::lm::llama::Llama| {
        let mut all = m.clone_weights().unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    for ((name, a), (_, b)) in weights(&before).iter().zip(weights(&model)) {
        let moved = a.iter().zip(&b).any(|(x, y)| x != y);
        let trainable = name.starts_with(&format!("blk.{}.", layers - 1)) || name.starts_with("output_norm");
        assert_eq!(moved, trainable, "{name}");
    }
}

#[test]
fn a_filtered_sampler_is_replayed_by_the_loss_on_the_real_model_path() {
    // Rollouts drawn with top-p / top-k as an engine draws them, then one minibatch's loss with
    // the same filter on the same weights: no sampled token is outside the trainer's recomputed
    // K, the replayed ratio is 1 (1e-4: the sampler's cached forward and the trainer's full
    // forward differ in the last bits) and the reference's truncated log-probs agree too.
    let (t, base) = tiny("filter");
    let (model, tok) = lm::load(&t.path, &Device::Cpu).unwrap();
    let reference_model = model.deep_copy().unwrap();
    let set = problems(TaskKind::Add1, 4, 1).unwrap();
    for filter in [SamplingFilter::top_p(0.9), SamplingFilter::top_k(20), SamplingFilter::top_k_top_p(60, 0.8)] {
        let cfg = LmTrainConfig { filter: Some(filter), ..base.clone() };
        let ro = Rollouts::sample(&model, &tok, &set, &[0, 1], 4, &cfg, &mut StdRng::seed_from_u64(3)).unwrap();
        let adv = vec![1.0f32; ro.mask.len()];
        let (out, inputs) = minibatch_loss(&model, &reference_model, &ro, &adv, 0..8, &cfg).unwrap();
        let ratio = out.ratio.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flags = out.clip_flags.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let logp = out.logp.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let counted: Vec<usize> = (0..inputs.mask.len()).filter(|&i| inputs.mask[i] != 0.0).collect();
        assert!(!counted.is_empty());
        for &i in &counted {
            assert_eq!(flags[i] & OUTSIDE_KEPT, 0, "{filter}: token {i} outside the trainer's K");
            assert!((ratio[i] - 1.0).abs() < 1e-4, "{filter}: replayed ratio {} at token {i}", ratio[i]);
            assert!((inputs.ref_logp[i] - logp[i]).abs() < 1e-4, "{filter}: reference ℓ̃ at token {i}");
        }
    }
}
