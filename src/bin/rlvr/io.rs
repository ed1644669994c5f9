//! Reading inputs from a memory-mapped safetensors file: the logits (bf16/f16/f32, `[N, V]` or
//! `[B, T, V]`), targets (any integer dtype) and mask (any numeric dtype, values 0/1).
//!
//! safetensors stores little-endian data at byte offsets that need not be aligned to the element
//! size, so a tensor is borrowed in place when it happens to be aligned and copied (a chunk at a
//! time for the logits) when it is not.

use std::fs::File;
use std::path::{Path, PathBuf};

use bytemuck::Pod;
use half::{bf16, f16};
use memmap2::Mmap;
use rlvr_kernels::{validate, DType, Element};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CliError, CliResult};

/// An input file, memory-mapped so that logits far larger than RAM can be streamed.
pub struct InputFile {
    path: PathBuf,
    mmap: Mmap,
}

impl InputFile {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> CliResult<Self> {
        let file = File::open(path).map_err(|e| CliError::runtime(format!("cannot open `{}`: {e}", path.display())))?;
        // SAFETY: the map is read-only and lives as long as `self`; a file truncated by another
        // process while we read it is outside what this tool guards against (as for any mmap reader).
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| CliError::runtime(format!("cannot map `{}`: {e}", path.display())))?;
        Ok(Self { path: path.to_owned(), mmap })
    }

    /// Parses the safetensors header (the tensors themselves stay in the map).
    pub fn parse(&self) -> CliResult<Tensors<'_>> {
        let st = SafeTensors::deserialize(&self.mmap).map_err(|e| {
            CliError::runtime(format!("`{}` is not a valid safetensors file: {e}", self.path.display()))
        })?;
        Ok(Tensors { path: &self.path, st })
    }
}

/// The tensors of an [`InputFile`].
pub struct Tensors<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
}

impl<'a> Tensors<'a> {
    /// The tensor `name`, or an error that lists the tensors the file does have.
    pub fn get(&self, name: &str) -> CliResult<TensorView<'a>> {
        self.st.tensor(name).map_err(|_| {
            let mut names = self.st.names();
            names.sort_unstable();
            let present = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            CliError::runtime(format!("no tensor `{name}` in `{}`; tensors present: {present}", self.path.display()))
        })
    }

    /// The tensor `name` if present; absent is an error only when the name was `explicit`ly given.
    pub fn optional(&self, name: &str, explicit: bool) -> CliResult<Option<TensorView<'a>>> {
        match self.get(name) {
            Ok(t) => Ok(Some(t)),
            Err(e) if explicit => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// The logits tensor: its shape split into rows × V, its bytes still in the map.
pub struct Logits<'a> {
    /// Tensor name in the file.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Full shape, `[N, V]` or `[B, T, V]`.
    pub shape: Vec<usize>,
    /// N = product of all but the last dimension.
    pub rows: usize,
    /// V = the last dimension.
    pub vocab: usize,
    bytes: &'a [u8],
}

impl<'a> Logits<'a> {
    /// Checks rank and dtype of `view`.
    pub fn new(name: &str, view: TensorView<'a>) -> CliResult<Self> {
        let shape = view.shape().to_vec();
        if !(shape.len() == 2 || shape.len() == 3) {
            return Err(CliError::runtime(format!(
                "`{name}` must be [N, V] or [B, T, V] logits, got rank {} shape {shape:?}",
                shape.len()
            )));
        }
        let dtype = match view.dtype() {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F32 => DType::F32,
            other => {
                return Err(CliError::runtime(format!(
                    "`{name}` has dtype {}; logits must be bf16, f16 or f32",
                    dtype_name(other)
                )))
            }
        };
        let vocab = shape[shape.len() - 1];
        let rows = validate::rows(shape.iter().product(), vocab)?;
        Ok(Self { name: name.to_owned(), dtype, shape, rows, vocab, bytes: view.data() })
    }

    /// The per-token shape: the logits shape without V (`[N]` or `[B, T]`).
    pub fn token_shape(&self) -> &[usize] {
        &self.shape[..self.shape.len() - 1]
    }

