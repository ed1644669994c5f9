//! Safe wrappers of `kernels/grpo.cu`: the fused shaped-GRPO loss on the device, forward and
//! backward to dlogits, with the shape of [`crate::cpu::grpo_forward`] /
//! [`crate::cpu::grpo_backward`] plus the caller's stream, device buffers in and out.
//!
//! - [`grpo_forward`] (and [`grpo_forward_into`]): one read of each row of logits; per-token loss
//!   terms, the saved scalars of the backward and the scalar loss (a device scalar; read it with
//!   [`CudaGrpoForward::loss_host`]). Launches: seq_counts (the mask's per-sequence counts, for
//!   the aggregation weights), the row kernel, two small kernels that sum the loss in a fixed
//!   order. No host synchronisation unless `cfg.check_finite` (see below).
//! - [`grpo_backward`] / [`grpo_backward_into`] / [`grpo_backward_in_place`]: one read and one
//!   write of each row, dlogits in the logits' dtype. `grad_loss` is a host value or a device
//!   scalar ([`GradLoss`]): a device scalar (e.g. candle's upstream gradient) avoids a host sync.
//! - [`grpo_forward_backward`] / [`grpo_forward_backward_in_place`]: both in one kernel, the
//!   second pass over each row right after the first (mostly from L2), for when the upstream
//!   gradient of the loss is known at forward time (1 for a loss that is backpropagated directly):
//!   near 1 read + 1 write of the logits instead of 2 reads + 1 write.
//! - [`grpo_forward_host`] / [`grpo_backward_host`]: host slices in and out, the exact signatures
//!   of `cpu::` plus the stream (what tests and the CLI use).
//!
//! Checks: configuration and lengths on the host, before any launch. Values on the device
//! (targets < V, mask ∈ {0, 1}, finite per-token inputs, NaN/+inf or all −inf rows) are recorded
//! by the row kernel as it reads them; with `cfg.check_finite` the forward then reads 64 bytes of
//! status (one stream synchronisation) and returns the error `cpu::` returns, in its order
//! (targets, mask, old_logp, advantages, ref_logp, then rows). With `check_finite = false` nothing
//! is checked on the device and nothing waits: a bad row or value gives NaN terms (a target ≥ V
//! is never read), never an out-of-bounds access. Errors found on the host come first.
//!
//! Determinism: the row statistics and the loss sum have a fixed reduction order (no float
//! atomics), so every run gives the same bits, on any device.

use std::sync::Arc;

use super::context::{cuda_err, dtype_name, launch_for, Kernel, Module, BLOCK, ROW_BLOCK};
use super::cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use super::grpo_types::{loss_params, pass_params, Scratch, CHUNK};
pub use super::grpo_types::{CudaGrpoForward, CudaGrpoInputs, CudaGrpoSaved, GradLoss};
use super::sequence::{
    as_u32, download, mask_error, non_finite, upload, value_at, AggParams, Status, STATUS_ADVANTAGES, STATUS_MASK,
    STATUS_OLD_LOGP, STATUS_REF_LOGP, STATUS_ROW_ALL_NEG_INF, STATUS_ROW_NON_FINITE, STATUS_TARGET,
};
use super::token_stats::{MAX_TOP_P_VOCAB, TOP_P_SHARED_BYTES};
use crate::config::{check_temperature, GrpoConfig};
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::types::{GrpoForward, GrpoInputs, GrpoSaved};
use crate::validate;

/// V as the kernels take it (and the top-p histogram's limit).
fn vocab_u32(vocab: usize, top_p: bool) -> Result<u32> {
    let limit = if top_p { MAX_TOP_P_VOCAB } else { u32::MAX as usize };
    if vocab > limit {
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: format!("V <= {limit} on CUDA"),
            got: format!("V = {vocab}"),
        });
    }
    Ok(vocab as u32)
}

