//! The seeded rows of the CPU token-statistics benchmark, shared by `benches/cpu.rs` and
//! `examples/alternate.rs` so that both measure the same logits.

use rand::rngs::StdRng;
use rand::Rng;

/// Rows of the benchmark.
pub const N: usize = 256;
/// Vocabulary (Qwen).
pub const V: usize = 151_936;
/// Seed of the targets and rows.
pub const SEED: u64 = 2508_07534;

/// Row kinds: LM-like = N(0, 2²) noise plus 4 spikes 12..20 above the mean (top-p 0.95 keeps a
/// handful of tokens, as in real rollouts); flat = U(−0.5, 0.5) (keeps ~90% of the row).
pub fn logits(kind: &str, rng: &mut StdRng) -> Vec<f32> {
    let mut z = Vec::with_capacity(N * V);
    for _ in 0..N {
        let start = z.len();
        match kind {
            "lm" => {
                for _ in 0..V {
                    // Box–Muller.
                    let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                    z.push(2.0 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos());
                }
                for _ in 0..4 {
                    z[start + rng.random_range(0..V)] = rng.random_range(12.0..20.0);
                }
            }
            _ => z.extend((0..V).map(|_| rng.random_range(-0.5f32..0.5))),
        }
    }
    z
}

/// The benchmark's targets (drawn first from the seeded generator) and its rows of `kind`, as
/// `benches/cpu.rs` draws them: targets, then LM-like rows, then flat rows.
pub fn targets_and_rows(kind: &str) -> (Vec<u32>, Vec<f32>) {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(SEED);
    let targets: Vec<u32> = (0..N).map(|_| rng.random_range(0..V as u32)).collect();
    let lm = logits("lm", &mut rng);
    if kind == "lm" {
        return (targets, lm);
    }
    (targets, logits("flat", &mut rng))
}
