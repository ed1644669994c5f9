//! The shaped GRPO loss op: scalar loss (differentiable w.r.t. the logits) plus per-token
//! statistics from the same fused forward.
//!
//! One custom op over the logits: its forward is [`crate::cpu::grpo_forward`] (one read of each
//! row: lse, entropy, logp, branch, then the O(1) per-token loss terms and the aggregation), its
//! result the scalar loss; the per-token outputs and the backward's saved scalars (lse, H, g_t,
//! h_t) stay in the op's side channel. Its backward is [`crate::cpu::grpo_backward`] scaled by
//! the upstream gradient of the loss: one more read of each row, one write of dlogits in the
//! logits' dtype. The per-token inputs are read to the host once (O(N)).
//!
//! On a CUDA device the same op runs `crate::cuda::grpo_forward` / `grpo_backward` on candle's
//! stream (`ops::grpo_cuda`), reading the per-token inputs in place.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::check::{self, HostGrpoInputs};
use super::side::Side;
use super::token_stats::{offsets, unsupported, KeptStatsOutput};
use crate::config::GrpoConfig;
use crate::cpu;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::types::GrpoForward;

/// Per-token inputs of the loss as candle tensors, all with the logits' leading shape `[B, T]`.
#[derive(Debug, Clone, Copy)]
pub struct GrpoLossInputs<'a> {
    /// Sampled token ids (u32).
    pub targets: &'a Tensor,
    /// 1 = counted response token, 0 = not (f32).
    pub mask: &'a Tensor,
    /// Rollout-policy log-probs of the targets (f32).
    pub old_logp: &'a Tensor,
    /// Reference-policy log-probs (f32), needed when the KL penalty is on.
    pub ref_logp: Option<&'a Tensor>,
    /// Shaped per-token advantages (f32), e.g. from [`crate::cpu::token_advantages`].
    pub advantages: &'a Tensor,
    /// The rollout engine's kept set per token (vLLM's CSR `SamplingMask`), replacing
    /// `cfg.filter`'s recomputed K (the two are exclusive); `None` for no mask.
    pub kept_mask: Option<KeptMaskTensors<'a>>,
}

/// An engine's kept mask as tensors, in vLLM's CSR layout over the B·T tokens in row-major
/// order: token r kept `token_ids[offsets[r]..offsets[r + 1]]`.
///
/// `token_ids`: rank 1, u32, each < V, no repeats within a token, at least one per token.
/// `offsets`: rank 1, B·T + 1 entries, u32 or i64 (vLLM writes int64, candle has no u64;
/// negative values are bad input), from 0 to `token_ids`' length, never decreasing. Both are read to the host once
/// (any device). Errors: [`Error::DTypeMismatch`], [`Error::ShapeMismatch`] (rank, or offsets'
/// length), [`Error::InvalidKeptMask`] naming the token (row of the flattened view).
#[derive(Debug, Clone, Copy)]
pub struct KeptMaskTensors<'a> {
    /// Kept token ids (u32), token after token.
    pub token_ids: &'a Tensor,
    /// Row starts into `token_ids` (B·T + 1 entries; u32 or i64).
    pub offsets: &'a Tensor,
}

/// The loss and per-token statistics. Only `loss` carries a gradient.
#[derive(Debug, Clone)]
pub struct GrpoLossOutput {
    /// Aggregated scalar loss (f32, shape `[]`).
    pub loss: Tensor,
    /// Per-token L + β_kl·KL − c_H·H (f32).
    pub token_loss: Tensor,
    /// Current log-prob of the target (f32).
    pub logp: Tensor,
    /// Entropy (f32).
    pub entropy: Tensor,
    /// Importance ratio ρ (f32).
    pub ratio: Tensor,
    /// Clip flags (u8: bit 0 clipped, bit 1 dual-clipped).
    pub clip_flags: Tensor,
    /// Per-token KL (f32) when the penalty is on.
    pub kl: Option<Tensor>,
    /// Branch count (u32) when `cfg.top_p` is set.
    pub branch: Option<Tensor>,
    /// With `cfg.filter` or a kept mask: lse_K, H̃, ℓ̃, |K| and the outside-K flags per token
    /// (no gradient through these; the loss's gradient already includes K). `logp` then holds ℓ̃
    /// (ℓ where the target is outside K, flagged by bit 2 of `clip_flags`).
    pub kept: Option<KeptStatsOutput>,
}

