//! Vectorisable f32 building blocks shared by the CPU kernels (and the plain-LSE baseline, so
//! that a comparison measures the fused work, not the quality of `exp`): a branch-free
//! polynomial `exp`, widening block loads, lane-parallel max / exp-sum reductions with a fixed
//! reduction order (deterministic), and the AVX2+FMA dispatch.
//!
//! Everything hot is `#[inline(always)]` and written over fixed `[f32; LANES]` accumulators so
//! that LLVM vectorises it; [`dispatch`] compiles the whole kernel a second time with AVX2+FMA
//! enabled and picks that copy at run time when the CPU has it (the crate is built for baseline
//! x86-64, where only SSE2 exists).

use half::slice::HalfFloatSliceExt;

use crate::element::{DType, Element};

/// Accumulator lanes of the reductions (two AVX2 registers of f32).
pub(crate) const LANES: usize = 16;

/// Elements per block: a block is read from memory once, then its sub-passes (max, exp-sum)
/// run in L1. 512 elements give 32 terms per f32 lane accumulator before the block's sum is
/// moved into an f64 (see [`exp_sums`] for the error bound).
pub(crate) const BLOCK: usize = 512;

/// Below this argument [`exp`] returns exactly 0 (e^−87.34 ≈ 1.2e−38 is the smallest normal
/// f32; what is lost is < 1.2e−38 per term, relative to a row sum ≥ 1).
pub(crate) const EXP_LO: f32 = -87.336_55;

/// `a·b + c`: one fused instruction in the AVX2+FMA copy of a kernel, a multiply and an add in
/// the baseline copy (where `mul_add` would be a slow libm call).
#[inline(always)]
pub(crate) fn fma<const AVX2: bool>(a: f32, b: f32, c: f32) -> f32 {
    if AVX2 {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// 1.5·2²³: adding it rounds to an integer, whose bits then sit in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0;
/// 355/512: n·LN2_HI is exact for |n| ≤ 2¹⁵.
const LN2_HI: f32 = 0.693_359_4;
/// ln2 − LN2_HI.
const LN2_LO: f32 = -2.121_944_4e-4;
/// The degree-5 Cephes `expf` polynomial, highest degree first.
const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// e^x for `EXP_LO < x ≤ 88` (the caller clamps; see [`exp`]), branch-free.
///
/// Cody–Waite reduction x = n·ln2 + r with |r| ≤ ln2/2 (n rounded by the 1.5·2²³ shifter, whose
/// low mantissa bits then hold n), e^r = 1 + r + r²·P(r) with the degree-5 Cephes `expf`
/// polynomial, and 2ⁿ built in the exponent field. Max relative error vs f64 ≤ 1e−7 (≈ 1.7
/// ulp), with and without FMA: see the tests below.
#[inline(always)]
fn exp_core<const AVX2: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let t = fma::<AVX2>(x, LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = fma::<AVX2>(n, -LN2_LO, fma::<AVX2>(n, -LN2_HI, x));
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = fma::<AVX2>(p, r, c);
    }
    let y = fma::<AVX2>(p, r * r, r) + 1.0;
    // t's bit pattern minus the shifter's is n (|n| < 2^22); n + 127 is 2^n's biased exponent.
    let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits((n_int + 127).wrapping_shl(23) as u32);
    y * scale
}

/// e^x for x ≤ 88, branch-free and vectorisable: −inf and every x ≤ [`EXP_LO`] give exactly 0
/// (never NaN). Max relative error ≤ 1e−7 elsewhere: an exhaustive run over every f32 in
/// [EXP_LO, 0] (the kernels' domain) measured 8.40e−8 with FMA and 8.13e−8 without; the unit
/// test checks every 61st of them (2 s instead of 130 s) and a sweep of [0, 88].
#[inline(always)]
pub(crate) fn exp<const AVX2: bool>(x: f32) -> f32 {
    let xc = if x > EXP_LO { x } else { EXP_LO };
    let y = exp_core::<AVX2>(xc);
    if x > EXP_LO {
        y
    } else {
        0.0
    }
}

/// A block of logits as f32: the block itself for f32, else widened into `buf` (bf16 by a
/// shift, f16 by F16C when the CPU has it).
#[inline(always)]
pub(crate) fn widen<'a, E: Element>(src: &'a [E], buf: &'a mut [f32]) -> &'a [f32] {
    let dst = &mut buf[..src.len()];
    match E::DTYPE {
        DType::F32 => return bytemuck::cast_slice(src),
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32()),
        DType::F16 => bytemuck::cast_slice::<E, half::f16>(src).convert_to_f32_slice(dst),
    }
    dst
}

