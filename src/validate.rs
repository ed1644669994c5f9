//! Input checks shared by `reference::`, `cpu::` and `cuda::`, so every path rejects the same
//! inputs with the same error. Order: configuration, shapes, per-token inputs, logits content.

use crate::error::{Error, Result};

/// Number of rows N of a flattened `[N, V]` logits buffer of `len` elements.
pub fn rows(len: usize, vocab: usize) -> Result<usize> {
    if vocab == 0 {
        return Err(Error::EmptyVocab);
    }
    if !len.is_multiple_of(vocab) {
        return Err(Error::ShapeMismatch {
            name: "logits",
            expected: format!("a multiple of V = {vocab} elements"),
            got: format!("{len} elements"),
        });
    }
    Ok(len / vocab)
}

/// `got == expected` elements, or a [`Error::ShapeMismatch`] naming `name`.
pub fn len(name: &'static str, got: usize, expected: usize, what: &str) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            name,
            expected: format!("{expected} elements ({what})"),
            got: format!("{got} elements"),
        })
    }
}

/// Targets: N entries, each < V.
pub fn targets(targets: &[u32], n: usize, vocab: usize) -> Result<()> {
    len("targets", targets.len(), n, "one per row")?;
    match targets.iter().position(|&t| t as usize >= vocab) {
        Some(token) => Err(Error::TargetOutOfRange { token, target: targets[token], vocab }),
        None => Ok(()),
    }
}

/// Mask: N entries, each exactly 0 or 1.
pub fn mask(mask: &[f32], n: usize) -> Result<()> {
    len("mask", mask.len(), n, "one per token")?;
    match mask.iter().position(|&m| m != 0.0 && m != 1.0) {
        Some(token) => Err(Error::InvalidMask { token, value: mask[token] as f64 }),
        None => Ok(()),
    }
}

/// Every value finite.
pub fn finite(name: &'static str, xs: &[f32]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFiniteInput { name, index, value: xs[index] as f64 }),
        None => Ok(()),
    }
}

/// Number of sequences B of `n` tokens laid out as `[B, T]` with T = `seq_len`.
pub fn sequences(n: usize, seq_len: usize) -> Result<usize> {
    if seq_len == 0 || !n.is_multiple_of(seq_len) {
        return Err(Error::ShapeMismatch {
            name: "seq_len",
            expected: format!("a divisor of the token count N = {n} (tokens are [B, T])"),
            got: format!("T = {seq_len}"),
        });
    }
    Ok(n / seq_len)
}

/// Number of groups B / G.
pub fn groups(batch: usize, group: usize) -> Result<usize> {
    if group == 0 {
        return Err(Error::ZeroGroupSize);
    }
    if !batch.is_multiple_of(group) {
        return Err(Error::BatchNotDivisible { batch, group });
    }
    Ok(batch / group)
}

/// The first bad row of a logits buffer, by the rule of DESIGN.md §7: NaN or +inf is
/// [`Error::NonFiniteLogits`], a row of only −inf is [`Error::AllNegInfRow`].
/// `bad(row)` returns the row's problem, if any; rows are scanned in order.
pub fn first_bad_row(n: usize, mut bad: impl FnMut(usize) -> Option<Error>) -> Result<()> {
    for row in 0..n {
        if let Some(e) = bad(row) {
            return Err(e);
        }
    }
    Ok(())
}

/// Classifies one row of logits (as f64) per DESIGN.md §7.
pub fn row_problem(row: usize, values: impl Iterator<Item = f64>) -> Option<Error> {
    let mut any_finite = false;
    for v in values {
        if v.is_nan() || v == f64::INFINITY {
            return Some(Error::NonFiniteLogits { row });
        }
        any_finite |= v.is_finite();
    }
    if any_finite {
        None
    } else {
        Some(Error::AllNegInfRow { row })
    }
}

/// A kept mask's CSR layout against N rows of V logits: N + 1 offsets from 0 to the ids' length,
/// non-decreasing, every row non-empty, ids < V and distinct within a row.
pub fn kept_mask(mask: &crate::types::KeptMask, n: usize, vocab: usize) -> Result<()> {
    len("kept_mask.offsets", mask.offsets.len(), n + 1, "N + 1 row starts")?;
    let bad = |row: usize, why: String| Err(Error::InvalidKeptMask { row, why });
    if mask.offsets[0] != 0 {
        return bad(0, format!("offsets start at {}, not 0", mask.offsets[0]));
    }
    let ids = mask.token_ids.len() as u64;
    let mut seen = vec![u32::MAX; vocab];
    for r in 0..n {
        let (a, b) = (mask.offsets[r], mask.offsets[r + 1]);
        if b < a {
            return bad(r, format!("offsets decrease ({a} then {b})"));
        }
        if b > ids {
            return bad(r, format!("offset {b} is past the {ids} token ids"));
        }
        if a == b {
            return bad(r, "the row keeps no token (a sampler keeps at least one)".into());
        }
        for &id in &mask.token_ids[a as usize..b as usize] {
            if id as usize >= vocab {
                return bad(r, format!("token id {id} is out of range for vocabulary size {vocab}"));
            }
            if seen[id as usize] == r as u32 {
                return bad(r, format!("token id {id} is repeated"));
            }
            seen[id as usize] = r as u32;
        }
    }
    if mask.offsets[n] != ids {
        return bad(n.saturating_sub(1), format!("offsets end at {}, but there are {ids} token ids", mask.offsets[n]));
    }
    Ok(())
}

/// At most one of a recomputed filter and a given mask, each valid; at least one.
pub fn filter_or_mask(
    filter: Option<&crate::config::SamplingFilter>,
    mask: Option<&crate::types::KeptMask>,
    n: usize,
    vocab: usize,
) -> Result<()> {
    match (filter, mask) {
        (Some(_), Some(_)) => Err(Error::InvalidConfig {
            name: "filter",
            value: "a filter and a kept mask".into(),
            why: "give one: the filter recomputes K, the mask is the engine's K",
        }),
        (None, None) => Err(Error::InvalidConfig {
            name: "filter",
            value: "none".into(),
            why: "statistics over a kept set need a filter or a kept mask",
        }),
        (Some(f), None) => f.validate(),
        (None, Some(m)) => m.validate(n, vocab),
    }
}
