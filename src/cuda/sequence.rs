//! Safe wrappers of `kernels/sequence.cu`: the O(N) sequence side of DESIGN.md §4 on the device
//! (log-PPL, PPL weight, GRPO advantages, shapings, the fused advantage pipeline, aggregation
//! weights), with the formulas, argument order and errors of [`crate::cpu`], on the caller's
//! stream, inputs and outputs in device memory (no host round trip of the data).
//!
//! Differences from `cpu::`, all documented per function:
//! - A sequence without log-PPL is NaN on the device ([`log_ppl`] writes NaN; [`ppl_weight`]
//!   reads NaN as "none"). The host conveniences ([`log_ppl_host`], [`ppl_weight_host`]) convert
//!   to and from `Option<f32>`.
//! - Lengths and settings are checked on the host before any launch. Values that live on the
//!   device (mask entries, finiteness) are checked by the kernels themselves as they read them,
//!   which record the first bad index per kind; with [`Check::Values`] the wrapper then reads
//!   those 64 bytes (one stream synchronisation) and returns the error `cpu::` returns. So when an
//!   input has several problems, one found on the host is reported before one found on the
//!   device. [`Check::ShapesOnly`] skips the synchronisation: bad values then give unspecified
//!   (never out-of-bounds) results.
//! - [`ppl_weight`] and [`token_advantages`] sort a group in one CTA: G ≤ [`MAX_GROUP`].
//! - Sums are f64 in a fixed tree order rather than token order (see the kernel file): results
//!   agree with `cpu::` to a relative 1e-16 before the rounding to f32, and every run gives the
//!   same bits.

use std::sync::Arc;

use super::context::{cuda_err, launch_for, Kernel, Module, BLOCK};
use super::cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, PushKernelArg, ValidAsZeroBits};
use crate::config::{AdvantageConfig, Aggregation, Shaping};
use crate::error::{Error, Result};
use crate::validate;

/// Largest GRPO group size G of [`ppl_weight`] and [`token_advantages`] (one group is sorted in
/// the shared memory of one CTA, one value per thread).
pub const MAX_GROUP: usize = 1024;

/// Whether device-resident input values are checked (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Check {
    /// Check them, with the errors of `cpu::`: costs one stream synchronisation and a 64-byte
    /// copy to the host per call.
    #[default]
    Values,
    /// Check lengths and settings only (no synchronisation). Mask values other than 0/1 count as
    /// 1; non-finite values propagate.
    ShapesOnly,
}

// Status words of `kernels/common.cuh` (enum StatusWord): the first bad index of each kind.
pub(crate) const STATUS_MASK: usize = 0;
pub(crate) const STATUS_OLD_LOGP: usize = 1;
pub(crate) const STATUS_REWARDS: usize = 2;
pub(crate) const STATUS_TARGET: usize = 3;
pub(crate) const STATUS_ADVANTAGES: usize = 4;
pub(crate) const STATUS_REF_LOGP: usize = 5;
pub(crate) const STATUS_ROW_NON_FINITE: usize = 6;
pub(crate) const STATUS_ROW_ALL_NEG_INF: usize = 7;
const STATUS_WORDS: usize = 8;

/// The device status words of one call (zeroed), or none when values are not checked.
#[derive(Debug)]
pub(crate) struct Status(Option<CudaSlice<u64>>);

impl Status {
    /// Whether values are checked.
    pub(crate) fn checks(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn new(stream: &Arc<CudaStream>, check: bool) -> Result<Self> {
        Ok(Status(if check { Some(zeros(stream, STATUS_WORDS, "allocate status words")?) } else { None }))
    }

    /// Zeroes the words again (for a reused buffer).
    pub(crate) fn reset(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        match self.0.as_mut() {
            Some(s) => stream.memset_zeros(s).map_err(cuda_err("reset status words")),
            None => Ok(()),
        }
    }

    /// Pushes the status pointer (or null) as the next kernel argument.
    pub(crate) fn arg<'a>(&'a mut self, b: &mut super::cudarc::driver::LaunchArgs<'a>, null: &'a u64) {
        match self.0.as_mut() {
            Some(s) => b.arg(s),
            None => b.arg(null),
        };
    }