/// An f32 block back to the logits dtype `out` (round to nearest even; vectorised conversions for
/// bf16/f16): the inverse of [`widen`], for gradient rows.
#[inline(always)]
pub(crate) fn narrow<E: Element>(src: &[f32], out: &mut [E]) {
    match E::DTYPE {
        DType::BF16 => bytemuck::cast_slice_mut::<E, half::bf16>(out).convert_from_f32_slice(src),
        DType::F16 => bytemuck::cast_slice_mut::<E, half::f16>(out).convert_from_f32_slice(src),
        DType::F32 => bytemuck::cast_slice_mut::<E, f32>(out).copy_from_slice(src),
    }
}

/// exp(−200) is 0 in f32: flooring ln p there keeps −inf logits at p = 0 without 0·∞ = NaN (every
/// gradient and entropy path that forms p·ln p).
pub(crate) const LN_P_FLOOR: f32 = -200.0;

/// Sums 16 lanes in a fixed tree order (8+8, 4+4, 2+2, 1+1): deterministic, log₂16 = 4
/// roundings deep.
#[inline(always)]
fn tree_sum(mut a: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for j in 0..w {
            a[j] += a[j + w];
        }
        w /= 2;
    }
    a[0]
}

/// Max of a block, ignoring NaN (NaN is reported by [`max_and_bad`]); −inf for an empty or
/// all −inf block.
#[inline(always)]
pub(crate) fn block_max<const AVX2: bool>(z: &[f32]) -> f32 {
    max_and_flag::<AVX2, false>(z).0
}

/// Max of a block (ignoring NaN) and whether it holds a NaN or +inf (DESIGN.md §7; −inf is a
/// valid, masked-out logit), in one pass.
#[inline(always)]
pub(crate) fn max_and_bad<const AVX2: bool>(z: &[f32]) -> (f32, bool) {
    max_and_flag::<AVX2, true>(z)
}

#[inline(always)]
fn max_and_flag<const AVX2: bool, const FLAG: bool>(z: &[f32]) -> (f32, bool) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is true only inside `run_avx2`, on a CPU with AVX2 and POPCNT (see
        // `dispatch`); without `COMPACT` nothing is written.
        return unsafe { max_and_flag_avx2::<FLAG, false>(z, 0.0, std::ptr::null_mut(), &mut 0) };
    }
    let mut m = f32::NEG_INFINITY;
    let mut bad = false;
    for &v in z {
        m = if v > m { v } else { m };
        // `v < inf` is false exactly for NaN and +inf.
        bad |= FLAG && !matches!(v.partial_cmp(&f32::INFINITY), Some(std::cmp::Ordering::Less));
    }
    (m, bad)
}

/// [`max_and_flag`] on 2×8 lanes: `vmaxps` (which returns its second operand when the first is
/// NaN, so NaN is ignored) and an or of "not less than +inf" (true for NaN and +inf). With
/// `COMPACT`, the same loop also appends every value ≤ `hi` to `out[*n..]` as
/// [`compact_at_most`] does ([`max_and_bad_compact`]).
///
/// # Safety
/// The CPU must support AVX2 and POPCNT; with `COMPACT`, `out` must be valid for writes up to
/// `*n + z.len() + 8` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn max_and_flag_avx2<const FLAG: bool, const COMPACT: bool>(
    z: &[f32],
    hi: f32,
    out: *mut f32,
    n: &mut usize,
) -> (f32, bool) {
    use std::arch::x86_64::*;
    let (inf, vhi) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(hi));
    let (mut m0, mut m1) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
    let mut bad = _mm256_setzero_ps();
    let chunks = z.chunks_exact(16);
    let tail = chunks.remainder();
    let mut k = *n;
    for c in chunks {
        let (a, b) = (_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(c.as_ptr().add(8)));
        m0 = _mm256_max_ps(a, m0);
        m1 = _mm256_max_ps(b, m1);
        if FLAG {
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf));
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(b, inf));
        }
        if COMPACT {
            for v in [a, b] {
                let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, vhi)) as usize;
                let idx = _mm256_load_si256(COMPACT_LUT32.0[mask].as_ptr().cast());
                _mm256_storeu_ps(out.add(k), _mm256_permutevar8x32_ps(v, idx));
                k += mask.count_ones() as usize;
            }
        }
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m0, m1));
    let mut m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut any_bad = _mm256_movemask_ps(bad) != 0;
    for &v in tail {
        m = if v > m { v } else { m };
        any_bad |= FLAG && !matches!(v.partial_cmp(&f32::INFINITY), Some(std::cmp::Ordering::Less));
        if COMPACT {
            *out.add(k) = v;
            k += usize::from(v <= hi);
        }
    }
    *n = k;
    (m, any_bad)
}

