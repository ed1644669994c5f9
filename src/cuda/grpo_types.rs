//! The device-side types of the GRPO loss (`cuda::grpo_*`): inputs, outputs, saved scalars, the
//! upstream gradient, and the kernels' parameter structs (`#[repr(C)]` twins of `kernels/grpo.cu`
//! and `kernels/row_stats.cuh`).

use std::sync::Arc;

use super::context::cuda_err;
use super::cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, PushKernelArg};
use super::sequence::{download, upload, zeros, SeqCounts, Status};
use super::token_stats::prune_z;
use crate::config::{GrpoConfig, KlEstimator};
use crate::error::Result;
use crate::types::{GrpoForward, GrpoSaved};
use crate::validate;

/// Tokens per partial sum of the loss (sum_chunks_f64): fixed, so the summation order depends on
/// N only.
pub(crate) const CHUNK: usize = 16384;

/// Per-token inputs on the device; every view has N = B·T entries (one per row of the logits).
#[derive(Debug)]
pub struct CudaGrpoInputs<'a> {
    /// Sampled token ids y_t (< V).
    pub targets: CudaView<'a, u32>,
    /// 1 = counted response token, 0 = not.
    pub mask: CudaView<'a, f32>,
    /// log-prob of y_t under the rollout policy (ℓ_old).
    pub old_logp: CudaView<'a, f32>,
    /// log-prob under the reference policy (ℓ_ref); needed when the KL penalty is on.
    pub ref_logp: Option<CudaView<'a, f32>>,
    /// Shaped per-token advantages Ã_t (see [`super::token_advantages`]).
    pub advantages: CudaView<'a, f32>,
    /// T: tokens per sequence.
    pub seq_len: usize,
}

/// What the backward needs from the forward, per token, on the device (see [`GrpoSaved`]).
#[derive(Debug)]
pub struct CudaGrpoSaved {
    /// log-sum-exp of x = z / T.
    pub lse: CudaSlice<f32>,
    /// Entropy H_t.
    pub entropy: CudaSlice<f32>,
    /// g_t = a_t·∂(L + β_kl·KL)/∂ℓ_t (0 for masked tokens).
    pub grad_logp: CudaSlice<f32>,
    /// h_t = −a_t·c_H (0 for masked tokens).
    pub grad_entropy: CudaSlice<f32>,
}

impl CudaGrpoSaved {
    /// Copies host saved scalars to the device.
    pub fn from_host(stream: &Arc<CudaStream>, s: &GrpoSaved) -> Result<Self> {
        Ok(CudaGrpoSaved {
            lse: upload(stream, &s.lse, "copy saved lse")?,
            entropy: upload(stream, &s.entropy, "copy saved entropy")?,
            grad_logp: upload(stream, &s.grad_logp, "copy saved grad_logp")?,
            grad_entropy: upload(stream, &s.grad_entropy, "copy saved grad_entropy")?,
        })
    }

    /// Copies them to the host (synchronises `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<GrpoSaved> {
        Ok(GrpoSaved {
            lse: download(stream, &self.lse)?,
            entropy: download(stream, &self.entropy)?,
            grad_logp: download(stream, &self.grad_logp)?,
            grad_entropy: download(stream, &self.grad_entropy)?,
            kept: None,
        })
    }
}

/// Device scratch of the forward: the mask's counts, the per-token loss terms a_t·total_t (f64)
/// and their chunk sums, the status words.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub counts: SeqCounts,
    pub contrib: CudaSlice<f64>,
    pub partial: CudaSlice<f64>,
    pub status: Status,
}

/// Output of the fused GRPO forward on the device (see [`GrpoForward`]); reusable by
/// [`super::grpo_forward_into`].
#[derive(Debug)]
pub struct CudaGrpoForward {
    /// The aggregated scalar loss (one element).
    pub loss: CudaSlice<f32>,
    /// Per-token L + β_kl·KL − c_H·H.
    pub token_loss: CudaSlice<f32>,
    /// Current log-prob ℓ_t of the target.
    pub logp: CudaSlice<f32>,
    /// Importance ratio ρ_t.
    pub ratio: CudaSlice<f32>,
    /// [`crate::CLIPPED`] / [`crate::DUAL_CLIPPED`] bits.
    pub clip_flags: CudaSlice<u8>,
    /// Per-token KL (when the KL penalty is on).
    pub kl: Option<CudaSlice<f32>>,
    /// Branch count (when `top_p` is set).
    pub branch: Option<CudaSlice<u32>>,
    /// Saved for the backward; `saved.entropy` is the per-token entropy.
    pub saved: CudaGrpoSaved,
    pub(crate) scratch: Scratch,
}

