//! Sampling-mask replay in the toy GRPO loop: rollouts drawn with a top-p / top-k filter (as an
//! engine draws them), then scored by the fused loss with the same filter. On the policy that
//! sampled them the replayed ratio is 1 and no sampled token falls outside the trainer's kept
//! set; scored without the replay, the ratio compares two different policies and is not 1.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rlvr_kernels::ops::{self, GrpoLossInputs};
use rlvr_kernels::train::model::{ModelConfig, Policy};
use rlvr_kernels::train::rollout::{sample, Sampling};
use rlvr_kernels::train::task::{Splits, Task};
use rlvr_kernels::train::LossImpl;
use rlvr_kernels::{GrpoConfig, SamplingFilter, OUTSIDE_KEPT};

#[test]
fn on_policy_replay_gives_ratio_one_and_no_token_outside_k() {
    let task = Task::new(1).unwrap();
    let cfg =
        ModelConfig { vocab: 2048, d_model: 32, layers: 1, heads: 2, max_len: task.prompt_len() + task.max_response() };
    let policy = Policy::new(cfg, &Device::Cpu, 5).unwrap();
    let splits = Splits::new(&task, 0, 8, 0, 1).unwrap();
    let ids: Vec<usize> = (0..8).collect();
    for filter in [SamplingFilter::top_p(0.95), SamplingFilter::top_k(40), SamplingFilter::top_k_top_p(200, 0.9)] {
        let mut rng = StdRng::seed_from_u64(9);
        let ro = sample(
            &policy,
            &task,
            &splits.rl,
            &ids,
            4,
            Sampling { imp: LossImpl::Fused, filter: Some(filter) },
            &mut rng,
        )
        .unwrap();
        let (b, r) = (ro.len(), ro.resp_len);
        let seqs = Tensor::from_vec(ro.seqs.clone(), (b, ro.prompt_len + r), &Device::Cpu).unwrap();
        let logits = policy.response_logits(&seqs, ro.prompt_len).unwrap();
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (b, r), &Device::Cpu).unwrap();
        let (targets, mask, old, adv) = (
            Tensor::from_vec(ro.targets(), (b, r), &Device::Cpu).unwrap(),
            t(&ro.mask),
            t(&ro.old_logp),
            t(&vec![1.0; b * r]),
        );
        let inputs = GrpoLossInputs {
            targets: &targets,
            mask: &mask,
            old_logp: &old,
            ref_logp: None,
            advantages: &adv,
            kept_mask: None,
        };
        let ratio_and_flags = |cfg: &GrpoConfig| {
            let out = ops::grpo_loss(&logits, &inputs, cfg).unwrap();
            let ratio = out.ratio.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let flags = out.clip_flags.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            (ratio, flags)
        };
        let counted: Vec<usize> = (0..b * r).filter(|&i| ro.mask[i] != 0.0).collect();
        // Replayed: ℓ̃ over the trainer's K against the sampler's ℓ̃_old. The sampler and the
        // trainer run the same weights on the same tokens (the trainer over whole sequences, so
        // the logits may differ in the last bits): 1e-4 covers that and the f32 log-probs.
        let (ratio, flags) = ratio_and_flags(&GrpoConfig { filter: Some(filter), ..Default::default() });
        for &i in &counted {
            assert_eq!(flags[i] & OUTSIDE_KEPT, 0, "{filter}: token {i} outside the trainer's K");
            assert!((ratio[i] - 1.0).abs() < 1e-4, "{filter}: replayed ratio {} at token {i}", ratio[i]);
        }
        // Not replayed: ρ = p_y / p̃_y = Σ_K p < 1 wherever the filter dropped mass.
        let (ratio, _) = ratio_and_flags(&GrpoConfig::default());
        let off = counted.iter().map(|&i| (ratio[i] - 1.0).abs()).fold(0.0f32, f32::max);
        assert!(off > 1e-2, "{filter}: the unreplayed ratio should not be 1 (max |ρ − 1| = {off})");
    }
}