/// [`max_and_bad`] that also appends every value ≤ `hi` of the block to `out[*n..]` (in
/// order, as [`compact_at_most`]): the top-p candidates of bottom mode, taken while the block
/// is read from memory. Panics if `out` is shorter than `*n + z.len() + 8`.
#[inline(always)]
pub(crate) fn max_and_bad_compact<const AVX2: bool>(z: &[f32], hi: f32, out: &mut [f32], n: &mut usize) -> (f32, bool) {
    assert!(out.len() >= *n + z.len() + 8, "compaction buffer too short");
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is true only inside `run_avx2`, on a CPU with AVX2 and POPCNT (see
        // `dispatch`); `out` has room for every 8-lane store (asserted above).
        return unsafe { max_and_flag_avx2::<true, true>(z, hi, out.as_mut_ptr(), n) };
    }
    compact_at_most::<AVX2>(z, hi, out, n);
    max_and_bad::<AVX2>(z)
}

/// e = e^d and d clamped to ≥ [`EXP_LO`] for d = (v − m)·inv_t. The clamped d is what the entropy
/// sum multiplies by e: for v = −inf, d·e would be −inf·0 = NaN, while EXP_LO·0 = 0.
#[inline(always)]
fn term<const AVX2: bool>(v: f32, m: f32, inv_t: f32) -> (f32, f32) {
    let d = (v - m) * inv_t;
    let dc = if d > EXP_LO { d } else { EXP_LO };
    (if d > EXP_LO { exp_core::<AVX2>(dc) } else { 0.0 }, dc)
}

/// Σ e^{(z_i − m)/T} over a block whose max is ≤ m (m finite), as (Σ e_i, Σ d_i·e_i) with
/// d_i = (z_i − m)·inv_t (the entropy's weighted sum). −inf entries add exactly 0 to both.
///
/// Error: each of the 16 lanes sums ≤ BLOCK/16 = 32 non-negative (resp. non-positive) terms,
/// then 4 tree levels: ≤ 36 roundings on a same-sign sum, so each block sum is within
/// 36·2⁻²⁴ ≈ 2.1e−6 relative of the exact sum of the computed terms. Callers add block sums in
/// f64, whose error (≤ V·2⁻⁵³ ≈ 3e−11 for V = 2¹⁸) is negligible: the bound holds for any V.
#[inline(always)]
pub(crate) fn exp_sums<const AVX2: bool>(z: &[f32], m: f32, inv_t: f32) -> (f32, f32) {
    exp_sums_with::<AVX2>(z, m, inv_t, |_| {})
}

/// [`exp_sums`] that also writes each e_i to `out[i]` (the top-p count keeps them instead of
/// taking the `exp` again). Same lanes, order and results. Panics if `out` is shorter than `z`.
#[inline(always)]
pub(crate) fn exp_sums_into<const AVX2: bool>(z: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> (f32, f32) {
    let out = &mut out[..z.len()];
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is true only inside `run_avx2`, on a CPU with AVX2 and FMA (see
        // `dispatch`); `out` is as long as `z`.
        return unsafe { exp_sums_into_avx2(z, m, inv_t, out) };
    }
    let mut at = 0;
    exp_sums_with::<AVX2>(z, m, inv_t, |e| {
        out[at..at + e.len()].copy_from_slice(e);
        at += e.len();
    })
}

/// [`exp_core`] on 8 lanes: the same operations in the same order, so the same results as the
/// FMA copy of the scalar code.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_core8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let shifter = _mm256_set1_ps(SHIFTER);
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), shifter);
    let n = _mm256_sub_ps(t, shifter);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x));
    let mut p = _mm256_set1_ps(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shifter));
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127)));
    _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
}

