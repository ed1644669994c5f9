//! With the `cuda` feature: compile every `kernels/*.cu` to PTX with nvcc into `OUT_DIR`
//! (embedded by `src/cuda/` with `include_str!`). Without it: nothing, so the default build needs
//! no CUDA anything.
//!
//! Target: `sm_$CUDA_COMPUTE_CAP` (default 90, the H100). PTX rather than a cubin so that one
//! build also loads on newer GPUs (the driver JIT-compiles it once per process).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const KERNEL_DIR: &str = "kernels";
const DEFAULT_COMPUTE_CAP: &str = "90";
/// The newest PTX ISA the GPU host's driver (580, CUDA 13.0) loads; newer nvcc emits newer PTX.
const MAX_PTX_VERSION: (u32, u32) = (9, 0);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    for var in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let (sources, headers) = kernel_files();
    for f in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let nvcc = find_nvcc();
    let arch = format!("sm_{}", compute_cap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // nvcc is slow on small machines: compile all kernels at once.
    let jobs: Vec<(PathBuf, PathBuf, Child)> = sources
        .iter()
        .map(|src| {
            let stem = src.file_stem().expect("a .cu file has a stem").to_string_lossy().into_owned();
            let ptx = out_dir.join(format!("{stem}.ptx"));
            let child = Command::new(&nvcc)
                .args(["--ptx", "-O3", "-std=c++17", "-lineinfo", &format!("-arch={arch}"), "-I", KERNEL_DIR, "-o"])
                .arg(&ptx)
                .arg(src)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}{}", nvcc.display(), install_hint()));
            (src.clone(), ptx, child)
        })
        .collect();
    for (src, ptx, child) in jobs {
        let out = child.wait_with_output().expect("waiting for nvcc");
        if !out.status.success() {
            panic!("nvcc failed on {} ({}): see the messages above", src.display(), out.status);
        }
        check_ptx_version(&ptx);
    }
}

/// `kernels/*.cu` (compiled) and `kernels/*.cuh` (watched), sorted for a stable build.
fn kernel_files() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    let entries = std::fs::read_dir(KERNEL_DIR).unwrap_or_else(|e| panic!("cannot read {KERNEL_DIR}/: {e}"));
    for entry in entries {
        let path = entry.expect("reading kernels/").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();
    (sources, headers)
}

/// `$NVCC`, else `$CUDA_HOME/bin/nvcc` (or `$CUDA_PATH`), else `nvcc` on `PATH`.
fn find_nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    let on_path = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).map(|d| d.join("nvcc")).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| panic!("the `cuda` feature needs nvcc, and none was found{}", install_hint()))
}

fn install_hint() -> &'static str {
    "\n  install it (CPU-only machines too):  bash scripts/cuda-toolchain.sh && source .cuda-toolchain/env.sh\n  \
     or point CUDA_HOME / NVCC at a CUDA 13.0 toolkit; or build without `--features cuda`."
}

/// `CUDA_COMPUTE_CAP` as digits ("90", "9.0" and "sm_90" all mean sm_90).
fn compute_cap() -> String {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| DEFAULT_COMPUTE_CAP.to_string());
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 2 {
        panic!("CUDA_COMPUTE_CAP = {raw:?}: expected a compute capability such as 90");
    }
    digits
}

/// Warns when nvcc emitted a PTX ISA newer than the GPU host's driver accepts (CUDA.md: PTX
/// from nvcc >= 13.1 does not load on driver 580).
fn check_ptx_version(ptx: &Path) {
    let text = std::fs::read_to_string(ptx).unwrap_or_default();
    let version = text.lines().find_map(|l| l.trim().strip_prefix(".version ")).and_then(|v| {
        let (a, b) = v.trim().split_once('.')?;
        Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
    });
    match version {
        Some(v) if v > MAX_PTX_VERSION => println!(
            "cargo:warning={}: PTX .version {}.{} is newer than {}.{}: it will not load on a CUDA 13.0 \
             driver (use nvcc 13.0, see scripts/cuda-toolchain.sh)",
            ptx.display(),
            v.0,
            v.1,
            MAX_PTX_VERSION.0,
            MAX_PTX_VERSION.1
        ),
        Some(_) => {}
        None => println!("cargo:warning={}: no .version line in the PTX", ptx.display()),
    }
}