    /// The first bad index of each kind (synchronises `stream`); all `None` without checks.
    pub(crate) fn read(&self, stream: &Arc<CudaStream>) -> Result<[Option<usize>; STATUS_WORDS]> {
        let mut first = [None; STATUS_WORDS];
        if let Some(s) = &self.0 {
            let words = stream.clone_dtoh(s).map_err(cuda_err("copy status words to host"))?;
            for (f, &w) in first.iter_mut().zip(&words) {
                // The kernels store max(~index): 0 = none.
                *f = (w != 0).then_some(!w as usize);
            }
        }
        Ok(first)
    }
}

/// A zeroed device buffer of `len` elements (cudarc's empty slice for 0: a 0-byte allocation is
/// not valid for every allocator).
pub(crate) fn zeros<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    len: usize,
    op: &'static str,
) -> Result<CudaSlice<T>> {
    if len == 0 { stream.null() } else { stream.alloc_zeros(len) }.map_err(cuda_err(op))
}

/// Element `i` of a device view, copied to the host (for an error message; synchronises).
pub(crate) fn value_at<T: DeviceRepr + Default + Clone>(
    stream: &Arc<CudaStream>,
    v: &CudaView<'_, T>,
    i: usize,
) -> Result<T> {
    let one = v.slice(i..i + 1);
    Ok(stream.clone_dtoh(&one).map_err(cuda_err("copy a bad value to host"))?[0].clone())
}

/// [`Error::InvalidMask`] for token `i`.
pub(crate) fn mask_error(stream: &Arc<CudaStream>, mask: &CudaView<'_, f32>, i: usize) -> Result<Error> {
    Ok(Error::InvalidMask { token: i, value: value_at(stream, mask, i)? as f64 })
}

/// [`Error::NonFiniteInput`] for `name[i]`.
pub(crate) fn non_finite(
    stream: &Arc<CudaStream>,
    name: &'static str,
    v: &CudaView<'_, f32>,
    i: usize,
) -> Result<Error> {
    Ok(Error::NonFiniteInput { name, index: i, value: value_at(stream, v, i)? as f64 })
}

/// A count or length the kernels take as u32.
pub(crate) fn as_u32(name: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::ShapeMismatch {
        name,
        expected: format!("at most {} on CUDA", u32::MAX),
        got: v.to_string(),
    })
}

fn check_group_limit(group: usize) -> Result<()> {
    if group > MAX_GROUP {
        return Err(Error::InvalidConfig {
            name: "group_size",
            value: group.to_string(),
            why: "must be <= 1024 on CUDA (one group is sorted in one thread block)",
        });
    }
    Ok(())
}

fn seq_kernel(name: &'static str) -> Kernel {
    Kernel { module: Module::Sequence, name, block: BLOCK, shared_bytes: 0 }
}

/// `config::Aggregation` as the kernels' `AggParams` (common.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct AggParams {
    mode: i32,
    pad: i32,
    param: f64,
}

// SAFETY: plain old data, laid out as `struct AggParams { int mode; int pad; double param; }`.
unsafe impl DeviceRepr for AggParams {}

impl AggParams {
    pub(crate) fn new(agg: &Aggregation) -> Self {
        let (mode, param) = match *agg {
            Aggregation::TokenMean { global_tokens: None } => (0, 0.0),
            Aggregation::TokenMean { global_tokens: Some(g) } => (1, g),
            Aggregation::SeqMeanTokenMean => (2, 0.0),
            Aggregation::SeqMeanTokenSum => (3, 0.0),
            Aggregation::SeqMeanTokenSumNorm { norm } => (4, norm),
        };
        AggParams { mode, pad: 0, param }
    }
}

/// `config::Shaping` as the kernels' `ShapeParams` (sequence.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ShapeParams {
    ppl: i32,
    alpha: f32,
    lo: f32,
    hi: f32,
    position: i32,
    beta: f32,
    kappa: f32,
}