/// [`exp_sums_into`] with AVX2 intrinsics: lanes 0–7 and 8–15 of S and W in four registers
/// (the auto-vectorised loop with the extra stores kept S on the stack, a store-to-load
/// round trip in its dependency chain every 16 tokens).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `out.len() >= z.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_sums_into_avx2(z: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (vm, vt, vlo) = (_mm256_set1_ps(m), _mm256_set1_ps(inv_t), _mm256_set1_ps(EXP_LO));
    let term8 = |x: __m256| {
        let d = _mm256_mul_ps(_mm256_sub_ps(x, vm), vt);
        let ok = _mm256_cmp_ps::<_CMP_GT_OQ>(d, vlo);
        let dc = _mm256_blendv_ps(vlo, d, ok);
        (_mm256_and_ps(ok, exp_core8(dc)), dc)
    };
    let (mut s0, mut s1, mut w0, mut w1) =
        (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
    let full = z.len() / LANES;
    let (zp, op) = (z.as_ptr(), out.as_mut_ptr());
    for i in 0..full {
        let (ea, da) = term8(_mm256_loadu_ps(zp.add(LANES * i)));
        let (eb, db) = term8(_mm256_loadu_ps(zp.add(LANES * i + 8)));
        s0 = _mm256_add_ps(s0, ea);
        s1 = _mm256_add_ps(s1, eb);
        w0 = _mm256_fmadd_ps(da, ea, w0);
        w1 = _mm256_fmadd_ps(db, eb, w1);
        _mm256_storeu_ps(op.add(LANES * i), ea);
        _mm256_storeu_ps(op.add(LANES * i + 8), eb);
    }
    let (mut s, mut w) = ([0.0f32; LANES], [0.0f32; LANES]);
    _mm256_storeu_ps(s.as_mut_ptr(), s0);
    _mm256_storeu_ps(s.as_mut_ptr().add(8), s1);
    _mm256_storeu_ps(w.as_mut_ptr(), w0);
    _mm256_storeu_ps(w.as_mut_ptr().add(8), w1);
    for (j, &v) in z[LANES * full..].iter().enumerate() {
        let (ej, dc) = term::<true>(v, m, inv_t);
        s[j] += ej;
        w[j] = fma::<true>(dc, ej, w[j]);
        *op.add(LANES * full + j) = ej;
    }
    (tree_sum(s), tree_sum(w))
}

/// The loop of [`exp_sums`]; `sink` sees each chunk's e_i (LANES of them, then the tail).
#[inline(always)]
fn exp_sums_with<const AVX2: bool>(z: &[f32], m: f32, inv_t: f32, mut sink: impl FnMut(&[f32])) -> (f32, f32) {
    let mut s = [0.0f32; LANES];
    let mut w = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().expect("chunk of LANES");
        let mut e = [0.0f32; LANES];
        for j in 0..LANES {
            let (ej, dc) = term::<AVX2>(c[j], m, inv_t);
            s[j] += ej;
            w[j] = fma::<AVX2>(dc, ej, w[j]);
            e[j] = ej;
        }
        sink(&e);
    }
    let mut e = [0.0f32; LANES];
    for (j, &v) in tail.iter().enumerate() {
        let (ej, dc) = term::<AVX2>(v, m, inv_t);
        s[j] += ej;
        w[j] = fma::<AVX2>(dc, ej, w[j]);
        e[j] = ej;
    }
    sink(&e[..tail.len()]);
    (tree_sum(s), tree_sum(w))
}

/// Σ e^{(z_i − m)/T} over a block whose max is ≤ m (m finite): the plain log-sum-exp's only
/// work per element. Same lanes, order and error bound as [`exp_sums`].
#[inline(always)]
pub(crate) fn exp_sum<const AVX2: bool>(z: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut s = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            s[j] += exp::<AVX2>((c[j] - m) * inv_t);
        }
    }
    for (j, &v) in tail.iter().enumerate() {
        s[j] += exp::<AVX2>((v - m) * inv_t);
    }
    tree_sum(s)
}

/// Appends to `out[*n..]` (in order) every value of `src` in [lo, hi] and returns how many values
/// are > hi: stream compaction for the top-p selection. With AVX2: 32 values at a time are
/// compared (a chunk with nothing to keep costs only that), then per 8 lanes a movemask, a
/// table-driven permute and one unaligned 8-lane store (so `out` needs 8 spare slots past the
/// last kept value). Panics if `out` is shorter than
/// `*n + src.len() + 8` (callers size it once per row).
#[inline(always)]
pub(crate) fn compact_range<const AVX2: bool>(src: &[f32], lo: f32, hi: f32, out: &mut [f32], n: &mut usize) -> usize {
    assert!(out.len() >= *n + src.len() + 8, "compaction buffer too short");
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is true only inside `run_avx2`, i.e. on a CPU with AVX2 (see
        // `dispatch`); `out` has room for every 8-lane store (asserted above).
        return unsafe { compact_range_avx2(src, lo, hi, out, n) };
    }
    let mut above = 0;
    for &v in src {
        out[*n] = v;
        *n += usize::from(v >= lo && v <= hi);
        above += usize::from(v > hi);
    }
    above
}

