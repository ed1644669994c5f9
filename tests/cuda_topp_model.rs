//! A CPU model of the exact top-p count of `kernels/row_stats.cuh`, step for step on the same
//! key layout and integer arithmetic, tested against `reference::branch_band` on the CPU test's
//! row generators, shifted rows and small temperatures. It checks the algorithm: order-preserving
//! keys; masses as integers rn(2^frac·e^{(z − m)/T}) relative to the row max with
//! frac = 61 − ⌊log2 S⌋; the kept set z ≥ m + prune_z behind a pruning by any lower bound of the
//! row max; u16 per-key counts with their carries and the re-read when they wrapped (they sum to
//! less than the candidates);
//! the f32 candidate list and its overflow to row passes; the 11/11/10-bit f32 levels; the tie
//! rule. Both ways through each dtype (list or row, counters or re-read) must give the same
//! integer sums, hence the same count: tested directly. The kernel source itself runs on the CPU
//! under the kernel simulator (`bash scripts/kernel-sim.sh`) and on a GPU, in
//! `tests/cuda_token_stats.rs`.
//!
//! What it does not model: thread interleaving (the kernel's sums are integers: any order gives
//! the same bits) and `ex2.approx` (std's exp2 here; both within 2⁻²² relative, far inside the
//! band).

mod common;

use common::{
    config, logits_spec, low_temperature, review_row, round_to, shifted_spec, temperature, top_p, top_p_on, LogitsSpec,
    RowKind,
};
use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rlvr_kernels::{reference, Element};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const NB: usize = 2048;
const LIST_CAP: usize = 32768;
const TARGET_SLACK: f64 = 1.0 - 1.0 / 524_288.0;

/// The kernel's view of an element type: key width and key ↔ value.
trait Keyed: Element {
    const KEY_BITS: u32;
    fn key(self) -> u32;
    fn value_of_key(k: u32) -> f32;
}

fn key16(b: u32) -> u32 {
    b ^ if b & 0x8000 != 0 { 0xffff } else { 0x8000 }
}
fn bits_from_key16(k: u32) -> u32 {
    if k & 0x8000 != 0 {
        k ^ 0x8000
    } else {
        !k & 0xffff
    }
}
fn key32(v: f32) -> u32 {
    let b = v.to_bits();
    b ^ if b & 0x8000_0000 != 0 { 0xffff_ffff } else { 0x8000_0000 }
}
fn from_key32(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k ^ 0x8000_0000 } else { !k })
}

impl Keyed for f32 {
    const KEY_BITS: u32 = 32;
    fn key(self) -> u32 {
        key32(self)
    }
    fn value_of_key(k: u32) -> f32 {
        from_key32(k)
    }
}
impl Keyed for bf16 {
    const KEY_BITS: u32 = 16;
    fn key(self) -> u32 {
        key16(self.to_bits() as u32)
    }
    fn value_of_key(k: u32) -> f32 {
        bf16::from_bits(bits_from_key16(k) as u16).to_f32()
    }
}
impl Keyed for f16 {
    const KEY_BITS: u32 = 16;
    fn key(self) -> u32 {
        key16(self.to_bits() as u32)
    }
    fn value_of_key(k: u32) -> f32 {
        f16::from_bits(bits_from_key16(k) as u16).to_f32()
    }
}

/// Per-row constants, as in the kernel's `RowCtx`.
struct Ctx {
    m: f32,
    c: f32,
    thr: f32,
    two_frac: f32,
}

impl Ctx {
    /// rn(2^frac·e^{(z − m)/T}) as the kernel forms it (f32 ex2, f32 product, round to nearest).
    fn unit(&self, z: f32) -> u64 {
        (((z - self.m) * self.c).exp2() * self.two_frac).round_ties_even() as u64
    }
    fn kept(&self, z: f32) -> bool {
        z >= self.thr
    }
}

/// The first bucket (visited from `n − 1` down) where the cumulative mass reaches `target`:
/// (bucket, count above, mass above), or the total count when none does.
fn crossing(
    n: usize,
    target: u64,
    mass: impl Fn(usize) -> u64,
    cnt: impl Fn(usize) -> u32,
) -> Result<(usize, u32, u64), u32> {
    let (mut run, mut above) = (0u64, 0u32);
    for b in (0..n).rev() {
        if run + mass(b) >= target {
            return Ok((b, above, run));
        }
        run += mass(b);
        above += cnt(b);
    }
    Err(above)
}

