//! Safe wrappers of `kernels/token_stats.cu`: per-row lse, entropy, target log-prob and the exact
//! top-p branch count from one read of each row, on the caller's stream; with a sampling filter
//! or an engine's kept mask, also the statistics over the kept set K (`kernels/kept.cuh`).

use std::sync::Arc;

use super::context::{cuda_err, dtype_name, launch_for, Kernel, Module, ROW_BLOCK};
use super::cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, PushKernelArg, ValidAsZeroBits};
use crate::config::TokenStatsConfig;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::types::{KeptMask, KeptStats, TokenStats};
use crate::validate;

/// Flag bit: the row has a NaN or +inf logit.
pub const ROW_NON_FINITE: u32 = 1;
/// Flag bit: every logit of the row is −inf.
pub const ROW_ALL_NEG_INF: u32 = 2;
/// Flag bit: the row's target id is ≥ V (its `logp` is NaN).
pub const ROW_BAD_TARGET: u32 = 4;

/// Largest V for the top-p count on CUDA: the tested range (the kernels' integer masses and
/// counts would allow more: 2^frac·S < 2^62 with frac chosen per row from S ≤ V).
pub const MAX_TOP_P_VOCAB: usize = 1 << 22;

/// Dynamic shared memory of the top-p kernels: `sizeof(Hist)` in row_stats.cuh (2048 × u64
/// mass + 2048 × u32 count + 32768 × u32 fine counters / key list + 64 × u32 touched-bucket bits).
/// The kernel traps if given less.
pub(crate) const TOP_P_SHARED_BYTES: u32 = 2048 * 8 + 2048 * 4 + 32768 * 4 + 64 * 4;

/// How far below ln((1 − p)/V) a token must be to be skipped by the top-p histogram: margin
/// for f32 rounding of the running max and the threshold (the rule itself is exact).
const PRUNE_MARGIN: f64 = 0.05;

/// The pruning threshold of a row kernel's top-p pass (`rows::PassParams::prune_z` in
/// `kernels/row_stats.cuh`): (ln((1 − p)/V) − margin)·T, below the running max.
pub(crate) fn prune_z(top_p: f32, vocab: usize, temperature: f32) -> f32 {
    (((1.0 - top_p as f64).ln() - (vocab as f64).ln() - PRUNE_MARGIN) * temperature as f64) as f32
}

/// Device outputs of the token statistics, one entry per row.
#[derive(Debug)]
pub struct TokenStatsBuffers {
    /// log-sum-exp of x = z / T.
    pub lse: CudaSlice<f32>,
    /// Entropy H in nats.
    pub entropy: CudaSlice<f32>,
    /// x_y − lse (present when computed with targets).
    pub logp: Option<CudaSlice<f32>>,
    /// Branch count at top-p (present when computed with top-p).
    pub branch: Option<CudaSlice<u32>>,
    /// [`ROW_NON_FINITE`] / [`ROW_ALL_NEG_INF`] / [`ROW_BAD_TARGET`] bits; 0 = a valid row. Rows
    /// with a flag have NaN statistics and branch 0.
    pub flags: CudaSlice<u32>,
    /// Statistics over the kept set K (present when computed with a filter or a kept mask; see
    /// [`TokenStatsBuffers::with_kept`]).
    pub kept: Option<KeptBuffers>,
}

/// Device outputs over the kept set K, one entry per row (see [`KeptStats`]). A flagged row has
/// NaN statistics, |K| = 0 and `outside` 0.
#[derive(Debug)]
pub struct KeptBuffers {
    /// lse_K = ln Σ_{i∈K} e^{x_i}.
    pub lse: CudaSlice<f32>,
    /// Truncated entropy H̃.
    pub entropy: CudaSlice<f32>,
    /// ℓ̃ = x_y − lse_K, or the unfiltered ℓ when y ∉ K (present with targets; NaN for a target ≥ V).
    pub logp: Option<CudaSlice<f32>>,
    /// |K|.
    pub count: CudaSlice<u32>,
    /// 1 where the target is outside K (present with targets).
    pub outside: Option<CudaSlice<u8>>,
}