/// Appends to `out[*n..]` (in order) every value of `src` that is ≤ `hi` (NaN never is), with
/// no branch on the data: per 8 lanes a compare, a movemask, a table-driven permute and one
/// unaligned 8-lane store (so `out` needs 8 spare slots past the last kept value). Its cost does
/// not depend on how many values are kept. Panics if `out` is shorter than
/// `*n + src.len() + 8`.
#[inline(always)]
pub(crate) fn compact_at_most<const AVX2: bool>(src: &[f32], hi: f32, out: &mut [f32], n: &mut usize) {
    assert!(out.len() >= *n + src.len() + 8, "compaction buffer too short");
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is true only inside `run_avx2`, i.e. on a CPU with AVX2 and POPCNT (see
        // `dispatch`); `out` has room for every 8-lane store (asserted above).
        unsafe { compact_at_most_avx2(src, hi, out, n) };
        return;
    }
    for &v in src {
        out[*n] = v;
        *n += usize::from(v <= hi);
    }
}

/// [`compact_at_most`], 8 lanes at a time.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT, and `out.len() >= *n + src.len() + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn compact_at_most_avx2(src: &[f32], hi: f32, out: &mut [f32], n: &mut usize) {
    use std::arch::x86_64::*;
    let vhi = _mm256_set1_ps(hi);
    let chunks = src.chunks_exact(8);
    let tail = chunks.remainder();
    let mut k = *n;
    for c in chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, vhi)) as usize;
        let idx = _mm256_load_si256(COMPACT_LUT32.0[mask].as_ptr().cast());
        // Stores all 8 lanes; only the first popcount(mask) are kept (the next store overwrites
        // the rest). In bounds: k + 8 ≤ out.len() by the caller's contract.
        _mm256_storeu_ps(out.as_mut_ptr().add(k), _mm256_permutevar8x32_ps(v, idx));
        k += mask.count_ones() as usize;
    }
    for &v in tail {
        out[k] = v;
        k += usize::from(v <= hi);
    }
    *n = k;
}

/// Splits `src` at [lo, hi]: appends the values in [lo, hi] to `out[*n..]` (in order, as
/// [`compact_range`], with the same 8 spare slots) and returns (#values > hi, Σ values > hi,
/// Σ values in [lo, hi]). Sums in 8 f32 lanes per block of 256 values (32 terms per lane, 3
/// tree levels: ≤ 35 roundings, the bound of [`exp_sums`]), then f64. Panics if `out` is
/// shorter than `*n + src.len() + 8`.
#[inline(always)]
pub(crate) fn partition<const AVX2: bool>(
    src: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [f32],
    n: &mut usize,
) -> (usize, f64, f64) {
    assert!(out.len() >= *n + src.len() + 8, "partition buffer too short");
    let (mut count, mut above, mut inside) = (0, 0.0f64, 0.0f64);
    for block in src.chunks(256) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: `AVX2` is true only inside `run_avx2`, i.e. on a CPU with AVX2 and
            // POPCNT (see `dispatch`); `out` has room for every 8-lane store (asserted above).
            let (c, a, w) = unsafe { partition_avx2(block, lo, hi, out, n) };
            (count, above, inside) = (count + c, above + a as f64, inside + w as f64);
            continue;
        }
        let (mut a, mut w) = (0.0f32, 0.0f32);
        for &v in block {
            out[*n] = v;
            let keep = v >= lo && v <= hi;
            *n += usize::from(keep);
            count += usize::from(v > hi);
            a += if v > hi { v } else { 0.0 };
            w += if keep { v } else { 0.0 };
        }
        (above, inside) = (above + a as f64, inside + w as f64);
    }
    (count, above, inside)
}

