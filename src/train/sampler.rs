//! The rollout sampler's filter as a rollout engine applies it: top-k, then top-p over what
//! top-k kept (vLLM's order), then a draw from the kept tokens renormalised.
//!
//! This is deliberately an engine's implementation, not the kernels': candidates sorted by
//! probability (ties broken by token id, so exactly k tokens survive top-k and the top-p set
//! ends at the token that first reaches p), masses in f64. The trainer then recomputes the kept
//! set K from the logits with the fused kernels (which keep **all** tokens tied at the crossing),
//! so a sampled token outside K means the two disagree — on the same logits that never happens
//! (tested below); on the trainer's logits after an update it measures how far they drifted.

use crate::config::SamplingFilter;

/// A token drawn from the filtered distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilteredPick {
    /// The token.
    pub token: u32,
    /// Its log-prob under the sampler's kept set: ln(p_y / Σ_kept p) (what an engine reports as
    /// the rollout log-prob, ℓ̃_old).
    pub logp: f32,
    /// How many tokens the sampler kept.
    pub kept: u32,
}

/// Draws a token from `softmax(z / T)` restricted to `filter`'s kept set, with a uniform `u`
/// in [0, 1). `z` must have a finite maximum. `buf` is scratch (reused across rows).
pub fn pick_filtered(
    z: &[f32],
    temperature: f32,
    filter: &SamplingFilter,
    u: f64,
    buf: &mut Vec<(f64, u32)>,
) -> FilteredPick {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = temperature as f64;
    let e = |j: usize| ((z[j] as f64 - m) / t).exp();
    buf.clear();
    // Most probable first, ties by token id.
    let order = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    match (filter.top_k, filter.top_p) {
        (Some(k), _) => {
            buf.extend((0..z.len()).map(|j| (e(j), j as u32)).filter(|c| c.0 > 0.0));
            let k = (k as usize).min(buf.len());
            if k < buf.len() {
                buf.select_nth_unstable_by(k - 1, order);
                buf.truncate(k);
            }
        }
        (None, Some(p)) => {
            // Tokens below (1 − p)·S/V together hold < (1 − p)·S: never needed to reach p·S.
            let s: f64 = (0..z.len()).map(e).sum();
            let cut = (1.0 - p as f64) * s / z.len() as f64;
            buf.extend((0..z.len()).map(|j| (e(j), j as u32)).filter(|c| c.0 > 0.0 && c.0 >= cut));
        }
        (None, None) => buf.extend((0..z.len()).map(|j| (e(j), j as u32)).filter(|c| c.0 > 0.0)),
    }
    buf.sort_unstable_by(order);
    if let Some(p) = filter.top_p {
        let goal = p as f64
            * match filter.top_k {
                Some(_) => buf.iter().map(|c| c.0).sum::<f64>(),
                None => (0..z.len()).map(e).sum::<f64>(),
            };
        let mut cum = 0.0;
        let end = buf.iter().position(|c| {
            cum += c.0;
            cum >= goal
        });
        buf.truncate(end.map_or(buf.len(), |i| i + 1));
    }
    let total: f64 = buf.iter().map(|c| c.0).sum();
    let target = u * total;
    let mut cum = 0.0;
    let &(ey, y) = buf
        .iter()
        .find(|c| {
            cum += c.0;
            cum > target
        })
        .unwrap_or(&buf[buf.len() - 1]);
    FilteredPick { token: y, logp: (ey / total).ln() as f32, kept: buf.len() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenStatsConfig;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn rows(n: usize, v: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n * v)
            .map(|i| match (i / v) % 3 {
                0 if i % 13 == 0 => 4.0 + rng.random::<f32>(),
                0 => rng.random::<f32>() * 3.0 - 2.0,
                1 => (rng.random::<f32>() * 8.0).round() / 4.0, // many exact ties
                _ => rng.random::<f32>(),
            })
            .collect()
    }

    #[test]
    fn top_k_keeps_k_and_samples_in_proportion() {
        let z = [1.0f32, 3.0, 2.0, 0.0, 3.0];
        let mut buf = Vec::new();
        let f = SamplingFilter::top_k(2);
        // Kept: ids 1 and 4 (both 3.0; the tie broken by id), each with probability 1/2.
        let a = pick_filtered(&z, 1.0, &f, 0.2, &mut buf);
        let b = pick_filtered(&z, 1.0, &f, 0.7, &mut buf);
        assert_eq!((a.token, b.token, a.kept), (1, 4, 2));
        assert!((a.logp - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn top_p_stops_at_the_token_that_reaches_p() {
        // p = [0.5, 0.3, 0.2]: top-p 0.75 keeps two tokens, renormalised to [5/8, 3/8].
        let z = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut buf = Vec::new();
        let got = pick_filtered(&z, 1.0, &SamplingFilter::top_p(0.75), 0.9, &mut buf);
        assert_eq!((got.token, got.kept), (1, 2));
        assert!((got.logp as f64 - (3.0f64 / 8.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn the_trainer_recomputing_k_on_the_same_logits_never_flags_a_sampled_token() {
        // The replay's central promise: every token this sampler draws is inside the K that the
        // fused kernels recompute from the same logits (ties included), and its logp here is
        // the kernels' ℓ̃ when the sampler kept the whole tie class (up to f32 rounding).
        let mut rng = StdRng::seed_from_u64(3);
        let (n, v) = (60, 700);
        let z = rows(n, v, &mut rng);
        let mut buf = Vec::new();
        for f in [
            SamplingFilter::top_p(0.95),
            SamplingFilter::top_p(0.5),
            SamplingFilter::top_k(5),
            SamplingFilter::top_k_top_p(50, 0.9),
        ] {
            for t in [1.0f32, 0.6] {
                let picks: Vec<FilteredPick> =
                    z.chunks(v).map(|row| pick_filtered(row, t, &f, rng.random::<f64>(), &mut buf)).collect();
                let targets: Vec<u32> = picks.iter().map(|p| p.token).collect();
                let cfg = TokenStatsConfig { temperature: t, filter: Some(f), ..Default::default() };
                let k = crate::cpu::token_stats(&z, v, Some(&targets), &cfg).unwrap().kept.unwrap();
                assert_eq!(k.outside_count(), 0, "{f} at T = {t}");
                for (r, p) in picks.iter().enumerate() {
                    assert!(p.kept <= k.count[r], "{f}: the sampler kept more than K");
                    if p.kept == k.count[r] {
                        let l = k.logp.as_ref().unwrap()[r];
                        assert!((p.logp - l).abs() < 1e-4, "{f} row {r}: {} vs {l}", p.logp);
                    }
                }
            }
        }
    }
}