impl KeptBuffers {
    /// Copies the outputs to the host (synchronises `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<KeptStats> {
        if self.lse.is_empty() {
            return Ok(KeptStats {
                logp: self.logp.as_ref().map(|_| Vec::new()),
                outside: self.outside.as_ref().map(|_| Vec::new()),
                ..KeptStats::default()
            });
        }
        let op = "copy kept-set stats to host";
        Ok(KeptStats {
            lse: stream.clone_dtoh(&self.lse).map_err(cuda_err(op))?,
            entropy: stream.clone_dtoh(&self.entropy).map_err(cuda_err(op))?,
            logp: self.logp.as_ref().map(|s| stream.clone_dtoh(s)).transpose().map_err(cuda_err(op))?,
            count: stream.clone_dtoh(&self.count).map_err(cuda_err(op))?,
            outside: self.outside.as_ref().map(|s| stream.clone_dtoh(s)).transpose().map_err(cuda_err(op))?,
        })
    }
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    rows: usize,
    op: &'static str,
) -> Result<CudaSlice<T>> {
    // cudarc's own empty slice: a 0-byte allocation is not valid for every allocator.
    if rows == 0 { stream.null() } else { stream.alloc_zeros(rows) }.map_err(cuda_err(op))
}

/// An engine's kept mask on the device, in vLLM's CSR layout (see [`KeptMask`]): `token_ids`
/// row after row, `offsets` the N + 1 row starts.
#[derive(Clone, Copy)]
pub struct CudaKeptMask<'a, 'b> {
    /// Kept token ids, row after row.
    pub token_ids: &'b CudaView<'a, u32>,
    /// Row starts into `token_ids` (N + 1 entries).
    pub offsets: &'b CudaView<'a, u64>,
}

impl TokenStatsBuffers {
    /// Zeroed outputs for `rows` rows, with `logp` when `with_logp` and `branch` when `with_branch`.
    pub fn new(stream: &Arc<CudaStream>, rows: usize, with_logp: bool, with_branch: bool) -> Result<Self> {
        Ok(Self {
            lse: zeros(stream, rows, "allocate lse")?,
            entropy: zeros(stream, rows, "allocate entropy")?,
            logp: if with_logp { Some(zeros(stream, rows, "allocate logp")?) } else { None },
            branch: if with_branch { Some(zeros(stream, rows, "allocate branch")?) } else { None },
            flags: zeros(stream, rows, "allocate flags")?,
            kept: None,
        })
    }

    /// Adds zeroed kept-set outputs (needed with a filter or a kept mask): `logp` and `outside`
    /// when these buffers have `logp`.
    pub fn with_kept(mut self, stream: &Arc<CudaStream>) -> Result<Self> {
        let rows = self.rows();
        let with_logp = self.logp.is_some();
        self.kept = Some(KeptBuffers {
            lse: zeros(stream, rows, "allocate kept lse")?,
            entropy: zeros(stream, rows, "allocate kept entropy")?,
            logp: if with_logp { Some(zeros(stream, rows, "allocate kept logp")?) } else { None },
            count: zeros(stream, rows, "allocate kept count")?,
            outside: if with_logp { Some(zeros(stream, rows, "allocate kept outside")?) } else { None },
        });
        Ok(self)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lse.len()
    }

    /// Copies the outputs to the host (synchronises `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<TokenStats> {
        if self.rows() == 0 {
            return Ok(TokenStats {
                logp: self.logp.as_ref().map(|_| Vec::new()),
                branch: self.branch.as_ref().map(|_| Vec::new()),
                kept: self.kept.as_ref().map(|k| k.to_host(stream)).transpose()?,
                ..TokenStats::default()
            });
        }
        let op = "copy token stats to host";
        Ok(TokenStats {
            lse: stream.clone_dtoh(&self.lse).map_err(cuda_err(op))?,
            entropy: stream.clone_dtoh(&self.entropy).map_err(cuda_err(op))?,
            logp: self.logp.as_ref().map(|s| stream.clone_dtoh(s)).transpose().map_err(cuda_err(op))?,
            branch: self.branch.as_ref().map(|s| stream.clone_dtoh(s)).transpose().map_err(cuda_err(op))?,
            kept: self.kept.as_ref().map(|k| k.to_host(stream)).transpose()?,
        })
    }
}

