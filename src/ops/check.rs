//! The input checks shared by the fused ops and their naive twins, so that both reject the same
//! inputs with the same error (a trainer that switches one call sees no new failure modes).
//!
//! Order: configuration, the logits' dtype and rank, then each per-token tensor's dtype, shape
//! and device, then (after reading the per-token inputs to the host, O(N)) their values via
//! [`GrpoInputs::validate`]. Logit values (NaN, +inf, all −inf rows) are checked by the passes
//! themselves, which read the logits anyway.

use candle_core::{DType, Tensor};

use super::GrpoLossInputs;
use crate::config::{GrpoConfig, TokenStatsConfig};
use crate::error::{Error, Result};
use crate::types::{GrpoInputs, KeptMask};
use crate::validate;

/// The logits' dtype: bf16, f16 or f32.
pub(crate) fn logits_dtype(logits: &Tensor) -> Result<()> {
    match logits.dtype() {
        DType::BF16 | DType::F16 | DType::F32 => Ok(()),
        d => Err(Error::DTypeMismatch { name: "logits", expected: "bf16, f16 or f32".into(), got: dtype_name(d) }),
    }
}

/// candle's name of a dtype (`"f32"`, `"u32"`, …).
pub(crate) fn dtype_name(d: DType) -> String {
    d.as_str().to_string()
}

/// The logits' leading shape and V, for `[N, V]` (`allow_2d`) or `[B, T, V]` logits.
pub(crate) fn logits_shape(logits: &Tensor, allow_2d: bool) -> Result<(Vec<usize>, usize)> {
    let dims = logits.dims();
    let ok = dims.len() == 3 || (allow_2d && dims.len() == 2);
    if !ok {
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: if allow_2d { "rank 2 [N, V] or rank 3 [B, T, V]".into() } else { "rank 3 [B, T, V]".into() },
            got: format!("{dims:?}"),
        });
    }
    let (lead, vocab) = dims.split_at(dims.len() - 1);
    if vocab[0] == 0 {
        return Err(Error::EmptyVocab);
    }
    Ok((lead.to_vec(), vocab[0]))
}

/// A per-token tensor: `dtype`, the logits' leading shape `lead`, the logits' device.
pub(crate) fn per_token(name: &'static str, t: &Tensor, dtype: DType, lead: &[usize], logits: &Tensor) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::DTypeMismatch { name, expected: dtype_name(dtype), got: dtype_name(t.dtype()) });
    }
    if t.dims() != lead {
        return Err(Error::ShapeMismatch {
            name,
            expected: format!("shape {lead:?} (the logits' leading dimensions)"),
            got: format!("{:?}", t.dims()),
        });
    }
    if !t.device().same_device(logits.device()) {
        return Err(Error::DeviceMismatch {
            name,
            expected: format!("{:?}", logits.device().location()),
            got: format!("{:?}", t.device().location()),
        });
    }
    Ok(())
}

/// The per-token GRPO inputs copied to the host (O(N); any layout), checked.
#[derive(Debug, Clone)]
pub(crate) struct HostGrpoInputs {
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Option<Vec<f32>>,
    pub advantages: Vec<f32>,
    /// T, the logits' second dimension.
    pub seq_len: usize,
    /// `[B, T]`.
    pub lead: Vec<usize>,
    /// V.
    pub vocab: usize,
    /// The engine's kept mask on the host (empty offsets: none).
    pub kept_ids: Vec<u32>,
    pub kept_offsets: Vec<u64>,
}

impl HostGrpoInputs {
    /// The slices as the `cpu::`/`reference::` input struct.
    pub fn as_inputs(&self) -> GrpoInputs<'_> {
        GrpoInputs {
            targets: &self.targets,
            mask: &self.mask,
            old_logp: &self.old_logp,
            ref_logp: self.ref_logp.as_deref(),
            advantages: &self.advantages,
            seq_len: self.seq_len,
            kept_mask: (!self.kept_offsets.is_empty())
                .then_some(KeptMask { token_ids: &self.kept_ids, offsets: &self.kept_offsets }),
        }
    }
}

