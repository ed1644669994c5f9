//! The GRPO part of the CUDA bench (DESIGN.md §6): at [N, V] with every option on (entropy
//! bonus, exact top-p count, KL k3, dual clip, PPL and position shaping computed on the device by
//! `cuda::token_advantages`), the fused forward, forward + backward as two kernels (2 reads + 1
//! write of the logits), the fused forward+backward kernel (1 read + 1 write plus the L2-first
//! re-read), against the plain read and against `ops::naive::grpo_loss` (the same math composed
//! from candle CUDA ops, differentiated by candle autograd; without top-p: candle has no GPU top-p,
//! and a host sort would only make it slower, so the speed-up is conservative).
//!
//! Sequences: T = 64 tokens (N = 4096 → B = 64), groups of 8, the first 8 tokens of each sequence
//! are prompt (mask 0), the rest response up to a per-sequence length. Per-token inputs of the
//! candle composition (advantages included) are prepared once, outside its timing.
//!
//! Peak device memory: the high-water mark of the device's memory pool (cudarc and candle both
//! allocate from it, stream-ordered), reset before one untimed call of each path, minus what was
//! in use before it: the [N, V] buffers a path allocates, beyond its input.

use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::CudaDType;
use candle_core::{DType, Storage, Tensor, Var};
use rlvr_kernels::cuda::cudarc::driver::sys;
use rlvr_kernels::cuda::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use rlvr_kernels::cuda::{self, Check, CudaGrpoForward, CudaGrpoInputs, GradLoss};
use rlvr_kernels::ops::{naive, GrpoLossInputs};
use rlvr_kernels::{
    cpu, AdvantageConfig, Element, GrpoConfig, KlEstimator, KlPenalty, PositionShaping, PplShaping, Shaping,
};

use super::{BenchResult, Setup};

const SEQ_LEN: usize = 64;
const GROUP: usize = 8;
const PROMPT: usize = 8;

/// One line of the GRPO table: ms and the [N, V] passes over the logits it needs at least.
pub struct GrpoLine {
    pub kernel: &'static str,
    pub dtype: &'static str,
    pub ms: f64,
    pub passes: f64,
    pub plain_ms: f64,
    pub naive_ms: Option<f64>,
}

/// Peak device memory (bytes above what was in use before) of one path.
pub struct Peak {
    pub what: String,
    pub bytes: u64,
}

/// Per-token inputs on the host: targets, mask, old/ref log-probs, rewards.
struct HostTokens {
    targets: Vec<u32>,
    mask: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    rewards: Vec<f32>,
}

fn host_tokens(n: usize, vocab: usize) -> HostTokens {
    let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let targets = (0..n as u64).map(|i| (hash(i) % vocab as u64) as u32).collect();
    let mask = (0..n)
        .map(|k| {
            let (seq, t) = (k / SEQ_LEN, k % SEQ_LEN);
            let len = PROMPT + 1 + (hash(seq as u64) % (SEQ_LEN - PROMPT) as u64) as usize;
            (t >= PROMPT && t < len) as u8 as f32
        })
        .collect();
    // Around the log-prob of a typical token, so ratios fall inside and outside the clip range.
    let noise = |i: usize, salt: u64| ((hash(i as u64 ^ salt) % 1000) as f32 / 1000.0 - 0.5) * 0.6;
    let old_logp = (0..n).map(|i| -12.0 + noise(i, 1)).collect();
    let ref_logp = (0..n).map(|i| -12.0 + noise(i, 2)).collect();
    let rewards = (0..n / SEQ_LEN).map(|i| (hash(i as u64 ^ 3) % 2) as f32).collect();
    HostTokens { targets, mask, old_logp, ref_logp, rewards }
}

/// The same on the device.
struct DevTokens {
    targets: CudaSlice<u32>,
    mask: CudaSlice<f32>,
    old: CudaSlice<f32>,
    refl: CudaSlice<f32>,
    rewards: CudaSlice<f32>,
}