/// k at an exact level (every token of a bucket has the same value, one unit each): ties are
/// interchangeable.
fn exact_level<E: Keyed>(n: usize, key_base: u32, target: u64, cx: &Ctx, cnt: impl Fn(usize) -> u32) -> u32 {
    let unit = |j: usize| cx.unit(E::value_of_key(key_base + j as u32));
    let mass = |j: usize| if cnt(j) == 0 { 0 } else { cnt(j) as u64 * unit(j) };
    match crossing(n, target, mass, &cnt) {
        Ok((j, above, mass_above)) => {
            let u = unit(j).max(1);
            let need = (target - mass_above).div_ceil(u).clamp(1, cnt(j) as u64);
            above + need as u32
        }
        Err(total) => total,
    }
}

/// One radix level over `keys` (with their values): kept tokens whose key has `prefix` under
/// `pmask`, bucketed by `(key >> shift) & dmask`, counts and (unless `count_only`) units.
fn level(
    keys: impl Iterator<Item = (u32, f32)>,
    cx: &Ctx,
    pmask: u32,
    prefix: u32,
    shift: u32,
    dmask: u32,
) -> (Vec<u32>, Vec<u64>) {
    let (mut cnt, mut mass) = (vec![0u32; NB], vec![0u64; NB]);
    for (k, z) in keys {
        if cx.kept(z) && k & pmask == prefix {
            let d = ((k >> shift) & dmask) as usize;
            cnt[d] += 1;
            mass[d] += cx.unit(z);
        }
    }
    (cnt, mass)
}

/// Which way the model takes through a row: as the kernel decides, or forced through the
/// re-read (row) paths, which must give the same count.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Kernel,
    Reread,
}

/// The kernel's branch count of one row. `order` is the order in which pass 1 sees the elements;
/// the pruning bound is the running max of what was seen so far (a lower bound of the row max,
/// as a thread's or the block's running max is).
fn model_branch<E: Keyed>(row: &[E], t: f32, top_p: f32, order: &[usize]) -> u32 {
    model_branch_path(row, t, top_p, order, Path::Kernel)
}