/// Host checks of a forward (configuration, then shapes in the order of `GrpoInputs::validate`,
/// then the output buffers); returns N.
fn check_forward(
    len: usize,
    vocab: usize,
    inp: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    out: &CudaGrpoForward,
) -> Result<usize> {
    cfg.validate()?;
    let n = validate::rows(len, vocab)?;
    if cfg.filter.is_some() {
        return Err(crate::Error::InvalidConfig {
            name: "filter",
            value: cfg.filter.map(|f| f.to_string()).unwrap_or_default(),
            why: "sampling filters are not implemented on CUDA yet",
        });
    }
    vocab_u32(vocab, cfg.top_p.is_some())?;
    let b = validate::sequences(n, inp.seq_len)?;
    as_u32("seq_len", inp.seq_len)?;
    validate::len("targets", inp.targets.len(), n, "one per row")?;
    validate::len("mask", inp.mask.len(), n, "one per token")?;
    validate::len("old_logp", inp.old_logp.len(), n, "one per token")?;
    validate::len("advantages", inp.advantages.len(), n, "one per token")?;
    match (&inp.ref_logp, cfg.kl.is_some()) {
        (Some(r), _) => validate::len("ref_logp", r.len(), n, "one per token")?,
        (None, true) => {
            return Err(Error::ShapeMismatch {
                name: "ref_logp",
                expected: format!("{n} elements (the KL penalty is on)"),
                got: "none".into(),
            })
        }
        (None, false) => {}
    }
    let mismatch = |what: &str| Error::ShapeMismatch {
        name: "out",
        expected: format!("buffers made by CudaGrpoForward::new for {n} tokens, T = {}, this config", inp.seq_len),
        got: what.to_string(),
    };
    if out.rows() != n || out.scratch.counts.lens.len() != b {
        return Err(mismatch("buffers of another shape"));
    }
    if out.kl.is_some() != cfg.kl.is_some() || out.branch.is_some() != cfg.top_p.is_some() {
        return Err(mismatch("buffers for another kl/top_p setting"));
    }
    if out.scratch.status.checks() != cfg.check_finite {
        return Err(mismatch("buffers for another check_finite setting"));
    }
    Ok(n)
}

/// Where the fused kernel writes dlogits, scaled by which gradient (`None`: forward only).
type Dst<'a, 'b, E> = Option<(&'a mut CudaViewMut<'b, E>, &'a GradLoss<'a>)>;

/// Launches the forward (or, with `dst`, the fused) pipeline into `out`; then, with
/// `cfg.check_finite`, reads the status words and returns the first error. `src = None` reads
/// the logits from `dst` (in place).
fn run_forward<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: Option<&CudaView<'_, E>>,
    dst: Dst<'_, '_, E>,
    vocab: usize,
    inp: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    out: &mut CudaGrpoForward,
) -> Result<()> {
    let n = out.rows();
    let sc = &mut out.scratch;
    sc.status.reset(stream)?;
    sc.counts.count(stream, &inp.mask, inp.seq_len, &mut sc.status)?;
    if n > 0 {
        launch_rows(stream, src, dst, vocab, inp, cfg, out)?;
        sum_loss(stream, n, &mut out.scratch, &mut out.loss)?;
    } else {
        stream.memset_zeros(&mut out.loss).map_err(cuda_err("zero loss"))?;
    }
    forward_errors(stream, &out.scratch.status, inp, vocab)
}

