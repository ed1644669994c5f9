//! The fused CPU backward of the token-statistics op: with upstream gradients a, b, c of lse,
//! entropy and logp, per row
//! dz_j = (1/T)·[a·p_j − b·p_j·(ln p_j + H) + c·(δ_jy − p_j)] = p_j·(α + β·(ln p_j + H)) off the
//! target (α = (a − c)/T, β = −b/T), and at the target (a·p_y − c·expm1(ln p_y) +
//! β·T·p_y·(ln p_y + H))/T without the cancellation of 1 − p_y when p_y ≈ 1.
//!
//! Traffic per row: one read of the logits, one write of dlogits in their dtype, in blocks that
//! stay in L1 (AVX2+FMA and the polynomial exp of `cpu::math` when the CPU has them); rows
//! whose three upstream gradients are 0 are written as zeros without reading. p_j comes from the
//! saved lse, so nothing else is re-reduced.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::token_stats::{offsets, unsupported};
use crate::cpu::math::{self, SimdKernel, BLOCK, LN_P_FLOOR};
use crate::element::Element;

/// Rows are grouped so that one rayon task covers at least this many logits.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

/// The backward as a candle op over (logits `[.., V]`, forward output `[3, ..]`, its gradient
/// `[3, ..]`), both f32 and contiguous; output dlogits with the logits' shape and dtype.
pub(crate) struct StatsBackward {
    pub vocab: usize,
    pub inv_t: f32,
    /// Targets on the host (no logp term without them).
    pub targets: Option<Arc<Vec<u32>>>,
}

impl StatsBackward {
    fn run<E: Element>(&self, z: &[E], res: &[f32], grad: &[f32]) -> Vec<E> {
        let v = self.vocab;
        let n = z.len() / v;
        let (lse, entropy) = (&res[..n], &res[n..2 * n]);
        let (ga, gb, gc) = (&grad[..n], &grad[n..2 * n], &grad[2 * n..3 * n]);
        let mut out = vec![E::from_f32(0.0); z.len()];
        out.par_chunks_exact_mut(v)
            .zip(z.par_chunks_exact(v))
            .with_min_len((MIN_ELEMS_PER_TASK / v).max(1))
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (r, (dst, src))| {
                let target = self.targets.as_ref().map(|t| t[r] as usize);
                let c = if target.is_some() { gc[r] } else { 0.0 };
                let k = RowCoef::new(self.inv_t, lse[r], entropy[r], ga[r], gb[r], c);
                math::dispatch(BackwardRow { src, dst, target, k, scratch });
            });
        out
    }
}

impl CustomOp3 for StatsBackward {
    fn name(&self) -> &'static str {
        "rlvr-token-stats-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = offsets(l1, self.name())?;
        let (res, grad) = match (s2, s3) {
            (CpuStorage::F32(r), CpuStorage::F32(g)) => {
                let ((r0, r1), (g0, g1)) = (offsets(l2, self.name())?, offsets(l3, self.name())?);
                (&r[r0..r1], &g[g0..g1])
            }
            _ => candle_core::bail!("rlvr-token-stats-backward: statistics and gradients must be f32"),
        };
        let n = (b - a) / self.vocab;
        if res.len() != 3 * n || grad.len() != 3 * n {
            candle_core::bail!("rlvr-token-stats-backward: expected [3, {n}] statistics and gradients");
        }
        let out = match s1 {
            CpuStorage::BF16(z) => CpuStorage::BF16(self.run(&z[a..b], res, grad)),
            CpuStorage::F16(z) => CpuStorage::F16(self.run(&z[a..b], res, grad)),
            CpuStorage::F32(z) => CpuStorage::F32(self.run(&z[a..b], res, grad)),
            other => return Err(candle_core::Error::Msg(unsupported(other.dtype()).to_string())),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// The per-row constants (see the module doc).
#[derive(Debug, Clone, Copy)]
struct RowCoef {
    inv_t: f32,
    lse: f32,
    entropy: f32,
    /// (a − c)/T.
    alpha: f32,
    /// −b/T.
    beta: f32,
    /// a/T.
    a: f32,
    /// c/T.
    c: f32,
    /// a = b = c = 0: the row's gradient is exactly 0.
    zero: bool,
}

impl RowCoef {
    fn new(inv_t: f32, lse: f32, entropy: f32, a: f32, b: f32, c: f32) -> Self {
        RowCoef {
            inv_t,
            lse,
            entropy,
            alpha: (a - c) * inv_t,
            beta: -b * inv_t,
            a: a * inv_t,
            c: c * inv_t,
            zero: a == 0.0 && b == 0.0 && c == 0.0,
        }
    }

    /// ln p_j, floored (a select, not `f32::max`, so that it vectorises).
    #[inline(always)]
    fn ln_p<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = math::fma::<FMA>(z, self.inv_t, -self.lse);
        if lp > LN_P_FLOOR {
            lp
        } else {
            LN_P_FLOOR
        }
    }

    /// dz_j off the target (and everywhere without targets: then c = 0).
    #[inline(always)]
    fn off_target<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = self.ln_p::<FMA>(z);
        math::exp::<FMA>(lp) * math::fma::<FMA>(self.beta, lp + self.entropy, self.alpha)
    }

