//! `cuda::token_stats` against the f64 spec `reference::token_stats`: the same row generators,
//! properties and top-p band as `tests/cpu_token_stats.rs`, for bf16, f16 and f32, V from 1 to
//! 2¹⁸; plus N > 65535 rows, N·V > 2³² elements, bad rows, the slow paths of the top-p
//! refinement, and 10 runs with the same bits. Outputs are poisoned (NaN / u32::MAX) before
//! every run, so a row the kernel forgets to write fails.
//!
//! Without a CUDA device every test prints "skipping: <why>" and passes.
//!
//! Error budget of the kernel per row (u = 2⁻²⁴), as in the CPU test but for the GPU's order of
//! operations: d_i = (z_i − m)·(1/T) within 3u·|d_i|; e_i = ex2(...) within ε_exp = 2⁻²¹
//! (ex2.approx.ftz, 2⁻²² stated, doubled) + 3u·|d_i|; each thread sums its 8-element (4 for f32)
//! vectors then adds them to its running sum (≤ 8 + n_vec roundings for n_vec vectors per
//! thread) and rescales it at most n_vec times when its max grows (ε_exp each); 10 merge levels
//! (5 warp, 5 block), each one rescale and one add. Hence S is within
//! δ_S = (2 + n_vec + 10)·ε_exp + (18 + n_vec)·u + 3u·E_p|d| relative, and lse, logp, H follow
//! as in the CPU test. Each tolerance is that first-order bound times 2 plus 1e−7 absolute.
#![cfg(feature = "cuda")]

mod common;
mod gpu_env;

use gpu_env::{gpu, gpu_or_skip};

use std::sync::Arc;

use common::{
    config, logits_spec, low_temperature, review_row, round_to, shifted_spec, temperature, top_p, top_p_on, LogitsSpec,
    RowKind,
};
use half::{bf16, f16};
use proptest::prelude::*;
use rlvr_kernels::cuda::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use rlvr_kernels::cuda::{self, TokenStatsBuffers};
use rlvr_kernels::{reference, Element, Error, TokenStats, TokenStatsConfig};

const U: f64 = 1.0 / (1u64 << 24) as f64;
const EPS_EXP: f64 = 1.0 / (1u64 << 21) as f64;

/// First-order error bounds of one row (see the file comment).
struct Tol {
    lse: f64,
    entropy: f64,
    ds: f64,
}

impl Tol {
    fn new(z: &[f64], t: f64, r: &reference::RowStats, vec: usize) -> Tol {
        let (p, _) = reference::softmax(z, t);
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) / t;
        let (mut d1, mut d2) = (0.0, 0.0);
        for (&zi, &pi) in z.iter().zip(&p) {
            if pi > 0.0 {
                let d = m - zi / t;
                d1 += pi * d;
                d2 += pi * d * d;
            }
        }
        let n_vec = (z.len().div_ceil(1024 * vec) + 1) as f64;
        let (exps, sums) = (12.0 + n_vec, 18.0 + n_vec);
        let ds = exps * EPS_EXP + sums * U + 3.0 * U * d1;
        let lse = U * m.abs() + ds + U * r.lse.abs();
        let entropy = ds * (1.0 + d1) + d1 * (exps * EPS_EXP + (sums + 4.0) * U) + 3.0 * U * d2 + U * r.entropy.abs();
        Tol { lse: 2.0 * lse + 1e-7, entropy: 2.0 * entropy + 1e-7, ds }
    }

    fn logp(&self, z_y: f64, zmax: f64, t: f64, logp: f64) -> f64 {
        2.0 * (3.0 * U * ((zmax - z_y) / t) + self.ds + U * logp.abs()) + 1e-7
    }
}

fn vec_len<E: Element>() -> usize {
    16 / std::mem::size_of::<E>()
}

/// NaN into every float output and u32::MAX into every count, so unwritten rows fail.
fn poison(stream: &Arc<CudaStream>, out: &mut TokenStatsBuffers) {
    let n = out.rows();
    let nan = vec![f32::NAN; n];
    let ones = vec![u32::MAX; n];
    stream.memcpy_htod(&nan, &mut out.lse).unwrap();
    stream.memcpy_htod(&nan, &mut out.entropy).unwrap();
    if let Some(l) = out.logp.as_mut() {
        stream.memcpy_htod(&nan, l).unwrap();
    }
    if let Some(b) = out.branch.as_mut() {
        stream.memcpy_htod(&ones, b).unwrap();
    }
    stream.memcpy_htod(&ones, &mut out.flags).unwrap();
}

/// Uploads, poisons the outputs, runs the kernel, checks the row flags, downloads.
fn run<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaSlice<E>,
    vocab: usize,
    targets: Option<&CudaSlice<u32>>,
    cfg: &TokenStatsConfig,
) -> rlvr_kernels::Result<TokenStats> {
    let n = logits.len() / vocab;
    let mut out = TokenStatsBuffers::new(stream, n, targets.is_some(), cfg.top_p.is_some())?;
    poison(stream, &mut out);
    let tv = targets.map(|t| t.as_view());
    cuda::token_stats_into(stream, &logits.as_view(), vocab, tv.as_ref(), cfg, &mut out)?;
    cuda::check_rows(stream, &out, tv.as_ref(), vocab)?;
    out.to_host(stream)
}

fn close(what: &str, row: usize, got: f32, want: f64, tol: f64) -> Result<(), TestCaseError> {
    let ok = if want.is_infinite() { got as f64 == want } else { (got as f64 - want).abs() <= tol };
    prop_assert!(ok, "{what} of row {row}: got {got}, want {want}, tol {tol:e}");
    Ok(())
}