    /// `(B, T)` for `[B, T, V]` logits; `None` for `[N, V]`.
    pub fn sequences(&self) -> Option<(usize, usize)> {
        (self.shape.len() == 3).then(|| (self.shape[0], self.shape[1]))
    }

    /// Bytes of the whole tensor.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Rows `r0..r1` as `E` (which must be this tensor's dtype): borrowed from the map when
    /// aligned, else copied into `buf`.
    pub fn rows_as<'b, E: Element>(&self, r0: usize, r1: usize, buf: &'b mut Vec<E>) -> &'b [E]
    where
        'a: 'b,
    {
        debug_assert_eq!(E::DTYPE, self.dtype);
        let size = self.dtype.size();
        cast_or_copy(&self.bytes[r0 * self.vocab * size..r1 * self.vocab * size], buf)
    }
}

/// `bytes` as `[E]` in place when aligned, else a copy in `buf`.
fn cast_or_copy<'b, E: Pod>(bytes: &'b [u8], buf: &'b mut Vec<E>) -> &'b [E] {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => s,
        Err(_) => {
            buf.clear();
            buf.resize(bytes.len() / size_of::<E>(), E::zeroed());
            bytemuck::cast_slice_mut::<E, u8>(buf).copy_from_slice(bytes);
            buf
        }
    }
}

/// A safetensors dtype in lower case, as users write it (`i64`, `bf16`).
pub fn dtype_name(d: Dtype) -> String {
    format!("{d:?}").to_ascii_lowercase()
}

/// Little-endian elements from bytes at any alignment (per-token tensors are small: a copy is fine).
fn read_vec<T: Pod>(data: &[u8]) -> Vec<T> {
    data.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
}

/// Checks that a per-token tensor has the logits' shape without V.
fn check_token_shape(what: &str, name: &str, view: &TensorView<'_>, logits: &Logits<'_>) -> CliResult<()> {
    if view.shape() == logits.token_shape() {
        return Ok(());
    }
    Err(CliError::runtime(format!(
        "shape mismatch: {what} `{name}` has shape {:?}, expected {:?} to match logits `{}` {:?}",
        view.shape(),
        logits.token_shape(),
        logits.name,
        logits.shape
    )))
}

/// Every element of an integer tensor, widened to i128 (exact for every integer dtype).
fn integers(data: &[u8], dtype: Dtype) -> Option<Vec<i128>> {
    fn widen<T: Pod + Into<i128>>(data: &[u8]) -> Vec<i128> {
        read_vec::<T>(data).into_iter().map(Into::into).collect()
    }
    Some(match dtype {
        Dtype::U8 => widen::<u8>(data),
        Dtype::I8 => widen::<i8>(data),
        Dtype::U16 => widen::<u16>(data),
        Dtype::I16 => widen::<i16>(data),
        Dtype::U32 => widen::<u32>(data),
        Dtype::I32 => widen::<i32>(data),
        Dtype::U64 => widen::<u64>(data),
        Dtype::I64 => widen::<i64>(data),
        _ => return None,
    })
}

/// Targets as u32 ids, each checked to be in 0..V.
pub fn targets(name: &str, view: &TensorView<'_>, logits: &Logits<'_>) -> CliResult<Vec<u32>> {
    check_token_shape("targets", name, view, logits)?;
    let values = integers(view.data(), view.dtype()).ok_or_else(|| {
        CliError::runtime(format!(
            "targets `{name}` have dtype {}; token ids must have an integer dtype (u8..u64, i8..i64)",
            dtype_name(view.dtype())
        ))
    })?;
    let vocab = logits.vocab;
    if let Some(token) = values.iter().position(|&t| t < 0 || t >= vocab as i128) {
        return Err(CliError::runtime(format!(
            "target {} at token {token} (`{name}`) is out of range for vocabulary size {vocab}",
            values[token]
        )));
    }
    Ok(values.into_iter().map(|t| t as u32).collect())
}