/// The row kernel of [`run_forward`] (n > 0).
fn launch_rows<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: Option<&CudaView<'_, E>>,
    dst: Dst<'_, '_, E>,
    vocab: usize,
    inp: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    out: &mut CudaGrpoForward,
) -> Result<()> {
    let names = match (cfg.top_p.is_some(), dst.is_some()) {
        (false, false) => ["grpo_forward_f32", "grpo_forward_bf16", "grpo_forward_f16"],
        (true, false) => ["grpo_forward_topp_f32", "grpo_forward_topp_bf16", "grpo_forward_topp_f16"],
        (false, true) => ["grpo_fused_f32", "grpo_fused_bf16", "grpo_fused_f16"],
        (true, true) => ["grpo_fused_topp_f32", "grpo_fused_topp_bf16", "grpo_fused_topp_f16"],
    };
    let shared_bytes = if cfg.top_p.is_some() { TOP_P_SHARED_BYTES } else { 0 };
    let k = Kernel { module: Module::Grpo, name: dtype_name(names, E::DTYPE), block: ROW_BLOCK, shared_bytes };
    let (func, lc) = launch_for(stream, k, out.rows() as u64)?;
    let (n_rows, v32, t32) = (out.rows() as u64, vocab as u32, inp.seq_len as u32);
    let (agg, lp, pp) = (AggParams::new(&cfg.aggregation), loss_params(cfg), pass_params(cfg, vocab));
    let (null, one) = (0u64, 1.0f32);
    let no_grad = GradLoss::Value(0.0);
    let mut b = stream.launch_builder(&func);
    match src {
        Some(l) => b.arg(l),
        None => b.arg(&null),
    };
    let grad = match dst {
        Some((d, g)) => {
            b.arg(d);
            g
        }
        None => {
            b.arg(&null);
            &no_grad
        }
    };
    b.arg(&n_rows).arg(&v32).arg(&inp.targets).arg(&inp.mask).arg(&inp.old_logp);
    match &inp.ref_logp {
        Some(r) => b.arg(r),
        None => b.arg(&null),
    };
    b.arg(&inp.advantages).arg(&out.scratch.counts.lens).arg(&out.scratch.counts.totals);
    b.arg(&t32).arg(&agg).arg(&lp).arg(&pp);
    grad.args(&mut b, &one, &null);
    b.arg(&mut out.token_loss).arg(&mut out.logp).arg(&mut out.ratio).arg(&mut out.clip_flags);
    match out.kl.as_mut() {
        Some(k) => b.arg(k),
        None => b.arg(&null),
    };
    let s = &mut out.saved;
    b.arg(&mut s.lse).arg(&mut s.entropy).arg(&mut s.grad_logp).arg(&mut s.grad_entropy);
    b.arg(&mut out.scratch.contrib);
    match out.branch.as_mut() {
        Some(br) => b.arg(br),
        None => b.arg(&null),
    };
    out.scratch.status.arg(&mut b, &null);
    // SAFETY: grpo_{forward,fused}[_topp]_<dtype>(const E* logits (null: read dlogits), E*
    // dlogits (null: forward only), u64 n_rows, u32 vocab, const u32* targets, const f32* mask,
    // old_logp, ref_logp (or null), adv, const u32* lens, const BatchTotals* totals, u32 seq_len,
    // AggParams, LossParams, PassParams, f32 grad_value, const f32* grad_ptr (or null), f32*
    // token_loss, logp, ratio, u8* clip_flags, f32* kl (or null), f32* lse, entropy, grad_logp,
    // grad_entropy, f64* contrib, u32* branch (or null), u64* status (or null)): the arguments
    // above in that order and type. Per-token buffers hold N entries and logits/dlogits N·V
    // (checked by the callers), lens N / seq_len; the top-p variants get TOP_P_SHARED_BYTES of
    // dynamic shared memory (they trap on less). The kernel never indexes with a target >= V.
    unsafe { b.launch(lc) }.map_err(cuda_err("launch grpo forward"))?;
    Ok(())
}

/// loss = Σ contrib in a fixed order: chunk sums, then one CTA over the chunks.
fn sum_loss(stream: &Arc<CudaStream>, n: usize, sc: &mut Scratch, loss: &mut CudaSlice<f32>) -> Result<()> {
    let chunks = n.div_ceil(CHUNK);
    let k = Kernel { module: Module::Grpo, name: "sum_chunks_f64", block: BLOCK, shared_bytes: 0 };
    let (func, lc) = launch_for(stream, k, chunks as u64)?;
    let (n64, chunk, c64) = (n as u64, CHUNK as u64, chunks as u64);
    let mut b = stream.launch_builder(&func);
    b.arg(&sc.contrib).arg(&n64).arg(&chunk).arg(&mut sc.partial);
    // SAFETY: sum_chunks_f64(const f64* in, u64 n, u64 chunk, f64* out): in that order and type;
    // contrib holds n values, partial ceil(n / chunk).
    unsafe { b.launch(lc) }.map_err(cuda_err("launch sum_chunks_f64"))?;
    let k = Kernel { module: Module::Grpo, name: "grpo_loss_final", block: BLOCK, shared_bytes: 0 };
    let (func, lc) = launch_for(stream, k, 1)?;
    let mut b = stream.launch_builder(&func);
    b.arg(&sc.partial).arg(&c64).arg(loss);
    // SAFETY: grpo_loss_final(const f64* partial, u64 n, f32* loss): in that order and type;
    // partial holds `chunks` values, loss one; `launch_for(.., 1)` gives the one CTA it needs.
    unsafe { b.launch(lc) }.map_err(cuda_err("launch grpo_loss_final"))?;
    Ok(())
}