/// Every row of `fast` against the reference on the same (dtype-rounded) values `z`.
fn compare<E: Element>(
    z: &[f64],
    vocab: usize,
    targets: Option<&[u32]>,
    cfg: &TokenStatsConfig,
    fast: &TokenStats,
    rows: impl Iterator<Item = usize>,
) -> Result<(), TestCaseError> {
    let t64 = cfg.temperature as f64;
    for r in rows {
        let row = &z[r * vocab..(r + 1) * vocab];
        let w = reference::row_stats(row, targets.map(|t| t[r]), t64, cfg.top_p.map(|p| p as f64));
        let tol = Tol::new(row, t64, &w, vec_len::<E>());
        close("lse", r, fast.lse[r], w.lse, tol.lse)?;
        close("entropy", r, fast.entropy[r], w.entropy, tol.entropy)?;
        if let (Some(lp), Some(want_lp), Some(ts)) = (&fast.logp, w.logp, targets) {
            let zmax = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            close("logp", r, lp[r], want_lp, tol.logp(row[ts[r] as usize], zmax, t64, want_lp))?;
        }
        if let (Some(b), Some(p)) = (&fast.branch, cfg.top_p) {
            let (lo, hi) = reference::branch_band(row, t64, p as f64);
            prop_assert!(lo <= b[r] && b[r] <= hi, "branch of row {r}: {} not in [{lo}, {hi}] (p = {p})", b[r]);
        }
    }
    Ok(())
}

fn check<E: Element + DeviceRepr>(
    spec: &LogitsSpec,
    t: f32,
    top_p: Option<f32>,
    with_targets: bool,
) -> Result<(), TestCaseError> {
    static SAID: [std::sync::Once; 3] = [std::sync::Once::new(), std::sync::Once::new(), std::sync::Once::new()];
    let Ok(stream) = gpu() else {
        let test = format!("stats_match_reference_{}", E::DTYPE);
        SAID[E::DTYPE as usize].call_once(|| drop(gpu_or_skip(&test)));
        return Ok(());
    };
    let (logits, z) = round_to::<E>(&spec.generate());
    let targets = with_targets.then(|| spec.targets());
    let cfg = TokenStatsConfig { temperature: t, top_p, check_finite: true, filter: None };
    let d_logits = stream.clone_htod(&logits).unwrap();
    let d_targets = targets.as_ref().map(|t| stream.clone_htod(t).unwrap());
    let fast = run(&stream, &d_logits, spec.vocab, d_targets.as_ref(), &cfg).expect("valid input");
    prop_assert_eq!(fast.lse.len(), spec.rows);
    compare::<E>(&z, spec.vocab, targets.as_deref(), &cfg, &fast, 0..spec.rows)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stats_match_reference_f32(spec in logits_spec(), t in temperature(), p in top_p(), y in any::<bool>()) {
        check::<f32>(&spec, t, p, y)?;
    }

    #[test]
    fn stats_match_reference_bf16(spec in logits_spec(), t in temperature(), p in top_p(), y in any::<bool>()) {
        check::<bf16>(&spec, t, p, y)?;
    }

    #[test]
    fn stats_match_reference_f16(spec in logits_spec(), t in temperature(), p in top_p(), y in any::<bool>()) {
        check::<f16>(&spec, t, p, y)?;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Shift invariance of the top-p count (and the statistics): the rows of the properties above
    /// moved by c up to ±1000 at temperatures down to 0.1, against the reference on the same
    /// (dtype-rounded) shifted values.
    #[test]
    fn shifted_rows_match_reference_f32(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<f32>(&spec, t, Some(p), false)?;
    }

    #[test]
    fn shifted_rows_match_reference_bf16(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<bf16>(&spec, t, Some(p), false)?;
    }

    #[test]
    fn shifted_rows_match_reference_f16(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<f16>(&spec, t, Some(p), false)?;
    }
}

/// The review's row (tests/common `review_row`: N(58, 1) with five logits at 64, V = 151936,
/// T = 0.5, p = 0.95), where a bucket-edge mass gave k = 2312 against ≈ 39360, and the same row
/// at V = 50257; every dtype, against the reference band.
#[test]
fn review_row_is_in_band() {
    let Some(stream) = gpu_or_skip("review_row_is_in_band") else { return };
    fn one<E: Element + DeviceRepr>(stream: &Arc<CudaStream>, vocab: usize) {
        let (logits, z) = round_to::<E>(&review_row(vocab, 12));
        let cfg = TokenStatsConfig { temperature: 0.5, top_p: Some(0.95), check_finite: true, filter: None };
        let fast = run(stream, &stream.clone_htod(&logits).unwrap(), vocab, None, &cfg).unwrap();
        compare::<E>(&z, vocab, None, &cfg, &fast, 0..1).unwrap_or_else(|e| panic!("{:?} V = {vocab}: {e}", E::DTYPE));
    }
    for vocab in [151_936, 50_257] {
        one::<bf16>(&stream, vocab);
        one::<f16>(&stream, vocab);
        one::<f32>(&stream, vocab);
    }
}

/// Rows whose crossing coarse bucket reaches far above the row max at a small temperature: bf16
/// buckets at |z| ∈ [128, 256) are 32 wide, so at T = 0.1 the bucket's upper keys lie up to 320
/// (in x) above the max, where e^{x − m} overflows f32. The count must come from the tokens'
/// own values: a few distinct values (ties at the crossing) in [128, 160), every dtype.
#[test]
fn keys_far_above_the_max_at_small_temperature() {
    let Some(stream) = gpu_or_skip("keys_far_above_the_max_at_small_temperature") else { return };
    fn one<E: Element + DeviceRepr>(stream: &Arc<CudaStream>, values: &[f32], p: f32) {
        let v = 3001;
        let row: Vec<f32> = (0..v).map(|i| values[(i * 7919) % values.len()]).collect();
        let (logits, z) = round_to::<E>(&row);
        let cfg = TokenStatsConfig { temperature: 0.1, top_p: Some(p), check_finite: true, filter: None };
        let fast = run(stream, &stream.clone_htod(&logits).unwrap(), v, None, &cfg).unwrap();
        compare::<E>(&z, v, None, &cfg, &fast, 0..1).unwrap_or_else(|e| panic!("{:?} {values:?}: {e}", E::DTYPE));
    }
    for (values, p) in [(&[130.0f32][..], 0.95f32), (&[130.0, 130.5, 131.0][..], 0.5), (&[129.0, 130.0][..], 0.95)] {
        one::<bf16>(&stream, values, p);
        one::<f16>(&stream, values, p);
        one::<f32>(&stream, values, p);
    }
}

/// A kernel first used on a thread that never bound the CUDA context (its module loaded on
/// another thread): loading it sets its shared-memory attribute and asks its occupancy, driver
/// calls that act in the calling thread's current context. A fresh context handle (empty kernel
/// cache) and a scoped thread make sure this test is that first use.
#[test]
fn kernel_first_used_on_another_thread() {
    let Some(_) = gpu_or_skip("kernel_first_used_on_another_thread") else { return };
    let stream = cuda::open_stream(0).unwrap();
    let (rows, vocab) = (4, 300);
    let s = spec(RowKind::Zipf, rows, vocab, 3);
    let (logits, z) = round_to::<f32>(&s.generate());
    let d = stream.clone_htod(&logits).unwrap();
    let plain = TokenStatsConfig { temperature: 1.0, top_p: None, check_finite: true, filter: None };
    cuda::token_stats(&stream, &d.as_view(), vocab, None, &plain).unwrap();
    let cfg = TokenStatsConfig { top_p: Some(0.9), ..plain };
    let mut out = TokenStatsBuffers::new(&stream, rows, false, true).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| cuda::token_stats_into(&stream, &d.as_view(), vocab, None, &cfg, &mut out)).join()
    })
    .expect("the thread ran")
    .expect("the top-p kernel loads and launches on a thread without a bound context");
    compare::<f32>(&z, vocab, None, &cfg, &out.to_host(&stream).unwrap(), 0..rows).unwrap();
}

