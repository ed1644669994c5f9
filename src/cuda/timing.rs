//! GPU timing with CUDA events (what benches and `rlvr bench --device cuda` report), and a
//! ready-made fused-vs-plain-read measurement of the token statistics.

use std::sync::Arc;

use super::context::cuda_err;
use super::cudarc::driver::sys::CUevent_flags;
use super::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use super::token_stats::{plain_read_into, token_stats_into, TokenStatsBuffers};
use crate::config::TokenStatsConfig;
use crate::element::{DType, Element};
use crate::error::Result;
use crate::validate;

/// Median over `iters` timed calls of `f(i)` (after `warmup` untimed ones), in milliseconds of
/// GPU time between CUDA events recorded on `stream` around each call. `f` gets the call index,
/// to rotate among inputs larger than L2.
pub fn median_ms(
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    for i in 0..warmup {
        f(i)?;
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(iters);
    for i in 0..iters.max(1) {
        let start = stream.record_event(flags).map_err(cuda_err("record event"))?;
        f(warmup + i)?;
        let end = stream.record_event(flags).map_err(cuda_err("record event"))?;
        events.push((start, end));
    }
    stream.synchronize().map_err(cuda_err("synchronize"))?;
    let mut ms = events
        .iter()
        .map(|(s, e)| s.elapsed_ms(e).map(f64::from))
        .collect::<std::result::Result<Vec<f64>, _>>()
        .map_err(cuda_err("event time"))?;
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Median GPU times of the token statistics over one `[N, V]` input, see [`bench_token_stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenStatsTimes {
    /// Bytes of logits read per call (N·V·size).
    pub bytes: u64,
    /// The plain 16-byte-load read of the same data (the bandwidth reference), ms.
    pub plain_ms: f64,
    /// Fused statistics without top-p, ms.
    pub fused_ms: f64,
    /// Fused statistics with the exact top-p count at `cfg.top_p` (None when `cfg.top_p` is None).
    pub fused_top_p_ms: Option<f64>,
}

impl TokenStatsTimes {
    /// Bytes per second of a call that took `ms`.
    pub fn bytes_per_s(&self, ms: f64) -> f64 {
        self.bytes as f64 / (ms * 1e-3)
    }
}

/// L2 of an H100 is 50 MB: inputs are replicated until two copies exceed this, so that the timed
/// calls rotate among copies and read from device memory, not from L2.
const ROTATE_BYTES: usize = 128 << 20;

/// Times the plain read, the fused statistics without and with top-p on `logits` (host, copied
/// to the device, replicated to rotate through more than L2) with `warmup` + `iters` calls each.
/// GPU time only (CUDA events): no host copies inside the timed region. This is what
/// `rlvr bench --device cuda` calls.
pub fn bench_token_stats<E: Element>(
    stream: &Arc<CudaStream>,
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    warmup: usize,
    iters: usize,
) -> Result<TokenStatsTimes> {
    let run = Run { stream, vocab, targets, cfg, warmup, iters };
    // `Element` does not require cudarc's `DeviceRepr`; the three element types do implement it.
    match E::DTYPE {
        DType::F32 => run.bench::<f32>(bytemuck::cast_slice(logits)),
        DType::BF16 => run.bench::<half::bf16>(bytemuck::cast_slice(logits)),
        DType::F16 => run.bench::<half::f16>(bytemuck::cast_slice(logits)),
    }
}

/// The arguments of [`bench_token_stats`] besides the logits.
struct Run<'a> {
    stream: &'a Arc<CudaStream>,
    vocab: usize,
    targets: Option<&'a [u32]>,
    cfg: &'a TokenStatsConfig,
    warmup: usize,
    iters: usize,
}

impl Run<'_> {
    fn bench<E: Element + DeviceRepr>(&self, logits: &[E]) -> Result<TokenStatsTimes> {
        let Run { stream, vocab, targets, cfg, warmup, iters } = *self;
        cfg.validate()?;
        let n = validate::rows(logits.len(), vocab)?;
        if let Some(t) = targets {
            validate::targets(t, n, vocab)?;
        }
        let bytes = std::mem::size_of_val(logits);
        if n == 0 {
            return Ok(TokenStatsTimes {
                bytes: 0,
                plain_ms: 0.0,
                fused_ms: 0.0,
                fused_top_p_ms: cfg.top_p.map(|_| 0.0),
            });
        }
        let copies = ROTATE_BYTES.div_ceil(bytes).clamp(1, 64);
        let inputs: Vec<CudaSlice<E>> = (0..copies)
            .map(|_| stream.clone_htod(logits).map_err(cuda_err("copy logits to device")))
            .collect::<Result<_>>()?;
        let d_targets =
            targets.map(|t| stream.clone_htod(t)).transpose().map_err(cuda_err("copy targets to device"))?;
        let t_view = d_targets.as_ref().map(|t| t.as_view());
        let mut plain = stream.alloc_zeros::<f32>(n).map_err(cuda_err("allocate plain-read output"))?;
        let plain_ms = median_ms(stream, warmup, iters, |i| {
            plain_read_into(stream, &inputs[i % copies].as_view(), vocab, &mut plain)
        })?;
        let time_cfg = |c: TokenStatsConfig| -> Result<f64> {
            let mut out = TokenStatsBuffers::new(stream, n, targets.is_some(), c.top_p.is_some())?;
            if c.filter.is_some() {
                out = out.with_kept(stream)?;
            }
            median_ms(stream, warmup, iters, |i| {
                token_stats_into(stream, &inputs[i % copies].as_view(), vocab, t_view.as_ref(), &c, &mut out)
            })
        };
        let fused_ms = time_cfg(TokenStatsConfig { top_p: None, ..*cfg })?;
        let fused_top_p_ms = match cfg.top_p {
            Some(_) => Some(time_cfg(*cfg)?),
            None => None,
        };
        Ok(TokenStatsTimes { bytes: bytes as u64, plain_ms, fused_ms, fused_top_p_ms })
    }
}
