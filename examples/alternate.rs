//! The CPU token-statistics benchmark's f32 comparison, alternated: per round, the plain LSE (b),
//! the fused statistics with top-p (c) and without (d) each run once over all the benchmark's
//! rows ([256, 151936], the same seeded rows as `benches/cpu.rs`), so that a machine that drifts
//! over seconds slows all three alike (criterion runs each variant for seconds in turn). Prints
//! the medians over the rounds and (c)/(b), (d)/(b).
//!
//! Also the real rows of `benches/cpu.rs` ([256, 49152] SmolLM2 logits, `real`; cached under
//! `target/bench-data/`, sampled first when missing, which needs the fetched model).
//!
//! Run: `cargo run --release --example alternate -- [lm|flat|real] [rounds]` (default: flat 20).

use std::time::Instant;

use rlvr_kernels::{cpu, naive, TokenStatsConfig};

#[path = "../benches/common/real_rows.rs"]
mod real_rows;
#[path = "../benches/common/rows.rs"]
mod rows;

fn main() {
    let kind = std::env::args().nth(1).unwrap_or_else(|| "flat".into());
    let rounds: usize = std::env::args().nth(2).map_or(20, |r| r.parse().expect("rounds: a number"));
    assert!(kind == "lm" || kind == "flat" || kind == "real", "rows: lm, flat or real");
    let (targets, z, v) = if kind == "real" {
        let r = real_rows::load().expect("the real rows need the model (bash scripts/fetch-model.sh)");
        (r.targets, r.logits, r.vocab)
    } else {
        let (targets, z) = rows::targets_and_rows(&kind);
        (targets, z, rows::V)
    };
    let with_p = TokenStatsConfig { temperature: 1.0, top_p: Some(0.95), check_finite: true, filter: None };
    let no_p = TokenStatsConfig { top_p: None, ..with_p };
    let ms = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    // Warm-up: the per-thread scratch is allocated on first use.
    let _ = cpu::token_stats(&z, v, Some(&targets), &with_p).expect("valid");
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        times[0].push(ms(&mut || drop(std::hint::black_box(naive::plain_lse(&z, v)))));
        times[1].push(ms(&mut || drop(std::hint::black_box(cpu::token_stats(&z, v, Some(&targets), &with_p)))));
        times[2].push(ms(&mut || drop(std::hint::black_box(cpu::token_stats(&z, v, Some(&targets), &no_p)))));
    }
    let [b, c, d] = times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    });
    println!(
        "f32 {kind} rows, {rounds} rounds, medians: (b) plain LSE {b:.2} ms  (c) fused + top-p {c:.2} ms  \
         (d) fused, no top-p {d:.2} ms  (c)/(b) {:.3}  (d)/(b) {:.3}",
        c / b,
        d / b
    );
}