/// The first bad device value recorded by the forward, as `cpu::grpo_forward`'s error.
fn forward_errors(stream: &Arc<CudaStream>, status: &Status, inp: &CudaGrpoInputs, vocab: usize) -> Result<()> {
    let first = status.read(stream)?;
    if let Some(token) = first[STATUS_TARGET] {
        return Err(Error::TargetOutOfRange { token, target: value_at(stream, &inp.targets, token)?, vocab });
    }
    if let Some(i) = first[STATUS_MASK] {
        return Err(mask_error(stream, &inp.mask, i)?);
    }
    if let Some(i) = first[STATUS_OLD_LOGP] {
        return Err(non_finite(stream, "old_logp", &inp.old_logp, i)?);
    }
    if let Some(i) = first[STATUS_ADVANTAGES] {
        return Err(non_finite(stream, "advantages", &inp.advantages, i)?);
    }
    if let (Some(i), Some(r)) = (first[STATUS_REF_LOGP], &inp.ref_logp) {
        return Err(non_finite(stream, "ref_logp", r, i)?);
    }
    match (first[STATUS_ROW_NON_FINITE], first[STATUS_ROW_ALL_NEG_INF]) {
        (Some(a), b) if b.is_none_or(|b| a < b) => Err(Error::NonFiniteLogits { row: a }),
        (_, Some(b)) => Err(Error::AllNegInfRow { row: b }),
        _ => Ok(()),
    }
}

/// Fused GRPO forward of row-major `[N, V]` `logits` on `stream`, as [`crate::cpu::grpo_forward`]:
/// lse, entropy, logp (and the branch count with `cfg.top_p`) from one read of each row, then ρ,
/// clip flags, KL, per-token loss, the saved g_t, h_t and the scalar loss (a device scalar).
///
/// Errors: configuration, shapes (host), then with `cfg.check_finite` the device-value errors of
/// the module documentation (one synchronisation). Non-contiguous input cannot occur: views are
/// contiguous by construction.
pub fn grpo_forward<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    inputs: &CudaGrpoInputs,
    cfg: &GrpoConfig,
) -> Result<CudaGrpoForward> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    validate::sequences(n, inputs.seq_len)?;
    let mut out = CudaGrpoForward::new(stream, n, inputs.seq_len, cfg)?;
    grpo_forward_into(stream, logits, vocab, inputs, cfg, &mut out)?;
    Ok(out)
}

/// [`grpo_forward`] into buffers made by [`CudaGrpoForward::new`] for the same N, T and `cfg`
/// (no allocation: what a training loop or a benchmark repeats).
pub fn grpo_forward_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    inputs: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    out: &mut CudaGrpoForward,
) -> Result<()> {
    check_forward(logits.len(), vocab, inputs, cfg, out)?;
    run_forward(stream, Some(logits), None, vocab, inputs, cfg, out)
}

/// Forward and backward in one kernel: [`grpo_forward`] plus dlogits = `grad_loss`·∂loss/∂z in a
/// new buffer of the logits' dtype, each row's second pass right after its first (see the module
/// documentation). The same values as [`grpo_forward`] followed by [`grpo_backward`].
pub fn grpo_forward_backward<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    inputs: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    grad_loss: GradLoss,
) -> Result<(CudaGrpoForward, CudaSlice<E>)> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    validate::sequences(n, inputs.seq_len)?;
    grad_loss.check()?;
    let mut out = CudaGrpoForward::new(stream, n, inputs.seq_len, cfg)?;
    check_forward(logits.len(), vocab, inputs, cfg, &out)?;
    let mut dz = uninit::<E>(stream, logits.len())?;
    let mut dv = dz.as_view_mut();
    run_forward(stream, Some(logits), Some((&mut dv, &grad_loss)), vocab, inputs, cfg, &mut out)?;
    Ok((out, dz))
}