// SAFETY: plain old data, laid out as sequence.cu's `struct ShapeParams` (4-byte fields in order).
unsafe impl DeviceRepr for ShapeParams {}

impl ShapeParams {
    fn new(s: &Shaping) -> Self {
        let (ppl, p) = (s.ppl.is_some() as i32, s.ppl.unwrap_or_default());
        let (position, q) = (s.position.is_some() as i32, s.position.unwrap_or_default());
        ShapeParams { ppl, alpha: p.alpha, lo: p.lo, hi: p.hi, position, beta: q.beta, kappa: q.kappa }
    }
}

/// Per-sequence counted-token counts of the `[B, T]` mask and the batch totals, on the device:
/// what the aggregation weights (and the GRPO forward) need.
#[derive(Debug)]
pub(crate) struct SeqCounts {
    /// Counted tokens (m ≠ 0) per sequence, `[B]`.
    pub lens: CudaSlice<u32>,
    /// (Σ lens, #{sequences with lens > 0}) as the kernels' `BatchTotals`.
    pub totals: CudaSlice<u64>,
}

impl SeqCounts {
    pub(crate) fn new(stream: &Arc<CudaStream>, batch: usize) -> Result<Self> {
        Ok(SeqCounts {
            lens: zeros(stream, batch, "allocate sequence lengths")?,
            totals: zeros(stream, 2, "allocate totals")?,
        })
    }

    /// Launches seq_counts over `mask` (`[B, T]`, B = `self.lens.len()`), recording bad mask
    /// values in `status`.
    pub(crate) fn count(
        &mut self,
        stream: &Arc<CudaStream>,
        mask: &CudaView<'_, f32>,
        seq_len: usize,
        status: &mut Status,
    ) -> Result<()> {
        stream.memset_zeros(&mut self.totals).map_err(cuda_err("reset totals"))?;
        let b = self.lens.len();
        if b == 0 {
            return Ok(());
        }
        let (func, lc) = launch_for(stream, seq_kernel("seq_counts"), b as u64)?;
        let (n_seq, t32, null) = (b as u64, as_u32("seq_len", seq_len)?, 0u64);
        let mut args = stream.launch_builder(&func);
        args.arg(mask).arg(&n_seq).arg(&t32).arg(&mut self.lens).arg(&mut self.totals);
        status.arg(&mut args, &null);
        // SAFETY: seq_counts(const f32* mask, u64 n_seq, u32 seq_len, u32* lens, BatchTotals*
        // totals (2 × u64), u64* status (8 words, or null)): the arguments in that order and
        // type; mask holds n_seq·seq_len values (checked by the callers), lens n_seq.
        unsafe { args.launch(lc) }.map_err(cuda_err("launch seq_counts"))?;
        Ok(())
    }
}

/// Sequence log-perplexity over the `[B, T]` view (T = `seq_len`): log PPL_i = −Σ m ℓ / Σ m, as
/// [`crate::cpu::log_ppl`], with **NaN** for a sequence without counted tokens (the CPU's `None`).
///
/// Errors: `seq_len` 0 or not dividing N, `mask` not of length N (host); with [`Check::Values`]
/// a mask value other than 0/1, then a non-finite `logp` (device).
pub fn log_ppl(
    stream: &Arc<CudaStream>,
    logp: &CudaView<'_, f32>,
    mask: &CudaView<'_, f32>,
    seq_len: usize,
    check: Check,
) -> Result<CudaSlice<f32>> {
    let b = validate::sequences(logp.len(), seq_len)?;
    validate::len("mask", mask.len(), logp.len(), "one per token")?;
    let mut out = zeros::<f32>(stream, b, "allocate log_ppl")?;
    let mut status = Status::new(stream, check == Check::Values)?;
    if b > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("seq_log_ppl"), b as u64)?;
        let (n_seq, t32, null) = (b as u64, as_u32("seq_len", seq_len)?, 0u64);
        let mut args = stream.launch_builder(&func);
        args.arg(logp).arg(mask).arg(&n_seq).arg(&t32).arg(&mut out);
        status.arg(&mut args, &null);
        // SAFETY: seq_log_ppl(const f32* logp, const f32* mask, u64 n_seq, u32 seq_len, f32* out,
        // u64* status or null): in that order and type; logp and mask hold n_seq·seq_len values,
        // out n_seq (checked above).
        unsafe { args.launch(lc) }.map_err(cuda_err("launch seq_log_ppl"))?;
    }
    let first = status.read(stream)?;
    if let Some(i) = first[STATUS_MASK] {
        return Err(mask_error(stream, mask, i)?);
    }
    if let Some(i) = first[STATUS_OLD_LOGP] {
        return Err(non_finite(stream, "old_logp", logp, i)?);
    }
    Ok(out)
}

