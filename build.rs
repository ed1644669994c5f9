//! With the `cuda` feature: compile every `kernels/*.cu` with nvcc into one fatbin per file in
//! `OUT_DIR` (embedded by `src/cuda/context.rs` with `include_bytes!`). Without it: nothing, so
//! the default build needs no CUDA anything.
//!
//! Each fatbin holds SASS for `sm_$CUDA_COMPUTE_CAP` (default 90: H100, H200) and for the newer
//! datacenter architectures in [`ALSO_SASS`] that this nvcc knows (sm_100: B200), plus the PTX of
//! `compute_$CUDA_COMPUTE_CAP` as the fallback the driver JIT-compiles on any other newer GPU. The
//! driver picks the SASS of the GPU's own architecture when there is one, so a process loads its
//! modules in ~0.1 ms instead of JIT-compiling ~4 MB of PTX for seconds (shared/CUDA.md).
//! `CUDA_COMPUTE_CAP` thus sets the oldest GPU the build runs on (its SASS, and the PTX's target).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const KERNEL_DIR: &str = "kernels";
const DEFAULT_COMPUTE_CAP: u32 = 90;
/// SASS also shipped when newer than `CUDA_COMPUTE_CAP` (and listed by `nvcc --list-gpu-code`).
const ALSO_SASS: &[u32] = &[100];
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
    let cap = compute_cap();
    let gencode = gencode_args(&nvcc, cap);
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // nvcc is slow on small machines (and per SASS architecture): compile all kernels at once.
    let jobs: Vec<(PathBuf, PathBuf, Child)> = sources
        .iter()
        .map(|src| {
            let stem = src.file_stem().expect("a .cu file has a stem").to_string_lossy().into_owned();
            // --keep leaves the compute_$cap PTX that went into the fatbin, for the version check.
            let keep = out_dir.join(format!("nvcc-{stem}"));
            std::fs::create_dir_all(&keep).unwrap_or_else(|e| panic!("cannot create {}: {e}", keep.display()));
            let child = Command::new(&nvcc)
                .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
                .args(&gencode)
                .args(["-I", KERNEL_DIR, "--keep", "--keep-dir"])
                .arg(&keep)
                .arg("-o")
                .arg(out_dir.join(format!("{stem}.fatbin")))
                .arg(src)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}{}", nvcc.display(), install_hint()));
            (src.clone(), keep, child)
        })
        .collect();
    for (src, keep, child) in jobs {
        let out = child.wait_with_output().expect("waiting for nvcc");
        if !out.status.success() {
            panic!("nvcc failed on {} ({}): see the messages above", src.display(), out.status);
        }
        check_kept_ptx(&src, &keep, cap);
        // The intermediate files (~10 MB per kernel file) are not kept.
        let _ = std::fs::remove_dir_all(&keep);
    }
}

/// Checks the `.version` of the PTX that went into `src`'s fatbin (compute_`cap`), which nvcc
/// left in `keep`: `<stem>.compute_<cap>.ptx` when there are several virtual architectures, else
/// `<stem>.ptx`.
fn check_kept_ptx(src: &Path, keep: &Path, cap: u32) {
    let stem = src.file_stem().expect("a .cu file has a stem").to_string_lossy();
    let kept = [keep.join(format!("{stem}.compute_{cap}.ptx")), keep.join(format!("{stem}.ptx"))];
    match kept.iter().find(|p| p.is_file()) {
        Some(ptx) => check_ptx_version(src, ptx),
        None => println!("cargo:warning={}: nvcc --keep left no compute_{cap} PTX: .version unchecked", src.display()),
    }
}

/// `-gencode` options: SASS for `cap` and the newer [`ALSO_SASS`] this nvcc supports, PTX for `cap`.
fn gencode_args(nvcc: &Path, cap: u32) -> Vec<String> {
    let known = Command::new(nvcc)
        .arg("--list-gpu-code")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| panic!("cannot run {} --list-gpu-code{}", nvcc.display(), install_hint()));
    let mut sass = vec![cap];
    for &a in ALSO_SASS.iter().filter(|&&a| a > cap) {
        if known.split_whitespace().any(|c| c == format!("sm_{a}")) {
            sass.push(a);
        } else {
            println!("cargo:warning=nvcc does not know sm_{a}: no SASS for it (the PTX fallback JIT-compiles there)");
        }
    }
    let mut args: Vec<String> = sass.iter().map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}")).collect();
    args.push(format!("-gencode=arch=compute_{cap},code=compute_{cap}"));
    args
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

/// `CUDA_COMPUTE_CAP` as a number ("90", "9.0" and "sm_90" all mean 90).
fn compute_cap() -> u32 {
    let Ok(raw) = env::var("CUDA_COMPUTE_CAP") else { return DEFAULT_COMPUTE_CAP };
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    match digits.parse() {
        Ok(cap) if digits.len() >= 2 => cap,
        _ => panic!("CUDA_COMPUTE_CAP = {raw:?}: expected a compute capability such as 90"),
    }
}

/// Warns when nvcc emitted a PTX ISA newer than the GPU host's driver accepts (CUDA.md: PTX
/// from nvcc >= 13.1 does not load on driver 580).
fn check_ptx_version(src: &Path, ptx: &Path) {
    let text = std::fs::read_to_string(ptx).unwrap_or_default();
    let version = text.lines().find_map(|l| l.trim().strip_prefix(".version ")).and_then(|v| {
        let (a, b) = v.trim().split_once('.')?;
        Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
    });
    match version {
        Some(v) if v > MAX_PTX_VERSION => println!(
            "cargo:warning={}: its PTX has .version {}.{}, newer than {}.{}: it will not load on a CUDA 13.0 \
             driver (use nvcc 13.0, see scripts/cuda-toolchain.sh)",
            src.display(),
            v.0,
            v.1,
            MAX_PTX_VERSION.0,
            MAX_PTX_VERSION.1
        ),
        Some(_) => {}
        None => println!("cargo:warning={}: no .version line in its PTX", src.display()),
    }
}
