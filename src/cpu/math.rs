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
pub(crate) fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x for `EXP_LO < x ≤ 88` (the caller clamps; see [`exp`]), branch-free.
///
/// Cody–Waite reduction x = n·ln2 + r with |r| ≤ ln2/2 (n rounded by the 1.5·2²³ shifter, whose
/// low mantissa bits then hold n), e^r = 1 + r + r²·P(r) with the degree-5 Cephes `expf`
/// polynomial, and 2ⁿ built in the exponent field. Max relative error vs f64 ≤ 1e−7 (≈ 1.7
/// ulp), with and without FMA: see the tests below.
#[inline(always)]
fn exp_core<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2^23
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n·LN2_HI is exact for |n| ≤ 2^15
    const LN2_LO: f32 = -2.121_944_4e-4; // ln2 − LN2_HI
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    let t = fma::<FMA>(x, LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = fma::<FMA>(n, -LN2_LO, fma::<FMA>(n, -LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = fma::<FMA>(p, r, c);
    }
    let y = fma::<FMA>(p, r * r, r) + 1.0;
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
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    let xc = if x > EXP_LO { x } else { EXP_LO };
    let y = exp_core::<FMA>(xc);
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
pub(crate) fn block_max(z: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    for (j, &v) in tail.iter().enumerate() {
        m[j] = if v > m[j] { v } else { m[j] };
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// NaN or +inf: a logit the statistics cannot use (−inf is fine: p = 0).
#[inline(always)]
fn is_bad(v: f32) -> bool {
    v.is_nan() | (v == f32::INFINITY)
}

/// Max of a block (ignoring NaN) and whether it holds a NaN or +inf (DESIGN.md §7; −inf is a
/// valid, masked-out logit).
#[inline(always)]
pub(crate) fn max_and_bad(z: &[f32]) -> (f32, bool) {
    let mut bad = [0u32; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            bad[j] |= u32::from(is_bad(c[j]));
        }
    }
    let tail_bad = tail.iter().any(|&v| is_bad(v));
    (block_max(z), tail_bad || bad.iter().any(|&b| b != 0))
}

/// e = e^d and d clamped to ≥ [`EXP_LO`] for d = (v − m)·inv_t. The clamped d is what the entropy
/// sum multiplies by e: for v = −inf, d·e would be −inf·0 = NaN, while EXP_LO·0 = 0.
#[inline(always)]
fn term<const FMA: bool>(v: f32, m: f32, inv_t: f32) -> (f32, f32) {
    let d = (v - m) * inv_t;
    let dc = if d > EXP_LO { d } else { EXP_LO };
    (if d > EXP_LO { exp_core::<FMA>(dc) } else { 0.0 }, dc)
}

/// Σ e^{(z_i − m)/T} over a block whose max is ≤ m (m finite), as (Σ e_i, Σ d_i·e_i) with
/// d_i = (z_i − m)·inv_t (the entropy's weighted sum). −inf entries add exactly 0 to both.
///
/// Error: each of the 16 lanes sums ≤ BLOCK/16 = 32 non-negative (resp. non-positive) terms,
/// then 4 tree levels: ≤ 36 roundings on a same-sign sum, so each block sum is within
/// 36·2⁻²⁴ ≈ 2.1e−6 relative of the exact sum of the computed terms. Callers add block sums in
/// f64, whose error (≤ V·2⁻⁵³ ≈ 3e−11 for V = 2¹⁸) is negligible: the bound holds for any V.
#[inline(always)]
pub(crate) fn exp_sums<const FMA: bool>(z: &[f32], m: f32, inv_t: f32) -> (f32, f32) {
    let mut s = [0.0f32; LANES];
    let mut w = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            let (e, dc) = term::<FMA>(c[j], m, inv_t);
            s[j] += e;
            w[j] = fma::<FMA>(dc, e, w[j]);
        }
    }
    for (j, &v) in tail.iter().enumerate() {
        let (e, dc) = term::<FMA>(v, m, inv_t);
        s[j] += e;
        w[j] = fma::<FMA>(dc, e, w[j]);
    }
    (tree_sum(s), tree_sum(w))
}

/// Σ e^{(z_i − m)/T} over a block whose max is ≤ m (m finite): the plain log-sum-exp's only
/// work per element. Same lanes, order and error bound as [`exp_sums`].
#[inline(always)]
pub(crate) fn exp_sum<const FMA: bool>(z: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut s = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            s[j] += exp::<FMA>((c[j] - m) * inv_t);
        }
    }
    for (j, &v) in tail.iter().enumerate() {
        s[j] += exp::<FMA>((v - m) * inv_t);
    }
    tree_sum(s)
}

/// A kernel compiled twice: `run::<true>` inside an AVX2+FMA function, `run::<false>` for
/// baseline CPUs. Implementors mark `run` `#[inline(always)]` (and everything it calls), so the
/// whole kernel is code-generated with the wider instruction set.
pub(crate) trait SimdKernel {
    /// What the kernel returns.
    type Out;
    /// The kernel body; `FMA` says whether fused multiply-add (and AVX2) may be used.
    fn run<const FMA: bool>(self) -> Self::Out;
}

/// Runs `k` with AVX2+FMA when the CPU has them (checked at run time; the check is a cached
/// atomic load), else the baseline copy.
#[inline]
pub(crate) fn dispatch<K: SimdKernel>(k: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: `run_avx2` only needs the CPU to support AVX2 and FMA, checked just above.
        return unsafe { run_avx2(k) };
    }
    k.run::<false>()
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: SimdKernel>(k: K) -> K::Out {
    k.run::<true>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max relative error of `exp::<FMA>` vs f64 over every 61st f32 in [EXP_LO, 0] and a sweep
    /// of [0, 88].
    fn max_rel_err<const FMA: bool>() -> f64 {
        let mut worst = 0.0f64;
        let mut check = |x: f32| {
            let want = (x as f64).exp();
            let got = exp::<FMA>(x) as f64;
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
}
