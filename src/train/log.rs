//! `metrics.jsonl`: one JSON object per line, each with a `"kind"` field saying what it is:
//!
//! - `"config"`: the run's settings;
//! - `"sft"`: one SFT (or RFT fine-tuning) step ([`SftStep`]);
//! - `"grpo"`: one GRPO step ([`super::grpo::StepMetrics`]);
//! - `"eval"`: one checkpoint's evaluation ([`super::eval::EvalResult`]);
//! - `"overlap"`: two checkpoints' unsolvable sets ([`super::eval::OverlapRecord`]);
//! - `"rft_select"`: one RFT strategy's selection ([`RftSelection`]).
//!
//! Lines are flushed as they are written, so a run that stops early leaves a valid prefix.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::eval::{EvalResult, OverlapRecord};
use super::grpo::StepMetrics;
use crate::error::{Error, Result};

/// One SFT or fine-tuning step.
#[derive(Debug, Clone, Serialize)]
pub struct SftStep {
    /// `sft`, or `rft-<strategy>`.
    pub phase: String,
    /// Step, from 1.
    pub step: usize,
    /// Mean token NLL of the batch.
    pub loss: f64,
    /// Sampled Pass@1 on the SFT probe after this step, when probed.
    pub probe_pass_at_1: Option<f64>,
}

/// What one RFT strategy selected.
#[derive(Debug, Clone, Serialize)]
pub struct RftSelection {
    /// Strategy name.
    pub strategy: String,
    /// Rollouts selected.
    pub selected: usize,
    /// Of which incorrect (noise).
    pub incorrect: usize,
    /// Mean of the selected responses' mean token entropy.
    pub mean_entropy: f64,
    /// Mean of the selected responses' mean branch count.
    pub mean_branch: f64,
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The settings (free-form).
    Config(&'a serde_json::Value),
    /// An SFT step.
    Sft(&'a SftStep),
    /// A GRPO step.
    Grpo(&'a StepMetrics),
    /// A checkpoint evaluation.
    Eval(&'a EvalResult),
    /// An unsolvable-set overlap.
    Overlap(&'a OverlapRecord),
    /// An RFT selection.
    RftSelect(&'a RftSelection),
}

/// Appends records to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    out: BufWriter<File>,
    path: PathBuf,
}

impl MetricsLog {
    /// Creates (truncates) `dir/metrics.jsonl`, creating `dir` if needed.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let path = dir.join("metrics.jsonl");
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        Ok(Self { out: BufWriter::new(file), path })
    }

    /// Writes one record as one line and flushes it.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| io_error(&self.path, e))?;
        writeln!(self.out, "{line}").and_then(|_| self.out.flush()).map_err(|e| io_error(&self.path, e))
    }

    /// Writes any serializable object as one line (it should carry its own `"kind"` field) and
    /// flushes it.
    pub fn write_value(&mut self, value: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(value).map_err(|e| io_error(&self.path, e))?;
        writeln!(self.out, "{line}").and_then(|_| self.out.flush()).map_err(|e| io_error(&self.path, e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An I/O (or encoding) failure on `path`.
pub fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { context: path.display().to_string(), msg: e.to_string() }
}