/// [`partition`] of one block, 8 lanes at a time.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT, and `out.len() >= *n + src.len() + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn partition_avx2(src: &[f32], lo: f32, hi: f32, out: &mut [f32], n: &mut usize) -> (usize, f32, f32) {
    use std::arch::x86_64::*;
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let (mut sa, mut sw) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut count = 0;
    let chunks = src.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(v, vhi);
        let keep = _mm256_andnot_ps(gt, _mm256_cmp_ps::<_CMP_GE_OQ>(v, vlo));
        sa = _mm256_add_ps(sa, _mm256_and_ps(gt, v));
        sw = _mm256_add_ps(sw, _mm256_and_ps(keep, v));
        count += _mm256_movemask_ps(gt).count_ones() as usize;
        let mask = _mm256_movemask_ps(keep) as usize;
        let idx = _mm256_load_si256(COMPACT_LUT32.0[mask].as_ptr().cast());
        _mm256_storeu_ps(out.as_mut_ptr().add(*n), _mm256_permutevar8x32_ps(v, idx));
        *n += mask.count_ones() as usize;
    }
    let (mut a, mut w) = ([0.0f32; 8], [0.0f32; 8]);
    _mm256_storeu_ps(a.as_mut_ptr(), sa);
    _mm256_storeu_ps(w.as_mut_ptr(), sw);
    let (mut a, mut w) = (fold8(a), fold8(w));
    for &v in tail {
        out[*n] = v;
        let keep = v >= lo && v <= hi;
        *n += usize::from(keep);
        count += usize::from(v > hi);
        a += if v > hi { v } else { 0.0 };
        w += if keep { v } else { 0.0 };
    }
    (count, a, w)
}

/// (#values ≥ h, Σ values ≥ h) of `src`: a read-only pass (no compaction). Sums in 8 f32
/// lanes per block of 256 values, then f64, as [`partition`].
#[inline(always)]
pub(crate) fn sum_at_least<const AVX2: bool>(src: &[f32], h: f32) -> (usize, f64) {
    let (mut count, mut mass) = (0, 0.0f64);
    for block in src.chunks(256) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: `AVX2` is true only inside `run_avx2`, on a CPU with AVX2 and POPCNT.
            let (c, m) = unsafe { sum_at_least_avx2(block, h) };
            (count, mass) = (count + c, mass + m as f64);
            continue;
        }
        let mut m = 0.0f32;
        for &v in block {
            count += usize::from(v >= h);
            m += if v >= h { v } else { 0.0 };
        }
        mass += m as f64;
    }
    (count, mass)
}

/// [`sum_at_least`] of one block, 8 lanes at a time.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn sum_at_least_avx2(src: &[f32], h: f32) -> (usize, f32) {
    use std::arch::x86_64::*;
    let vh = _mm256_set1_ps(h);
    let mut sum = _mm256_setzero_ps();
    let mut count = 0;
    let chunks = src.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(v, vh);
        sum = _mm256_add_ps(sum, _mm256_and_ps(ge, v));
        count += _mm256_movemask_ps(ge).count_ones() as usize;
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut m = fold8(lanes);
    for &v in tail {
        count += usize::from(v >= h);
        m += if v >= h { v } else { 0.0 };
    }
    (count, m)
}

/// Sum of 8 lanes in a fixed pairwise order (deterministic).
#[inline(always)]
pub(crate) fn fold8(x: [f32; 8]) -> f32 {
    ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]))
}

/// Lane indices of the set bits of each 8-bit mask, in order, one u32 per lane (the rest 0):
/// one aligned 32-byte load gives `vpermps` its indices.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(32))]
struct Lut32([[u32; 8]; 256]);

#[cfg(target_arch = "x86_64")]
static COMPACT_LUT32: Lut32 = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut j) = (0, 0);
        while j < 8 {
            if m & (1 << j) != 0 {
                t[m][k] = j as u32;
                k += 1;
            }
            j += 1;
        }
        m += 1;
    }
    Lut32(t)
};

