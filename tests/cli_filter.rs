//! `rlvr stats --filter` and `--filter-mask`: the statistics over the sampler's kept set K,
//! written beside today's outputs, checked against `reference::kept_*` on the same file; and
//! every bad filter or mask rejected with a one-line message naming it.

use half::bf16;
use rlvr_kernels::{reference, KeptMask, SamplingFilter, TokenStatsConfig};
use safetensors::{Dtype, SafeTensors};

mod cli_common;
use cli_common::{bytes, fails, ok, write_st, TempDir};

/// Per-token tensors of an output file, as f64 (u32/u8 tensors widened).
fn read_out(path: &str, name: &str) -> Vec<f64> {
    let data = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{path} has no `{name}`"));
    let raw = t.data();
    match t.dtype() {
        Dtype::F32 => raw.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::U32 => raw.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
        d => panic!("unexpected dtype {d:?} of `{name}`"),
    }
}

/// bf16 logits [N, V] with a few peaked rows, ties (bf16 rounding makes many) and flat rows.
fn logits(n: usize, v: usize) -> Vec<bf16> {
    let mut s = 12345u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n * v)
        .map(|i| {
            let (r, j) = (i / v, i % v);
            let x = match r % 3 {
                0 if j % 17 == 3 => 6.0 + next(),
                0 => 3.0 * next() - 1.5,
                1 => 0.5 * next(),
                _ => 8.0 * next() - 4.0,
            };
            bf16::from_f64(x)
        })
        .collect()
}

/// The tolerance on ℓ̃ / H̃ / lse over K: the f32 statistics of one row are within ~1e-6
/// relative of the float64 ones (DESIGN.md §4); 2e-5 absolute covers |values| up to ~10 here.
const TOL: f64 = 2e-5;

#[test]
fn filter_outputs_match_the_reference_and_leave_the_unfiltered_ones_unchanged() {
    let dir = TempDir::new("filter");
    let (n, v) = (9usize, 500usize);
    let z = logits(n, v);
    let targets: Vec<i64> = (0..n as i64).map(|r| (r * 37) % v as i64).collect();
    let input = dir.path("in.safetensors");
    write_st(
        &input,
        &[("logits", Dtype::BF16, vec![3, 3, v], bytes(&z)), ("targets", Dtype::I64, vec![3, 3], bytes(&targets))],
    );
    let plain = dir.path("plain.safetensors");
    ok(&["stats", "--input", &input, "--temperature", "0.8", "--out", &plain]);
    let zf: Vec<f64> = z.iter().map(|x| x.to_f64()).collect();
    for spec in ["top-p=0.95", "top-k=50", "top-k=20,top-p=0.8", "top-p=1"] {
        let f: SamplingFilter = spec.parse().unwrap();
        let out = dir.path("f.safetensors");
        let stdout = ok(&["stats", "--input", &input, "--temperature", "0.8", "--filter", spec, "--out", &out]);
        assert!(stdout.contains(&format!("kept set filter {f}")), "{stdout}");
        assert!(stdout.contains("outside"), "{stdout}");
        for name in ["lse", "entropy", "branch", "logp"] {
            let (a, b) = (read_out(&plain, name), read_out(&out, name));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{spec}: `{name}` changed");
        }
        let (count, logp, ent, outside) = (
            read_out(&out, "kept"),
            read_out(&out, "logp_kept"),
            read_out(&out, "entropy_kept"),
            read_out(&out, "outside_kept"),
        );
        for r in 0..n {
            let row = &zf[r * v..(r + 1) * v];
            let (lo, hi) = reference::kept_band(row, 0.8, &f);
            let c = count[r] as u32;
            assert!((lo..=hi).contains(&c), "{spec} row {r}: |K| = {c} not in [{lo}, {hi}]");
            let set = reference::kept_top(row, c).expect("a fast |K| is closed under ties");
            let want = reference::kept_stats(row, 0.8, &set, Some(targets[r] as u32));
            assert!((logp[r] - want.logp.unwrap()).abs() < TOL, "{spec} row {r}: logp_kept {} vs {want:?}", logp[r]);
            assert!((ent[r] - want.entropy).abs() < TOL, "{spec} row {r}: entropy_kept {} vs {want:?}", ent[r]);
            assert_eq!(outside[r] == 1.0, want.outside, "{spec} row {r}");
            if spec == "top-p=1" {
                assert_eq!(c as usize, v, "top-p = 1 keeps every finite token");
            }
        }
    }
}

