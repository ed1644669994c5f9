//! The token-statistics op: lse, entropy and target log-prob (differentiable w.r.t. the
//! logits) and the branch count (not differentiable) of `[.., V]` logits.
//!
//! One custom op over the logits produces a `[3, ..]` f32 tensor (lse, entropy, logp) from one
//! fused pass ([`crate::cpu::token_stats`], or `crate::cuda::token_stats` on candle's stream);
//! the branch count comes from the same pass through the op's side channel. Its backward gets
//! the `[3, ..]` upstream gradient (a, b, c per row) and writes, in the logits dtype,
//! dz_j = (1/T)·[a·p_j − b·p_j·(ln p_j + H) + c·(δ_jy − p_j)] from the saved lse and H: one read
//! of each row and one write (on the CPU, `ops::stats_backward`). On CUDA the backward is
//! composed from candle ops until a fused CUDA backward kernel exists.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

use super::check;
use super::side::Side;
use super::stats_backward::StatsBackward;
use crate::config::TokenStatsConfig;
use crate::cpu;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::types::{KeptStats, TokenStats};

/// Per-token statistics as candle tensors with the logits' leading shape (`[N]` or `[B, T]`).
#[derive(Debug, Clone)]
pub struct TokenStatsOutput {
    /// lse of z / T (f32), differentiable: ∂lse/∂z_j = p_j / T.
    pub lse: Tensor,
    /// Entropy H (f32), differentiable: ∂H/∂z_j = −p_j (ln p_j + H) / T.
    pub entropy: Tensor,
    /// log p of the target (f32) when targets were given, differentiable: (δ_jy − p_j) / T.
    pub logp: Option<Tensor>,
    /// Branch count (u32) when top-p was given; no gradient.
    pub branch: Option<Tensor>,
    /// The statistics over the sampler's kept set K when `cfg.filter` was given.
    pub kept: Option<KeptStatsOutput>,
}

/// Per-token statistics over the kept set K (see [`crate::types::KeptStats`]), with the logits'
/// leading shape.
#[derive(Debug, Clone)]
pub struct KeptStatsOutput {
    /// lse_K (f32).
    pub lse: Tensor,
    /// Truncated entropy H̃ (f32).
    pub entropy: Tensor,
    /// Truncated log-prob ℓ̃ (f32; ℓ where the target is outside K) when targets were given.
    pub logp: Option<Tensor>,
    /// |K| (u32).
    pub count: Tensor,
    /// 1 where the target is outside K, else 0 (u8) when targets were given.
    pub outside: Option<Tensor>,
}

impl KeptStatsOutput {
    pub(crate) fn from_host(k: KeptStats, lead: &[usize], dev: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            lse: Tensor::from_vec(k.lse, lead, dev)?,
            entropy: Tensor::from_vec(k.entropy, lead, dev)?,
            logp: k.logp.map(|l| Tensor::from_vec(l, lead, dev)).transpose()?,
            count: Tensor::from_vec(k.count, lead, dev)?,
            outside: k.outside.map(|o| Tensor::from_vec(o, lead, dev)).transpose()?,
        })
    }
}

/// What the forward leaves besides the packed statistics.
#[derive(Debug, Default)]
struct Extra {
    branch: Option<Branch>,
    kept: Option<KeptStats>,
}

/// Fused token statistics of `logits` (`[N, V]` or `[B, T, V]`, bf16/f16/f32, any device
/// supported by the crate) with optional `targets` (u32, the leading shape).
///
/// One fused read of each row gives lse, entropy, logp and the branch count; lse, entropy and
/// logp carry gradients w.r.t. `logits` (backward: one more read of each row and one write of
/// dlogits in the logits' dtype). Same signature, outputs and errors as
/// [`super::naive::token_stats`], so a trainer switches by changing the call.
///
/// Non-contiguous `logits` are copied to a contiguous tensor first (candle's `contiguous`, which
/// is free for contiguous input); per-token inputs may have any layout.
///
/// Errors: the configuration's ([`Error::InvalidTemperature`], [`Error::InvalidTopP`]);
/// [`Error::DTypeMismatch`] for logits not bf16/f16/f32 or targets not u32;
/// [`Error::ShapeMismatch`] for logits of rank other than 2 or 3 or targets of another shape
/// than the logits' leading dimensions; [`Error::EmptyVocab`]; [`Error::DeviceMismatch`];
/// [`Error::TargetOutOfRange`]; and with `cfg.check_finite` [`Error::NonFiniteLogits`] /
/// [`Error::AllNegInfRow`] naming the first bad row (of the flattened `[N, V]` view).
pub fn token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<TokenStatsOutput> {
    let shape = check::token_stats(logits, targets, cfg)?;
    let logits = logits.contiguous()?;
    let side = Arc::new(Side::default());
    let op = TokenStatsOp {
        vocab: shape.vocab,
        cfg: *cfg,
        targets: match (shape.targets, targets) {
            (Some(host), Some(t)) => Some(Targets { host: Arc::new(host), tensor: t.contiguous()? }),
            _ => None,
        },
        side: side.clone(),
    };
    let with_logp = op.targets.is_some();
    let res = side.result(logits.apply_op1(op))?;
    let extra = side.take().unwrap_or_default();
    let branch = match extra.branch {
        Some(b) => Some(b.into_tensor(&shape.lead, logits.device())?),
        None => None,
    };
    let kept = match extra.kept {
        Some(k) => Some(KeptStatsOutput::from_host(k, &shape.lead, logits.device())?),
        None => None,
    };
    Ok(TokenStatsOutput {
        lse: res.get(0)?,
        entropy: res.get(1)?,
        logp: if with_logp { Some(res.get(2)?) } else { None },
        branch,
        kept,
    })
}