/// # Safety
/// The CPU must support AVX2 and POPCNT, and `out.len() >= *n + src.len() + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn compact_range_avx2(src: &[f32], lo: f32, hi: f32, out: &mut [f32], n: &mut usize) -> usize {
    use std::arch::x86_64::*;
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let mut above = 0;
    let chunks = src.chunks_exact(32);
    let tail = chunks.remainder();
    for c in chunks {
        let mut v = [_mm256_setzero_ps(); 4];
        let mut keep = [_mm256_setzero_ps(); 4];
        let mut gt = [_mm256_setzero_ps(); 4];
        for q in 0..4 {
            v[q] = _mm256_loadu_ps(c.as_ptr().add(8 * q));
            gt[q] = _mm256_cmp_ps::<_CMP_GT_OQ>(v[q], vhi);
            keep[q] = _mm256_andnot_ps(gt[q], _mm256_cmp_ps::<_CMP_GE_OQ>(v[q], vlo));
        }
        let any_gt = _mm256_or_ps(_mm256_or_ps(gt[0], gt[1]), _mm256_or_ps(gt[2], gt[3]));
        if _mm256_movemask_ps(any_gt) != 0 {
            for g in gt {
                above += _mm256_movemask_ps(g).count_ones() as usize;
            }
        }
        // Sparse rows: most 32-value chunks keep nothing and cost 4 compares.
        let any_keep = _mm256_or_ps(_mm256_or_ps(keep[0], keep[1]), _mm256_or_ps(keep[2], keep[3]));
        if _mm256_movemask_ps(any_keep) == 0 {
            continue;
        }
        let all_keep = _mm256_and_ps(_mm256_and_ps(keep[0], keep[1]), _mm256_and_ps(keep[2], keep[3]));
        if _mm256_movemask_ps(all_keep) == 0xFF {
            // Dense rows: all 32 kept, a plain copy.
            for (q, vq) in v.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(*n + 8 * q), *vq);
            }
            *n += 32;
            continue;
        }
        for q in 0..4 {
            let mask = _mm256_movemask_ps(keep[q]) as usize;
            let idx = _mm256_load_si256(COMPACT_LUT32.0[mask].as_ptr().cast());
            // Stores all 8 lanes; only the first popcount(mask) are kept (the next store
            // overwrites the rest). In bounds: *n + 8 ≤ out.len() by the caller's contract.
            _mm256_storeu_ps(out.as_mut_ptr().add(*n), _mm256_permutevar8x32_ps(v[q], idx));
            *n += mask.count_ones() as usize;
        }
    }
    for &v in tail {
        out[*n] = v;
        *n += usize::from(v >= lo && v <= hi);
        above += usize::from(v > hi);
    }
    above
}

/// A kernel compiled twice: `run::<true>` inside an AVX2+FMA function, `run::<false>` for
/// baseline CPUs. Implementors mark `run` `#[inline(always)]` (and everything it calls), so the
/// whole kernel is code-generated with the wider instruction set.
pub(crate) trait SimdKernel {
    /// What the kernel returns.
    type Out;
    /// The kernel body; `FMA` says whether fused multiply-add (and AVX2) may be used.
    fn run<const AVX2: bool>(self) -> Self::Out;
}

/// Runs `k` with AVX2+FMA when the CPU has them (checked at run time; the check is a cached
/// atomic load), else the baseline copy.
#[inline]
pub(crate) fn dispatch<K: SimdKernel>(k: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: `run_avx2` only needs the CPU to support AVX2, FMA and POPCNT, checked just above.
        return unsafe { run_avx2(k) };
    }
    k.run::<false>()
}