#[test]
fn an_engine_mask_is_read_from_two_tensors_and_replayed() {
    let dir = TempDir::new("mask");
    let (n, v) = (4usize, 64usize);
    let z = logits(n, v);
    let targets: Vec<i64> = vec![3, 10, 20, 63];
    // Row 3 keeps {0, 1}: its target 63 is outside, flagged, and gets the unfiltered logp.
    let ids: Vec<i64> = vec![3, 4, 5, 10, 20, 21, 22, 23, 0, 1];
    let offsets: Vec<i64> = vec![0, 3, 4, 8, 10];
    let input = dir.path("in.safetensors");
    let write = |path: &str, ids: &[i64], offsets: &[i64]| {
        write_st(
            path,
            &[
                ("logits", Dtype::BF16, vec![n, v], bytes(&z)),
                ("targets", Dtype::I64, vec![n], bytes(&targets)),
                ("engine.token_ids", Dtype::I64, vec![ids.len()], bytes(ids)),
                ("engine.offsets", Dtype::I64, vec![offsets.len()], bytes(offsets)),
            ],
        )
    };
    write(&input, &ids, &offsets);
    let out = dir.path("m.csv");
    // Chunks of 3 rows: the mask is split and rebased per chunk.
    let stdout = ok(&["stats", "--input", &input, "--filter-mask", "engine", "--out", &out, "--chunk-rows", "3"]);
    assert!(stdout.contains("the engine's mask `engine`"), "{stdout}");
    assert!(stdout.contains("1 of 4 counted targets are outside"), "{stdout}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no `{name}` column"));
    let zf: Vec<f64> = z.iter().map(|x| x.to_f64()).collect();
    let (uid, uoff): (Vec<u32>, Vec<u64>) =
        (ids.iter().map(|&i| i as u32).collect(), offsets.iter().map(|&o| o as u64).collect());
    let mask = KeptMask { token_ids: &uid, offsets: &uoff };
    let t32: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
    let want = reference::kept_token_stats(&zf, v, Some(&t32), &TokenStatsConfig::default(), Some(&mask)).unwrap();
    for (r, line) in csv.lines().skip(1).enumerate() {
        let cells: Vec<f64> = line.split(',').map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells[col("kept")] as u32, want[r].count, "row {r}");
        assert_eq!(cells[col("outside_kept")] == 1.0, want[r].outside, "row {r}");
        assert!((cells[col("logp_kept")] - want[r].logp.unwrap()).abs() < TOL, "row {r}");
        assert!((cells[col("entropy_kept")] - want[r].entropy).abs() < TOL, "row {r}");
    }
    assert_eq!((want[3].outside, want[3].count), (true, 2));

    // Bad masks: each a one-line runtime error naming the mask and the row.
    let bad = |name: &str, ids: &[i64], offsets: &[i64], needles: &[&str]| {
        let path = dir.path(name);
        write(&path, ids, offsets);
        fails(&["stats", "--input", &path, "--filter-mask", "engine"], 1, needles);
    };
    bad("rep.safetensors", &[3, 3, 5, 10, 20, 21, 22, 23, 0, 1], &offsets, &["row 0", "token id 3 is repeated"]);
    bad("big.safetensors", &[3, 4, 5, 64, 20, 21, 22, 23, 0, 1], &offsets, &["row 1", "out of range", "64"]);
    bad("empty.safetensors", &ids, &[0, 3, 3, 8, 10], &["row 1", "keeps no token"]);
    bad("dec.safetensors", &ids, &[0, 3, 2, 8, 10], &["row 1", "offsets decrease"]);
    bad("short.safetensors", &ids, &[0, 3, 4, 10], &["kept_mask.offsets", "N + 1"]);
    bad("end.safetensors", &ids, &[0, 3, 4, 8, 9], &["offsets end at 9", "10 token ids"]);
    bad("neg.safetensors", &[-1, 4, 5, 10, 20, 21, 22, 23, 0, 1], &offsets, &["engine.token_ids", "negative"]);
    fails(&["stats", "--input", &input, "--filter-mask", "sampler"], 1, &["no tensor `sampler.token_ids`"]);
}

#[test]
fn bad_filters_are_usage_errors() {
    let dir = TempDir::new("badfilter");
    let input = dir.path("in.safetensors");
    write_st(&input, &[("logits", Dtype::BF16, vec![2, 8], bytes(&logits(2, 8)))]);
    let stats = |filter: &str, needles: &[&str]| fails(&["stats", "--input", &input, "--filter", filter], 2, needles);
    stats("top-k=0", &["filter.top_k", "must be >= 1"]);
    for p in ["0", "-0.5", "1.5", "NaN"] {
        stats(&format!("top-p={p}"), &["filter.top_p", "must be in (0, 1]"]);
    }
    stats("top-k=2.5", &["top-k must be an integer"]);
    stats("top-q=3", &["unknown part"]);
    stats("top-p=0.9,top-p=0.8", &["once"]);
    stats("", &["needs top_k, top_p or both"]);
    // A filter with a temperature ≤ 0 (greedy decoding has no distribution to replay).
    for t in ["0", "-1"] {
        fails(&["stats", "--input", &input, "--filter", "top-p=0.9", "--temperature", t], 2, &["temperature"]);
    }
    fails(&["stats", "--input", &input, "--filter", "top-k=5", "--filter-mask", "m"], 2, &["cannot be used with"]);
}