fn model_branch_path<E: Keyed>(row: &[E], t: f32, top_p: f32, order: &[usize], path: Path) -> u32 {
    let v = row.len();
    let c = (1.0 / t) * LOG2E;
    let z: Vec<f32> = row.iter().map(|x| x.to_f32()).collect();
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = z.iter().map(|&x| ((x - m) * c).exp2() as f64).sum::<f64>() as f32;
    let frac = 61 - s.log2().floor() as i32; // ilogbf(S), S ≥ 1
    let prune_z = ((((1.0 - top_p as f64).ln() - (v as f64).ln()) - 0.05) * t as f64) as f32;
    let cx = Ctx { m, c, thr: m + prune_z, two_frac: (frac as f32).exp2() };
    let target = (top_p as f64 * TARGET_SLACK * s as f64 * (frac as f64).exp2()).ceil() as u64;
    // Pass 1: the candidates, behind the running max.
    let mut m_run = f32::NEG_INFINITY;
    let (mut candidates, mut fine, mut list) = (0u64, vec![0u32; 32768], Vec::new());
    for &i in order {
        m_run = m_run.max(z[i]);
        if z[i] >= m_run + prune_z && z[i] > f32::NEG_INFINITY {
            let k = row[i].key();
            if E::KEY_BITS == 16 {
                candidates += 1;
                // Two u16 counters per u32 word: a wrap carries into the neighbour.
                fine[(k >> 1) as usize] = fine[(k >> 1) as usize].wrapping_add(1 << ((k & 1) << 4));
            } else {
                list.push(k);
            }
        }
    }
    let all = || row.iter().map(|x| (x.key(), x.to_f32()));
    if E::KEY_BITS == 16 {
        let fine16 = |k: u32| (fine[(k >> 1) as usize] >> ((k & 1) << 4)) & 0xffff;
        // A wrap loses a multiple of 65536 from the counters' sum (a carry into the neighbour
        // adds 1 back): they wrapped iff they sum to less than the candidates.
        let counted: u64 = (0..65536u32).map(|k| fine16(k) as u64).sum();
        let wrapped = counted != candidates;
        if !wrapped && path == Path::Kernel {
            // Kept counts and exact masses from the per-key counts.
            let (mut cnt, mut mass) = (vec![0u32; NB], vec![0u64; NB]);
            for b in 0..NB {
                for j in 0..32u32 {
                    let k = ((b as u32) << 5) | j;
                    let (n, zk) = (fine16(k), E::value_of_key(k));
                    if n != 0 && cx.kept(zk) {
                        cnt[b] += n;
                        mass[b] += n as u64 * cx.unit(zk);
                    }
                }
            }
            return match crossing(NB, target, |b| mass[b], |b| cnt[b]) {
                Err(total) => total,
                Ok((b1, above, _)) if cnt[b1] == 1 => above + 1,
                Ok((b1, above, mass_above)) => {
                    let b1 = b1 as u32;
                    let kept = |j: usize| {
                        let k = (b1 << 5) | j as u32;
                        if cx.kept(E::value_of_key(k)) {
                            fine16(k)
                        } else {
                            0
                        }
                    };
                    above + exact_level::<E>(32, b1 << 5, target - mass_above, &cx, kept)
                }
            };
        }
        let (cnt, mass) = level(all(), &cx, 0, 0, 5, 0x7ff);
        return match crossing(NB, target, |b| mass[b], |b| cnt[b]) {
            Err(total) => total,
            Ok((b1, above, _)) if cnt[b1] == 1 => above + 1,
            Ok((b1, above, mass_above)) => {
                let (exact, _) = level(all(), &cx, 0xffe0, (b1 as u32) << 5, 0, 31);
                above + exact_level::<E>(32, (b1 as u32) << 5, target - mass_above, &cx, |j| exact[j])
            }
        };
    }
    // f32: the list when it holds every candidate, else the row.
    let from_list = list.len() <= LIST_CAP && path == Path::Kernel;
    let keys: Vec<(u32, f32)> =
        if from_list { list.iter().map(|&k| (k, from_key32(k))).collect() } else { all().collect() };
    let (cnt1, mass1) = level(keys.iter().copied(), &cx, 0, 0, 21, 0x7ff);
    let (b1, above1, mass_above1) = match crossing(NB, target, |b| mass1[b], |b| cnt1[b]) {
        Err(total) => return total,
        Ok((b1, above, _)) if cnt1[b1] == 1 => return above + 1,
        Ok(c) => c,
    };
    let b1 = b1 as u32;
    // Level 2 over the list, or over the crossing bucket's kept keys gathered from the row (if
    // they fit), or over the row.
    let keys: Vec<(u32, f32)> = if from_list {
        keys
    } else {
        let gathered: Vec<(u32, f32)> = all().filter(|&(k, z)| cx.kept(z) && k >> 21 == b1).collect();
        if gathered.len() <= LIST_CAP && path == Path::Kernel {
            gathered
        } else {
            all().collect()
        }
    };
    let t2 = target - mass_above1;
    let (cnt2, mass2) = level(keys.iter().copied(), &cx, 0xffe0_0000, b1 << 21, 10, 0x7ff);
    let (b2, above2, mass_above2) = match crossing(NB, t2, |d| mass2[d], |d| cnt2[d]) {
        Err(total) => return above1 + total,
        Ok((b2, above, _)) if cnt2[b2] == 1 => return above1 + above + 1,
        Ok(c) => c,
    };
    let prefix = (b1 << 11) | b2 as u32;
    let (cnt3, _) = level(keys.iter().copied(), &cx, 0xffff_fc00, prefix << 10, 0, 0x3ff);
    above1 + above2 + exact_level::<f32>(1024, prefix << 10, t2 - mass_above2, &cx, |j| cnt3[j])
}