/// PPL weight: the z-score of the log-PPL inside each group of `group_size` consecutive
/// sequences after the IQR filter of DESIGN.md §4, as [`crate::cpu::ppl_weight`]; a NaN log-PPL
/// means "no PPL" (w = 0, left out of the group statistics).
///
/// Errors: `group_size` 0, not dividing B, or above [`MAX_GROUP`].
pub fn ppl_weight(stream: &Arc<CudaStream>, log_ppl: &CudaView<'_, f32>, group_size: usize) -> Result<CudaSlice<f32>> {
    let groups = validate::groups(log_ppl.len(), group_size)?;
    check_group_limit(group_size)?;
    let mut out = zeros::<f32>(stream, log_ppl.len(), "allocate ppl_weight")?;
    if groups > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("ppl_weight"), groups as u64)?;
        let (n_groups, g32) = (groups as u64, group_size as u32);
        let mut args = stream.launch_builder(&func);
        args.arg(log_ppl).arg(&n_groups).arg(&g32).arg(&mut out);
        // SAFETY: ppl_weight(const f32* log_ppl, u64 n_groups, u32 group, f32* out): in that
        // order and type; both buffers hold n_groups·group values; group <= 1024 = blockDim.
        unsafe { args.launch(lc) }.map_err(cuda_err("launch ppl_weight"))?;
    }
    Ok(out)
}

/// GRPO advantages per sequence from `rewards` (`[B]`), as [`crate::cpu::grpo_advantages`]
/// (any group size). Errors: G = 0 or not dividing B (host); a non-finite reward (device, with
/// [`Check::Values`]).
pub fn grpo_advantages(
    stream: &Arc<CudaStream>,
    rewards: &CudaView<'_, f32>,
    cfg: &AdvantageConfig,
    check: Check,
) -> Result<CudaSlice<f32>> {
    let groups = validate::groups(rewards.len(), cfg.group_size)?;
    let mut out = zeros::<f32>(stream, rewards.len(), "allocate advantages")?;
    let mut status = Status::new(stream, check == Check::Values)?;
    if groups > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("grpo_advantages"), groups as u64)?;
        let (n_groups, g32, scale, null) =
            (groups as u64, as_u32("group_size", cfg.group_size)?, cfg.scale_by_std as i32, 0u64);
        let mut args = stream.launch_builder(&func);
        args.arg(rewards).arg(&n_groups).arg(&g32).arg(&scale).arg(&mut out);
        status.arg(&mut args, &null);
        // SAFETY: grpo_advantages(const f32* rewards, u64 n_groups, u32 group, i32 scale_by_std,
        // f32* out, u64* status or null): in that order and type; rewards and out hold
        // n_groups·group values.
        unsafe { args.launch(lc) }.map_err(cuda_err("launch grpo_advantages"))?;
    }
    if let Some(i) = status.read(stream)?[STATUS_REWARDS] {
        return Err(non_finite(stream, "rewards", rewards, i)?);
    }
    Ok(out)
}

