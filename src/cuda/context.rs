//! Module loading (once per CUDA context), launch shapes, and the mapping of driver errors to
//! [`Error::Cuda`]. Everything `unsafe` in `cuda::` is a kernel launch in the op files; this file
//! has none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::cudarc::driver::sys::{CUfunction_attribute, CUresult};
use super::cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig};
use super::cudarc::nvrtc::Ptx;
use crate::element::DType;
use crate::error::{Error, Result};

/// Fatbin of `kernels/token_stats.cu` (SASS for sm_90 and newer, PTX fallback), from `build.rs`.
const TOKEN_STATS_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/token_stats.fatbin"));
/// Fatbin of `kernels/plain_read.cu`.
const PLAIN_READ_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/plain_read.fatbin"));
/// Fatbin of `kernels/grpo.cu`.
const GRPO_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/grpo.fatbin"));
/// Fatbin of `kernels/sequence.cu`.
const SEQUENCE_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sequence.fatbin"));

/// Threads per CTA of the top-p row kernels (one CTA per SM: their 152 KiB histogram), the
/// sequence kernels and the f64 sums.
pub(crate) const BLOCK: u32 = 1024;
/// Threads per CTA of the row kernels without top-p: two CTAs per SM (`__launch_bounds__(512, 2)`
/// in kernels/row_stats.cuh), so that one CTA's per-row work (reductions, thread 0's outputs, the
/// first loads of its next row) overlaps the other's streaming.
pub(crate) const ROW_BLOCK: u32 = 512;

/// Which module (kernel file) a kernel lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    TokenStats,
    PlainRead,
    Grpo,
    Sequence,
}

impl Module {
    /// The fatbin image: the driver loads the SASS of the device's architecture when the image
    /// has it (no JIT), else JIT-compiles the PTX.
    fn image(self) -> &'static [u8] {
        match self {
            Module::TokenStats => TOKEN_STATS_IMAGE,
            Module::PlainRead => PLAIN_READ_IMAGE,
            Module::Grpo => GRPO_IMAGE,
            Module::Sequence => SEQUENCE_IMAGE,
        }
    }
}

/// A kernel by module and entry-point name, with its threads per CTA (the `__launch_bounds__` of
/// its source) and the dynamic shared memory it launches with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub module: Module,
    pub name: &'static str,
    pub block: u32,
    pub shared_bytes: u32,
}

/// The kernel name for a dtype: `prefix` + `f32` / `bf16` / `f16`.
pub(crate) fn dtype_name(names: [&'static str; 3], dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => names[0],
        DType::BF16 => names[1],
        DType::F16 => names[2],
    }
}

/// A loaded function and the largest grid that is resident at once (persistent CTAs).
#[derive(Debug, Clone)]
struct Loaded {
    func: CudaFunction,
    max_grid: u32,
}

/// The modules and functions loaded into one context.
#[derive(Default)]
struct ContextKernels {
    modules: HashMap<Module, Arc<CudaModule>>,
    functions: HashMap<&'static str, Loaded>,
}

/// One entry per context ever used. The `Arc<CudaContext>` keeps the context alive, so its
/// address is never reused by another context while the entry exists.
type Cache = Mutex<Vec<(Arc<CudaContext>, ContextKernels)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// `e` as [`Error::Cuda`] for operation `op`; out-of-memory says so in words.
pub(crate) fn cuda_error(op: &'static str, e: DriverError) -> Error {
    let what = if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY { "device out of memory: " } else { "" };
    Error::Cuda { op, msg: format!("{what}{e:?}") }
}

/// `map_err` helper: `.map_err(cuda_err("copy logits"))`.
pub(crate) fn cuda_err(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |e| cuda_error(op, e)
}

/// The function `k` in the context of `stream`, loading its module on first use, and the launch
/// shape for `rows` rows: a 1-D grid of at most as many CTAs as fit on the device at once, each
/// looping over rows (so any N works, and no CTA waits for a second wave).
pub(crate) fn launch_for(stream: &Arc<CudaStream>, k: Kernel, rows: u64) -> Result<(CudaFunction, LaunchConfig)> {
    let ctx = stream.context();
    let mut guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    let pos = match guard.iter().position(|(c, _)| Arc::ptr_eq(c, ctx)) {
        Some(p) => p,
        None => {
            guard.push((ctx.clone(), ContextKernels::default()));
            guard.len() - 1
        }
    };
    let entry = &mut guard[pos].1;
    let loaded = match entry.functions.get(k.name) {
        Some(l) => l.clone(),
        None => {
            let l = load(ctx, &mut entry.modules, k)?;
            entry.functions.insert(k.name, l.clone());
            l
        }
    };
    let grid = rows.min(loaded.max_grid as u64).max(1) as u32;
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (k.block, 1, 1), shared_mem_bytes: k.shared_bytes };
    Ok((loaded.func, cfg))
}

fn load(ctx: &Arc<CudaContext>, modules: &mut HashMap<Module, Arc<CudaModule>>, k: Kernel) -> Result<Loaded> {
    let module = match modules.get(&k.module) {
        Some(m) => m.clone(),
        None => {
            // `from_binary` hands the bytes to cuModuleLoadData as they are (a fatbin, not text).
            let image = Ptx::from_binary(k.module.image().to_vec());
            let m = ctx.load_module(image).map_err(cuda_err("load kernel module"))?;
            modules.insert(k.module, m.clone());
            m
        }
    };
    // cudarc makes the context current only in load_module and launches: the attribute and
    // occupancy calls below would otherwise act on whatever context this thread has (or none).
    ctx.bind_to_thread().map_err(cuda_err("bind CUDA context"))?;
    let func = module.load_function(k.name).map_err(cuda_err("load kernel function"))?;
    if k.shared_bytes > 48 * 1024 {
        // Above 48 KiB a kernel must opt in to its dynamic shared memory.
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            k.shared_bytes as i32,
        )
        .map_err(cuda_err("set kernel shared memory size"))?;
    }
    let per_sm = func
        .occupancy_max_active_blocks_per_multiprocessor(k.block, k.shared_bytes as usize, None)
        .map_err(cuda_err("kernel occupancy"))?;
    if per_sm == 0 {
        return Err(Error::Cuda {
            op: "kernel occupancy",
            msg: format!(
                "{} cannot run {} threads with {} B of shared memory on this device",
                k.name, k.block, k.shared_bytes
            ),
        });
    }
    let sms = ctx
        .attribute(super::cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(cuda_err("device attribute"))?;
    Ok(Loaded { func, max_grid: per_sm * sms.max(1) as u32 })
}

/// A stream on device 0, opened on first use and shared by every later call (and the error, if
/// there is no device): what a command-line tool that makes many calls wants.
pub fn default_stream() -> Result<Arc<CudaStream>> {
    static STREAM: OnceLock<Result<Arc<CudaStream>>> = OnceLock::new();
    STREAM.get_or_init(|| open_stream(0)).clone()
}

/// A stream on device `ordinal` (a new primary-context stream), for callers without candle.
/// With candle, pass `candle_core::CudaDevice::cuda_stream()` instead, so that the kernels run
/// in order with candle's own work.
pub fn open_stream(ordinal: usize) -> Result<Arc<CudaStream>> {
    let ctx = CudaContext::new(ordinal).map_err(cuda_err("open CUDA device"))?;
    ctx.new_stream().map_err(cuda_err("create stream"))
}