/// [`grpo_forward_backward`] into caller buffers: `out` from [`CudaGrpoForward::new`] and
/// `dlogits` of the logits' shape (no allocation: what a training loop or a benchmark repeats).
#[allow(clippy::too_many_arguments)]
pub fn grpo_forward_backward_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    inputs: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    grad_loss: GradLoss,
    out: &mut CudaGrpoForward,
    dlogits: &mut CudaViewMut<'_, E>,
) -> Result<()> {
    check_forward(logits.len(), vocab, inputs, cfg, out)?;
    validate::len("dlogits", dlogits.len(), logits.len(), "the logits' shape")?;
    grad_loss.check()?;
    run_forward(stream, Some(logits), Some((dlogits, &grad_loss)), vocab, inputs, cfg, out)
}

/// [`grpo_forward_backward`] with dlogits written over the logits (no `[N, V]` buffer at all).
/// On an error found on the host nothing is overwritten; an error found on the device (with
/// `cfg.check_finite`) is reported after the logits were overwritten.
pub fn grpo_forward_backward_in_place<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &mut CudaViewMut<'_, E>,
    vocab: usize,
    inputs: &CudaGrpoInputs,
    cfg: &GrpoConfig,
    grad_loss: GradLoss,
) -> Result<CudaGrpoForward> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    validate::sequences(n, inputs.seq_len)?;
    grad_loss.check()?;
    let mut out = CudaGrpoForward::new(stream, n, inputs.seq_len, cfg)?;
    check_forward(logits.len(), vocab, inputs, cfg, &out)?;
    run_forward(stream, None, Some((logits, &grad_loss)), vocab, inputs, cfg, &mut out)?;
    Ok(out)
}

/// An uninitialised device buffer of `len` elements (every element is written by the kernel
/// before anyone can read it; zero-filling 1 GB would cost a third of the backward).
fn uninit<E: DeviceRepr>(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<E>> {
    if len == 0 {
        return stream.null().map_err(cuda_err("allocate dlogits"));
    }
    // SAFETY: the returned buffer is only handed out after a backward kernel that writes all
    // `len` elements was launched on `stream` (stream order makes every later read see them).
    unsafe { stream.alloc::<E>(len) }.map_err(cuda_err("allocate dlogits"))
}

/// Host checks of a backward; returns N.
fn check_backward(
    len: usize,
    vocab: usize,
    targets: &CudaView<'_, u32>,
    saved: &CudaGrpoSaved,
    temperature: f32,
    grad_loss: &GradLoss,
) -> Result<usize> {
    check_temperature(temperature)?;
    let n = validate::rows(len, vocab)?;
    vocab_u32(vocab, false)?;
    validate::len("targets", targets.len(), n, "one per row")?;
    validate::len("saved.lse", saved.lse.len(), n, "one per row")?;
    validate::len("saved.entropy", saved.entropy.len(), n, "one per row")?;
    validate::len("saved.grad_logp", saved.grad_logp.len(), n, "one per row")?;
    validate::len("saved.grad_entropy", saved.grad_entropy.len(), n, "one per row")?;
    grad_loss.check()?;
    Ok(n)
}

/// Launches grpo_backward_<dtype>; `logits = None` reads the source from `dst` (in place).
#[allow(clippy::too_many_arguments)]
fn run_backward<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: Option<&CudaView<'_, E>>,
    dst: &mut CudaViewMut<'_, E>,
    n: usize,
    vocab: usize,
    targets: &CudaView<'_, u32>,
    saved: &CudaGrpoSaved,
    temperature: f32,
    grad_loss: &GradLoss,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let name = dtype_name(["grpo_backward_f32", "grpo_backward_bf16", "grpo_backward_f16"], E::DTYPE);
    let (func, lc) =
        launch_for(stream, Kernel { module: Module::Grpo, name, block: ROW_BLOCK, shared_bytes: 0 }, n as u64)?;
    let (n_rows, v32, inv_t, one, null) = (n as u64, vocab as u32, 1.0 / temperature, 1.0f32, 0u64);
    let mut b = stream.launch_builder(&func);
    match logits {
        Some(l) => b.arg(l),
        None => b.arg(&null),
    };
    b.arg(dst).arg(&n_rows).arg(&v32).arg(targets);
    b.arg(&saved.lse).arg(&saved.entropy).arg(&saved.grad_logp).arg(&saved.grad_entropy).arg(&inv_t);
    grad_loss.args(&mut b, &one, &null);
    // SAFETY: grpo_backward_<dtype>(const E* logits (null: read dlogits), E* dlogits, u64 n_rows,
    // u32 vocab, const u32* targets, const f32* lse, entropy, grad_logp, grad_entropy, f32 inv_t,
    // f32 grad_value, const f32* grad_ptr (or null)): in that order and type; logits and dlogits
    // hold N·V elements, the others N (checked by the callers). A target ≥ V is never read.
    unsafe { b.launch(lc) }.map_err(cuda_err("launch grpo_backward"))?;
    Ok(())
}

