//! A CPU model of the exact top-p count of `kernels/token_stats.cu`, step for step on the same
//! key layout and arithmetic, tested against `reference::branch_band` on the CPU test's row
//! generators. It checks the algorithm (order-preserving keys, bucket upper edges, fixed-point
//! mass with `frac = 62 − bits(V)`, the pruning threshold with any lower bound of the row max,
//! the u16 fine counters and their overflow rule, the f32 levels 11/11/10 bits, the tie rule) on
//! machines without a GPU; the kernel itself is tested on a GPU by `tests/cuda_token_stats.rs`.
//!
//! What it does not model: thread interleaving (the kernel's scans and reductions combine the
//! same terms in a fixed order; their f64 sums differ from this sequential one by rounding only)
//! and `ex2.approx` (std's exp2 here; both are within 2⁻²² relative, far inside the band).

mod common;

use common::{config, logits_spec, round_to, temperature, top_p, LogitsSpec, RowKind};
use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rlvr_kernels::{reference, Element};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const NB: usize = 2048;
const LIST_CAP: usize = 32768;

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
    inv_t: f32,
    c: f32,
    ln_s: f32,
    two_frac: f32,
    frac: i32,
}

impl Ctx {
    fn prob(&self, z: f32) -> f64 {
        (((z - self.m) * self.inv_t - self.ln_s) * LOG2E).exp2() as f64
    }
    /// exp(x − x_edge) as fixed point with `frac` fraction bits (round to nearest).
    fn fixed(&self, z: f32, edge: f32) -> u64 {
        (((z - edge) * self.c).exp2() * self.two_frac).round() as u64
    }
    fn mass(&self, f: u64, edge: f32) -> f64 {
        if f == 0 {
            0.0
        } else {
            (f as f64) * (-self.frac as f64).exp2() * self.prob(edge)
        }
    }
}

/// The first bucket (visited from `n − 1` down) where the cumulative mass reaches `target`:
/// (bucket, count above, mass above), or `None` with the total count.
fn crossing(
    n: usize,
    target: f64,
    mass: impl Fn(usize) -> f64,
    cnt: impl Fn(usize) -> u32,
) -> Result<(usize, u32, f64), u32> {
    let (mut run, mut above) = (0.0f64, 0u32);
    for b in (0..n).rev() {
        let m = mass(b);
        if run + m >= target {
            return Ok((b, above, run));
        }
        run += m;
        above += cnt(b);
    }
    Err(above)
}

/// k at an exact level (every element of a bucket has the same probability): ties interchangeable.
fn exact_level<E: Keyed>(n: usize, key_base: u32, target: f64, cx: &Ctx, cnt: impl Fn(usize) -> u32) -> u32 {
    let p = |j: usize| cx.prob(E::value_of_key(key_base + j as u32));
    match crossing(n, target, |j| cnt(j) as f64 * p(j), &cnt) {
        Ok((j, above, mass_above)) => {
            let need = ((target - mass_above) / p(j)).ceil().max(1.0).min(cnt(j) as f64);
            above + need as u32
        }
        Err(total) => total,
    }
}