fn check<E: Keyed>(spec: &LogitsSpec, t: f32, p: f32) -> Result<(), TestCaseError> {
    let (logits, z) = round_to::<E>(&spec.generate());
    let mut rng = StdRng::seed_from_u64(spec.seed);
    for (r, (row, zr)) in logits.chunks_exact(spec.vocab).zip(z.chunks_exact(spec.vocab)).enumerate() {
        let mut order: Vec<usize> = (0..spec.vocab).collect();
        order.shuffle(&mut rng);
        let k = model_branch(row, t, p, &order);
        let (lo, hi) = reference::branch_band(zr, t as f64, p as f64);
        prop_assert!(
            lo <= k && k <= hi,
            "{:?} row {r}: model k = {k} not in [{lo}, {hi}] (p = {p}, T = {t})",
            E::DTYPE
        );
        // The re-read paths sum the same integers: the same count, not merely one in the band.
        let again = model_branch_path(row, t, p, &order, Path::Reread);
        prop_assert_eq!(k, again, "{:?} row {}: the re-read path disagrees", E::DTYPE, r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_count_in_band_f32(spec in logits_spec(), t in temperature(), p in top_p()) {
        check::<f32>(&spec, t, p.unwrap_or(0.95))?;
    }

    #[test]
    fn model_count_in_band_bf16(spec in logits_spec(), t in temperature(), p in top_p()) {
        check::<bf16>(&spec, t, p.unwrap_or(0.95))?;
    }

    #[test]
    fn model_count_in_band_f16(spec in logits_spec(), t in temperature(), p in top_p()) {
        check::<f16>(&spec, t, p.unwrap_or(0.95))?;
    }

    /// p near 1: the kept mass exceeds p by as little as (1-p)·kept/V, the case the kernel's
    /// target slack is for.
    #[test]
    fn model_count_in_band_near_one(spec in logits_spec(), t in temperature(), p in 0.999f32..0.99999) {
        check::<bf16>(&spec, t, p)?;
        check::<f32>(&spec, t, p)?;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Shift invariance: rows moved by c up to ±1000 at temperatures down to 0.1.
    #[test]
    fn model_shifted_rows_in_band_f32(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<f32>(&spec, t, p)?;
    }

    #[test]
    fn model_shifted_rows_in_band_bf16(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<bf16>(&spec, t, p)?;
    }

    #[test]
    fn model_shifted_rows_in_band_f16(spec in shifted_spec(), t in low_temperature(), p in top_p_on()) {
        check::<f16>(&spec, t, p)?;
    }
}

/// The top-p review's row (N(58, 1) with five logits at 64, T = 0.5, p = 0.95), V = 151936 and
/// 50257, every dtype, in the order of the row.
#[test]
fn model_review_row_in_band() {
    fn one<E: Keyed>(vocab: usize) {
        let (row, z) = round_to::<E>(&review_row(vocab, 12));
        let order: Vec<usize> = (0..vocab).collect();
        let k = model_branch(&row, 0.5, 0.95, &order);
        let (lo, hi) = reference::branch_band(&z, 0.5, 0.95f32 as f64);
        assert!(lo <= k && k <= hi, "{:?} V = {vocab}: model k = {k} not in [{lo}, {hi}]", E::DTYPE);
    }
    for vocab in [151_936, 50_257] {
        one::<bf16>(vocab);
        one::<f16>(vocab);
        one::<f32>(vocab);
    }
}

/// The slow paths: 70000 tied bf16 tokens (u16 counters may wrap: the kernel recounts), and 70000
/// distinct f32 values in one coarse bucket (more than the 32768-key list).
#[test]
fn model_slow_paths() {
    let v = 70_000;
    let order: Vec<usize> = (0..v).collect();
    let tied = vec![bf16::from_f32(0.5); v];
    let k = model_branch(&tied, 1.0, 0.95, &order);
    // ceil(0.95·70000) = 66500 exactly; f32 rounding of p = 1/V (~1e-6 relative) may give 66501,
    // which holds p·(1 + 1e-5) at most: the band.
    assert!((66_500..=66_501).contains(&k), "{k}");
    assert_eq!(reference::branch_band(&vec![0.5; v], 1.0, 0.95f32 as f64), (66_500, 66_501));
    let dense: Vec<f32> = (0..v).map(|i| f32::from_bits(1.0f32.to_bits() + (i as u32 * 29) % 2_000_000)).collect();
    let z: Vec<f64> = dense.iter().map(|&x| x as f64).collect();
    let (lo, hi) = reference::branch_band(&z, 1.0, 0.95);
    let k = model_branch(&dense, 1.0, 0.95, &order);
    assert!(lo <= k && k <= hi, "{k} not in [{lo}, {hi}]");
}

/// Peaked rows seen max-last (the weakest pruning) and max-first (the strongest) agree.
#[test]
fn pruning_order_does_not_matter() {
    let spec = LogitsSpec { kind: RowKind::LmLike, rows: 4, vocab: 50_000, seed: 1, offset: 3.0, neg_inf: 0.0 };
    let (logits, _) = round_to::<bf16>(&spec.generate());
    for row in logits.chunks_exact(spec.vocab) {
        let mut order: Vec<usize> = (0..spec.vocab).collect();
        order.sort_by(|&a, &b| row[a].to_f32().total_cmp(&row[b].to_f32()));
        let ascending = model_branch(row, 0.8, 0.95, &order);
        order.reverse();
        assert_eq!(ascending, model_branch(row, 0.8, 0.95, &order));
    }
}