/// Checks the configuration, shapes and output buffers; returns N.
fn check_shapes<E>(
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
    masked: bool,
    out: &TokenStatsBuffers,
) -> Result<usize> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    if masked && cfg.filter.is_some() {
        return Err(Error::InvalidConfig {
            name: "filter",
            value: "a filter and a kept mask".into(),
            why: "give one: the filter recomputes K, the mask is the engine's K",
        });
    }
    if vocab > u32::MAX as usize || (cfg.top_p.is_some() && vocab > MAX_TOP_P_VOCAB) {
        let limit = if cfg.top_p.is_some() { MAX_TOP_P_VOCAB } else { u32::MAX as usize };
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: format!("V <= {limit} on CUDA"),
            got: format!("V = {vocab}"),
        });
    }
    if let Some(t) = targets {
        validate::len("targets", t.len(), n, "one per row")?;
    }
    validate::len("lse", out.lse.len(), n, "output, one per row")?;
    validate::len("entropy", out.entropy.len(), n, "output, one per row")?;
    validate::len("flags", out.flags.len(), n, "output, one per row")?;
    let want = |name, present: bool, needed: bool, len: Option<usize>| match (present, needed) {
        (true, true) => validate::len(name, len.unwrap_or(0), n, "output, one per row"),
        (false, false) => Ok(()),
        (p, _) => Err(Error::ShapeMismatch {
            name,
            expected: if p { "no buffer (not requested)".into() } else { format!("a buffer of {n} elements") },
            got: if p { "a buffer".into() } else { "none".into() },
        }),
    };
    want("logp", out.logp.is_some(), targets.is_some(), out.logp.as_ref().map(|s| s.len()))?;
    want("branch", out.branch.is_some(), cfg.top_p.is_some(), out.branch.as_ref().map(|s| s.len()))?;
    let kept_needed = masked || cfg.filter.is_some();
    want("kept", out.kept.is_some(), kept_needed, out.kept.as_ref().map(|k| k.lse.len()))?;
    if let Some(k) = &out.kept {
        validate::len("kept.entropy", k.entropy.len(), n, "output, one per row")?;
        validate::len("kept.count", k.count.len(), n, "output, one per row")?;
        let with_logp = targets.is_some();
        want("kept.logp", k.logp.is_some(), with_logp, k.logp.as_ref().map(|s| s.len()))?;
        want("kept.outside", k.outside.is_some(), with_logp, k.outside.as_ref().map(|s| s.len()))?;
    }
    Ok(n)
}

/// Launches the fused token statistics of row-major `[N, V]` `logits` on `stream`, writing into
/// `out` (no synchronisation, no flag check: see [`check_rows`]). `out` must have `logp` exactly
/// when `targets` is given and `branch` exactly when `cfg.top_p` is set.
///
/// Per row: lse, entropy H = lse − W/S, logp = x_y − lse and the branch count at top-p (exact,
/// ties interchangeable), from one read of the row (f32 rows re-read the crossing part, mostly
/// from L2). Same bits on every run. Targets ≥ V are not read: they set [`ROW_BAD_TARGET`].
pub fn token_stats_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
    out: &mut TokenStatsBuffers,
) -> Result<()> {
    let n = check_shapes(logits, vocab, targets, cfg, false, out)?;
    launch(stream, logits, vocab, n, targets, cfg, None, out)
}

/// [`token_stats_into`] with an engine's kept mask: the statistics over each row's given K beside
/// the default outputs (`out` must have [`TokenStatsBuffers::with_kept`]'s buffers; `cfg.filter`
/// must be `None`). The mask is copied to the host and checked first ([`validate::kept_mask`]:
/// offsets, ids in range, no repeats, no empty row; a synchronisation), so a bad mask is
/// [`Error::InvalidKeptMask`] naming its row before anything is launched.
pub fn token_stats_masked_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
    mask: CudaKeptMask<'_, '_>,
    out: &mut TokenStatsBuffers,
) -> Result<()> {
    let n = check_shapes(logits, vocab, targets, cfg, true, out)?;
    validate::len("kept_mask.offsets", mask.offsets.len(), n + 1, "N + 1 row starts")?;
    let op = "copy kept mask to host";
    let offsets = stream.clone_dtoh(mask.offsets).map_err(cuda_err(op))?;
    let token_ids =
        if mask.token_ids.is_empty() { Vec::new() } else { stream.clone_dtoh(mask.token_ids).map_err(cuda_err(op))? };
    validate::kept_mask(&KeptMask { token_ids: &token_ids, offsets: &offsets }, n, vocab)?;
    launch(stream, logits, vocab, n, targets, cfg, Some(mask), out)
}