#[test]
fn skip_message_or_device() {
    gpu_env::say_device();
}

fn spec(kind: RowKind, rows: usize, vocab: usize, seed: u64) -> LogitsSpec {
    LogitsSpec { kind, rows, vocab, seed, offset: 0.0, neg_inf: 0.0 }
}

/// Every shape the kernel treats specially, in one test small enough for compute-sanitizer
/// (`memcheck`, `racecheck`): all dtypes, top-p on and off, V = 1, odd V (unaligned rows),
/// V > blockDim·VEC, the 16-bit re-read fallback (≥ 65536 tied tokens wrap a u16 counter) and the
/// f32 path whose crossing bucket does not fit the shared-memory list.
#[test]
fn sanitizer_small_case() {
    let Some(stream) = gpu_or_skip("sanitizer_small_case") else { return };
    fn all<E: Element + DeviceRepr>(stream: &Arc<CudaStream>) {
        for (kind, rows, vocab) in [(RowKind::Peaked, 3, 1), (RowKind::LmLike, 5, 37), (RowKind::Zipf, 2, 9001)] {
            for p in [None, Some(0.95f32)] {
                let s = spec(kind, rows, vocab, 7);
                let (logits, z) = round_to::<E>(&s.generate());
                let targets = s.targets();
                let cfg = TokenStatsConfig { temperature: 0.7, top_p: p, check_finite: true, filter: None };
                let d = stream.clone_htod(&logits).unwrap();
                let dt = stream.clone_htod(&targets).unwrap();
                let fast = run(stream, &d, vocab, Some(&dt), &cfg).unwrap();
                compare::<E>(&z, vocab, Some(&targets), &cfg, &fast, 0..rows).unwrap();
            }
        }
    }
    all::<f32>(&stream);
    all::<bf16>(&stream);
    all::<f16>(&stream);
    slow_paths(&stream);
    // The kept-set kernel: every filter kind and a mask, on the same shapes.
    fn kept<E: Element + DeviceRepr>() {
        for (kind, rows, vocab) in [(RowKind::Peaked, 3, 1), (RowKind::LmLike, 5, 37), (RowKind::Zipf, 2, 9001)] {
            let s = spec(kind, rows, vocab, 7);
            for f in [SamplingFilter::top_k(3), SamplingFilter::top_p(0.9), SamplingFilter::top_k_top_p(20, 0.8)] {
                check_filter::<E>(&s, 0.7, f, true).unwrap();
            }
            check_mask::<E>(&s, 0.7).unwrap();
        }
    }
    kept::<f32>();
    kept::<bf16>();
    kept::<f16>();
}

/// 70000 equal bf16 logits: one key with 70000 tokens wraps its u16 counter (the counters sum to
/// less than the candidates), so the kernel re-reads the row (k = ceil(0.95·70000) = 66500, or
/// 66501 within the band). And 70000 distinct f32 values in one coarse
/// bucket ([1, 1.25)): more than the 32768-key list, so f32 refines by re-reading the row.
fn slow_paths(stream: &Arc<CudaStream>) {
    let cfg = TokenStatsConfig { temperature: 1.0, top_p: Some(0.95), check_finite: true, filter: None };
    let v = 70_000;
    let tied = vec![bf16::from_f32(0.5); v];
    let fast = run(stream, &stream.clone_htod(&tied).unwrap(), v, None, &cfg).unwrap();
    compare::<bf16>(&vec![0.5; v], v, None, &cfg, &fast, 0..1).unwrap();
    let dense: Vec<f32> = (0..v).map(|i| f32::from_bits(1.0f32.to_bits() + (i as u32 * 29) % 2_000_000)).collect();
    let z: Vec<f64> = dense.iter().map(|&x| x as f64).collect();
    let fast = run(stream, &stream.clone_htod(&dense).unwrap(), v, None, &cfg).unwrap();
    compare::<f32>(&z, v, None, &cfg, &fast, 0..1).unwrap();
}

/// Ten runs over the same input give the same bits (all outputs, all dtypes), with the outputs
/// poisoned before each run. On the kernel simulator: 4 rows and 4 runs, each run in another
/// thread order (every launch has its own seed), so the bits must not depend on the order.
#[test]
fn repeated_runs_are_bit_identical() {
    let Some(stream) = gpu_or_skip("repeated_runs_are_bit_identical") else { return };
    fn ten<E: Element + DeviceRepr>(stream: &Arc<CudaStream>, kind: RowKind) {
        let s = spec(kind, gpu_env::sized(64, 4), 151_936, 11);
        let (logits, _) = round_to::<E>(&s.generate());
        let targets = s.targets();
        let cfg = TokenStatsConfig { temperature: 1.0, top_p: Some(0.95), check_finite: true, filter: None };
        let d = stream.clone_htod(&logits).unwrap();
        let dt = stream.clone_htod(&targets).unwrap();
        let first = run(stream, &d, s.vocab, Some(&dt), &cfg).unwrap();
        let bits = |t: &TokenStats| {
            let f = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            (f(&t.lse), f(&t.entropy), f(t.logp.as_ref().unwrap()), t.branch.clone().unwrap())
        };
        for i in 1..gpu_env::sized(10, 4) {
            let again = run(stream, &d, s.vocab, Some(&dt), &cfg).unwrap();
            assert!(bits(&again) == bits(&first), "{:?} {kind:?}: run {i} differs from run 0", E::DTYPE);
        }
    }
    for kind in [RowKind::LmLike, RowKind::Flat, RowKind::Zipf] {
        ten::<bf16>(&stream, kind);
        ten::<f16>(&stream, kind);
        ten::<f32>(&stream, kind);
    }
}

