//! Unbiased Pass@k by the product formula (no binomials, so no overflow for any n).

use crate::error::{Error, Result};

/// Unbiased Pass@k from `n` samples of which `c` are correct (Chen et al., 2021):
///
/// Pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1..n} (1 − k/i), and 1 when n − c < k
/// (every k-subset holds a correct sample).
///
/// No binomial is ever formed, so any n works; the c factors in [0, 1] carry two roundings each
/// plus one per product, so the absolute error is below 3c·2⁻⁵³. Multiplying from i = n downwards
/// makes the computed value exactly monotone: one more correct sample appends one factor ≤ 1 at
/// the end, and each factor only shrinks as k grows. Pass@1 = c/n.
///
/// Errors: [`Error::InvalidPassAtK`] unless c ≤ n and 1 ≤ k ≤ n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Result<f64> {
    if c > n || k == 0 || k > n {
        return Err(Error::InvalidPassAtK { n, c, k });
    }
    if n - c < k {
        return Ok(1.0);
    }
    let miss: f64 = (n - c + 1..=n).rev().map(|i| 1.0 - k as f64 / i as f64).product();
    Ok(1.0 - miss)
}

/// The Pass@k curve of a benchmark: for each k in `ks`, the mean over problems p of
/// [`pass_at_k`](n, c_p, k), with `correct_counts[p]` = c_p correct among `n` samples each.
///
/// Errors: no problems ([`Error::InvalidConfig`] naming `correct_counts`: the mean of nothing is
/// undefined), or any (n, c_p, k) that [`pass_at_k`] rejects.
pub fn pass_at_k_curve(correct_counts: &[usize], n: usize, ks: &[usize]) -> Result<Vec<f64>> {
    if correct_counts.is_empty() {
        return Err(Error::InvalidConfig {
            name: "correct_counts",
            value: "[]".into(),
            why: "needs at least one problem",
        });
    }
    ks.iter()
        .map(|&k| {
            let mut sum = 0.0;
            for &c in correct_counts {
                sum += pass_at_k(n, c, k)?;
            }
            Ok(sum / correct_counts.len() as f64)
        })
        .collect()
}