impl DevTokens {
    fn new(st: &Arc<CudaStream>, h: &HostTokens) -> BenchResult<Self> {
        Ok(DevTokens {
            targets: st.clone_htod(&h.targets)?,
            mask: st.clone_htod(&h.mask)?,
            old: st.clone_htod(&h.old_logp)?,
            refl: st.clone_htod(&h.ref_logp)?,
            rewards: st.clone_htod(&h.rewards)?,
        })
    }

    fn inputs<'a>(&'a self, adv: &'a CudaSlice<f32>) -> CudaGrpoInputs<'a> {
        CudaGrpoInputs {
            targets: self.targets.as_view(),
            mask: self.mask.as_view(),
            old_logp: self.old.as_view(),
            ref_logp: Some(self.refl.as_view()),
            advantages: adv.as_view(),
            seq_len: SEQ_LEN,
        }
    }
}

fn config() -> (GrpoConfig, AdvantageConfig, Shaping) {
    let cfg = GrpoConfig {
        dual_clip: Some(3.0),
        kl: Some(KlPenalty { coef: 0.01, estimator: KlEstimator::K3 }),
        entropy_coef: 0.01,
        top_p: Some(0.95),
        check_finite: false,
        ..GrpoConfig::default()
    };
    let shaping = Shaping { ppl: Some(PplShaping::default()), position: Some(PositionShaping::default()) };
    (cfg, AdvantageConfig { group_size: GROUP, scale_by_std: true }, shaping)
}

/// The memory-pool high-water mark above the current use while `f` runs (synchronised).
fn peak_bytes(stream: &Arc<CudaStream>, f: impl FnOnce() -> BenchResult<()>) -> BenchResult<u64> {
    let ctx = stream.context();
    ctx.bind_to_thread()?;
    stream.synchronize()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let (mut used, mut high, zero) = (0u64, 0u64, 0u64);
    // SAFETY: plain driver queries on the current context's device pool; `pool`, `used`, `high`
    // and `zero` are valid for the writes/reads of a u64 / a pool handle the attributes take.
    unsafe {
        sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()).result()?;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT;
        sys::cuMemPoolGetAttribute(pool, attr, &mut used as *mut u64 as *mut _).result()?;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        sys::cuMemPoolSetAttribute(pool, attr, &zero as *const u64 as *mut _).result()?;
    }
    f()?;
    stream.synchronize()?;
    // SAFETY: as above.
    unsafe {
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        sys::cuMemPoolGetAttribute(pool, attr, &mut high as *mut u64 as *mut _).result()?;
    }
    Ok(high.saturating_sub(used))
}