/// N = 70000 > 65535 rows (no grid-dimension limit) of odd V = 37 (rows start unaligned). On the
/// kernel simulator 3000 rows: its grid is 3 to 6 CTAs, so every CTA's grid-stride loop still
/// takes hundreds of trips.
#[test]
fn many_rows() {
    let Some(stream) = gpu_or_skip("many_rows") else { return };
    let s = spec(RowKind::LmLike, gpu_env::sized(70_000, 3000), 37, 5);
    let (logits, z) = round_to::<bf16>(&s.generate());
    let targets = s.targets();
    let cfg = TokenStatsConfig { temperature: 1.3, top_p: Some(0.9), check_finite: true, filter: None };
    let d = stream.clone_htod(&logits).unwrap();
    let dt = stream.clone_htod(&targets).unwrap();
    let fast = run(&stream, &d, s.vocab, Some(&dt), &cfg).unwrap();
    compare::<bf16>(&z, s.vocab, Some(&targets), &cfg, &fast, 0..s.rows).unwrap();
}

/// N·V = 4097 · 2²⁰ > 2³² bf16 elements (8 GiB): row 4096 starts at element 2³², so a 32-bit
/// offset would read row 0 again. Each row is one random base row plus a spike whose position
/// and height depend on the row, so every row's statistics differ. On the kernel simulator only
/// the checked rows are written (the others stay zero: untouched pages cost no memory) and top-p
/// is off (a zero row would send the count through its re-read path twice more): the kernel
/// still reads all 4.3·10⁹ elements through 64-bit offsets.
#[test]
fn offsets_beyond_u32() {
    let Some(stream) = gpu_or_skip("offsets_beyond_u32") else { return };
    let (n, v) = (4097usize, 1usize << 20);
    let need = n * v * 2 + (64 << 20);
    let (free, _) = stream.context().mem_get_info().unwrap();
    if free < need {
        println!("skipping offsets_beyond_u32: {free} bytes free on the device, {need} needed");
        return;
    }
    let base = round_to::<bf16>(&spec(RowKind::LmLike, 1, v, 3).generate()).0;
    let spike = |r: usize| ((r * 7919) % v, bf16::from_f32(12.0 + (r % 64) as f32 * 0.25));
    let mut d = stream.alloc_zeros::<bf16>(n * v).unwrap();
    let mut row = base.clone();
    let sim = gpu_env::simulated();
    let checked = [0, 1, 2047, 4095, 4096];
    for r in (0..n).filter(|r| !sim || checked.contains(r)) {
        let (j, h) = spike(r);
        row[j] = h;
        stream.memcpy_htod(&row, &mut d.slice_mut(r * v..(r + 1) * v)).unwrap();
        stream.synchronize().unwrap(); // `row` is reused: the copy must finish first
        row[j] = base[j];
    }
    let targets: Vec<u32> = (0..n).map(|r| spike(r).0 as u32).collect();
    let dt = stream.clone_htod(&targets).unwrap();
    let top_p = if sim { None } else { Some(0.95) };
    let cfg = TokenStatsConfig { temperature: 1.0, top_p, check_finite: true, filter: None };
    let fast = run(&stream, &d, v, Some(&dt), &cfg).unwrap();
    for r in checked {
        let (j, h) = spike(r);
        let mut z: Vec<f64> = base.iter().map(|x| x.to_f32() as f64).collect();
        z[j] = h.to_f32() as f64;
        let one = TokenStats {
            lse: vec![fast.lse[r]],
            entropy: vec![fast.entropy[r]],
            logp: fast.logp.as_ref().map(|l| vec![l[r]]),
            branch: fast.branch.as_ref().map(|b| vec![b[r]]),
            kept: None,
        };
        compare::<bf16>(&z, v, Some(&[targets[r]]), &cfg, &one, 0..1).unwrap_or_else(|e| panic!("row {r}: {e}"));
    }
}

