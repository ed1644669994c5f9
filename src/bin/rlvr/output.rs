//! Writing `rlvr stats` results: safetensors (per-token tensors in the logits' token shape, plus
//! per-sequence `log_ppl`) or CSV (one line per token).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rlvr_kernels::{TokenStats, TokenStatsConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::{CliError, CliResult};
use crate::io::Logits;

/// Output file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// `.safetensors`.
    Safetensors,
    /// `.csv`.
    Csv,
}

impl OutFormat {
    /// The format of `path` by its extension (a usage error for anything else).
    pub fn from_path(path: &Path) -> CliResult<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("safetensors") => Ok(OutFormat::Safetensors),
            Some("csv") => Ok(OutFormat::Csv),
            _ => {
                Err(CliError::usage(format!("--out `{}`: unknown extension; use .safetensors or .csv", path.display())))
            }
        }
    }
}

/// Everything `rlvr stats` writes.
pub struct StatsOutput<'a> {
    /// The input logits (for shapes and names).
    pub logits: &'a Logits<'a>,
    /// Per-token statistics.
    pub stats: &'a TokenStats,
    /// The mask, when one was read.
    pub mask: Option<&'a [f32]>,
    /// Per-sequence log-PPL (`[B, T, V]` logits with targets).
    pub log_ppl: Option<&'a [Option<f32>]>,
}

/// Writes `out` to `path` in `format`.
pub fn write(path: &Path, format: OutFormat, out: &StatsOutput<'_>, cfg: &TokenStatsConfig) -> CliResult<()> {
    let fail = |e: &dyn std::fmt::Display| CliError::runtime(format!("cannot write `{}`: {e}", path.display()));
    match format {
        OutFormat::Safetensors => write_safetensors(path, out, cfg).map_err(|e| fail(&e)),
        OutFormat::Csv => write_csv(path, out).map_err(|e| fail(&e)),
    }
}

/// Tensors `lse`, `entropy` (f32), `branch` (u32), `logp` (f32) shaped like the logits without V,
/// with a filter or engine mask also `logp_kept`, `entropy_kept` (f32), `kept` (|K|, u32) and
/// `outside_kept` (u8 0/1),
/// and `log_ppl` `[B]` (f32, NaN for a sequence without counted tokens). The settings go to the
/// file's metadata.
fn write_safetensors(
    path: &Path,
    out: &StatsOutput<'_>,
    cfg: &TokenStatsConfig,
) -> Result<(), safetensors::SafeTensorError> {
    let shape = out.logits.token_shape().to_vec();
    let log_ppl: Option<Vec<f32>> = out.log_ppl.map(|l| l.iter().map(|v| v.unwrap_or(f32::NAN)).collect());
    let mut tensors = vec![
        ("lse", TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(&out.stats.lse))?),
        ("entropy", TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(&out.stats.entropy))?),
    ];
    if let Some(b) = &out.stats.branch {
        tensors.push(("branch", TensorView::new(Dtype::U32, shape.clone(), bytemuck::cast_slice(b))?));
    }
    if let Some(l) = &out.stats.logp {
        tensors.push(("logp", TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(l))?));
    }
    if let Some(k) = &out.stats.kept {
        if let Some(l) = &k.logp {
            tensors.push(("logp_kept", TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(l))?));
        }
        tensors.push(("entropy_kept", TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(&k.entropy))?));
        tensors.push(("kept", TensorView::new(Dtype::U32, shape.clone(), bytemuck::cast_slice(&k.count))?));
        if let Some(o) = &k.outside {
            tensors.push(("outside_kept", TensorView::new(Dtype::U8, shape.clone(), o)?));
        }
    }
    if let Some(l) = &log_ppl {
        tensors.push(("log_ppl", TensorView::new(Dtype::F32, vec![l.len()], bytemuck::cast_slice(l))?));
    }
    let mut meta = HashMap::new();
    meta.insert("temperature".to_string(), cfg.temperature.to_string());
    if let Some(p) = cfg.top_p {
        meta.insert("top_p".to_string(), p.to_string());
    }
    if let Some(f) = cfg.filter {
        meta.insert("filter".to_string(), f.to_string());
    }
    meta.insert("logits".to_string(), format!("{} {:?} {}", out.logits.name, out.logits.shape, out.logits.dtype));
    safetensors::serialize_to_file(tensors, Some(meta), path)
}

/// Header `row[,b,t],lse,entropy[,branch][,logp][,logp_kept,entropy_kept,kept,outside_kept][,mask][,log_ppl]`;
/// `b,t` for `[B, T, V]` logits;
/// `log_ppl` repeats the token's sequence value (empty for a sequence without counted tokens).
/// Floats are printed in Rust's shortest round-trip form, so they read back bit-exact.
fn write_csv(path: &Path, out: &StatsOutput<'_>) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    let s = out.stats;
    let seqs = out.logits.sequences();
    let mut header = vec!["row"];
    if seqs.is_some() {
        header.extend(["b", "t"]);
    }
    header.extend(["lse", "entropy"]);
    let optional = [
        (s.branch.is_some(), "branch"),
        (s.logp.is_some(), "logp"),
        (s.kept.as_ref().is_some_and(|k| k.logp.is_some()), "logp_kept"),
        (s.kept.is_some(), "entropy_kept"),
        (s.kept.is_some(), "kept"),
        (s.kept.as_ref().is_some_and(|k| k.outside.is_some()), "outside_kept"),
        (out.mask.is_some(), "mask"),
        (out.log_ppl.is_some(), "log_ppl"),
    ];
    header.extend(optional.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
    writeln!(w, "{}", header.join(","))?;
    for row in 0..out.logits.rows {
        write!(w, "{row}")?;
        if let Some((_, t)) = seqs {
            write!(w, ",{},{}", row / t, row % t)?;
        }
        write!(w, ",{},{}", s.lse[row], s.entropy[row])?;
        if let Some(b) = &s.branch {
            write!(w, ",{}", b[row])?;
        }
        if let Some(l) = &s.logp {
            write!(w, ",{}", l[row])?;
        }
        if let Some(k) = &s.kept {
            if let Some(l) = &k.logp {
                write!(w, ",{}", l[row])?;
            }
            write!(w, ",{},{}", k.entropy[row], k.count[row])?;
            if let Some(o) = &k.outside {
                write!(w, ",{}", o[row])?;
            }
        }
        if let Some(m) = out.mask {
            write!(w, ",{}", m[row])?;
        }
        if let (Some(lp), Some((_, t))) = (out.log_ppl, seqs) {
            match lp[row / t] {
                Some(v) => write!(w, ",{v}")?,
                None => write!(w, ",")?,
            }
        }
        writeln!(w)?;
    }
    w.flush()
}