/// Per-token shaped advantages from per-sequence `adv` (`[B]`) over the `[B, T]` mask, as
/// [`crate::cpu::shape_advantages`] (position shaping, then the PPL factor; `ppl_weight` needed
/// when PPL shaping is on).
///
/// Errors: invalid shaping coefficients, bad `seq_len`, `mask`/`adv`/`ppl_weight` of the wrong
/// length, PPL shaping without `ppl_weight` (host); a mask value other than 0/1 (device).
pub fn shape_advantages(
    stream: &Arc<CudaStream>,
    adv: &CudaView<'_, f32>,
    mask: &CudaView<'_, f32>,
    seq_len: usize,
    ppl_weight: Option<&CudaView<'_, f32>>,
    shaping: &Shaping,
    check: Check,
) -> Result<CudaSlice<f32>> {
    shaping.validate()?;
    let b = validate::sequences(mask.len(), seq_len)?;
    validate::len("advantages", adv.len(), b, "one per sequence")?;
    match (shaping.ppl, ppl_weight) {
        (Some(_), Some(w)) => validate::len("ppl_weight", w.len(), b, "one per sequence")?,
        (Some(_), None) => {
            return Err(Error::ShapeMismatch {
                name: "ppl_weight",
                expected: format!("{b} elements (PPL shaping is on)"),
                got: "none".into(),
            })
        }
        (None, _) => {}
    }
    let mut out = zeros::<f32>(stream, mask.len(), "allocate shaped advantages")?;
    let mut status = Status::new(stream, check == Check::Values)?;
    if b > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("shape_advantages"), b as u64)?;
        let (n_seq, t32, sp, null) = (b as u64, as_u32("seq_len", seq_len)?, ShapeParams::new(shaping), 0u64);
        let mut args = stream.launch_builder(&func);
        args.arg(adv).arg(mask);
        match ppl_weight.filter(|_| shaping.ppl.is_some()) {
            Some(w) => args.arg(w),
            None => args.arg(&null),
        };
        args.arg(&n_seq).arg(&t32).arg(&sp).arg(&mut out);
        status.arg(&mut args, &null);
        // SAFETY: shape_advantages(const f32* adv, const f32* mask, const f32* ppl_w (or null when
        // sp.ppl = 0), u64 n_seq, u32 seq_len, ShapeParams sp, f32* out, u64* status or null): in
        // that order and type; adv and ppl_w hold n_seq values, mask and out n_seq·seq_len.
        unsafe { args.launch(lc) }.map_err(cuda_err("launch shape_advantages"))?;
    }
    if let Some(i) = status.read(stream)?[STATUS_MASK] {
        return Err(mask_error(stream, mask, i)?);
    }
    Ok(out)
}

/// The whole advantage pipeline of DESIGN.md §4 fused per group, as
/// [`crate::cpu::token_advantages`]: log-PPL of `old_logp` → PPL weight (when PPL shaping is on)
/// → GRPO advantages of `rewards` (`[B]`) → shaped per-token advantages (`[B·T]`). One CTA per
/// group; the per-sequence log-PPL stays in f64, so the IQR filter decides on the same values as
/// the reference (up to the order of the f64 sums).
///
/// Errors: bad `seq_len`, lengths, G (0, not dividing B, above [`MAX_GROUP`]), shaping settings
/// (host); then a non-finite reward, a bad mask value, a non-finite `old_logp` (only read with PPL
/// shaping on) (device, with [`Check::Values`]).
#[allow(clippy::too_many_arguments)]
pub fn token_advantages(
    stream: &Arc<CudaStream>,
    rewards: &CudaView<'_, f32>,
    old_logp: &CudaView<'_, f32>,
    mask: &CudaView<'_, f32>,
    seq_len: usize,
    adv: &AdvantageConfig,
    shaping: &Shaping,
    check: Check,
) -> Result<CudaSlice<f32>> {
    let b = validate::sequences(mask.len(), seq_len)?;
    validate::len("rewards", rewards.len(), b, "one per sequence")?;
    validate::len("old_logp", old_logp.len(), mask.len(), "one per token")?;
    let groups = validate::groups(b, adv.group_size)?;
    check_group_limit(adv.group_size)?;
    shaping.validate()?;
    let mut out = zeros::<f32>(stream, mask.len(), "allocate token advantages")?;
    let mut status = Status::new(stream, check == Check::Values)?;
    if groups > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("token_advantages"), groups as u64)?;
        let (n_groups, g32, t32) = (groups as u64, adv.group_size as u32, as_u32("seq_len", seq_len)?);
        let (scale, sp, null) = (adv.scale_by_std as i32, ShapeParams::new(shaping), 0u64);
        let mut args = stream.launch_builder(&func);
        args.arg(rewards).arg(old_logp).arg(mask).arg(&n_groups).arg(&g32).arg(&t32).arg(&scale).arg(&sp);
        args.arg(&mut out);
        status.arg(&mut args, &null);
        // SAFETY: token_advantages(const f32* rewards, const f32* old_logp, const f32* mask, u64
        // n_groups, u32 group, u32 seq_len, i32 scale_by_std, ShapeParams sp, f32* out, u64*
        // status or null): in that order and type; rewards holds n_groups·group values, old_logp,
        // mask and out n_groups·group·seq_len; group <= 1024 = blockDim (checked above).
        unsafe { args.launch(lc) }.map_err(cuda_err("launch token_advantages"))?;
    }
    let first = status.read(stream)?;
    if let Some(i) = first[STATUS_REWARDS] {
        return Err(non_finite(stream, "rewards", rewards, i)?);
    }
    if let Some(i) = first[STATUS_MASK] {
        return Err(mask_error(stream, mask, i)?);
    }
    if let Some(i) = first[STATUS_OLD_LOGP] {
        return Err(non_finite(stream, "old_logp", old_logp, i)?);
    }
    Ok(out)
}

