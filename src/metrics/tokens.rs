//! Per-token aggregates: position-binned entropy, masked means, the correct/incorrect split.
//! Generic over the value type (`f32` entropies, `u32` branch counts, `f64`), summed in f64.

use crate::error::{Error, Result};
use crate::validate;

/// Token entropy binned by relative position in the response.
///
/// For sequence i of the `[B, T]` view (T = `seq_len`) with |o_i| = Σ_t m_t counted tokens, the
/// t-th counted token (t = 1..|o_i|) has relative position r = (t − 1)/|o_i| ∈ [0, 1) and falls in
/// bin b = ⌊r·bins⌋, i.e. b/bins ≤ r < (b + 1)/bins (computed in integers, so a token exactly on
/// an edge goes to the upper bin). Returns, per bin, (mean entropy H̄_b = Σ H / count, count)
/// over all sequences; a bin without tokens is (0.0, 0).
///
/// Works for any per-token value (e.g. the branch count) despite its name. Errors: `bins` = 0,
/// bad `seq_len`, mask length or values, a non-finite entropy.
pub fn entropy_by_position(entropy: &[f32], mask: &[f32], seq_len: usize, bins: usize) -> Result<Vec<(f64, usize)>> {
    if bins == 0 {
        return Err(Error::InvalidConfig { name: "bins", value: "0".into(), why: "must be >= 1" });
    }
    validate::sequences(entropy.len(), seq_len)?;
    validate::mask(mask, entropy.len())?;
    validate::finite("entropy", entropy)?;
    let mut sums = vec![(0.0f64, 0usize); bins];
    for (h, m) in entropy.chunks(seq_len).zip(mask.chunks(seq_len)) {
        let len = m.iter().filter(|&&v| v != 0.0).count() as u128;
        let counted = h.iter().zip(m).filter(|(_, &v)| v != 0.0);
        for (t, (&h, _)) in counted.enumerate() {
            // ⌊(t − 1)·bins/|o|⌋ with 0-based t: exact, and < bins since t < |o|.
            let b = (t as u128 * bins as u128 / len) as usize;
            sums[b].0 += h as f64;
            sums[b].1 += 1;
        }
    }
    Ok(sums.into_iter().map(|(s, n)| (if n == 0 { 0.0 } else { s / n as f64 }, n)).collect())
}

/// Mean over counted tokens: Σ_t m_t·v_t / Σ_t m_t, `None` when Σ m = 0.
///
/// Masked-out values are skipped (they may be anything, NaN included); a non-finite counted value
/// gives a non-finite mean. Errors: `mask` not of `values.len()` entries, or not 0/1.
pub fn masked_mean<T: Copy + Into<f64>>(values: &[T], mask: &[f32]) -> Result<Option<f64>> {
    validate::mask(mask, values.len())?;
    Ok(mean_where(values, |t| mask[t] != 0.0))
}

/// Per-sequence [`masked_mean`] over the `[B, T]` view (T = `seq_len`): the mean entropy or
/// branch count of each response, as [`crate::rft::RolloutRecord`] wants it; `None` for a
/// sequence without counted tokens. Errors: bad `seq_len`, mask length or values.
pub fn sequence_means<T: Copy + Into<f64>>(values: &[T], mask: &[f32], seq_len: usize) -> Result<Vec<Option<f64>>> {
    validate::sequences(values.len(), seq_len)?;
    validate::mask(mask, values.len())?;
    Ok(values.chunks(seq_len).zip(mask.chunks(seq_len)).map(|(v, m)| mean_where(v, |t| m[t] != 0.0)).collect())
}

/// Means of a per-sequence value over correct and over incorrect sequences:
/// (Σ_{correct} v / #correct, Σ_{incorrect} v / #incorrect), each `None` when its set is empty —
/// the paper's positive/negative split of entropy and branch factor.
///
/// Errors: `correct` not of `values_per_seq.len()` entries.
pub fn mean_by_correctness<T: Copy + Into<f64>>(
    values_per_seq: &[T],
    correct: &[bool],
) -> Result<(Option<f64>, Option<f64>)> {
    validate::len("correct", correct.len(), values_per_seq.len(), "one per sequence")?;
    Ok((mean_where(values_per_seq, |i| correct[i]), mean_where(values_per_seq, |i| !correct[i])))
}

/// Mean of the values whose index passes `keep`, in f64, summed in index order.
fn mean_where<T: Copy + Into<f64>>(values: &[T], keep: impl Fn(usize) -> bool) -> Option<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, &v) in values.iter().enumerate() {
        if keep(i) {
            sum += v.into();
            n += 1;
        }
    }
    (n > 0).then(|| sum / n as f64)
}