/// Every check of the GRPO loss's public functions except the logits' values; returns the
/// per-token inputs on the host.
pub(crate) fn grpo(logits: &Tensor, inputs: &GrpoLossInputs, cfg: &GrpoConfig) -> Result<HostGrpoInputs> {
    cfg.validate()?;
    logits_dtype(logits)?;
    let (lead, vocab) = logits_shape(logits, false)?;
    per_token("targets", inputs.targets, DType::U32, &lead, logits)?;
    per_token("mask", inputs.mask, DType::F32, &lead, logits)?;
    per_token("old_logp", inputs.old_logp, DType::F32, &lead, logits)?;
    if let Some(r) = inputs.ref_logp {
        per_token("ref_logp", r, DType::F32, &lead, logits)?;
    }
    per_token("advantages", inputs.advantages, DType::F32, &lead, logits)?;
    if (cfg.filter.is_some() || inputs.kept_mask.is_some()) && !logits.device().is_cpu() {
        return Err(Error::InvalidConfig {
            name: "filter",
            value: cfg.filter.map_or_else(|| "a kept mask".into(), |f| f.to_string()),
            why: "sampling filters and kept masks are not implemented on CUDA yet",
        });
    }
    let (kept_ids, kept_offsets) = match inputs.kept_mask {
        Some(m) => kept_mask(m)?,
        None => (Vec::new(), Vec::new()),
    };
    let host = HostGrpoInputs {
        targets: host_vec(inputs.targets)?,
        mask: host_vec(inputs.mask)?,
        old_logp: host_vec(inputs.old_logp)?,
        ref_logp: inputs.ref_logp.map(host_vec).transpose()?,
        advantages: host_vec(inputs.advantages)?,
        seq_len: lead[1],
        lead,
        vocab,
        kept_ids,
        kept_offsets,
    };
    let n = host.targets.len();
    host.as_inputs().validate(n, vocab, cfg.kl.is_some())?;
    if cfg.filter.is_some() || inputs.kept_mask.is_some() {
        validate::filter_or_mask(cfg.filter.as_ref(), host.as_inputs().kept_mask.as_ref(), n, vocab)?;
    }
    Ok(host)
}

/// A kept mask's tensors on the host: ids (rank 1, u32) and offsets (rank 1, u32 or i64;
/// negative values are [`Error::InvalidKeptMask`] at their row). Layout checks follow in
/// [`GrpoInputs::validate`].
pub(crate) fn kept_mask(m: super::KeptMaskTensors) -> Result<(Vec<u32>, Vec<u64>)> {
    let rank1 = |name: &'static str, t: &Tensor| {
        if t.rank() == 1 {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { name, expected: "rank 1".into(), got: format!("{:?}", t.dims()) })
        }
    };
    rank1("kept_mask.token_ids", m.token_ids)?;
    rank1("kept_mask.offsets", m.offsets)?;
    if m.token_ids.dtype() != DType::U32 {
        return Err(Error::DTypeMismatch {
            name: "kept_mask.token_ids",
            expected: "u32".into(),
            got: dtype_name(m.token_ids.dtype()),
        });
    }
    let offsets = match m.offsets.dtype() {
        DType::U32 => m.offsets.to_vec1::<u32>()?.into_iter().map(u64::from).collect(),
        DType::I64 => {
            let v = m.offsets.to_vec1::<i64>()?;
            if let Some(row) = v.iter().position(|&o| o < 0) {
                return Err(Error::InvalidKeptMask { row, why: format!("negative offset {}", v[row]) });
            }
            v.into_iter().map(|o| o as u64).collect()
        }
        d => {
            return Err(Error::DTypeMismatch {
                name: "kept_mask.offsets",
                expected: "u32 or i64".into(),
                got: dtype_name(d),
            })
        }
    };
    Ok((m.token_ids.to_vec1::<u32>()?, offsets))
}

/// A tensor's elements in row-major order on the host (copies from any device and layout).
pub(crate) fn host_vec<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_vec1::<T>()?)
}

/// The checked shape of a token-statistics call and its targets on the host.
#[derive(Debug, Clone)]
pub(crate) struct StatsShape {
    /// `[N]` or `[B, T]`.
    pub lead: Vec<usize>,
    /// V.
    pub vocab: usize,
    /// The targets (row-major), when given.
    pub targets: Option<Vec<u32>>,
}

impl StatsShape {
    /// N.
    pub fn rows(&self) -> usize {
        self.lead.iter().product()
    }
}

/// Every check of the token-statistics public functions except the logits' values.
pub(crate) fn token_stats(logits: &Tensor, targets: Option<&Tensor>, cfg: &TokenStatsConfig) -> Result<StatsShape> {
    cfg.validate()?;
    logits_dtype(logits)?;
    let (lead, vocab) = logits_shape(logits, true)?;
    let targets = match targets {
        Some(t) => {
            per_token("targets", t, DType::U32, &lead, logits)?;
            let host = host_vec::<u32>(t)?;
            validate::targets(&host, host.len(), vocab)?;
            Some(host)
        }
        None => None,
    };
    Ok(StatsShape { lead, vocab, targets })
}