/// # Safety
/// The CPU must support AVX2, FMA and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn run_avx2<K: SimdKernel>(k: K) -> K::Out {
    k.run::<true>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max relative error of `exp::<AVX2>` vs f64 over every 61st f32 in [EXP_LO, 0] and a sweep
    /// of [0, 88].
    fn max_rel_err<const AVX2: bool>() -> f64 {
        let mut worst = 0.0f64;
        let mut check = |x: f32| {
            let want = (x as f64).exp();
            let got = exp::<AVX2>(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        };
        // Negative floats: bit patterns from 0x8000_0000 (−0) up to EXP_LO's.
        let mut b = 0x8000_0000u32;
        while b < EXP_LO.to_bits() {
            check(f32::from_bits(b));
            b += 61;
        }
        for i in 0..=880_000 {
            check(i as f32 * 1e-4);
        }
        worst
    }

    #[test]
    fn exp_relative_error_is_below_1e_7() {
        // Stated bound of `exp`: ≤ 1e−7 (≈ 1.7 ulp of f32), with and without FMA.
        let (with, without) = (max_rel_err::<true>(), max_rel_err::<false>());
        eprintln!("exp max relative error: fma {with:.3e}, no fma {without:.3e}");
        assert!(with <= 1e-7, "fma: {with}");
        assert!(without <= 1e-7, "no fma: {without}");
    }

    #[test]
    fn exp_of_very_negative_and_neg_inf_is_zero() {
        for x in [f32::NEG_INFINITY, f32::MIN, -1e30, -1000.0, -88.0, EXP_LO] {
            assert_eq!(exp::<true>(x), 0.0, "{x}");
            assert_eq!(exp::<false>(x), 0.0, "{x}");
        }
        assert_eq!(exp::<true>(0.0), 1.0);
        assert_eq!(exp::<false>(0.0), 1.0);
    }

    #[test]
    fn exp_sums_ignore_neg_inf_without_nan() {
        let z = [0.0f32, f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY];
        let (s, w) = exp_sums::<false>(&z, 0.0, 1.0);
        assert!((s as f64 - (1.0 + (-1.0f64).exp())).abs() < 1e-6);
        assert!((w as f64 + (-1.0f64).exp()).abs() < 1e-6);
    }

    /// A xorshift32 step (deterministic test data without a seeded RNG).
    fn xorshift(x: &mut u32) -> u32 {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        *x
    }

    /// Runs `$body` in both copies of a kernel: the AVX2+FMA one (via `dispatch`, where the CPU
    /// has it) and the baseline one, with `$avx2` the const parameter that tells them apart.
    macro_rules! on_both_copies {
        ($avx2:ident => $body:block) => {{
            struct Check;
            impl SimdKernel for Check {
                type Out = ();
                #[inline(always)]
                fn run<const $avx2: bool>(self) $body
            }
            dispatch(Check);
            Check.run::<false>();
        }};
    }

    /// `max_and_bad_compact` (one read) against `max_and_bad` and `compact_at_most` (two), with
    /// and without AVX2: the same max, flag, candidates in order and count, for every tail length
    /// and with ties at the threshold, −inf, +inf and NaN (never a candidate).
    #[test]
    fn max_and_bad_compact_matches_its_two_parts() {
        on_both_copies!(AVX2 => {
            let mut x = 0x9e37_79b9u32;
            for len in [0, 1, 7, 15, 16, 17, 33, 100, BLOCK] {
                let mut z: Vec<f32> = (0..len).map(|_| (xorshift(&mut x) % 64) as f32 / 8.0 - 4.0).collect();
                for i in (3..len).step_by(29) {
                    z[i] = f32::NEG_INFINITY;
                }
                if len > 40 {
                    z[40] = f32::INFINITY;
                }
                if len > 60 {
                    z[60] = f32::NAN;
                }
                for hi in [-1.0, 0.5, 10.0] {
                    let (mut got, mut want) = (vec![0.0f32; len + 8], vec![0.0f32; len + 8]);
                    let (mut n_got, mut n_want) = (0, 0);
                    let mb = max_and_bad_compact::<AVX2>(&z, hi, &mut got, &mut n_got);
                    compact_at_most::<AVX2>(&z, hi, &mut want, &mut n_want);
                    assert_eq!(mb, max_and_bad::<AVX2>(&z), "len {len}, hi {hi}");
                    assert_eq!(n_got, z.iter().filter(|&&v| v <= hi).count(), "len {len}, hi {hi}");
                    assert_eq!(got[..n_got], want[..n_want], "len {len}, hi {hi}");
                }
            }
        });
    }

    /// `exp_sums_into` (hand-written AVX2 loop) against `exp_sums` and `term` (auto-vectorised):
    /// the same S, W and e_i bit for bit, for every tail length, −inf logits and a temperature,
    /// with and without AVX2.
    #[test]
    fn exp_sums_into_matches_exp_sums_bit_for_bit() {
        on_both_copies!(AVX2 => {
            let mut x = 0x2545_f491u32;
            for len in [0, 1, 7, 15, 16, 17, 31, 100, 511, BLOCK] {
                let mut z: Vec<f32> =
                    (0..len).map(|_| 40.0 * (xorshift(&mut x) as f32 / u32::MAX as f32) - 30.0).collect();
                for i in (0..len).step_by(13) {
                    z[i] = f32::NEG_INFINITY;
                }
                let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)).max(0.0);
                for inv_t in [1.0, 1.0 / 0.7] {
                    let mut out = vec![f32::NAN; len];
                    let (s, w) = exp_sums_into::<AVX2>(&z, m, inv_t, &mut out);
                    let (s0, w0) = exp_sums::<AVX2>(&z, m, inv_t);
                    assert_eq!((s.to_bits(), w.to_bits()), (s0.to_bits(), w0.to_bits()), "len {len}, AVX2 {AVX2}");
                    for (i, (&v, &e)) in z.iter().zip(&out).enumerate() {
                        assert_eq!(e.to_bits(), term::<AVX2>(v, m, inv_t).0.to_bits(), "len {len}, i {i}");
                    }
                }
            }
        });
    }
}