/// Aggregation weights a_t (loss = Σ a_t·ℓ_t) of the `[B, T]` mask, as
/// [`crate::cpu::aggregation_weights`], bit for bit (the counts are exact integers and each weight
/// is the same f64 expression rounded once); 0 for masked tokens and for an empty batch.
///
/// Errors: an invalid aggregation setting, bad `seq_len` (host); a mask value other than 0/1
/// (device, with [`Check::Values`]).
pub fn aggregation_weights(
    stream: &Arc<CudaStream>,
    mask: &CudaView<'_, f32>,
    seq_len: usize,
    agg: &Aggregation,
    check: Check,
) -> Result<CudaSlice<f32>> {
    agg.validate()?;
    let b = validate::sequences(mask.len(), seq_len)?;
    let n = mask.len();
    let mut out = zeros::<f32>(stream, n, "allocate aggregation weights")?;
    let mut status = Status::new(stream, check == Check::Values)?;
    let mut counts = SeqCounts::new(stream, b)?;
    counts.count(stream, mask, seq_len, &mut status)?;
    if n > 0 {
        let (func, lc) = launch_for(stream, seq_kernel("agg_weights"), n.div_ceil(BLOCK as usize) as u64)?;
        let (n_tokens, t32, agg) = (n as u64, as_u32("seq_len", seq_len)?, AggParams::new(agg));
        let mut args = stream.launch_builder(&func);
        args.arg(mask).arg(&n_tokens).arg(&t32).arg(&counts.lens).arg(&counts.totals).arg(&agg).arg(&mut out);
        // SAFETY: agg_weights(const f32* mask, u64 n_tokens, u32 seq_len, const u32* lens, const
        // BatchTotals* totals, AggParams agg, f32* out): in that order and type; mask and out hold
        // n_tokens values, lens n_tokens / seq_len (the seq_counts output above).
        unsafe { args.launch(lc) }.map_err(cuda_err("launch agg_weights"))?;
    }
    if let Some(i) = status.read(stream)?[STATUS_MASK] {
        return Err(mask_error(stream, mask, i)?);
    }
    Ok(out)
}

// ---- Host conveniences: host slices in and out, the signatures of `cpu::` plus the stream ----

/// A host slice on the device (cudarc's empty slice for an empty one).
pub(crate) fn upload<T: DeviceRepr>(stream: &Arc<CudaStream>, v: &[T], what: &'static str) -> Result<CudaSlice<T>> {
    if v.is_empty() {
        return stream.null().map_err(cuda_err(what));
    }
    stream.clone_htod(v).map_err(cuda_err(what))
}

