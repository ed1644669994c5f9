//! The statistics over the sampler's kept set K (`cpu::token_stats` with a filter or a kept
//! mask) against `reference::kept_*`.

use rlvr_kernels::{cpu, reference, KeptMask, SamplingFilter, TokenStatsConfig};

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn smoke_filter_and_mask_match_the_reference() {
    let mut r = lcg(7);
    let (n, v) = (6usize, 300usize);
    let z: Vec<f32> = (0..n * v).map(|i| if i % 37 == 0 { 6.0 } else { (4.0 * r() - 2.0) as f32 }).collect();
    let zf: Vec<f64> = z.iter().map(|&x| x as f64).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
    for f in [SamplingFilter::top_p(0.9), SamplingFilter::top_k(5), SamplingFilter::top_k_top_p(20, 0.8)] {
        let cfg = TokenStatsConfig { filter: Some(f), temperature: 0.8, ..Default::default() };
        let got = cpu::token_stats(&z, v, Some(&targets), &cfg).unwrap();
        let k = got.kept.unwrap();
        for row in 0..n {
            let zr = &zf[row * v..(row + 1) * v];
            let (lo, hi) = reference::kept_band(zr, 0.8, &f);
            assert!(lo <= k.count[row] && k.count[row] <= hi, "{f}: {} not in [{lo}, {hi}]", k.count[row]);
            let set = reference::kept_top(zr, k.count[row]).expect("tie-closed");
            let want = reference::kept_stats(zr, 0.8, &set, Some(targets[row]));
            assert!((want.lse - k.lse[row] as f64).abs() < 1e-5, "{f} lse");
            assert!((want.entropy - k.entropy[row] as f64).abs() < 1e-5, "{f} H");
            assert!((want.logp.unwrap() - k.logp.as_ref().unwrap()[row] as f64).abs() < 1e-5, "{f} logp");
            assert_eq!(want.outside, k.outside.as_ref().unwrap()[row] == 1);
        }
    }
    let ids: Vec<u32> = (0..n as u32).flat_map(|r| [r * 37 % 300, r + 1, r + 100]).collect();
    let offsets: Vec<u64> = (0..=n as u64).map(|r| 3 * r).collect();
    let mask = KeptMask { token_ids: &ids, offsets: &offsets };
    let cfg = TokenStatsConfig::default();
    let got = cpu::token_stats_masked(&z, v, Some(&targets), &cfg, &mask).unwrap().kept.unwrap();
    let want = reference::kept_token_stats(&zf, v, Some(&targets), &cfg, Some(&mask)).unwrap();
    for (row, w) in want.iter().enumerate() {
        assert!((w.lse - got.lse[row] as f64).abs() < 1e-5);
        assert!((w.entropy - got.entropy[row] as f64).abs() < 1e-5);
        assert_eq!(w.outside, got.outside.as_ref().unwrap()[row] == 1);
        assert_eq!(w.count, got.count[row]);
    }
}