/// The fused shaped GRPO loss of `logits` (`[B, T, V]`, bf16/f16/f32). The sequence length T
/// is the logits' second dimension.
///
/// The formulas are DESIGN.md §4's (see [`crate::cpu::grpo_forward`]); `loss.backward()` gives
/// dlogits = ∂loss/∂z in the logits' dtype from one more pass over the rows. Same signature,
/// outputs and errors as [`super::naive::grpo_loss`], so a trainer switches by changing the call.
///
/// Non-contiguous `logits` are copied to a contiguous tensor first (candle's `contiguous`, free
/// for contiguous input); the per-token inputs may have any layout (they are read to the host).
///
/// Errors: the configuration's ([`GrpoConfig::validate`]); [`Error::DTypeMismatch`] for logits
/// not bf16/f16/f32, targets not u32 or the other inputs not f32; [`Error::ShapeMismatch`] for
/// logits not of rank 3, an input of another shape than `[B, T]`, or `ref_logp` missing while
/// the KL penalty is on; [`Error::EmptyVocab`]; [`Error::DeviceMismatch`]; the per-token values'
/// ([`Error::TargetOutOfRange`], [`Error::InvalidMask`], [`Error::NonFiniteInput`]); with
/// `cfg.check_finite` [`Error::NonFiniteLogits`] / [`Error::AllNegInfRow`] naming the first bad
/// row of the flattened `[B·T, V]` view; device errors as [`Error::Cuda`].
///
/// With `cfg.filter` or `inputs.kept_mask` (DESIGN.md §4, "Sampling filter and replay") the
/// ratio and KL use ℓ̃, the bonus H̃ when `cfg.kept_entropy`, and `loss.backward()` differentiates
/// through K (CPU only for now). Further errors: [`Error::InvalidConfig`] for a filter together
/// with a mask, or a filter/mask on a CUDA tensor; the mask's ([`KeptMaskTensors`]).
pub fn grpo_loss(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<GrpoLossOutput> {
    let host = check::grpo(logits, inputs, cfg)?;
    let logits = logits.contiguous()?;
    let lead = host.lead.clone();
    let side = Arc::new(Side::default());
    let op = GrpoOp {
        cfg: *cfg,
        inputs: host,
        #[cfg(feature = "cuda")]
        tensors: InputTensors::of(inputs)?,
        side: side.clone(),
    };
    let loss = side.result(logits.apply_op1(op))?;
    side.with(|saved| match saved {
        Some(Saved::Cpu(fwd)) => host_outputs(fwd, &lead, logits.device(), loss.clone()),
        #[cfg(feature = "cuda")]
        Some(Saved::Cuda(d)) => super::grpo_cuda::outputs(d, &lead, loss.clone()),
        None => Err(Error::Candle("the GRPO forward left no per-token outputs".into())),
    })
}

/// The per-token outputs of a CPU forward as tensors (moved out of `fwd`; entropy is copied, the
/// backward still needs `saved.entropy`).
fn host_outputs(
    fwd: &mut GrpoForward,
    lead: &[usize],
    dev: &candle_core::Device,
    loss: Tensor,
) -> Result<GrpoLossOutput> {
    let f32s = |v: &mut Vec<f32>| Tensor::from_vec(std::mem::take(v), lead, dev);
    Ok(GrpoLossOutput {
        loss,
        token_loss: f32s(&mut fwd.token_loss)?,
        logp: f32s(&mut fwd.logp)?,
        entropy: Tensor::from_slice(&fwd.saved.entropy, lead, dev)?,
        ratio: f32s(&mut fwd.ratio)?,
        clip_flags: Tensor::from_vec(std::mem::take(&mut fwd.clip_flags), lead, dev)?,
        kl: fwd.kl.as_mut().map(f32s).transpose()?,
        branch: fwd.branch.take().map(|b| Tensor::from_vec(b, lead, dev)).transpose()?,
        kept: fwd.kept.take().map(|k| KeptStatsOutput::from_host(k, lead, dev)).transpose()?,
    })
}

/// The per-token input tensors, contiguous, for the device passes (which read them in place).
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub(crate) struct InputTensors {
    pub targets: Tensor,
    pub mask: Tensor,
    pub old_logp: Tensor,
    pub ref_logp: Option<Tensor>,
    pub advantages: Tensor,
}

#[cfg(feature = "cuda")]
impl InputTensors {
    fn of(inputs: &GrpoLossInputs) -> Result<Self> {
        Ok(InputTensors {
            targets: inputs.targets.contiguous()?,
            mask: inputs.mask.contiguous()?,
            old_logp: inputs.old_logp.contiguous()?,
            ref_logp: inputs.ref_logp.map(|r| r.contiguous()).transpose()?,
            advantages: inputs.advantages.contiguous()?,
        })
    }
}

/// What a forward leaves in the side channel: the per-token outputs (until the public function
/// moves them out) and the backward's saved scalars, on the host or on the device.
#[derive(Debug)]
pub(crate) enum Saved {
    Cpu(Box<GrpoForward>),
    #[cfg(feature = "cuda")]
    Cuda(Box<super::grpo_cuda::DeviceForward>),
}

/// The forward op: `[B, T, V]` logits → the scalar loss; per-token outputs and the backward's
/// saved scalars in `side`.
pub(crate) struct GrpoOp {
    pub cfg: GrpoConfig,
    /// Checked host copies of the per-token inputs (the CPU passes read these).
    pub inputs: HostGrpoInputs,
    /// The caller's per-token tensors (the CUDA passes read these in place).
    #[cfg(feature = "cuda")]
    pub tensors: InputTensors,
    side: Arc<Side<Saved>>,
}

impl GrpoOp {
    fn cpu<E: Element>(&self, z: &[E]) -> Result<GrpoForward> {
        cpu::grpo_forward(z, self.inputs.vocab, &self.inputs.as_inputs(), &self.cfg)
    }
}

impl CustomOp1 for GrpoOp {
    fn name(&self) -> &'static str {
        "rlvr-grpo-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        let fwd = match s {
            CpuStorage::BF16(v) => self.cpu(&v[start..end]),
            CpuStorage::F16(v) => self.cpu(&v[start..end]),
            CpuStorage::F32(v) => self.cpu(&v[start..end]),
            other => Err(unsupported(candle_core::backend::BackendStorage::dtype(other))),
        }
        .map_err(|e| self.side.fail(e))?;
        let loss = fwd.loss;
        self.side.put(Saved::Cpu(Box::new(fwd)));
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        let (loss, fwd) = super::grpo_cuda::forward(self, s, start..end).map_err(|e| self.side.fail(e))?;
        self.side.put(Saved::Cuda(Box::new(fwd)));
        Ok((loss, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The upstream gradient stays where it is (a device scalar on CUDA: no synchronisation).
        let grad = grad_res.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let dz = arg.detach().apply_op2_no_bwd(&grad, &GrpoBackward { op: self })?;
        Ok(Some(dz))
    }
}

/// The backward pass as a candle op over (logits, upstream gradient of the loss `[]` f32):
/// grad_loss·∂loss/∂z in the logits' dtype.
struct GrpoBackward<'a> {
    op: &'a GrpoOp,
}

