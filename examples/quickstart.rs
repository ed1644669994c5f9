//! The README's API example: token statistics of a batch of logits, shaped GRPO advantages and
//! the fused GRPO loss with its gradient, as a trainer would call them.
//!
//! Run: `cargo run --release --example quickstart`

use candle_core::{DType, Device, Tensor, Var};
use rlvr_kernels::{cpu, ops, AdvantageConfig, GrpoConfig, PositionShaping, PplShaping, Shaping, TokenStatsConfig};

/// What the example computed, for tests/quickstart.rs.
pub struct Quickstart {
    /// Mean token entropy (nats) and mean branching factor of the rollouts.
    pub mean_entropy: f32,
    /// Mean Rollout Branching Factor at top-p 0.95.
    pub mean_branch: f32,
    /// The scalar loss.
    pub loss: f32,
    /// The gradient of the loss w.r.t. the logits.
    pub dlogits: Tensor,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let q = run()?;
    println!("mean entropy {:.3} nats, mean branching factor {:.1} tokens", q.mean_entropy, q.mean_branch);
    println!("loss {:.5}, dlogits {:?} {:?}", q.loss, q.dlogits.shape(), q.dlogits.dtype());
    Ok(())
}

/// The example itself.
pub fn run() -> Result<Quickstart, Box<dyn std::error::Error>> {
    // Two GRPO groups of G = 4 responses, T = 6 tokens each, vocabulary V = 1000.
    let (g, b, t, v) = (4usize, 8usize, 6usize, 1000usize);
    let dev = Device::Cpu;
    let logits = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (b, t, v), &dev)?).to_dtype(DType::BF16)?)?;
    let targets = Tensor::rand(0f32, v as f32, (b, t), &dev)?.to_dtype(DType::U32)?;
    let mask = Tensor::ones((b, t), DType::F32, &dev)?;

    // 1. Exploration metrics of the rollouts: entropy, branching factor (top-p 0.95), logp.
    let stats = ops::token_stats(logits.as_tensor(), Some(&targets), &TokenStatsConfig::default())?;
    let old_logp = stats.logp.expect("targets given").detach();
    let entropy: Vec<f32> = stats.entropy.flatten_all()?.to_vec1()?;
    let branch: Vec<u32> = stats.branch.expect("top-p given").flatten_all()?.to_vec1()?;

    // 2. Advantages from verifiable rewards, with both of the paper's shapings.
    let rewards = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let shaping = Shaping { ppl: Some(PplShaping::default()), position: Some(PositionShaping::default()) };
    let adv_cfg = AdvantageConfig { group_size: g, ..AdvantageConfig::default() };
    let old: Vec<f32> = old_logp.flatten_all()?.to_vec1()?;
    let m: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    let adv = cpu::token_advantages(&rewards, &old, &m, t, &adv_cfg, &shaping)?;
    let advantages = Tensor::from_vec(adv, (b, t), &dev)?;

    // 3. The fused GRPO loss (clip-higher, token-mean) and dlogits from one backward call.
    let inputs = ops::GrpoLossInputs {
        targets: &targets,
        mask: &mask,
        old_logp: &old_logp,
        ref_logp: None,
        advantages: &advantages,
        kept_mask: None,
    };
    let out = ops::grpo_loss(logits.as_tensor(), &inputs, &GrpoConfig::default())?;
    let grads = out.loss.backward()?;
    let dlogits = grads.get(logits.as_tensor()).expect("logits take part in the loss");
    Ok(Quickstart {
        mean_entropy: mean(&entropy),
        mean_branch: mean_u32(&branch),
        loss: out.loss.to_scalar::<f32>()?,
        dlogits: dlogits.clone(),
    })
}

fn mean(x: &[f32]) -> f32 {
    x.iter().sum::<f32>() / x.len() as f32
}

fn mean_u32(x: &[u32]) -> f32 {
    x.iter().map(|&k| k as f32).sum::<f32>() / x.len() as f32
}