/// The mask as f32 0/1 values (bool, any integer or float dtype accepted).
pub fn mask(name: &str, view: &TensorView<'_>, logits: &Logits<'_>) -> CliResult<Vec<f32>> {
    check_token_shape("mask", name, view, logits)?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::BOOL => data.iter().map(|&b| b as f32).collect(),
        Dtype::F32 => read_vec::<f32>(data),
        Dtype::F64 => read_vec::<f64>(data).into_iter().map(|v| v as f32).collect(),
        Dtype::F16 => read_vec::<f16>(data).into_iter().map(f16::to_f32).collect(),
        Dtype::BF16 => read_vec::<bf16>(data).into_iter().map(bf16::to_f32).collect(),
        other => {
            let ints = integers(data, other).ok_or_else(|| {
                CliError::runtime(format!(
                    "mask `{name}` has dtype {}; expected bool, an integer or a float",
                    dtype_name(other)
                ))
            })?;
            // Checked as integers: a large value could round to 1.0 as f32, and the message
            // should show the value as stored.
            if let Some(token) = ints.iter().position(|&v| v != 0 && v != 1) {
                return Err(CliError::runtime(format!(
                    "mask `{name}`: mask value {} at token {token} is not 0 or 1",
                    ints[token]
                )));
            }
            ints.into_iter().map(|v| v as f32).collect()
        }
    };
    validate::mask(&values, values.len()).map_err(|e| CliError::runtime(format!("mask `{name}`: {e}")))?;
    Ok(values)
}

/// A rollout engine's kept mask stored as two tensors `NAME.token_ids` and `NAME.offsets` (vLLM's
/// CSR `SamplingMask`, any integer dtype, 1-D), checked against the logits' N rows and V.
pub struct KeptMaskData {
    /// Kept ids, row after row.
    pub token_ids: Vec<u32>,
    /// N + 1 row starts.
    pub offsets: Vec<u64>,
}

impl KeptMaskData {
    /// The mask as the library's view.
    pub fn view(&self) -> rlvr_kernels::KeptMask<'_> {
        rlvr_kernels::KeptMask { token_ids: &self.token_ids, offsets: &self.offsets }
    }

    /// Rows `r0..r1` as their own mask (offsets rebased to start at 0), for a chunk of rows.
    pub fn rows(&self, r0: usize, r1: usize) -> (Vec<u32>, Vec<u64>) {
        let (a, b) = (self.offsets[r0] as usize, self.offsets[r1] as usize);
        (self.token_ids[a..b].to_vec(), self.offsets[r0..=r1].iter().map(|&o| o - a as u64).collect())
    }
}

/// Reads `NAME.token_ids` and `NAME.offsets` from `tensors` and validates them.
pub fn kept_mask(name: &str, tensors: &Tensors<'_>, logits: &Logits<'_>) -> CliResult<KeptMaskData> {
    let read = |part: &str| -> CliResult<Vec<i128>> {
        let full = format!("{name}.{part}");
        let view = tensors.get(&full).map_err(|_| {
            CliError::runtime(format!(
                "--filter-mask {name}: the input has no tensor `{full}` (an engine mask is two tensors, \
                 `{name}.token_ids` and `{name}.offsets`)"
            ))
        })?;
        if view.shape().len() != 1 {
            return Err(CliError::runtime(format!("`{full}` has shape {:?}; expected 1-D", view.shape())));
        }
        integers(view.data(), view.dtype()).ok_or_else(|| {
            CliError::runtime(format!("`{full}` has dtype {}; expected an integer dtype", dtype_name(view.dtype())))
        })
    };
    let (ids, offsets) = (read("token_ids")?, read("offsets")?);
    let bad = |part: &str, i: usize, v: i128| {
        CliError::runtime(format!("`{name}.{part}`: value {v} at index {i} is negative or too large"))
    };
    let token_ids = ids
        .iter()
        .enumerate()
        .map(|(i, &v)| u32::try_from(v).map_err(|_| bad("token_ids", i, v)))
        .collect::<CliResult<Vec<u32>>>()?;
    let offsets = offsets
        .iter()
        .enumerate()
        .map(|(i, &v)| u64::try_from(v).map_err(|_| bad("offsets", i, v)))
        .collect::<CliResult<Vec<u64>>>()?;
    let data = KeptMaskData { token_ids, offsets };
    data.view()
        .validate(logits.rows, logits.vocab)
        .map_err(|e| CliError::runtime(format!("--filter-mask {name}: {e}")))?;
    Ok(data)
}