/// A candle error from the crate's (the backward has no side channel: its errors are internal).
fn candle_err(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl GrpoBackward<'_> {
    fn cpu<E: Element>(&self, z: &[E], grad_loss: f32) -> candle_core::Result<Vec<E>> {
        let (op, inputs) = (self.op, &self.op.inputs);
        op.side
            .with(|saved| match saved {
                Some(Saved::Cpu(f)) => {
                    cpu::grpo_backward(z, inputs.vocab, &inputs.targets, &f.saved, op.cfg.temperature, grad_loss)
                }
                _ => Err(Error::Candle("the GRPO backward ran without its CPU forward's saved values".into())),
            })
            .map_err(candle_err)
    }
}

impl CustomOp2 for GrpoBackward<'_> {
    fn name(&self) -> &'static str {
        "rlvr-grpo-loss-backward"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        let grad_loss = match g {
            CpuStorage::F32(v) => v[gl.start_offset()],
            _ => candle_core::bail!("rlvr-grpo-loss-backward: the loss gradient must be f32"),
        };
        let out = match s {
            CpuStorage::BF16(v) => CpuStorage::BF16(self.cpu(&v[start..end], grad_loss)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.cpu(&v[start..end], grad_loss)?),
            CpuStorage::F32(v) => CpuStorage::F32(self.cpu(&v[start..end], grad_loss)?),
            other => return Err(candle_err(unsupported(candle_core::backend::BackendStorage::dtype(other)))),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        let dz = self.op.side.with(|saved| match saved {
            Some(Saved::Cuda(d)) => super::grpo_cuda::backward(self.op, d, (s, start..end), (g, gl.start_offset())),
            _ => Err(Error::Candle("the GRPO backward ran without its CUDA forward's saved values".into())),
        });
        Ok((dz.map_err(candle_err)?, l.shape().clone()))
    }
}