/// NaN, +inf and all −inf rows are errors naming the first bad row; a target ≥ V is an error
/// naming its token; with `check_finite: false` they give NaN statistics and flags instead.
#[test]
fn bad_rows_are_errors() {
    let Some(stream) = gpu_or_skip("bad_rows_are_errors") else { return };
    let v = 50;
    let cfg = TokenStatsConfig::default();
    let mut rows = vec![0.5f32; 4 * v];
    rows[v + 3] = f32::NAN;
    rows[2 * v + 7] = f32::INFINITY;
    rows[3 * v..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
    let run_one = |data: &[f32], targets: Option<&[u32]>, cfg: &TokenStatsConfig| {
        let d = stream.clone_htod(data).unwrap();
        let t = targets.map(|t| stream.clone_htod(t).unwrap());
        let tv = t.as_ref().map(|t| t.as_view());
        cuda::token_stats(&stream, &d.as_view(), v, tv.as_ref(), cfg).map(|o| o.to_host(&stream).unwrap())
    };
    assert_eq!(run_one(&rows, None, &cfg).unwrap_err(), Error::NonFiniteLogits { row: 1 });
    assert_eq!(run_one(&rows[2 * v..], None, &cfg).unwrap_err(), Error::NonFiniteLogits { row: 0 });
    assert_eq!(run_one(&rows[3 * v..], None, &cfg).unwrap_err(), Error::AllNegInfRow { row: 0 });
    let targets = [0u32, 1, 2, 99];
    assert_eq!(
        run_one(&rows, Some(&targets), &cfg).unwrap_err(),
        Error::TargetOutOfRange { token: 3, target: 99, vocab: v }
    );
    let lax = TokenStatsConfig { check_finite: false, ..cfg };
    let out = run_one(&rows, None, &lax).unwrap();
    assert!(out.lse[0].is_finite() && out.lse[1..].iter().all(|x| x.is_nan()));
    assert_eq!(&out.branch.unwrap()[1..], &[0, 0, 0]);
    let host = cuda::token_stats_host(&stream, &rows, v, None, &cfg);
    assert_eq!(host.unwrap_err(), Error::NonFiniteLogits { row: 1 });
}

/// Wrong output buffers and bad settings are typed errors before any launch.
#[test]
fn shape_and_config_errors() {
    let Some(stream) = gpu_or_skip("shape_and_config_errors") else { return };
    let d = stream.clone_htod(&[0.0f32; 12]).unwrap();
    let cfg = TokenStatsConfig::default();
    let mut out = TokenStatsBuffers::new(&stream, 3, false, false).unwrap();
    let e = cuda::token_stats_into(&stream, &d.as_view(), 4, None, &cfg, &mut out).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "branch", .. }), "{e:?}");
    let e = cuda::token_stats_into(&stream, &d.as_view(), 5, None, &cfg, &mut out).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { name: "logits", .. }), "{e:?}");
    let e = cuda::token_stats(&stream, &d.as_view(), 0, None, &cfg).unwrap_err();
    assert_eq!(e, Error::EmptyVocab);
    let bad = TokenStatsConfig { top_p: Some(1.0), ..cfg };
    assert_eq!(cuda::token_stats(&stream, &d.as_view(), 4, None, &bad).unwrap_err(), Error::InvalidTopP(1.0));
    let bad = TokenStatsConfig { temperature: 0.0, ..cfg };
    assert_eq!(cuda::token_stats(&stream, &d.as_view(), 4, None, &bad).unwrap_err(), Error::InvalidTemperature(0.0));
    let e = cuda::token_stats_host(&stream, &[0.0f32; 12], 4, Some(&[0, 1, 4]), &cfg).unwrap_err();
    assert_eq!(e, Error::TargetOutOfRange { token: 2, target: 4, vocab: 4 });
    // N = 0 rows: empty outputs, like the CPU path.
    let empty = cuda::token_stats_host::<bf16>(&stream, &[], 7, Some(&[]), &cfg).unwrap();
    assert_eq!(empty, TokenStats { logp: Some(vec![]), branch: Some(vec![]), ..TokenStats::default() });
}

/// The kernels run on candle's own stream over a candle tensor's device memory.
#[test]
fn runs_on_candle_stream() {
    let Some(dev) = gpu_env::candle_or_skip("runs_on_candle_stream") else { return };
    let s = spec(RowKind::Zipf, 4, 1000, 9);
    let (logits, z) = round_to::<bf16>(&s.generate());
    let t = candle_core::Tensor::from_slice(&logits, (s.rows, s.vocab), &dev).unwrap();
    let stream = dev.as_cuda_device().unwrap().cuda_stream();
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(cs) = &*storage else { panic!("a CUDA tensor") };
    let slice = cs.as_cuda_slice::<bf16>().unwrap();
    let view = slice.slice(layout.start_offset()..layout.start_offset() + s.rows * s.vocab);
    let cfg = TokenStatsConfig::default();
    let fast = cuda::token_stats(&stream, &view, s.vocab, None, &cfg).unwrap().to_host(&stream).unwrap();
    compare::<bf16>(&z, s.vocab, None, &cfg, &fast, 0..s.rows).unwrap();
}

/// The bandwidth reference `plain_read` sums every row (−inf entries skipped) for every dtype,
/// unaligned rows and V above one 1024·VEC pass included. Tolerance: an f32 sum of V terms in any
/// order is within (V + 11)·2⁻²⁴·Σ|z| of the exact sum (V − 1 additions per thread and merge,
/// 10 merge levels, one rounding of each term); doubled.
#[test]
fn plain_read_sums_every_row() {
    let Some(stream) = gpu_or_skip("plain_read_sums_every_row") else { return };
    fn one<E: Element + DeviceRepr>(stream: &Arc<CudaStream>, kind: RowKind, rows: usize, vocab: usize) {
        let s = LogitsSpec { neg_inf: 0.2, ..spec(kind, rows, vocab, 4) };
        let (logits, z) = round_to::<E>(&s.generate());
        let d = stream.clone_htod(&logits).unwrap();
        let mut out = stream.clone_htod(&vec![f32::NAN; rows]).unwrap();
        cuda::plain_read_into(stream, &d.as_view(), vocab, &mut out).unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        for (r, row) in z.chunks_exact(vocab).enumerate() {
            let finite = row.iter().filter(|x| x.is_finite());
            let (want, abs): (f64, f64) = finite.fold((0.0, 0.0), |(a, b), &x| (a + x, b + x.abs()));
            let tol = 2.0 * (vocab as f64 + 11.0) * U * abs + 1e-6;
            assert!((got[r] as f64 - want).abs() <= tol, "{:?} V = {vocab} row {r}: {} vs {want}", E::DTYPE, got[r]);
        }
    }
    for (kind, rows, vocab) in [(RowKind::LmLike, 5, 37), (RowKind::Zipf, 3, 9001), (RowKind::Flat, 2, 151_936)] {
        one::<f32>(&stream, kind, rows, vocab);
        one::<bf16>(&stream, kind, rows, vocab);
        one::<f16>(&stream, kind, rows, vocab);
    }
}

/// The timing helper `rlvr bench --device cuda` uses returns positive, finite GPU times.
#[test]
fn bench_helper_runs() {
    let Some(stream) = gpu_or_skip("bench_helper_runs") else { return };
    let s = spec(RowKind::LmLike, 8, 5000, 2);
    let (logits, _) = round_to::<f16>(&s.generate());
    let cfg = TokenStatsConfig::default();
    let t = cuda::bench_token_stats(&stream, &logits, s.vocab, Some(&s.targets()), &cfg, 1, 3).unwrap();
    assert_eq!(t.bytes, (8 * 5000 * 2) as u64);
    for ms in [t.plain_ms, t.fused_ms, t.fused_top_p_ms.unwrap()] {
        assert!(ms.is_finite() && ms > 0.0, "{t:?}");
    }
}