impl CudaGrpoForward {
    /// Zeroed outputs for `rows` tokens in sequences of `seq_len`, with `kl` and `branch` as `cfg`
    /// asks.
    pub fn new(stream: &Arc<CudaStream>, rows: usize, seq_len: usize, cfg: &GrpoConfig) -> Result<Self> {
        let b = validate::sequences(rows, seq_len)?;
        let f = |op| zeros::<f32>(stream, rows, op);
        Ok(CudaGrpoForward {
            loss: zeros(stream, 1, "allocate loss")?,
            token_loss: f("allocate token_loss")?,
            logp: f("allocate logp")?,
            ratio: f("allocate ratio")?,
            clip_flags: zeros(stream, rows, "allocate clip_flags")?,
            kl: cfg.kl.map(|_| f("allocate kl")).transpose()?,
            branch: cfg.top_p.map(|_| zeros(stream, rows, "allocate branch")).transpose()?,
            saved: CudaGrpoSaved {
                lse: f("allocate lse")?,
                entropy: f("allocate entropy")?,
                grad_logp: f("allocate grad_logp")?,
                grad_entropy: f("allocate grad_entropy")?,
            },
            scratch: Scratch {
                counts: SeqCounts::new(stream, b)?,
                contrib: zeros(stream, rows, "allocate loss terms")?,
                partial: zeros(stream, rows.div_ceil(CHUNK), "allocate loss partial sums")?,
                status: Status::new(stream, cfg.check_finite)?,
            },
        })
    }

    /// Number of tokens (rows).
    pub fn rows(&self) -> usize {
        self.logp.len()
    }

    /// The scalar loss, copied to the host (synchronises `stream`).
    pub fn loss_host(&self, stream: &Arc<CudaStream>) -> Result<f32> {
        Ok(stream.clone_dtoh(&self.loss).map_err(cuda_err("copy loss to host"))?[0])
    }

    /// Everything, copied to the host (synchronises `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<GrpoForward> {
        Ok(GrpoForward {
            loss: self.loss_host(stream)?,
            token_loss: download(stream, &self.token_loss)?,
            logp: download(stream, &self.logp)?,
            ratio: download(stream, &self.ratio)?,
            clip_flags: download(stream, &self.clip_flags)?,
            kl: self.kl.as_ref().map(|k| download(stream, k)).transpose()?,
            branch: self.branch.as_ref().map(|b| download(stream, b)).transpose()?,
            saved: self.saved.to_host(stream)?,
            kept: None,
        })
    }
}

/// The upstream gradient of the loss that dlogits are scaled by.
#[derive(Debug)]
pub enum GradLoss<'a> {
    /// A host value (must be finite).
    Value(f32),
    /// A one-element device buffer, read by the kernel (no host synchronisation; not checked).
    Device(CudaView<'a, f32>),
}

impl From<f32> for GradLoss<'_> {
    fn from(v: f32) -> Self {
        GradLoss::Value(v)
    }
}

impl GradLoss<'_> {
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            GradLoss::Value(v) => validate::finite("grad_loss", &[*v]),
            GradLoss::Device(d) => validate::len("grad_loss", d.len(), 1, "a device scalar"),
        }
    }

    /// Pushes (grad_value, grad_ptr) as the next two kernel arguments.
    pub(crate) fn args<'a>(&'a self, b: &mut LaunchArgs<'a>, one: &'a f32, null: &'a u64) {
        match self {
            GradLoss::Value(v) => b.arg(v).arg(null),
            GradLoss::Device(d) => b.arg(one).arg(d),
        };
    }
}

/// The kernels' `LossParams` (grpo.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossParams {
    clip_low: f32,
    clip_high: f32,
    dual_clip: f32,
    kl_coef: f32,
    entropy_coef: f32,
    kl_estimator: i32,
}

// SAFETY: plain old data, laid out as grpo.cu's `struct LossParams` (4-byte fields in order).
unsafe impl DeviceRepr for LossParams {}

/// The kernels' `rows::PassParams` (row_stats.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassParams {
    inv_t: f32,
    top_p: f32,
    prune_z: f32,
}

// SAFETY: plain old data, laid out as row_stats.cuh's `struct PassParams` (4-byte fields in order).
unsafe impl DeviceRepr for PassParams {}

pub(crate) fn loss_params(cfg: &GrpoConfig) -> LossParams {
    let (kl_coef, kl_estimator) = match cfg.kl {
        None => (0.0, -1),
        Some(k) => (
            k.coef,
            match k.estimator {
                KlEstimator::K1 => 0,
                KlEstimator::K2 => 1,
                KlEstimator::K3 => 2,
            },
        ),
    };
    LossParams {
        clip_low: cfg.clip_low,
        clip_high: cfg.clip_high,
        dual_clip: cfg.dual_clip.unwrap_or(0.0),
        kl_coef,
        entropy_coef: cfg.entropy_coef,
        kl_estimator,
    }
}

pub(crate) fn pass_params(cfg: &GrpoConfig, vocab: usize) -> PassParams {
    let prune_z = cfg.top_p.map_or(0.0, |p| prune_z(p, vocab, cfg.temperature));
    PassParams { inv_t: 1.0 / cfg.temperature, top_p: cfg.top_p.unwrap_or(0.0), prune_z }
}
