//! What the CLI test files share: a temp dir, running the `rlvr` binary, safetensors writing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rlvr-cli-{}-{test}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rlvr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlvr")).args(args).output().expect("run rlvr")
}

/// Runs `rlvr args`, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = rlvr(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rlvr {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

/// Runs `rlvr args`, asserts exit `code` and a stderr naming the problem (every needle, case
/// sensitive), with no panic.
pub fn fails(args: &[&str], code: i32, needles: &[&str]) {
    let out = rlvr(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "rlvr {args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "rlvr {args:?} panicked: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "rlvr {args:?}: stderr lacks `{needle}`:\n{stderr}");
    }
}

/// Writes tensors (name, dtype, shape, little-endian bytes) to a safetensors file.
pub fn write_st(path: &str, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, Path::new(path)).unwrap();
}

pub fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}