/// The kernel's branch count of one row. `order` is the order in which pass 1 sees the elements;
/// the pruning bound is the running max of what was seen so far (a lower bound of the row max,
/// as a thread's or the block's running max is).
fn model_branch<E: Keyed>(row: &[E], t: f32, top_p: f32, order: &[usize]) -> u32 {
    let v = row.len();
    let inv_t = 1.0 / t;
    let c = inv_t * LOG2E;
    let z: Vec<f32> = row.iter().map(|x| x.to_f32()).collect();
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = z.iter().map(|&x| (((x - m) * c).exp2()) as f64).sum();
    let frac = 62 - (usize::BITS - v.leading_zeros()) as i32;
    let cx = Ctx { m, inv_t, c, ln_s: s.ln() as f32, two_frac: (frac as f32).exp2(), frac };
    let prune_z = ((((1.0 - top_p as f64).ln() - (v as f64).ln()) - 0.05) * t as f64) as f32;
    let shift = E::KEY_BITS - 11;
    let low = (1u32 << shift) - 1;
    let (mut cnt, mut mass, mut fine) = (vec![0u32; NB], vec![0u64; NB], vec![0u32; 32768]);
    let mut m_run = f32::NEG_INFINITY;
    for &i in order {
        m_run = m_run.max(z[i]);
        if z[i] >= m_run + prune_z && z[i] > f32::NEG_INFINITY {
            let k = row[i].key();
            let b = (k >> shift) as usize;
            cnt[b] += 1;
            mass[b] += cx.fixed(z[i], E::value_of_key(k | low));
            if E::KEY_BITS == 16 {
                // Two u16 counters per u32 word: a wrap carries into the neighbour (same bucket).
                fine[(k >> 1) as usize] = fine[(k >> 1) as usize].wrapping_add(1 << ((k & 1) << 4));
            }
        }
    }
    let edge1 = |b: usize| E::value_of_key(((b as u32) << shift) | low);
    let target = top_p as f64 * (1.0 - 1.0 / 524_288.0); // the kernel's TARGET_SLACK
    let (b1, above1, mass1) = match crossing(NB, target, |b| cx.mass(mass[b], edge1(b)), |b| cnt[b]) {
        Ok(c) => c,
        Err(total) => return total,
    };
    let n1 = cnt[b1];
    if n1 == 1 {
        return above1 + 1;
    }
    let in_bucket = |prefix: u32, pshift: u32| -> Vec<u32> {
        row.iter()
            .filter(|x| x.to_f32() > f32::NEG_INFINITY)
            .map(|x| x.key())
            .filter(|k| k >> pshift == prefix)
            .collect()
    };
    let b1 = b1 as u32;
    if E::KEY_BITS == 16 {
        let exact = if n1 < 65536 {
            let f = |j: usize| {
                let k = (b1 << 5) | j as u32;
                (fine[(k >> 1) as usize] >> ((k & 1) << 4)) & 0xffff
            };
            exact_level::<E>(32, b1 << 5, target - mass1, &cx, f)
        } else {
            let keys = in_bucket(b1, 5);
            exact_level::<E>(32, b1 << 5, target - mass1, &cx, |j| {
                keys.iter().filter(|&&k| k & 31 == j as u32).count() as u32
            })
        };
        return above1 + exact;
    }
    // f32: the list (or the row when it does not fit: the same element set), levels 11 + 10 bits.
    let list = in_bucket(b1, 21);
    let _fits = list.len() <= LIST_CAP;
    let (mut cnt2, mut mass2) = (vec![0u32; NB], vec![0u64; NB]);
    for &k in &list {
        let d = ((k >> 10) & 0x7ff) as usize;
        cnt2[d] += 1;
        mass2[d] += cx.fixed(from_key32(k), from_key32(k | 0x3ff));
    }
    let edge2 = |d: usize| from_key32((b1 << 21) | ((d as u32) << 10) | 0x3ff);
    let t2 = target - mass1;
    let (b2, above2, mass2_above) = match crossing(NB, t2, |d| cx.mass(mass2[d], edge2(d)), |d| cnt2[d]) {
        Ok(c) => c,
        Err(total) => return above1 + total,
    };
    if cnt2[b2] == 1 {
        return above1 + above2 + 1;
    }
    let prefix = (b1 << 11) | b2 as u32;
    let mut cnt3 = vec![0u32; 1024];
    for &k in list.iter().filter(|&&k| k >> 10 == prefix) {
        cnt3[(k & 0x3ff) as usize] += 1;
    }
    above1 + above2 + exact_level::<f32>(1024, prefix << 10, t2 - mass2_above, &cx, |j| cnt3[j])
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
