//! `--device cpu|cuda`: the one place that picks the implementation of the fused token
//! statistics, so that wiring in the CUDA kernels is a change to this file only.

use rlvr_kernels::{cpu, Element, KeptMask, Result, TokenStats, TokenStatsConfig};

use crate::error::{CliError, CliResult};

/// Where the fused statistics run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The fused CPU kernels (`rlvr_kernels::cpu`), rows in parallel.
    Cpu,
    /// The CUDA kernels (needs a build with `--features cuda`).
    Cuda,
}

impl Device {
    /// Fails early, before any file is read, when this build cannot run on the device.
    pub fn check_available(self) -> CliResult<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda if cfg!(feature = "cuda") => Ok(()),
            Device::Cuda => {
                Err(CliError::usage("this rlvr was built without the `cuda` feature; rebuild with --features cuda"))
            }
        }
    }

    /// Lower-case name, as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// Fused token statistics of row-major `[N, V]` logits on this device. Same contract as
    /// [`rlvr_kernels::cpu::token_stats`] (errors name rows of this slice); with `mask`, as
    /// [`rlvr_kernels::cpu::token_stats_masked`].
    pub fn token_stats<E: Element>(
        self,
        logits: &[E],
        vocab: usize,
        targets: Option<&[u32]>,
        cfg: &TokenStatsConfig,
        mask: Option<&KeptMask>,
    ) -> Result<TokenStats> {
        match (self, mask) {
            (Device::Cpu, None) => cpu::token_stats(logits, vocab, targets, cfg),
            (Device::Cpu, Some(m)) => cpu::token_stats_masked(logits, vocab, targets, cfg, m),
            (Device::Cuda, _) => cuda_token_stats(logits, vocab, targets, cfg, mask),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_token_stats<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMask>,
) -> Result<TokenStats> {
    let stream = rlvr_kernels::cuda::default_stream()?;
    match mask {
        Some(m) => rlvr_kernels::cuda::token_stats_masked_host(&stream, logits, vocab, targets, cfg, m),
        None => rlvr_kernels::cuda::token_stats_host(&stream, logits, vocab, targets, cfg),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_token_stats<E: Element>(
    _logits: &[E],
    _vocab: usize,
    _targets: Option<&[u32]>,
    _cfg: &TokenStatsConfig,
    _mask: Option<&KeptMask>,
) -> Result<TokenStats> {
    // Unreachable in practice: `check_available` rejects `--device cuda` first.
    Err(rlvr_kernels::Error::Cuda {
        op: "rlvr",
        msg: "this rlvr was built without the `cuda` feature; rebuild with --features cuda".into(),
    })
}