/// The launches of [`token_stats_into`] / [`token_stats_masked_into`] (shapes checked).
#[allow(clippy::too_many_arguments)]
fn launch<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    n: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
    mask: Option<CudaKeptMask<'_, '_>>,
    out: &mut TokenStatsBuffers,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (n_rows, v32, inv_t) = (n as u64, vocab as u32, 1.0 / cfg.temperature);
    let null: u64 = 0;
    match cfg.top_p {
        None => {
            let name = dtype_name(["token_stats_f32", "token_stats_bf16", "token_stats_f16"], E::DTYPE);
            let k = Kernel { module: Module::TokenStats, name, block: ROW_BLOCK, shared_bytes: 0 };
            let (func, lc) = launch_for(stream, k, n_rows)?;
            let mut b = stream.launch_builder(&func);
            b.arg(logits).arg(&n_rows).arg(&v32);
            match targets {
                Some(t) => b.arg(t),
                None => b.arg(&null),
            };
            b.arg(&inv_t).arg(&mut out.lse).arg(&mut out.entropy);
            match out.logp.as_mut() {
                Some(l) => b.arg(l),
                None => b.arg(&null),
            };
            b.arg(&mut out.flags);
            // SAFETY: token_stats_<dtype>(const E* logits, u64 n_rows, u32 vocab, const u32* targets
            // (or null), f32 inv_t, f32* lse, f32* entropy, f32* logp (or null), u32* flags): the
            // arguments above in that order and type; every buffer holds N·V resp. N elements
            // (checked above), and the kernel writes only rows < n_rows.
            unsafe { b.launch(lc) }.map_err(cuda_err("launch token_stats"))?;
        }
        Some(p) => {
            let name = dtype_name(["token_stats_topp_f32", "token_stats_topp_bf16", "token_stats_topp_f16"], E::DTYPE);
            let k = Kernel { module: Module::TokenStats, name, block: ROW_BLOCK, shared_bytes: TOP_P_SHARED_BYTES };
            let (func, lc) = launch_for(stream, k, n_rows)?;
            let prune_z = prune_z(p, vocab, cfg.temperature);
            let branch = out.branch.as_mut().expect("checked: branch buffer present with top_p");
            let mut b = stream.launch_builder(&func);
            b.arg(logits).arg(&n_rows).arg(&v32);
            match targets {
                Some(t) => b.arg(t),
                None => b.arg(&null),
            };
            b.arg(&inv_t).arg(&p).arg(&prune_z).arg(&mut out.lse).arg(&mut out.entropy);
            match out.logp.as_mut() {
                Some(l) => b.arg(l),
                None => b.arg(&null),
            };
            b.arg(branch).arg(&mut out.flags);
            // SAFETY: token_stats_topp_<dtype>(const E* logits, u64 n_rows, u32 vocab, const u32*
            // targets (or null), f32 inv_t, f32 top_p, f32 prune_z, f32* lse, f32*
            // entropy, f32* logp (or null), u32* branch, u32* flags): the arguments above in that
            // order and type; buffer lengths checked above; `lc` gives the TOP_P_SHARED_BYTES of
            // dynamic shared memory the kernel's histograms need (it traps if given less).
            unsafe { b.launch(lc) }.map_err(cuda_err("launch token_stats_topp"))?;
        }
    }
    if mask.is_none() && cfg.filter.is_none() {
        return Ok(());
    }
    // The kept-set kernel rewrites lse, entropy, logp and flags with the same bits (the same pass
    // and formulas as the kernels above) and adds the statistics over K.
    let name = dtype_name(["token_stats_kept_f32", "token_stats_kept_bf16", "token_stats_kept_f16"], E::DTYPE);
    let k = Kernel { module: Module::TokenStats, name, block: ROW_BLOCK, shared_bytes: 0 };
    let (func, lc) = launch_for(stream, k, n_rows)?;
    let filter = cfg.filter.unwrap_or_default();
    let (top_k, top_p) = (filter.top_k.unwrap_or(0), filter.top_p.unwrap_or(0.0));
    let kept = out.kept.as_mut().expect("checked: kept buffers present with a filter or a mask");
    let mut b = stream.launch_builder(&func);
    b.arg(logits).arg(&n_rows).arg(&v32);
    match targets {
        Some(t) => b.arg(t),
        None => b.arg(&null),
    };
    b.arg(&inv_t).arg(&top_k).arg(&top_p);
    match mask {
        Some(m) => b.arg(m.token_ids).arg(m.offsets),
        None => b.arg(&null).arg(&null),
    };
    b.arg(&mut out.lse).arg(&mut out.entropy);
    match out.logp.as_mut() {
        Some(l) => b.arg(l),
        None => b.arg(&null),
    };
    b.arg(&mut out.flags).arg(&mut kept.lse).arg(&mut kept.entropy);
    match kept.logp.as_mut() {
        Some(l) => b.arg(l),
        None => b.arg(&null),
    };
    b.arg(&mut kept.count);
    match kept.outside.as_mut() {
        Some(o) => b.arg(o),
        None => b.arg(&null),
    };
    // SAFETY: token_stats_kept_<dtype>(const E* logits, u64 n_rows, u32 vocab, const u32* targets
    // (or null), f32 inv_t, u32 top_k, f32 top_p, const u32* ids (or null), const u64* offsets (or
    // null), f32* lse, f32* entropy, f32* logp (or null), u32* flags, f32* k_lse, f32* k_entropy,
    // f32* k_logp (or null), u32* k_count, u8* k_outside (or null)): the arguments above in that
    // order and type; every output holds N elements and logits N·V (checked above); a mask's
    // offsets hold N + 1 entries, nondecreasing and at most the ids' length, and its ids are < V
    // (validated on the host), so the kernel reads only inside them.
    unsafe { b.launch(lc) }.map_err(cuda_err("launch token_stats_kept"))?;
    Ok(())
}