// ---- Statistics over the sampler's kept set K (kernels/kept.cuh) -------------------------------
//
// Against `reference::kept_*` (DESIGN.md §4): |K| exactly for top-k and for a given mask, within
// `reference::kept_band` (p·(1 ± 1e-5)) for top-p; lse_K, H̃ and ℓ̃ against
// `reference::kept_stats` over `reference::kept_top(z, |K|)`, the set the kernel reports (it must
// be closed under ties: every token tied at the crossing is kept). Tolerances: the first-order
// bound of `Tol` over the kept tokens, with one rounding step per element a thread visits (the
// kept sums add one element at a time, up to ⌈V/512⌉ per thread, each at most one rescale), times
// 2 plus 1e-7 (as above). The default outputs of the kept-set kernel must be the default kernel's
// bits.

use rlvr_kernels::{KeptMask, SamplingFilter};

/// A filter: top-k (k from 1 to beyond V), top-p, or both.
fn filter() -> impl Strategy<Value = SamplingFilter> {
    prop_oneof![
        1 => (1u32..64).prop_map(SamplingFilter::top_k),
        1 => prop_oneof![Just(0.95f32), Just(1.0f32), 0.05f32..0.999].prop_map(SamplingFilter::top_p),
        1 => (1u32..300, 0.05f32..1.0).prop_map(|(k, p)| SamplingFilter::top_k_top_p(k, p)),
    ]
}

impl Tol {
    /// The bound for sums of up to `steps` single-element steps per thread.
    fn kept(z: &[f64], t: f64, r: &reference::RowStats, steps: usize) -> Tol {
        let (p, _) = reference::softmax(z, t);
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) / t;
        let (mut d1, mut d2) = (0.0, 0.0);
        for (&zi, &pi) in z.iter().zip(&p) {
            if pi > 0.0 {
                let d = m - zi / t;
                d1 += pi * d;
                d2 += pi * d * d;
            }
        }
        let n = steps as f64;
        let (exps, sums) = (12.0 + n, 18.0 + n);
        let ds = exps * EPS_EXP + sums * U + 3.0 * U * d1;
        let lse = U * m.abs() + ds + U * r.lse.abs();
        let entropy = ds * (1.0 + d1) + d1 * (exps * EPS_EXP + (sums + 4.0) * U) + 3.0 * U * d2 + U * r.entropy.abs();
        Tol { lse: 2.0 * lse + 1e-7, entropy: 2.0 * entropy + 1e-7, ds }
    }
}

/// Runs the kernel with kept outputs (filter in `cfg`, or `mask`), outputs poisoned first.
fn run_kept<E: Element + DeviceRepr>(
    stream: &Arc<CudaStream>,
    logits: &CudaSlice<E>,
    vocab: usize,
    targets: Option<&CudaSlice<u32>>,
    cfg: &TokenStatsConfig,
    mask: Option<&KeptMask>,
) -> rlvr_kernels::Result<TokenStats> {
    let n = logits.len() / vocab;
    let mut out = TokenStatsBuffers::new(stream, n, targets.is_some(), cfg.top_p.is_some())?.with_kept(stream)?;
    poison(stream, &mut out);
    if let Some(k) = out.kept.as_mut() {
        let (nan, ones) = (vec![f32::NAN; n], vec![u32::MAX; n]);
        stream.memcpy_htod(&nan, &mut k.lse).unwrap();
        stream.memcpy_htod(&nan, &mut k.entropy).unwrap();
        stream.memcpy_htod(&ones, &mut k.count).unwrap();
        if let Some(l) = k.logp.as_mut() {
            stream.memcpy_htod(&nan, l).unwrap();
        }
        if let Some(o) = k.outside.as_mut() {
            stream.memcpy_htod(&vec![0xAAu8; n], o).unwrap();
        }
    }
    let tv = targets.map(|t| t.as_view());
    match mask {
        Some(m) => {
            let ids = stream.clone_htod(m.token_ids).unwrap();
            let offsets = stream.clone_htod(m.offsets).unwrap();
            let (iv, ov) = (ids.as_view(), offsets.as_view());
            let dm = cuda::CudaKeptMask { token_ids: &iv, offsets: &ov };
            cuda::token_stats_masked_into(stream, &logits.as_view(), vocab, tv.as_ref(), cfg, dm, &mut out)?;
        }
        None => cuda::token_stats_into(stream, &logits.as_view(), vocab, tv.as_ref(), cfg, &mut out)?,
    }
    cuda::check_rows(stream, &out, tv.as_ref(), vocab)?;
    out.to_host(stream)
}

/// Row r's kept statistics against the reference over `set` (the kernel's K).
fn compare_kept<E: Element>(
    row: &[f64],
    t: f64,
    set: &[bool],
    y: Option<u32>,
    k: &rlvr_kernels::KeptStats,
    r: usize,
) -> Result<(), TestCaseError> {
    let want = reference::kept_stats(row, t, set, y);
    prop_assert_eq!(k.count[r], want.count, "|K| of row {}", r);
    let kz: Vec<f64> = row.iter().zip(set).filter(|(_, &s)| s).map(|(&z, _)| z).collect();
    let rk = reference::row_stats(&kz, None, t, None);
    let steps = row.len().div_ceil(512).max(1);
    let tol = Tol::kept(&kz, t, &rk, steps);
    close("kept lse", r, k.lse[r], want.lse, tol.lse)?;
    close("kept entropy", r, k.entropy[r], want.entropy, tol.entropy)?;
    if let (Some(lp), Some(o), Some(y), Some(wl)) = (&k.logp, &k.outside, y, want.logp) {
        prop_assert_eq!(o[r] != 0, want.outside, "outside flag of row {}", r);
        let zmax = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lt = if want.outside {
            let w = reference::row_stats(row, Some(y), t, None);
            Tol::new(row, t, &w, vec_len::<E>()).logp(row[y as usize], zmax, t, wl)
        } else {
            let kmax = kz.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            tol.logp(row[y as usize], kmax, t, wl)
        };
        close("kept logp", r, lp[r], wl, lt)?;
    }
    Ok(())
}