    /// dz_y (once per row, so libm's expm1 is affordable).
    #[inline(always)]
    fn target<const FMA: bool>(&self, z: f32) -> f32 {
        let lp = self.ln_p::<FMA>(z);
        let p = math::exp::<FMA>(lp);
        self.a * p - self.c * lp.exp_m1() + self.beta * p * (lp + self.entropy)
    }
}

/// Per-thread block buffers (bf16/f16 rows are widened to f32, transformed, narrowed back).
#[derive(Debug, Default)]
struct Scratch {
    wide: Vec<f32>,
    dz: Vec<f32>,
}

/// One row of the backward, compiled twice by [`math::dispatch`].
struct BackwardRow<'a, E> {
    src: &'a [E],
    dst: &'a mut [E],
    target: Option<usize>,
    k: RowCoef,
    scratch: &'a mut Scratch,
}

impl<E: Element> SimdKernel for BackwardRow<'_, E> {
    type Out = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let BackwardRow { src, dst, target, k, scratch } = self;
        if k.zero {
            dst.fill(E::from_f32(0.0));
            return;
        }
        scratch.wide.resize(BLOCK, 0.0);
        scratch.dz.resize(BLOCK, 0.0);
        for (zb, out) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
            let dz = &mut scratch.dz[..out.len()];
            let z = math::widen(zb, &mut scratch.wide);
            dz.iter_mut().zip(z).for_each(|(d, &z)| *d = k.off_target::<FMA>(z));
            math::narrow(dz, out);
        }
        if let Some(y) = target {
            dst[y] = E::from_f32(k.target::<FMA>(src[y].to_f32()));
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::config::TokenStatsConfig;
    use crate::ops::token_stats::composed_backward;
    use crate::reference::SplitMix64;

    /// The candle-op composition used where no fused backward kernel exists (CUDA) computes the
    /// same dlogits as the fused CPU kernel: checked here so its math is tested on CPU-only CI.
    /// Tolerance 1e−5 of the row's scale (|a| + |b|·(1 + 2 ln V) + |c|)/T: both are f32, the
    /// composition's target entry c·(δ − p) cancels to ~2⁻²⁴·|c|.
    #[test]
    fn composed_backward_matches_the_fused_kernel() {
        let mut rng = SplitMix64(3);
        let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        for case in 0..200 {
            let (n, v) = (1 + case % 9, 1 + (case * 7) % 50);
            let inv_t = if case % 2 == 0 { 1.0 } else { 1.0 / 0.7 };
            // About 1 in 11 logits −inf, never a target (so no row is all −inf).
            let mut z: Vec<f32> =
                (0..n * v).map(|k| if k % 11 == 3 { f32::NEG_INFINITY } else { uniform(-4.0, 4.0) }).collect();
            let targets: Vec<u32> = (0..n).map(|r| ((r * 5 + case) % v) as u32).collect();
            for (r, &y) in targets.iter().enumerate() {
                z[r * v + y as usize] = uniform(-4.0, 4.0);
            }
            let cfg = TokenStatsConfig { temperature: 1.0 / inv_t, top_p: None, check_finite: true, filter: None };
            let stats = crate::cpu::token_stats(&z, v, Some(&targets), &cfg).unwrap();
            let res: Vec<f32> = [stats.lse.clone(), stats.entropy.clone(), stats.logp.clone().unwrap()].concat();
            let grad: Vec<f32> = (0..3 * n).map(|_| uniform(-2.0, 2.0)).collect();
            let dev = Device::Cpu;
            let zt = Tensor::from_vec(z.clone(), (n, v), &dev).unwrap();
            let rt = Tensor::from_vec(res, (3, n), &dev).unwrap();
            let gt = Tensor::from_vec(grad.clone(), (3, n), &dev).unwrap();
            let yt = Tensor::from_vec(targets.clone(), n, &dev).unwrap();
            // With targets, and without (then the logp gradient row is ignored by both).
            let with_targets = case % 3 != 0;
            let op = StatsBackward { vocab: v, inv_t, targets: with_targets.then(|| Arc::new(targets)) };
            let fused: Vec<f32> = zt.apply_op3_no_bwd(&rt, &gt, &op).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let composed = composed_backward(&zt, &rt, &gt, with_targets.then_some(&yt), inv_t).unwrap();
            let composed: Vec<f32> = composed.flatten_all().unwrap().to_vec1().unwrap();
            for r in 0..n {
                let c = if with_targets { grad[2 * n + r].abs() } else { 0.0 };
                let scale = (grad[r].abs() + grad[n + r].abs() * (1.0 + 2.0 * (v as f32).ln()) + c) * inv_t;
                for j in r * v..(r + 1) * v {
                    let (a, b) = (fused[j], composed[j]);
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "case {case} row {r} col {}: fused {a}, composed {b}",
                        j - r * v
                    );
                }
            }
        }
    }
}