/// A device buffer on the host (synchronises `stream`).
pub(crate) fn download<T: DeviceRepr + Default + Clone>(stream: &Arc<CudaStream>, v: &CudaSlice<T>) -> Result<Vec<T>> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    stream.clone_dtoh(v).map_err(cuda_err("copy results to host"))
}

/// [`log_ppl`] on host slices (`None` for a sequence without counted tokens): the signature,
/// results (within f32 rounding) and errors of [`crate::cpu::log_ppl`].
pub fn log_ppl_host(stream: &Arc<CudaStream>, logp: &[f32], mask: &[f32], seq_len: usize) -> Result<Vec<Option<f32>>> {
    let (l, m) = (upload(stream, logp, "copy old_logp")?, upload(stream, mask, "copy mask")?);
    let out = log_ppl(stream, &l.as_view(), &m.as_view(), seq_len, Check::Values)?;
    Ok(download(stream, &out)?.into_iter().map(|v| (!v.is_nan()).then_some(v)).collect())
}

/// [`ppl_weight`] on host values (`None` = no PPL), as [`crate::cpu::ppl_weight`].
pub fn ppl_weight_host(stream: &Arc<CudaStream>, log_ppl: &[Option<f32>], group_size: usize) -> Result<Vec<f32>> {
    let raw: Vec<f32> = log_ppl.iter().map(|v| v.unwrap_or(f32::NAN)).collect();
    let d = upload(stream, &raw, "copy log_ppl")?;
    download(stream, &ppl_weight(stream, &d.as_view(), group_size)?)
}

/// [`grpo_advantages`] on host slices, as [`crate::cpu::grpo_advantages`].
pub fn grpo_advantages_host(stream: &Arc<CudaStream>, rewards: &[f32], cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    let d = upload(stream, rewards, "copy rewards")?;
    download(stream, &grpo_advantages(stream, &d.as_view(), cfg, Check::Values)?)
}

/// [`shape_advantages`] on host slices, as [`crate::cpu::shape_advantages`].
pub fn shape_advantages_host(
    stream: &Arc<CudaStream>,
    adv: &[f32],
    mask: &[f32],
    seq_len: usize,
    ppl_weight: Option<&[f32]>,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    let (a, m) = (upload(stream, adv, "copy advantages")?, upload(stream, mask, "copy mask")?);
    let w = ppl_weight.map(|w| upload(stream, w, "copy ppl_weight")).transpose()?;
    let wv = w.as_ref().map(|w| w.as_view());
    let out = shape_advantages(stream, &a.as_view(), &m.as_view(), seq_len, wv.as_ref(), shaping, Check::Values)?;
    download(stream, &out)
}

/// [`token_advantages`] on host slices, as [`crate::cpu::token_advantages`].
pub fn token_advantages_host(
    stream: &Arc<CudaStream>,
    rewards: &[f32],
    old_logp: &[f32],
    mask: &[f32],
    seq_len: usize,
    adv: &AdvantageConfig,
    shaping: &Shaping,
) -> Result<Vec<f32>> {
    let r = upload(stream, rewards, "copy rewards")?;
    let (l, m) = (upload(stream, old_logp, "copy old_logp")?, upload(stream, mask, "copy mask")?);
    let (rv, lv, mv) = (r.as_view(), l.as_view(), m.as_view());
    download(stream, &token_advantages(stream, &rv, &lv, &mv, seq_len, adv, shaping, Check::Values)?)
}

/// [`aggregation_weights`] on a host mask, as [`crate::cpu::aggregation_weights`].
pub fn aggregation_weights_host(
    stream: &Arc<CudaStream>,
    mask: &[f32],
    seq_len: usize,
    agg: &Aggregation,
) -> Result<Vec<f32>> {
    let m = upload(stream, mask, "copy mask")?;
    download(stream, &aggregation_weights(stream, &m.as_view(), seq_len, agg, Check::Values)?)
}