/// The filter's K on every row against the reference; the default outputs bit-identical to the
/// kernel without a filter.
fn check_filter<E: Element + DeviceRepr>(
    spec: &LogitsSpec,
    t: f32,
    f: SamplingFilter,
    with_targets: bool,
) -> Result<(), TestCaseError> {
    let Ok(stream) = gpu() else {
        return Ok(());
    };
    let (logits, z) = round_to::<E>(&spec.generate());
    let targets = with_targets.then(|| spec.targets());
    let plain = TokenStatsConfig { temperature: t, top_p: None, check_finite: true, filter: None };
    let cfg = TokenStatsConfig { filter: Some(f), ..plain };
    let d_logits = stream.clone_htod(&logits).unwrap();
    let d_targets = targets.as_ref().map(|t| stream.clone_htod(t).unwrap());
    let fast = run_kept(&stream, &d_logits, spec.vocab, d_targets.as_ref(), &cfg, None).expect("valid input");
    let base = run(&stream, &d_logits, spec.vocab, d_targets.as_ref(), &plain).expect("valid input");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&fast.lse), bits(&base.lse));
    prop_assert_eq!(bits(&fast.entropy), bits(&base.entropy));
    prop_assert_eq!(fast.logp.as_deref().map(bits), base.logp.as_deref().map(bits));
    let k = fast.kept.as_ref().expect("kept outputs");
    let t64 = t as f64;
    for r in 0..spec.rows {
        let row = &z[r * spec.vocab..(r + 1) * spec.vocab];
        let (lo, hi) = reference::kept_band(row, t64, &f);
        prop_assert!(lo <= k.count[r] && k.count[r] <= hi, "|K| of row {r}: {} not in [{lo}, {hi}] ({f})", k.count[r]);
        let set = reference::kept_top(row, k.count[r]);
        prop_assert!(set.is_some(), "row {r}: |K| = {} splits a tie ({f})", k.count[r]);
        compare_kept::<E>(row, t64, &set.unwrap(), targets.as_ref().map(|t| t[r]), k, r)?;
    }
    Ok(())
}

/// A random kept mask over `rows` rows: 1..=min(V, 40) distinct ids per row, the row's target
/// inside K half of the time, outside the other half (when V > 1).
fn random_mask(rows: usize, vocab: usize, targets: &[u32], seed: u64) -> (Vec<u32>, Vec<u64>) {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ids, mut offsets) = (Vec::new(), vec![0u64]);
    for &y in targets.iter().take(rows) {
        let n = rng.random_range(1..=vocab.min(40));
        let inside = vocab == 1 || rng.random_bool(0.5);
        let mut row: Vec<u32> = if inside { vec![y] } else { Vec::new() };
        while row.len() < n {
            let id = rng.random_range(0..vocab as u32);
            if !row.contains(&id) && (inside || id != y) {
                row.push(id);
            }
            if !inside && row.len() + 1 >= vocab {
                break;
            }
        }
        if row.is_empty() {
            row.push(y);
        }
        ids.extend(&row);
        offsets.push(ids.len() as u64);
    }
    (ids, offsets)
}