/// Backward into a new buffer: dlogits = grad_loss·∂loss/∂z in the logits' dtype, as
/// [`crate::cpu::grpo_backward`]: ∂loss/∂z_tj = (1/T)·[g_t·(δ_{j,y_t} − p_tj) − h_t·p_tj·(ln p_tj
/// + H_t)], rows with g = h = 0 (masked) zero. `temperature` must be the forward's.
///
/// Errors: temperature, shapes, a non-finite host `grad_loss` or a device one of the wrong length
/// (host; nothing is launched). Targets ≥ V are not checked here (the forward reports them): such
/// rows get no δ term.
pub fn grpo_backward<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: &CudaView<'_, u32>,
    saved: &CudaGrpoSaved,
    temperature: f32,
    grad_loss: GradLoss,
) -> Result<CudaSlice<E>> {
    let n = check_backward(logits.len(), vocab, targets, saved, temperature, &grad_loss)?;
    let mut out = uninit::<E>(stream, logits.len())?;
    run_backward(stream, Some(logits), &mut out.as_view_mut(), n, vocab, targets, saved, temperature, &grad_loss)?;
    Ok(out)
}

/// [`grpo_backward`] into a caller-given buffer of the logits' shape.
#[allow(clippy::too_many_arguments)]
pub fn grpo_backward_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: &CudaView<'_, u32>,
    saved: &CudaGrpoSaved,
    temperature: f32,
    grad_loss: GradLoss,
    out: &mut CudaViewMut<'_, E>,
) -> Result<()> {
    let n = check_backward(logits.len(), vocab, targets, saved, temperature, &grad_loss)?;
    validate::len("dlogits", out.len(), logits.len(), "the logits' shape")?;
    run_backward(stream, Some(logits), out, n, vocab, targets, saved, temperature, &grad_loss)
}

/// [`grpo_backward`] in place: the logits are overwritten with dlogits (saves the `[N, V]`
/// buffer). The same bits as [`grpo_backward`]; nothing is overwritten on error.
pub fn grpo_backward_in_place<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &mut CudaViewMut<'_, E>,
    vocab: usize,
    targets: &CudaView<'_, u32>,
    saved: &CudaGrpoSaved,
    temperature: f32,
    grad_loss: GradLoss,
) -> Result<()> {
    let n = check_backward(logits.len(), vocab, targets, saved, temperature, &grad_loss)?;
    run_backward(stream, None, logits, n, vocab, targets, saved, temperature, &grad_loss)
}