/// Times every GRPO path on N(0, σ²) logits of dtype E and records the lines and peaks.
pub fn bench_grpo<E: Element + DeviceRepr + CudaDType>(
    s: &Setup,
    dtype: DType,
    dtype_name: &'static str,
    sigma: f64,
    lines: &mut Vec<GrpoLine>,
    peaks: &mut Vec<Peak>,
) -> BenchResult<()> {
    let (n, v) = (s.rows, s.vocab);
    if n % SEQ_LEN != 0 || !(n / SEQ_LEN).is_multiple_of(GROUP) {
        println!("grpo bench skipped: N = {n} is not a multiple of {}", SEQ_LEN * GROUP);
        return Ok(());
    }
    let (cfg, adv_cfg, shaping) = config();
    let h = host_tokens(n, v);
    let logits = Tensor::randn(0f32, sigma as f32, (n, v), &s.dev)?.to_dtype(dtype)?;
    let st = &s.stream;
    let dt = DevTokens::new(st, &h)?;
    let (storage, layout) = logits.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { return Err("logits are not on the CUDA device".into()) };
    let view = cs.as_cuda_slice::<E>()?.slice(layout.start_offset()..layout.start_offset() + n * v);
    let mut plain = st.alloc_zeros::<f32>(n)?;
    let plain_ms = cuda::median_ms(st, 3, s.iters, |_| cuda::plain_read_into(st, &view, v, &mut plain))?;

    let advantages = || {
        let (r, o, m) = (dt.rewards.as_view(), dt.old.as_view(), dt.mask.as_view());
        cuda::token_advantages(st, &r, &o, &m, SEQ_LEN, &adv_cfg, &shaping, Check::ShapesOnly)
    };
    let mut out = CudaGrpoForward::new(st, n, SEQ_LEN, &cfg)?;
    // SAFETY (of the uninitialised buffer): every timed path writes all of dlogits before reading.
    let mut dz = unsafe { st.alloc::<E>(n * v)? };
    let fixed_adv = advantages()?;
    let fwd_ms = cuda::median_ms(st, 3, s.iters, |_| {
        cuda::grpo_forward_into(st, &view, v, &dt.inputs(&fixed_adv), &cfg, &mut out)
    })?;
    let two_ms = cuda::median_ms(st, 3, s.iters, |_| {
        let adv = advantages()?;
        cuda::grpo_forward_into(st, &view, v, &dt.inputs(&adv), &cfg, &mut out)?;
        let (tv, g) = (dt.targets.as_view(), GradLoss::Value(1.0));
        cuda::grpo_backward_into(st, &view, v, &tv, &out.saved, cfg.temperature, g, &mut dz.as_view_mut())
    })?;
    let fused_ms = cuda::median_ms(st, 3, s.iters, |_| {
        let adv = advantages()?;
        let g = GradLoss::Value(1.0);
        cuda::grpo_forward_backward_into(st, &view, v, &dt.inputs(&adv), &cfg, g, &mut out, &mut dz.as_view_mut())
    })?;
    drop((out, dz));
    let fused_peak = peak_bytes(st, || {
        let adv = advantages()?;
        cuda::grpo_forward_backward(st, &view, v, &dt.inputs(&adv), &cfg, GradLoss::Value(1.0))?;
        Ok(())
    })?;
    let two_peak = peak_bytes(st, || {
        let adv = advantages()?;
        let fwd = cuda::grpo_forward(st, &view, v, &dt.inputs(&adv), &cfg)?;
        let tv = dt.targets.as_view();
        cuda::grpo_backward(st, &view, v, &tv, &fwd.saved, cfg.temperature, GradLoss::Value(1.0))?;
        Ok(())
    })?;
    drop(storage);
    let naive = time_naive(s, &logits, &h, &cfg, &adv_cfg, &shaping);
    let dz_bytes = (n * v * std::mem::size_of::<E>()) as u64;
    let m = Measured { dtype_name, plain_ms, fwd_ms, two_ms, fused_ms, fused_peak, two_peak, dz_bytes };
    m.record(naive, lines, peaks);
    Ok(())
}

/// The measurements of one dtype, turned into table lines and peak lines.
struct Measured {
    dtype_name: &'static str,
    plain_ms: f64,
    fwd_ms: f64,
    two_ms: f64,
    fused_ms: f64,
    fused_peak: u64,
    two_peak: u64,
    dz_bytes: u64,
}

impl Measured {
    fn record(&self, naive: BenchResult<(f64, u64)>, lines: &mut Vec<GrpoLine>, peaks: &mut Vec<Peak>) {
        let name = self.dtype_name;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let what = format!("{name} fused fwd+bwd (new dlogits, {:.2} GiB)", gib(self.dz_bytes));
        peaks.push(Peak { what, bytes: self.fused_peak });
        peaks.push(Peak { what: format!("{name} fwd, then bwd (new dlogits)"), bytes: self.two_peak });
        let naive_ms = match naive {
            Ok((ms, peak)) => {
                peaks.push(Peak { what: format!("{name} candle composition fwd+bwd"), bytes: peak });
                Some(ms)
            }
            Err(e) => {
                println!("{name}: candle composition failed: {e}");
                None
            }
        };
        let plain_ms = self.plain_ms;
        let line = |kernel, ms, passes, naive_ms| GrpoLine { kernel, dtype: name, ms, passes, plain_ms, naive_ms };
        lines.push(line("plain read", plain_ms, 1.0, None));
        lines.push(line("grpo fwd (+top-p, entropy)", self.fwd_ms, 1.0, None));
        lines.push(line("grpo fwd, bwd (2 kernels)", self.two_ms, 3.0, naive_ms));
        lines.push(line("grpo fused fwd+bwd", self.fused_ms, 2.0, naive_ms));
        if let Some(ms) = naive_ms {
            lines.push(line("candle fwd+bwd (autograd)", ms, 3.0, None));
        }
    }
}