/// The targets, on the host for the CPU passes and as the caller's tensor for device passes.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub host: Arc<Vec<u32>>,
    pub tensor: Tensor,
}

/// Branch counts left by the forward: on the host (CPU pass) or in device memory (CUDA pass).
#[derive(Debug)]
enum Branch {
    Host(Vec<u32>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>, candle_core::CudaDevice),
}

impl Branch {
    fn into_tensor(self, lead: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
        match self {
            Branch::Host(v) => Ok(Tensor::from_vec(v, lead, dev)?),
            #[cfg(feature = "cuda")]
            Branch::Cuda(slice, cuda_dev) => {
                let storage = candle_core::CudaStorage::wrap_cuda_slice(slice, cuda_dev);
                let none = candle_core::op::BackpropOp::none();
                Ok(Tensor::from_storage(candle_core::Storage::Cuda(storage), lead, none, false))
            }
        }
    }
}

/// The forward op: `[.., V]` logits → `[3, ..]` f32 (lse, entropy, logp; logp 0 without targets).
struct TokenStatsOp {
    vocab: usize,
    cfg: TokenStatsConfig,
    targets: Option<Targets>,
    side: Arc<Side<Extra>>,
}

/// `[3, lead..]`, the shape of the packed statistics of logits with layout `l`.
fn packed_shape(l: &Layout) -> Shape {
    let dims = l.dims();
    let mut out = vec![3];
    out.extend_from_slice(&dims[..dims.len() - 1]);
    Shape::from(out)
}

/// The start and end of a contiguous layout (the public functions make inputs contiguous).
pub(crate) fn offsets(l: &Layout, op: &'static str) -> candle_core::Result<(usize, usize)> {
    l.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })
}

impl TokenStatsOp {
    fn cpu<E: Element>(&self, z: &[E]) -> Result<TokenStats> {
        let targets = self.targets.as_ref().map(|t| t.host.as_slice());
        cpu::token_stats(z, self.vocab, targets, &self.cfg)
    }

    /// lse, entropy, logp (or zeros) one after the other: the `[3, N]` layout.
    fn pack(stats: &TokenStats) -> Vec<f32> {
        let n = stats.lse.len();
        let mut out = Vec::with_capacity(3 * n);
        out.extend_from_slice(&stats.lse);
        out.extend_from_slice(&stats.entropy);
        match &stats.logp {
            Some(l) => out.extend_from_slice(l),
            None => out.resize(3 * n, 0.0),
        }
        out
    }
}

impl CustomOp1 for TokenStatsOp {
    fn name(&self) -> &'static str {
        "rlvr-token-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        let stats = match s {
            CpuStorage::BF16(v) => self.cpu(&v[start..end]),
            CpuStorage::F16(v) => self.cpu(&v[start..end]),
            CpuStorage::F32(v) => self.cpu(&v[start..end]),
            other => Err(unsupported(other.dtype())),
        }
        .map_err(|e| self.side.fail(e))?;
        self.side.put(Extra { branch: stats.branch.clone().map(Branch::Host), kept: stats.kept.clone() });
        Ok((CpuStorage::F32(Self::pack(&stats)), packed_shape(l)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (start, end) = offsets(l, self.name())?;
        if let Some(f) = self.cfg.filter {
            // The CUDA kernels have the kept set (crate::cuda::token_stats with kept buffers);
            // this op does not carry their outputs yet.
            return Err(self.side.fail(Error::InvalidConfig {
                name: "filter",
                value: f.to_string(),
                why: "ops::token_stats with a filter runs on CPU tensors only for now",
            }));
        }
        let (packed, branch) = cuda_fwd::token_stats(self, s, start..end).map_err(|e| self.side.fail(e))?;
        self.side.put(Extra { branch, kept: None });
        Ok((packed, packed_shape(l)))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv_t = 1.0 / self.cfg.temperature;
        let (res, grad) = (res.detach().contiguous()?, grad_res.detach().contiguous()?);
        let arg = arg.detach();
        let dz = if arg.device().is_cpu() {
            let host = self.targets.as_ref().map(|t| t.host.clone());
            arg.apply_op3_no_bwd(&res, &grad, &StatsBackward { vocab: self.vocab, inv_t, targets: host })?
        } else {
            composed_backward(&arg, &res, &grad, self.targets.as_ref().map(|t| &t.tensor), inv_t)?
        };
        Ok(Some(dz))
    }
}