/// Host slices in, host [`GrpoForward`] out: the signature (plus the stream), errors and results
/// (within f32 rounding) of [`crate::cpu::grpo_forward`]. Per-token inputs are checked on the host
/// (they are there), so only the logits' rows are checked on the device.
pub fn grpo_forward_host<E: Element>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    inputs: &GrpoInputs,
    cfg: &GrpoConfig,
) -> Result<GrpoForward> {
    // `Element` does not require cudarc's `DeviceRepr`; the three element types do implement it.
    match E::DTYPE {
        DType::F32 => forward_host::<f32>(stream, bytemuck::cast_slice(logits), vocab, inputs, cfg),
        DType::BF16 => forward_host::<half::bf16>(stream, bytemuck::cast_slice(logits), vocab, inputs, cfg),
        DType::F16 => forward_host::<half::f16>(stream, bytemuck::cast_slice(logits), vocab, inputs, cfg),
    }
}

fn forward_host<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    inp: &GrpoInputs,
    cfg: &GrpoConfig,
) -> Result<GrpoForward> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    inp.validate(n, vocab, cfg.kl.is_some())?;
    let d = upload(stream, logits, "copy logits")?;
    let targets = upload(stream, inp.targets, "copy targets")?;
    let mask = upload(stream, inp.mask, "copy mask")?;
    let old = upload(stream, inp.old_logp, "copy old_logp")?;
    let reference = inp.ref_logp.map(|r| upload(stream, r, "copy ref_logp")).transpose()?;
    let adv = upload(stream, inp.advantages, "copy advantages")?;
    let views = CudaGrpoInputs {
        targets: targets.as_view(),
        mask: mask.as_view(),
        old_logp: old.as_view(),
        ref_logp: reference.as_ref().map(|r| r.as_view()),
        advantages: adv.as_view(),
        seq_len: inp.seq_len,
    };
    grpo_forward(stream, &d.as_view(), vocab, &views, cfg)?.to_host(stream)
}

/// Host slices in, host dlogits out: the signature (plus the stream), errors and results (within
/// the rounding of the output dtype) of [`crate::cpu::grpo_backward`].
pub fn grpo_backward_host<E: Element>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
) -> Result<Vec<E>> {
    let run = BackwardHost { stream, vocab, targets, saved, temperature, grad_loss };
    // The match makes the cast an identity: E is the type the arm names.
    Ok(match E::DTYPE {
        DType::F32 => bytemuck::cast_slice(&run.typed::<f32>(bytemuck::cast_slice(logits))?).to_vec(),
        DType::BF16 => bytemuck::cast_slice(&run.typed::<half::bf16>(bytemuck::cast_slice(logits))?).to_vec(),
        DType::F16 => bytemuck::cast_slice(&run.typed::<half::f16>(bytemuck::cast_slice(logits))?).to_vec(),
    })
}

/// The arguments of [`grpo_backward_host`] besides the logits.
struct BackwardHost<'a> {
    stream: &'a Arc<CudaStream>,
    vocab: usize,
    targets: &'a [u32],
    saved: &'a GrpoSaved,
    temperature: f32,
    grad_loss: f32,
}

impl BackwardHost<'_> {
    fn typed<E: Element + DeviceRepr + Default>(&self, logits: &[E]) -> Result<Vec<E>> {
        let BackwardHost { stream, vocab, targets, saved, temperature, grad_loss } = *self;
        check_temperature(temperature)?;
        let n = validate::rows(logits.len(), vocab)?;
        validate::targets(targets, n, vocab)?;
        validate::len("saved.lse", saved.lse.len(), n, "one per row")?;
        validate::len("saved.entropy", saved.entropy.len(), n, "one per row")?;
        validate::len("saved.grad_logp", saved.grad_logp.len(), n, "one per row")?;
        validate::len("saved.grad_entropy", saved.grad_entropy.len(), n, "one per row")?;
        validate::finite("grad_loss", &[grad_loss])?;
        let d = upload(stream, logits, "copy logits")?;
        let t = upload(stream, targets, "copy targets")?;
        let s = CudaGrpoSaved::from_host(stream, saved)?;
        let g = GradLoss::Value(grad_loss);
        download(stream, &grpo_backward(stream, &d.as_view(), vocab, &t.as_view(), &s, temperature, g)?)
    }
}