/// `ops::naive::grpo_loss` + candle backward: median wall-clock ms over synchronised runs, and the
/// peak device memory of one run.
fn time_naive(
    s: &Setup,
    logits: &Tensor,
    h: &HostTokens,
    cfg: &GrpoConfig,
    adv_cfg: &AdvantageConfig,
    shaping: &Shaping,
) -> BenchResult<(f64, u64)> {
    let (n, v) = (s.rows, s.vocab);
    let b = n / SEQ_LEN;
    let adv = cpu::token_advantages(&h.rewards, &h.old_logp, &h.mask, SEQ_LEN, adv_cfg, shaping)?;
    let t = |x: &[f32]| Tensor::from_slice(x, (b, SEQ_LEN), &s.dev);
    let (targets, mask) = (Tensor::from_slice(&h.targets, (b, SEQ_LEN), &s.dev)?, t(&h.mask)?);
    let (old, refl, adv) = (t(&h.old_logp)?, t(&h.ref_logp)?, t(&adv)?);
    let inputs = GrpoLossInputs {
        targets: &targets,
        mask: &mask,
        old_logp: &old,
        ref_logp: Some(&refl),
        advantages: &adv,
        kept_mask: None,
    };
    let var = Var::from_tensor(&logits.reshape((b, SEQ_LEN, v))?)?;
    let naive_cfg = GrpoConfig { top_p: None, ..*cfg };
    let run = || -> BenchResult<()> {
        let out = naive::grpo_loss(var.as_tensor(), &inputs, &naive_cfg)?;
        let grads = out.loss.backward()?;
        grads.get(var.as_tensor()).ok_or("candle autograd gave no gradient for the logits")?;
        Ok(())
    };
    let peak = peak_bytes(&s.stream, run)?; // also the warm-up: candle's kernels load on first use
    let mut ms = Vec::new();
    for _ in 0..s.naive_runs.max(3) {
        s.dev.synchronize()?;
        let t0 = Instant::now();
        run()?;
        s.dev.synchronize()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], peak))
}

/// The GRPO table (after the token-statistics table) and the peak memory lines.
pub fn print_grpo(s: &Setup, lines: &[GrpoLine], peaks: &[Peak]) {
    let dev = s.stream.context().name().unwrap_or_else(|_| "?".into());
    println!(
        "\nCUDA GRPO loss, [{}, {}] (T = {SEQ_LEN}, G = {GROUP}; entropy, top-p 0.95, KL k3, dual clip, PPL + \
         position shaping), device {dev}, {} timed calls (median)",
        s.rows, s.vocab, s.iters
    );
    println!(
        "{:<28} {:<5} {:>9} {:>7} {:>9} {:>10} {:>11}",
        "kernel", "dtype", "ms", "passes", "TB/s", "x plain", "vs candle"
    );
    for l in lines {
        let bytes = (s.rows * s.vocab * if l.dtype == "f32" { 4 } else { 2 }) as f64;
        let tbs = l.passes * bytes / (l.ms * 1e-3) / 1e12;
        let plain_tbs = bytes / (l.plain_ms * 1e-3) / 1e12;
        let speedup = l.naive_ms.map_or("-".to_string(), |n| format!("{:.1}x", n / l.ms));
        println!(
            "{:<28} {:<5} {:>9.3} {:>7.0} {:>9.2} {:>10.2} {:>11}",
            l.kernel,
            l.dtype,
            l.ms,
            l.passes,
            tbs,
            tbs / plain_tbs,
            speedup
        );
    }
    for p in peaks {
        println!(
            "peak device memory above the logits: {:<52} {:>8.2} GiB",
            p.what,
            p.bytes as f64 / (1u64 << 30) as f64
        );
    }
}