/// The first bad row recorded in `out.flags`, as the error the CPU path returns (targets out of
/// range first, as [`crate::reference::token_stats`] checks them first; then NaN/+inf or all −inf
/// rows in row order). Synchronises `stream`. `targets` is only read for the error message.
pub fn check_rows(
    stream: &Arc<CudaStream>,
    out: &TokenStatsBuffers,
    targets: Option<&CudaView<'_, u32>>,
    vocab: usize,
) -> Result<()> {
    if out.rows() == 0 {
        return Ok(());
    }
    let flags = stream.clone_dtoh(&out.flags).map_err(cuda_err("copy row flags to host"))?;
    if let Some(token) = flags.iter().position(|&f| f & ROW_BAD_TARGET != 0) {
        let target = match targets {
            Some(t) => {
                let one = t.slice(token..token + 1);
                stream.clone_dtoh(&one).map_err(cuda_err("copy target to host"))?[0]
            }
            None => u32::MAX,
        };
        return Err(Error::TargetOutOfRange { token, target, vocab });
    }
    validate::first_bad_row(flags.len(), |row| match flags[row] {
        f if f & ROW_NON_FINITE != 0 => Some(Error::NonFiniteLogits { row }),
        f if f & ROW_ALL_NEG_INF != 0 => Some(Error::AllNegInfRow { row }),
        _ => None,
    })
}

/// [`token_stats_into`] into new buffers; with `cfg.check_finite`, then [`check_rows`] (one host
/// synchronisation), so a bad row is an error naming it.
pub fn token_stats<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
) -> Result<TokenStatsBuffers> {
    let n = validate::rows(logits.len(), vocab)?;
    let mut out = TokenStatsBuffers::new(stream, n, targets.is_some(), cfg.top_p.is_some())?;
    if cfg.filter.is_some() {
        out = out.with_kept(stream)?;
    }
    token_stats_into(stream, logits, vocab, targets, cfg, &mut out)?;
    if cfg.check_finite {
        check_rows(stream, &out, targets, vocab)?;
    }
    Ok(out)
}

/// [`token_stats_masked_into`] into new buffers; with `cfg.check_finite`, then [`check_rows`].
pub fn token_stats_masked<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    targets: Option<&CudaView<'_, u32>>,
    cfg: &TokenStatsConfig,
    mask: CudaKeptMask<'_, '_>,
) -> Result<TokenStatsBuffers> {
    let n = validate::rows(logits.len(), vocab)?;
    let mut out = TokenStatsBuffers::new(stream, n, targets.is_some(), cfg.top_p.is_some())?.with_kept(stream)?;
    token_stats_masked_into(stream, logits, vocab, targets, cfg, mask, &mut out)?;
    if cfg.check_finite {
        check_rows(stream, &out, targets, vocab)?;
    }
    Ok(out)
}

/// Host slices in, host [`TokenStats`] out, with an engine's kept mask: the CUDA twin of
/// [`crate::cpu::token_stats_masked`] (same errors; results within f32 rounding).
pub fn token_stats_masked_host<E: Element>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: &KeptMask,
) -> Result<TokenStats> {
    match E::DTYPE {
        DType::F32 => masked_typed::<f32>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg, mask),
        DType::BF16 => masked_typed::<half::bf16>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg, mask),
        DType::F16 => masked_typed::<half::f16>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg, mask),
    }
}