fn check_mask<E: Element + DeviceRepr>(spec: &LogitsSpec, t: f32) -> Result<(), TestCaseError> {
    let Ok(stream) = gpu() else {
        return Ok(());
    };
    let (logits, z) = round_to::<E>(&spec.generate());
    let targets = spec.targets();
    let (ids, offsets) = random_mask(spec.rows, spec.vocab, &targets, spec.seed);
    let mask = KeptMask { token_ids: &ids, offsets: &offsets };
    let cfg = TokenStatsConfig { temperature: t, top_p: None, check_finite: true, filter: None };
    let d_logits = stream.clone_htod(&logits).unwrap();
    let d_targets = stream.clone_htod(&targets).unwrap();
    let fast = run_kept(&stream, &d_logits, spec.vocab, Some(&d_targets), &cfg, Some(&mask)).expect("valid input");
    let k = fast.kept.as_ref().expect("kept outputs");
    for r in 0..spec.rows {
        let row = &z[r * spec.vocab..(r + 1) * spec.vocab];
        let set = reference::kept_from_ids(spec.vocab, mask.row(r));
        if !row.iter().zip(&set).any(|(&v, &s)| s && v > f64::NEG_INFINITY) {
            continue; // every kept logit is −inf: K has no mass (the reference's lse is −inf − −inf)
        }
        compare_kept::<E>(row, t as f64, &set, Some(targets[r]), k, r)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kept_filter_matches_reference_f32(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check_filter::<f32>(&spec, t, f, y)?;
    }

    #[test]
    fn kept_filter_matches_reference_bf16(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check_filter::<bf16>(&spec, t, f, y)?;
    }

    #[test]
    fn kept_filter_matches_reference_f16(spec in logits_spec(), t in temperature(), f in filter(), y in any::<bool>()) {
        check_filter::<f16>(&spec, t, f, y)?;
    }

    /// Shift invariance and small T: rows far from 0 (|c| up to 1000) at T down to 0.1.
    #[test]
    fn kept_shifted_rows_match_reference_f32(spec in shifted_spec(), t in low_temperature(), f in filter()) {
        check_filter::<f32>(&spec, t, f, true)?;
    }

    #[test]
    fn kept_shifted_rows_match_reference_bf16(spec in shifted_spec(), t in low_temperature(), f in filter()) {
        check_filter::<bf16>(&spec, t, f, true)?;
    }

    #[test]
    fn kept_mask_matches_reference_f32(spec in logits_spec(), t in temperature()) {
        check_mask::<f32>(&spec, t)?;
    }

    #[test]
    fn kept_mask_matches_reference_bf16(spec in logits_spec(), t in temperature()) {
        check_mask::<bf16>(&spec, t)?;
    }
}

/// Ties at the crossing are all kept: top-k = 2 of [5, 3, 3, 3, 3, 1] keeps the five tokens ≥ 3;
/// top-p whose crossing falls inside the tied 3s (p = 0.7: p(5) = 0.64) keeps all of them too,
/// alone or over a top-k set; −inf is never kept (top-k beyond the finite tokens keeps the
/// finite ones).
#[test]
fn kept_ties_and_neg_inf() {
    let Some(stream) = gpu_or_skip("kept_ties_and_neg_inf") else { return };
    let row = [5.0f32, 3.0, 3.0, 3.0, 3.0, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
    let z: Vec<f64> = row.iter().map(|&v| v as f64).collect();
    let d = stream.clone_htod(&row).unwrap();
    let dt = stream.clone_htod(&[2u32]).unwrap();
    for (f, want) in [
        (SamplingFilter::top_k(2), 5),
        (SamplingFilter::top_k(5), 5),
        (SamplingFilter::top_k(7), 6),
        (SamplingFilter::top_p(0.7), 5),
        (SamplingFilter::top_p(0.5), 1),
        (SamplingFilter::top_k_top_p(1, 0.5), 1),
        (SamplingFilter::top_k_top_p(3, 0.5), 1),
        (SamplingFilter::top_k_top_p(2, 0.9), 5),
    ] {
        let cfg = TokenStatsConfig { temperature: 1.0, top_p: None, check_finite: true, filter: Some(f) };
        let fast = run_kept(&stream, &d, row.len(), Some(&dt), &cfg, None).unwrap();
        let k = fast.kept.unwrap();
        assert_eq!(k.count[0], want, "{f}");
        let set = reference::kept_set(&z, 1.0, &f);
        assert_eq!(set.iter().filter(|&&s| s).count() as u32, want, "{f}: the reference agrees");
        let w = reference::kept_stats(&z, 1.0, &set, Some(2));
        assert!((k.lse[0] as f64 - w.lse).abs() < 1e-5, "{f}: lse {} vs {}", k.lse[0], w.lse);
        assert!((k.entropy[0] as f64 - w.entropy).abs() < 1e-5, "{f}: H {} vs {}", k.entropy[0], w.entropy);
        assert_eq!(k.outside.as_ref().unwrap()[0] != 0, w.outside, "{f}");
        assert!((k.logp.as_ref().unwrap()[0] as f64 - w.logp.unwrap()).abs() < 1e-5, "{f}: logp");
    }
}

/// Bad masks and configurations are typed errors naming the problem (and the row), before any
/// launch: a repeated id, an id ≥ V, decreasing offsets, an empty row, offsets of the wrong
/// length, a filter together with a mask, k = 0, p outside (0, 1].
#[test]
fn kept_bad_input_is_an_error() {
    let Some(stream) = gpu_or_skip("kept_bad_input_is_an_error") else { return };
    let v = 10;
    let logits = stream.clone_htod(&[0.5f32; 20]).unwrap();
    let cfg = TokenStatsConfig { temperature: 1.0, top_p: None, check_finite: true, filter: None };
    let bad_row = |ids: &[u32], offsets: &[u64]| {
        let mask = KeptMask { token_ids: ids, offsets };
        match run_kept(&stream, &logits, v, None, &cfg, Some(&mask)) {
            Err(Error::InvalidKeptMask { row, .. }) => row,
            other => panic!("ids {ids:?} offsets {offsets:?}: {other:?}"),
        }
    };
    assert_eq!(bad_row(&[1, 2, 3, 3], &[0, 2, 4]), 1, "repeated id");
    assert_eq!(bad_row(&[1, 10, 3], &[0, 2, 3]), 0, "id out of range");
    assert_eq!(bad_row(&[1, 2, 3], &[0, 2, 1]), 1, "decreasing offsets");
    assert_eq!(bad_row(&[1, 2], &[0, 2, 2]), 1, "empty row");
    let mask = KeptMask { token_ids: &[1, 2], offsets: &[0, 1] };
    assert!(matches!(
        run_kept(&stream, &logits, v, None, &cfg, Some(&mask)),
        Err(Error::ShapeMismatch { name: "kept_mask.offsets", .. })
    ));
    let both = TokenStatsConfig { filter: Some(SamplingFilter::top_k(3)), ..cfg };
    let mask = KeptMask { token_ids: &[1, 2], offsets: &[0, 1, 2] };
    assert!(matches!(
        run_kept(&stream, &logits, v, None, &both, Some(&mask)),
        Err(Error::InvalidConfig { name: "filter", .. })
    ));
    for f in [SamplingFilter::top_k(0), SamplingFilter::top_p(0.0), SamplingFilter::top_p(1.5)] {
        let cfg = TokenStatsConfig { filter: Some(f), ..cfg };
        assert!(matches!(run_kept(&stream, &logits, v, None, &cfg, None), Err(Error::InvalidConfig { .. })), "{f:?}");
    }
    // The buffers must match the request: a filter without kept outputs is a shape error.
    let mut out = TokenStatsBuffers::new(&stream, 2, false, false).unwrap();
    let cfg = TokenStatsConfig { filter: Some(SamplingFilter::top_k(3)), ..cfg };
    assert!(matches!(
        cuda::token_stats_into(&stream, &logits.as_view(), v, None, &cfg, &mut out),
        Err(Error::ShapeMismatch { name: "kept", .. })
    ));
    // The host entry points give what the CPU gives (top-k: |K| is exact on both).
    let host: Vec<f32> = (0..20).map(|i| (i % 7) as f32 * 0.3).collect();
    let tg = [3u32, 9];
    for f in [SamplingFilter::top_k(4), SamplingFilter::top_k(1)] {
        let cfg = TokenStatsConfig { filter: Some(f), ..cfg };
        let got = cuda::token_stats_host(&stream, &host, v, Some(&tg), &cfg).unwrap().kept.unwrap();
        let cpu = rlvr_kernels::cpu::token_stats(&host, v, Some(&tg), &cfg).unwrap().kept.unwrap();
        assert_eq!(got.count, cpu.count, "{f}");
        assert_eq!(got.outside, cpu.outside, "{f}");
    }
    let mask = KeptMask { token_ids: &[3, 4, 0], offsets: &[0, 2, 3] };
    let got = cuda::token_stats_masked_host(&stream, &host, v, Some(&tg), &TokenStatsConfig::default(), &mask)
        .unwrap()
        .kept
        .unwrap();
    assert_eq!(got.count, vec![2, 1]);
    assert_eq!(got.outside, Some(vec![0, 1]));
}
