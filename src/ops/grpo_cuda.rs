//! The GRPO op on a CUDA device: `crate::cuda::grpo_forward` / `grpo_backward` on candle's own
//! stream, with the per-token inputs read in place from the caller's tensors (no copies) and the
//! upstream gradient of the loss passed as a device scalar (no host synchronisation in the
//! backward). The forward synchronises once when `cfg.check_finite` is set (to report a bad row).

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Storage, Tensor};

use super::grpo::{GrpoLossOutput, GrpoOp};
use super::token_stats::unsupported;
use crate::cuda::{self, CudaGrpoForward, CudaGrpoInputs, CudaStream, GradLoss};
use crate::element::Element;
use crate::error::{Error, Result};

/// What the CUDA forward leaves for the public function and the backward.
#[derive(Debug)]
pub(crate) struct DeviceForward {
    pub fwd: CudaGrpoForward,
    pub dev: CudaDevice,
}

/// A driver error as the crate's error, naming what was being done.
fn cuda_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Cuda { op, msg: e.to_string() }
}

/// The `[start, start + n)` elements of a contiguous CUDA tensor's storage.
fn view<'a, T: CudaDType + DeviceRepr>(
    name: &'static str,
    storage: &'a Storage,
    layout: &candle_core::Layout,
    n: usize,
) -> Result<CudaView<'a, T>> {
    match storage {
        Storage::Cuda(c) => {
            let start = layout.start_offset();
            Ok(c.as_cuda_slice::<T>()?.slice(start..start + n))
        }
        _ => Err(Error::Cuda { op: "ops::grpo_loss", msg: format!("`{name}` is not in CUDA memory") }),
    }
}

/// The forward: the loss as a one-element device buffer, and the rest of the outputs.
pub(crate) fn forward(op: &GrpoOp, s: &CudaStorage, range: Range<usize>) -> Result<(CudaStorage, DeviceForward)> {
    let dev = s.device().clone();
    let stream = dev.cuda_stream();
    let n = op.inputs.targets.len();
    let t = &op.tensors;
    let (targets, mask, old, adv) = (
        t.targets.storage_and_layout(),
        t.mask.storage_and_layout(),
        t.old_logp.storage_and_layout(),
        t.advantages.storage_and_layout(),
    );
    let ref_logp = t.ref_logp.as_ref().map(|r| r.storage_and_layout());
    let inputs = CudaGrpoInputs {
        targets: view("targets", &targets.0, targets.1, n)?,
        mask: view("mask", &mask.0, mask.1, n)?,
        old_logp: view("old_logp", &old.0, old.1, n)?,
        ref_logp: match &ref_logp {
            Some((st, l)) => Some(view("ref_logp", st, l, n)?),
            None => None,
        },
        advantages: view("advantages", &adv.0, adv.1, n)?,
        seq_len: op.inputs.seq_len,
    };
    let mut fwd = match s.dtype() {
        candle_core::DType::F32 => run::<f32>(op, s, range, &inputs, &stream)?,
        candle_core::DType::BF16 => run::<half::bf16>(op, s, range, &inputs, &stream)?,
        candle_core::DType::F16 => run::<half::f16>(op, s, range, &inputs, &stream)?,
        d => return Err(unsupported(d)),
    };
    let loss = std::mem::replace(&mut fwd.loss, stream.null().map_err(cuda_err("move the loss"))?);
    Ok((CudaStorage::wrap_cuda_slice(loss, dev.clone()), DeviceForward { fwd, dev }))
}

fn run<E: Element + DeviceRepr + CudaDType>(
    op: &GrpoOp,
    s: &CudaStorage,
    range: Range<usize>,
    inputs: &CudaGrpoInputs,
    stream: &std::sync::Arc<CudaStream>,
) -> Result<CudaGrpoForward> {
    let logits = s.as_cuda_slice::<E>()?.slice(range);
    cuda::grpo_forward(stream, &logits, op.inputs.vocab, inputs, &op.cfg)
}

/// The per-token outputs as tensors of shape `lead` on the device; the slices are moved out of
/// the forward (entropy is copied: the backward still needs `saved.entropy`).
pub(crate) fn outputs(d: &mut DeviceForward, lead: &[usize], loss: Tensor) -> Result<GrpoLossOutput> {
    let stream = d.dev.cuda_stream();
    let dev = d.dev.clone();
    let wrap = |storage: CudaStorage| Tensor::from_storage(Storage::Cuda(storage), lead, BackpropOp::none(), false);
    let take_f32 = |s: &mut CudaSlice<f32>| -> Result<Tensor> {
        let empty = stream.null().map_err(cuda_err("move a per-token output"))?;
        Ok(wrap(CudaStorage::wrap_cuda_slice(std::mem::replace(s, empty), dev.clone())))
    };
    let f = &mut d.fwd;
    let entropy = if f.saved.entropy.is_empty() { stream.null() } else { stream.clone_dtod(&f.saved.entropy) }
        .map_err(cuda_err("copy entropy"))?;
    let flags = std::mem::replace(&mut f.clip_flags, stream.null().map_err(cuda_err("move clip flags"))?);
    let branch = f.branch.take().map(|b| wrap(CudaStorage::wrap_cuda_slice(b, dev.clone())));
    Ok(GrpoLossOutput {
        loss,
        token_loss: take_f32(&mut f.token_loss)?,
        logp: take_f32(&mut f.logp)?,
        entropy: wrap(CudaStorage::wrap_cuda_slice(entropy, dev.clone())),
        ratio: take_f32(&mut f.ratio)?,
        clip_flags: wrap(CudaStorage::wrap_cuda_slice(flags, dev.clone())),
        kl: f.kl.as_mut().map(take_f32).transpose()?,
        branch,
        kept: None,
    })
}

/// The backward: dlogits = grad_loss·∂loss/∂z, `grad_loss` read by the kernel from device memory.
pub(crate) fn backward(
    op: &GrpoOp,
    d: &DeviceForward,
    logits: (&CudaStorage, Range<usize>),
    grad: (&CudaStorage, usize),
) -> Result<CudaStorage> {
    let stream = d.dev.cuda_stream();
    let (s, range) = logits;
    let n = op.inputs.targets.len();
    let targets = op.tensors.targets.storage_and_layout();
    let targets = view::<u32>("targets", &targets.0, targets.1, n)?;
    let g = grad.0.as_cuda_slice::<f32>()?.slice(grad.1..grad.1 + 1);
    let (vocab, t) = (op.inputs.vocab, op.cfg.temperature);
    let saved = &d.fwd.saved;
    let storage = match s.dtype() {
        candle_core::DType::F32 => {
            let z = s.as_cuda_slice::<f32>()?.slice(range);
            let dz = cuda::grpo_backward(&stream, &z, vocab, &targets, saved, t, GradLoss::Device(g))?;
            CudaStorage::wrap_cuda_slice(dz, d.dev.clone())
        }
        candle_core::DType::BF16 => {
            let z = s.as_cuda_slice::<half::bf16>()?.slice(range);
            let dz = cuda::grpo_backward(&stream, &z, vocab, &targets, saved, t, GradLoss::Device(g))?;
            CudaStorage::wrap_cuda_slice(dz, d.dev.clone())
        }
        candle_core::DType::F16 => {
            let z = s.as_cuda_slice::<half::f16>()?.slice(range);
            let dz = cuda::grpo_backward(&stream, &z, vocab, &targets, saved, t, GradLoss::Device(g))?;
            CudaStorage::wrap_cuda_slice(dz, d.dev.clone())
        }
        other => return Err(unsupported(other)),
    };
    Ok(storage)
}