/// The error for a logits dtype the public function should have rejected.
pub(crate) fn unsupported(d: DType) -> Error {
    Error::DTypeMismatch { name: "logits", expected: "bf16, f16 or f32".into(), got: check::dtype_name(d) }
}

/// The token-statistics backward composed from candle ops on the logits' device (used where no
/// fused backward kernel exists): `[.., V]` temporaries, same formula as
/// [`super::stats_backward`]. `res` and `grad` are the `[3, ..]` forward output and its gradient.
pub(crate) fn composed_backward(
    z: &Tensor,
    res: &Tensor,
    grad: &Tensor,
    targets: Option<&Tensor>,
    inv_t: f32,
) -> candle_core::Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.get(i)?.unsqueeze(D::Minus1);
    let x = (z.to_dtype(DType::F32)? * inv_t as f64)?;
    let lp = x.broadcast_sub(&col(res, 0)?)?.maximum(crate::cpu::math::LN_P_FLOOR)?;
    let p = lp.exp()?;
    let (a, b) = (col(grad, 0)?, col(grad, 1)?);
    // Without targets there is no logp output and no logp term.
    let c = if targets.is_some() { col(grad, 2)? } else { a.zeros_like()? };
    // dz·T = p·((a − c) − b·(ln p + H)) + c·δ_y
    let coef = lp.broadcast_add(&col(res, 1)?)?.broadcast_mul(&b.neg()?)?.broadcast_add(&(a - &c)?)?;
    let mut dz = (p * coef)?;
    if let Some(t) = targets {
        dz = dz.scatter_add(&t.unsqueeze(D::Minus1)?, &c, D::Minus1)?;
    }
    (dz * inv_t as f64)?.to_dtype(z.dtype())
}

#[cfg(feature = "cuda")]
mod cuda_fwd {
    //! The CUDA forward: `crate::cuda::token_stats` on candle's stream, then the three outputs
    //! copied into one `[3, N]` buffer (3·N floats, negligible next to the N·V read).

    use std::ops::Range;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::{CudaStorage, Storage};

    use super::{Branch, TokenStatsOp};
    use crate::cuda;
    use crate::element::Element;
    use crate::error::{Error, Result};

    /// A driver error as the crate's error, naming what was being done.
    pub(crate) fn cuda_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Cuda { op, msg: e.to_string() }
    }

    pub(super) fn token_stats(
        op: &TokenStatsOp,
        s: &CudaStorage,
        range: Range<usize>,
    ) -> Result<(CudaStorage, Option<Branch>)> {
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let guard = op.targets.as_ref().map(|t| t.tensor.storage_and_layout());
        let targets: Option<CudaView<'_, u32>> = match &guard {
            Some((st, l)) => match &**st {
                Storage::Cuda(c) => {
                    let start = l.start_offset();
                    Some(c.as_cuda_slice::<u32>()?.slice(start..start + range.len() / op.vocab))
                }
                _ => return Err(Error::Candle("targets are not on the CUDA device".into())),
            },
            None => None,
        };
        let bufs = match s.dtype() {
            candle_core::DType::F32 => run::<f32>(op, s, range, targets.as_ref(), &stream)?,
            candle_core::DType::BF16 => run::<half::bf16>(op, s, range, targets.as_ref(), &stream)?,
            candle_core::DType::F16 => run::<half::f16>(op, s, range, targets.as_ref(), &stream)?,
            d => return Err(super::unsupported(d)),
        };
        let n = bufs.rows();
        let op_name = "pack token stats";
        let mut packed: CudaSlice<f32> =
            if n == 0 { stream.null() } else { stream.alloc_zeros(3 * n) }.map_err(cuda_err(op_name))?;
        if n > 0 {
            stream.memcpy_dtod(&bufs.lse, &mut packed.slice_mut(0..n)).map_err(cuda_err(op_name))?;
            stream.memcpy_dtod(&bufs.entropy, &mut packed.slice_mut(n..2 * n)).map_err(cuda_err(op_name))?;
            if let Some(l) = &bufs.logp {
                stream.memcpy_dtod(l, &mut packed.slice_mut(2 * n..3 * n)).map_err(cuda_err(op_name))?;
            }
        }
        let branch = bufs.branch.map(|b| Branch::Cuda(b, dev.clone()));
        Ok((CudaStorage::wrap_cuda_slice(packed, dev), branch))
    }

    fn run<E: Element + DeviceRepr + candle_core::cuda_backend::CudaDType>(
        op: &TokenStatsOp,
        s: &CudaStorage,
        range: Range<usize>,
        targets: Option<&CudaView<'_, u32>>,
        stream: &std::sync::Arc<cuda::CudaStream>,
    ) -> Result<cuda::TokenStatsBuffers> {
        let logits = s.as_cuda_slice::<E>()?.slice(range);
        cuda::token_stats(stream, &logits, op.vocab, targets, &op.cfg)
    }
}
