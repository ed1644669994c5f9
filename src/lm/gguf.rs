//! Reading a GGUF file: its metadata and its tensors (dequantized to f32), with errors that name
//! the file and say what to do.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// The file name of the model `scripts/fetch-model.sh` installs.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the fetched models live: `$RLVR_MODEL_DIR`, else `models/` under the current directory.
pub fn model_dir() -> PathBuf {
    std::env::var_os("RLVR_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"))
}

/// The path of a model named on the command line: `smollm2` (the fetched SmolLM2-135M-Instruct)
/// or a path to a `.gguf` file. A missing SmolLM2 file is an error that names the command that
/// fetches it.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let path = if name == "smollm2" { model_dir().join(SMOLLM2_FILE) } else { PathBuf::from(name) };
    if !path.is_file() {
        let msg = if name == "smollm2" {
            "not found; fetch it with `bash scripts/fetch-model.sh` (or set RLVR_MODEL_DIR to the folder that holds it)"
                .to_string()
        } else {
            "not found (give `smollm2` or the path of a .gguf file)".to_string()
        };
        return Err(Error::Model { path: path.display().to_string(), msg });
    }
    Ok(path)
}

/// An open GGUF file: its parsed header and a reader for its tensor data.
pub struct Gguf {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Gguf {
    /// Opens and parses the header (metadata and tensor table) of a GGUF file. A missing file, a
    /// file that is not GGUF, or a truncated header is an [`Error::Model`].
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::Model { path: path.display().to_string(), msg: e.to_string() })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::Model {
            path: path.display().to_string(),
            msg: format!("not a readable GGUF file ({e})"),
        })?;
        // A truncated file parses (the header is complete) but its tensor data is short.
        let end = content
            .tensor_infos
            .values()
            .map(|t| {
                let elems = t.shape.elem_count();
                let block = t.ggml_dtype.block_size();
                content.tensor_data_offset + t.offset + (elems / block * t.ggml_dtype.type_size()) as u64
            })
            .max()
            .unwrap_or(content.tensor_data_offset);
        if end > len {
            return Err(Error::Model {
                path: path.display().to_string(),
                msg: format!("truncated: {len} bytes, its tensor table needs {end}; fetch it again"),
            });
        }
        Ok(Self { path: path.to_path_buf(), content, reader })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata entries.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn bad(&self, msg: String) -> Error {
        Error::Model { path: self.path.display().to_string(), msg }
    }

    /// A metadata entry, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.bad(format!("metadata key `{key}` is missing")))
    }

    /// A string entry.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?.to_string().map(|s| s.as_str()).map_err(|e| self.bad(format!("`{key}`: {e}")))
    }

    /// An unsigned integer entry (any integer width).
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => return Err(self.bad(format!("`{key}` is {v:?}, expected an unsigned integer"))),
        };
        usize::try_from(n).map_err(|_| self.bad(format!("`{key}` = {n} does not fit usize")))
    }

    /// A float entry (f32 or f64).
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            v => Err(self.bad(format!("`{key}` is {v:?}, expected a float"))),
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.get(key)?.to_vec().map_err(|e| self.bad(format!("`{key}`: {e}")))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| v.to_string().map(|s| s.as_str()).map_err(|e| self.bad(format!("`{key}`[{i}]: {e}"))))
            .collect()
    }

    /// An array of integers (e.g. `tokenizer.ggml.token_type`), as i64.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        let arr = self.get(key)?.to_vec().map_err(|e| self.bad(format!("`{key}`: {e}")))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::I32(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                Value::U64(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                Value::U8(x) => Ok(*x as i64),
                Value::I16(x) => Ok(*x as i64),
                Value::U16(x) => Ok(*x as i64),
                _ => Err(self.bad(format!("`{key}`[{i}] is {v:?}, expected an integer"))),
            })
            .collect()
    }

    /// True when the file holds a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor dequantized to f32, in candle's (row-major, PyTorch-order) shape, checked against
    /// `dims`.
    pub fn tensor_f32(&mut self, name: &str, dims: &[usize], device: &Device) -> Result<Tensor> {
        if !self.has_tensor(name) {
            return Err(self.bad(format!("tensor `{name}` is missing")));
        }
        let q = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| self.bad(format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(device).map_err(|e| self.bad(format!("tensor `{name}`: {e}")))?;
        if t.dims() != dims {
            return Err(self.bad(format!("tensor `{name}` has shape {:?}, expected {dims:?}", t.dims())));
        }
        Ok(t)
    }
}