fn masked_typed<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: &KeptMask,
) -> Result<TokenStats> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    validate::filter_or_mask(cfg.filter.as_ref(), Some(mask), n, vocab)?;
    if let Some(t) = targets {
        validate::targets(t, n, vocab)?;
    }
    if n == 0 {
        let empty = TokenStatsBuffers::new(stream, 0, targets.is_some(), cfg.top_p.is_some())?.with_kept(stream)?;
        return empty.to_host(stream);
    }
    let op = "copy to device";
    let d_logits = stream.clone_htod(logits).map_err(cuda_err(op))?;
    let d_targets = targets.map(|t| stream.clone_htod(t)).transpose().map_err(cuda_err(op))?;
    let d_ids = stream.clone_htod(mask.token_ids).map_err(cuda_err(op))?;
    let d_offsets = stream.clone_htod(mask.offsets).map_err(cuda_err(op))?;
    let t_view = d_targets.as_ref().map(|t| t.as_view());
    let (ids, offsets) = (d_ids.as_view(), d_offsets.as_view());
    let out = token_stats_masked(
        stream,
        &d_logits.as_view(),
        vocab,
        t_view.as_ref(),
        cfg,
        CudaKeptMask { token_ids: &ids, offsets: &offsets },
    )?;
    out.to_host(stream)
}

/// Host slices in, host [`TokenStats`] out: copies `logits` (and `targets`) to the device of
/// `stream`, runs [`token_stats`] and copies the results back. Same signature (plus the stream),
/// errors and results (within f32 rounding; branch within the band of DESIGN.md §4) as
/// [`crate::cpu::token_stats`]. This is what `rlvr stats --device cuda` calls.
pub fn token_stats_host<E: Element>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
) -> Result<TokenStats> {
    // `Element` does not require cudarc's `DeviceRepr`; the three element types do implement it.
    match E::DTYPE {
        DType::F32 => host_typed::<f32>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg),
        DType::BF16 => host_typed::<half::bf16>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg),
        DType::F16 => host_typed::<half::f16>(stream, bytemuck::cast_slice(logits), vocab, targets, cfg),
    }
}

fn host_typed<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
) -> Result<TokenStats> {
    cfg.validate()?;
    let n = validate::rows(logits.len(), vocab)?;
    if let Some(t) = targets {
        validate::targets(t, n, vocab)?;
    }
    if n == 0 {
        let mut empty = TokenStatsBuffers::new(stream, 0, targets.is_some(), cfg.top_p.is_some())?;
        if cfg.filter.is_some() {
            empty = empty.with_kept(stream)?;
        }
        return empty.to_host(stream);
    }
    let d_logits = stream.clone_htod(logits).map_err(cuda_err("copy logits to device"))?;
    let d_targets = targets.map(|t| stream.clone_htod(t)).transpose().map_err(cuda_err("copy targets to device"))?;
    let t_view = d_targets.as_ref().map(|t| t.as_view());
    let out = token_stats(stream, &d_logits.as_view(), vocab, t_view.as_ref(), cfg)?;
    out.to_host(stream)
}

/// The bandwidth reference: reads every element of each row once with the same 16-byte loads and
/// launch shape as the fused kernels, writing the row sum to `out` (N entries). No sync.
pub fn plain_read_into<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, E>,
    vocab: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n = validate::rows(logits.len(), vocab)?;
    validate::len("out", out.len(), n, "output, one per row")?;
    if vocab > u32::MAX as usize {
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: format!("V <= {}", u32::MAX),
            got: format!("V = {vocab}"),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let name = dtype_name(["plain_read_f32", "plain_read_bf16", "plain_read_f16"], E::DTYPE);
    let (func, lc) =
        launch_for(stream, Kernel { module: Module::PlainRead, name, block: ROW_BLOCK, shared_bytes: 0 }, n as u64)?;
    let (n_rows, v32) = (n as u64, vocab as u32);
    let mut b = stream.launch_builder(&func);
    b.arg(logits).arg(&n_rows).arg(&v32).arg(out);
    // SAFETY: plain_read_<dtype>(const E* logits, u64 n_rows, u32 vocab, f32* out): the arguments
    // in that order and type; logits holds N·V and out N elements (checked above).
    unsafe { b.launch(lc) }.map_err(cuda_err("launch plain_read"))?;
    Ok(())
}
