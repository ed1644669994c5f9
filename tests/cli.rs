//! The `rlvr` binary end to end: `example` → `stats` output checked against
//! `reference::token_stats` / `reference::log_ppl` on the same file, every kind of bad input
//! rejected with a one-line message and the right exit code, and `bench` printing its table.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use half::{bf16, f16};
use rlvr_kernels::{reference, TokenStatsConfig};

mod cli_common;
use cli_common::{bytes, fails, ok, rlvr, write_st, TempDir};
use safetensors::{Dtype, SafeTensors};

/// An input file as the test oracle sees it: logits in f64, targets, mask.
struct Input {
    shape: Vec<usize>,
    logits: Vec<f64>,
    targets: Vec<u32>,
    mask: Vec<f32>,
}

impl Input {
    fn read(path: &str) -> Self {
        let data = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&data).unwrap();
        let l = st.tensor("logits").unwrap();
        let raw = l.data();
        let logits: Vec<f64> = match l.dtype() {
            Dtype::F32 => raw.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            Dtype::BF16 => raw.chunks(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            Dtype::F16 => raw.chunks(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            d => panic!("unexpected logits dtype {d:?}"),
        };
        let t = st.tensor("targets").unwrap();
        assert_eq!(t.dtype(), Dtype::I64);
        let targets = t.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
        let m = st.tensor("mask").unwrap();
        assert_eq!(m.dtype(), Dtype::U8);
        let mask = m.data().iter().map(|&v| v as f32).collect();
        Input { shape: l.shape().to_vec(), logits, targets, mask }
    }
    fn vocab(&self) -> usize {
        self.shape[self.shape.len() - 1]
    }
    fn row(&self, r: usize) -> &[f64] {
        &self.logits[r * self.vocab()..(r + 1) * self.vocab()]
    }
}

/// Per-token outputs of `rlvr stats`, read from CSV or safetensors.
#[derive(Debug, PartialEq)]
struct Stats {
    lse: Vec<f32>,
    entropy: Vec<f32>,
    branch: Vec<u32>,
    logp: Vec<f32>,
    /// Per sequence, NaN for none ([B, T, V] inputs only).
    log_ppl: Option<Vec<f32>>,
}

fn read_csv(path: &str, seq_len: Option<usize>) -> Stats {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let expected: &[&str] = match seq_len {
        Some(_) => &["row", "b", "t", "lse", "entropy", "branch", "logp", "mask", "log_ppl"],
        None => &["row", "lse", "entropy", "branch", "logp", "mask"],
    };
    assert_eq!(header, expected, "CSV header");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), header.len(), "CSV line {i}: {r:?}");
        assert_eq!(r[0].parse::<usize>().unwrap(), i, "row index");
        if let Some(t) = seq_len {
            assert_eq!(r[1].parse::<usize>().unwrap(), i / t, "b index");
            assert_eq!(r[2].parse::<usize>().unwrap(), i % t, "t index");
        }
    }
    let f = |name: &str| rows.iter().map(|r| r[col(name)].parse::<f32>().unwrap()).collect::<Vec<f32>>();
    let log_ppl = seq_len.map(|t| {
        // One value per token, repeated within a sequence: take each sequence's first.
        let per_token: Vec<f32> = rows
            .iter()
            .map(|r| r[col("log_ppl")])
            .map(|s| if s.is_empty() { f32::NAN } else { s.parse().unwrap() })
            .collect();
        per_token.chunks(t).map(|s| s[0]).collect()
    });
    Stats {
        lse: f("lse"),
        entropy: f("entropy"),
        branch: rows.iter().map(|r| r[col("branch")].parse().unwrap()).collect(),
        logp: f("logp"),
        log_ppl,
    }
}

fn read_out_safetensors(path: &str, token_shape: &[usize]) -> Stats {
    let data = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let get = |name: &str, dtype: Dtype| {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), dtype, "{name} dtype");
        t
    };
    let f32s = |name: &str| {
        let t = get(name, Dtype::F32);
        assert_eq!(t.shape(), token_shape, "{name} shape");
        t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>()
    };
    let branch = get("branch", Dtype::U32);
    assert_eq!(branch.shape(), token_shape);
    let log_ppl = (token_shape.len() == 2).then(|| {
        let t = get("log_ppl", Dtype::F32);
        assert_eq!(t.shape(), &token_shape[..1]);
        t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    });
    Stats {
        lse: f32s("lse"),
        entropy: f32s("entropy"),
        branch: branch.data().chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
        logp: f32s("logp"),
        log_ppl,
    }
}

/// Relative tolerance of lse and logp: the fast path rounds z_max/T and the result to f32
/// (2 × 6e-8 relative) and sums f32 exponentials (≤ 1e-7 relative each) in f64; 2e-5·(1 + |x|)
/// leaves two orders of magnitude for other summation orders.
fn lse_tol(x: f64) -> f64 {
    2e-5 * (1.0 + x.abs())
}

/// Entropy tolerance: H = ln S − Σ d_i e_i / S with f32 products d_i·e_i (≤ 1e-7 relative each)
/// and |d_i| = |x_i − m| ≤ ~70 for these rows, so |error| ≤ ~1e-5; 1e-4 leaves margin.
const ENTROPY_TOL: f64 = 1e-4;

/// Checks `stats` against the f64 reference on `input` at (temperature, top-p).
fn check_against_reference(input: &Input, stats: &Stats, temperature: f32, top_p: f32) {
    let cfg = TokenStatsConfig { temperature, top_p: Some(top_p), check_finite: true, filter: None };
    let v = input.vocab();
    let want = reference::token_stats(&input.logits, v, Some(&input.targets), &cfg).unwrap();
    assert_eq!(stats.lse.len(), want.len());
    for (r, w) in want.iter().enumerate() {
        let ctx = format!("row {r} (T = {temperature}, top-p {top_p})");
        assert!((stats.lse[r] as f64 - w.lse).abs() <= lse_tol(w.lse), "lse {ctx}: {} vs {}", stats.lse[r], w.lse);
        let h = stats.entropy[r] as f64;
        assert!((h - w.entropy).abs() <= ENTROPY_TOL, "entropy {ctx}: {h} vs {}", w.entropy);
        let (lp, wlp) = (stats.logp[r] as f64, w.logp.unwrap());
        assert!((lp - wlp).abs() <= lse_tol(wlp), "logp {ctx}: {lp} vs {wlp}");
        // The band of DESIGN.md §4: mass within 1e-5·p of the threshold is below f32 resolution.
        let (lo, hi) = reference::branch_band(input.row(r), temperature as f64, top_p as f64);
        assert!((lo..=hi).contains(&stats.branch[r]), "branch {ctx}: {} not in [{lo}, {hi}]", stats.branch[r]);
    }
    if let Some(got) = &stats.log_ppl {
        let t = input.shape[1];
        let ref_logp: Vec<f32> = want.iter().map(|w| w.logp.unwrap() as f32).collect();
        let ref_ppl = reference::log_ppl(&ref_logp, &input.mask, t).unwrap();
        assert_eq!(got.len(), ref_ppl.len());
        for (b, (g, w)) in got.iter().zip(&ref_ppl).enumerate() {
            match w {
                None => assert!(g.is_nan(), "sequence {b} has no counted tokens but log_ppl {g}"),
                // A masked mean of logp values, each within lse_tol of the reference.
                Some(w) => {
                    let tol = (b * t..(b + 1) * t).map(|i| lse_tol(ref_logp[i] as f64)).fold(0.0, f64::max);
                    assert!((*g as f64 - w).abs() <= tol, "log_ppl of sequence {b}: {g} vs {w}");
                }
            }
        }
    }
}

const DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

/// A small example file: B = 4, T = 16, V = 1000.
fn example(dir: &TempDir, name: &str, dtype: &str, flat: bool, seed: u64) -> String {
    let path = dir.path(name);
    let seed = seed.to_string();
    let mut args = vec!["example", "--out", &path, "--batch", "4", "--seq-len", "16", "--vocab", "1000"];
    args.extend(["--dtype", dtype, "--seed", &seed]);
    if flat {
        args.push("--flat");
    }
    let stdout = ok(&args);
    assert!(stdout.contains("wrote"), "{stdout}");
    path
}

#[test]
fn stats_match_the_reference_for_every_dtype_rank_and_output_format() {
    let dir = TempDir::new("match");
    for (i, dtype) in DTYPES.iter().enumerate() {
        for flat in [false, true] {
            let input_path = example(&dir, &format!("in-{dtype}-{flat}.safetensors"), dtype, flat, 7 + i as u64);
            let input = Input::read(&input_path);
            assert_eq!(input.shape, if flat { vec![64, 1000] } else { vec![4, 16, 1000] });
            // Default settings, and a non-default temperature/top-p.
            for (temperature, top_p) in [(1.0f32, 0.95f32), (0.7, 0.8)] {
                let (csv, st) = (dir.path("out.csv"), dir.path("out.safetensors"));
                let (t, p) = (temperature.to_string(), top_p.to_string());
                for out in [&csv, &st] {
                    let args = ["stats", "--input", &input_path, "--out", out, "--temperature", &t, "--top-p", &p];
                    let stdout = ok(&args);
                    assert!(stdout.contains("N = 64 tokens, V = 1000"), "{stdout}");
                    assert!(stdout.contains(dtype), "{stdout}");
                }
                // Rows streamed in chunks of 7 (the last one partial): byte-identical output.
                let chunked = dir.path("chunked.csv");
                ok(&[
                    "stats",
                    "--input",
                    &input_path,
                    "--out",
                    &chunked,
                    "--temperature",
                    &t,
                    "--top-p",
                    &p,
                    "--chunk-rows",
                    "7",
                ]);
                let read = |p: &str| std::fs::read_to_string(p).unwrap();
                assert!(read(&chunked) == read(&csv), "chunked output differs ({dtype}, flat {flat})");
                let seq_len = (!flat).then_some(16);
                let from_csv = read_csv(&csv, seq_len);
                let token_shape = &input.shape[..input.shape.len() - 1];
                let from_st = read_out_safetensors(&st, token_shape);
                // The CSV prints floats in shortest round-trip form: both files hold the same bits.
                assert_eq!(format!("{from_csv:?}"), format!("{from_st:?}"), "CSV and safetensors differ");
                check_against_reference(&input, &from_csv, temperature, top_p);
            }
        }
    }
}

#[test]
fn summary_reports_the_masked_mean_logp_and_sequence_log_ppl() {
    let dir = TempDir::new("summary");
    let path = example(&dir, "in.safetensors", "f32", false, 3);
    let input = Input::read(&path);
    let stdout = ok(&["stats", "--input", &path]);
    let want = reference::token_stats(&input.logits, 1000, Some(&input.targets), &TokenStatsConfig::default()).unwrap();
    let counted: Vec<usize> = (0..64).filter(|&i| input.mask[i] == 1.0).collect();
    let mean = counted.iter().map(|&i| want[i].logp.unwrap()).sum::<f64>() / counted.len() as f64;
    let line = stdout.lines().find(|l| l.starts_with("mean logp")).expect("mean logp line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let got: f64 = words[2].parse().unwrap();
    // Printed with 6 decimals; each logp is within lse_tol of the reference.
    assert!((got - mean).abs() <= lse_tol(mean) + 1e-6, "{line} vs reference {mean}");
    assert_eq!(words[4].parse::<usize>().unwrap(), counted.len(), "{line}");
    assert!(stdout.contains(&format!("{} of 64 tokens counted", counted.len())), "{stdout}");
    assert!(stdout.contains("log-PPL  4 sequences (4 with counted tokens)"), "{stdout}");
}

#[test]
fn example_is_seeded_and_well_formed() {
    let dir = TempDir::new("example");
    let a = example(&dir, "a.safetensors", "bf16", false, 1);
    let b = example(&dir, "b.safetensors", "bf16", false, 1);
    let c = example(&dir, "c.safetensors", "bf16", false, 2);
    let read = |p: &str| std::fs::read(p).unwrap();
    assert!(read(&a) == read(&b), "same seed, same file");
    assert!(read(&a) != read(&c), "another seed, another file");
    let input = Input::read(&a);
    assert!(input.targets.iter().all(|&t| t < 1000));
    for (s, seq) in input.mask.chunks(16).enumerate() {
        // prompt (0s), then one block of response tokens (1s), then padding (0s).
        let first = seq.iter().position(|&m| m == 1.0).unwrap_or_else(|| panic!("sequence {s} has no response"));
        let len = seq[first..].iter().take_while(|&&m| m == 1.0).count();
        assert!(seq[first + len..].iter().all(|&m| m == 0.0), "sequence {s}: mask {seq:?}");
        assert!(first >= 1, "sequence {s} has no prompt");
    }
    // LM-like: confident tokens and forks in the same file.
    let stats = reference::token_stats(&input.logits, 1000, None, &TokenStatsConfig::default()).unwrap();
    let (lo, hi) = stats.iter().fold((f64::MAX, 0.0f64), |(l, h), s| (l.min(s.entropy), h.max(s.entropy)));
    assert!(lo < 0.5 && hi > 3.0, "entropies span only [{lo}, {hi}]");
}

/// Logits as f32 bytes for hand-made inputs.
fn f32_logits(n: usize, v: usize) -> Vec<f32> {
    (0..n * v).map(|i| ((i * 7919) % 101) as f32 * 0.05 - 2.0).collect()
}

#[test]
fn unaligned_f32_logits_and_other_target_and_mask_dtypes_are_read() {
    let dir = TempDir::new("unaligned");
    let (n, v) = (6usize, 50usize);
    let logits = f32_logits(n, v);
    let targets: Vec<i64> = (0..n as i64).map(|i| i * 7 % v as i64).collect();
    let mask: Vec<u8> = vec![1, 0, 1, 1, 0, 1];
    let base = dir.path("base.safetensors");
    let tensors = [
        ("logits", Dtype::F32, vec![n, v], bytes(&logits)),
        ("targets", Dtype::I64, vec![n], bytes(&targets)),
        ("mask", Dtype::U8, vec![n], mask.clone()),
    ];
    write_st(&base, &tensors);
    let want = read_csv(
        &{
            let out = dir.path("base.csv");
            ok(&["stats", "--input", &base, "--out", &out]);
            out
        },
        None,
    );
    check_against_reference(
        &Input {
            shape: vec![n, v],
            logits: logits.iter().map(|&x| x as f64).collect(),
            targets: targets.iter().map(|&t| t as u32).collect(),
            mask: mask.iter().map(|&m| m as f32).collect(),
        },
        &want,
        1.0,
        0.95,
    );

    // f32 logits at an odd byte offset: a 1-byte tensor ahead of them in the data section
    // (hand-written header, since the safetensors writer aligns by sorting on dtype).
    let data_len = 1 + n * v * 4;
    let header = format!(
        r#"{{"pad":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}},"logits":{{"dtype":"F32","shape":[{n},{v}],"data_offsets":[1,{data_len}]}}}}"#
    );
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(&header);
    file.push(0);
    file.extend(bytes(&logits));
    let odd = dir.path("odd.safetensors");
    std::fs::write(&odd, file).unwrap();
    let out = dir.path("odd.csv");
    ok(&["stats", "--input", &odd, "--out", &out]);
    let got = read_csv_no_targets(&out);
    assert_eq!((got.0, got.1), (want.lse.clone(), want.entropy.clone()), "unaligned read differs");
    // Chunks of 4 rows: the second chunk starts unaligned too.
    ok(&["stats", "--input", &odd, "--out", &out, "--chunk-rows", "4"]);
    let got = read_csv_no_targets(&out);
    assert_eq!((got.0, got.1), (want.lse.clone(), want.entropy.clone()), "unaligned chunked read differs");

    // Targets as u16/i32, mask as bool/f32/bf16: same results as i64/u8.
    let t16: Vec<u16> = targets.iter().map(|&t| t as u16).collect();
    let t32: Vec<i32> = targets.iter().map(|&t| t as i32).collect();
    let mf: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
    let mb: Vec<bf16> = mask.iter().map(|&m| bf16::from_f32(m as f32)).collect();
    for (t, m) in [
        ((Dtype::U16, bytes(&t16)), (Dtype::BOOL, mask.clone())),
        ((Dtype::I32, bytes(&t32)), (Dtype::F32, bytes(&mf))),
        ((Dtype::U16, bytes(&t16)), (Dtype::BF16, bytes(&mb))),
    ] {
        let path = dir.path("dtypes.safetensors");
        write_st(&path, &[tensors[0].clone(), ("targets", t.0, vec![n], t.1), ("mask", m.0, vec![n], m.1)]);
        let out = dir.path("dtypes.csv");
        ok(&["stats", "--input", &path, "--out", &out]);
        assert_eq!(read_csv(&out, None), want, "targets {:?}, mask {:?}", t.0, m.0);
    }
}

/// (lse, entropy) of a CSV written without targets and mask.
fn read_csv_no_targets(path: &str) -> (Vec<f32>, Vec<f32>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "row,lse,entropy,branch");
    lines.map(|l| l.split(',').map(|x| x.parse::<f32>().unwrap()).collect::<Vec<f32>>()).map(|r| (r[1], r[2])).unzip()
}

#[test]
fn a_sequence_without_counted_tokens_has_no_log_ppl() {
    let dir = TempDir::new("noppl");
    let (b, t, v) = (2usize, 3usize, 20usize);
    let path = dir.path("in.safetensors");
    let targets: Vec<u32> = vec![1, 2, 3, 4, 5, 6];
    write_st(
        &path,
        &[
            ("logits", Dtype::F32, vec![b, t, v], bytes(&f32_logits(b * t, v))),
            ("targets", Dtype::U32, vec![b, t], bytes(&targets)),
            ("mask", Dtype::U8, vec![b, t], vec![0, 0, 0, 0, 1, 1]),
        ],
    );
    let (csv, st) = (dir.path("o.csv"), dir.path("o.safetensors"));
    let stdout = ok(&["stats", "--input", &path, "--out", &csv]);
    assert!(stdout.contains("log-PPL  2 sequences (1 with counted tokens)"), "{stdout}");
    ok(&["stats", "--input", &path, "--out", &st]);
    let (c, s) = (read_csv(&csv, Some(t)), read_out_safetensors(&st, &[b, t]));
    let (c, s) = (c.log_ppl.unwrap(), s.log_ppl.unwrap());
    assert!(c[0].is_nan() && s[0].is_nan(), "{c:?} {s:?}");
    assert!(c[1].is_finite() && c[1] == s[1], "{c:?} {s:?}");
}

#[test]
fn bad_inputs_give_one_line_errors_and_exit_codes() {
    let dir = TempDir::new("bad");
    let good = example(&dir, "good.safetensors", "f32", false, 5);
    let file = |name: &str, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]| {
        let p = dir.path(name);
        write_st(&p, tensors);
        p
    };
    let lg = |n: usize, v: usize| bytes(&f32_logits(n, v));
    let stats = |path: &str, code: i32, needles: &[&str]| fails(&["stats", "--input", path], code, needles);

    let missing = dir.path("missing.safetensors");
    stats(&missing, 1, &["cannot open", "missing.safetensors"]);
    let garbage = dir.path("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    stats(&garbage, 1, &["not a valid safetensors file"]);
    fails(
        &["stats", "--input", &good, "--logits", "scores"],
        1,
        &["no tensor `scores`", "present: logits, mask, targets"],
    );
    fails(&["stats", "--input", &good, "--targets", "labels"], 1, &["no tensor `labels`"]);
    fails(&["stats", "--input", &good, "--mask", "attention"], 1, &["no tensor `attention`"]);

    let rank1 = file("r1.safetensors", &[("logits", Dtype::F32, vec![40], lg(4, 10))]);
    stats(&rank1, 1, &["must be [N, V] or [B, T, V]", "rank 1"]);
    let rank4 = file("r4.safetensors", &[("logits", Dtype::F32, vec![1, 2, 2, 10], lg(4, 10))]);
    stats(&rank4, 1, &["must be [N, V] or [B, T, V]", "rank 4"]);
    let int_logits = file("il.safetensors", &[("logits", Dtype::I32, vec![4, 10], lg(4, 10))]);
    stats(&int_logits, 1, &["dtype i32", "bf16, f16 or f32"]);
    let empty_vocab = file("v0.safetensors", &[("logits", Dtype::F32, vec![4, 0], vec![])]);
    stats(&empty_vocab, 1, &["V = 0"]);

    let with = |name: &str, extra: (&str, Dtype, Vec<usize>, Vec<u8>)| {
        file(name, &[("logits", Dtype::F32, vec![2, 3, 10], lg(6, 10)), extra])
    };
    let float_targets = with("ft.safetensors", ("targets", Dtype::F32, vec![2, 3], bytes(&[1f32; 6])));
    stats(&float_targets, 1, &["targets `targets`", "dtype f32", "integer"]);
    let short_targets = with("st.safetensors", ("targets", Dtype::U32, vec![2, 2], bytes(&[1u32; 4])));
    stats(&short_targets, 1, &["shape mismatch", "targets `targets`", "[2, 2]", "[2, 3]"]);
    let flat_mask = with("fm.safetensors", ("mask", Dtype::U8, vec![6], vec![1; 6]));
    stats(&flat_mask, 1, &["shape mismatch", "mask `mask`", "[6]", "[2, 3]"]);
    let big_target = with("bt.safetensors", ("targets", Dtype::I64, vec![2, 3], bytes(&[0i64, 1, 2, 10, 4, 5])));
    stats(&big_target, 1, &["target 10 at token 3", "out of range for vocabulary size 10"]);
    let neg_target = with("nt.safetensors", ("targets", Dtype::I32, vec![2, 3], bytes(&[0i32, -1, 2, 3, 4, 5])));
    stats(&neg_target, 1, &["target -1 at token 1", "out of range"]);
    let bad_mask = with("bm.safetensors", ("mask", Dtype::I64, vec![2, 3], bytes(&[0i64, 1, 2, 1, 1, 1])));
    stats(&bad_mask, 1, &["mask value 2 at token 2", "not 0 or 1"]);
    let nan_mask = with("nm.safetensors", ("mask", Dtype::F32, vec![2, 3], bytes(&[0f32, 1., 1., f32::NAN, 1., 1.])));
    stats(&nan_mask, 1, &["mask value NaN at token 3"]);

    let mut nan = f32_logits(6, 10);
    nan[4 * 10 + 3] = f32::NAN;
    let nan_logits = file("nan.safetensors", &[("logits", Dtype::F32, vec![2, 3, 10], bytes(&nan))]);
    stats(&nan_logits, 1, &["non-finite logit", "row 4", "sequence 1, position 1"]);
    // In chunks of 3 rows the bad row is row 1 of the second chunk: still reported as row 4.
    fails(&["stats", "--input", &nan_logits, "--chunk-rows", "3"], 1, &["row 4", "sequence 1, position 1"]);
    let mut neg = f32_logits(6, 10);
    neg[20..30].fill(f32::NEG_INFINITY);
    let neg_row = file("neg.safetensors", &[("logits", Dtype::F32, vec![6, 10], bytes(&neg))]);
    stats(&neg_row, 1, &["row 2", "-inf"]);
    fails(&["stats", "--input", &neg_row, "--chunk-rows", "2"], 1, &["row 2", "-inf"]);
    fails(&["stats", "--input", &neg_row, "--chunk-rows", "0"], 2, &["chunk-rows"]);

    for p in ["0", "1", "1.5", "-0.1", "NaN"] {
        fails(&["stats", "--input", &good, "--top-p", p], 2, &["top_p", "outside (0, 1)"]);
        fails(&["stats", "--input", &good, &format!("--top-p={p}")], 2, &["top_p", "outside (0, 1)"]);
    }
    for t in ["0", "-1", "inf", "NaN"] {
        fails(&["stats", "--input", &good, "--temperature", t], 2, &["temperature", "must be finite and > 0"]);
    }
    fails(&["stats", "--input", &good, "--out", &dir.path("o.txt")], 2, &["unknown extension", ".csv"]);
    fails(&["stats", "--input", &good, "--frobnicate"], 2, &["--frobnicate"]);
    fails(&["stats"], 2, &["--input"]);
    fails(&["stats", "--input", &good, "--top-p", "much"], 2, &["much"]);
    #[cfg(not(feature = "cuda"))]
    fails(
        &["stats", "--input", &good, "--device", "cuda"],
        2,
        &["built without the `cuda` feature", "--features cuda"],
    );
    fails(&["stats", "--input", &good, "--device", "tpu"], 2, &["tpu"]);
    fails(&["example", "--out", &dir.path("e.safetensors"), "--vocab", "0"], 2, &["at least 1"]);
    fails(&["bench", "--shape", "16"], 2, &["N,V"]);
    fails(&["bench", "--shape", "0,16"], 2, &["at least 1"]);
    fails(&["bench", "--shape", "4,16", "--top-p", "2"], 2, &["top_p"]);
}

#[test]
fn every_error_is_one_line() {
    let dir = TempDir::new("oneline");
    let out = rlvr(&["stats", "--input", &dir.path("nothing.safetensors")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[test]
fn bench_runs_and_prints_its_table() {
    for (dtype, rows) in [("f32", "lm"), ("bf16", "flat")] {
        let stdout = ok(&["bench", "--shape", "16,300", "--iters", "2", "--dtype", dtype, "--rows", rows]);
        let header = stdout.lines().find(|l| l.starts_with("variant")).unwrap_or_else(|| panic!("no table:\n{stdout}"));
        for col in ["median", "GB/s", "time / plain LSE", "speed-up vs candle"] {
            assert!(header.contains(col), "{header}");
        }
        let variants: HashMap<&str, &str> = stdout
            .lines()
            .filter_map(|l| {
                ["plain LSE", "fused stats, no top-p", "fused stats, top-p", "candle composition"]
                    .into_iter()
                    .find(|v| l.starts_with(v))
                    .map(|v| (v, l))
            })
            .collect();
        assert_eq!(variants.len(), 4, "{stdout}");
        assert!(variants["plain LSE"].contains("1.00x"), "{stdout}");
        assert!(variants["candle composition"].trim_end().ends_with("1.0x"), "{stdout}");
        assert!(stdout.contains(&format!("[N, V] = [16, 300] {dtype} {rows} rows")), "{stdout}");
    }
    let stdout = ok(&["bench", "--shape", "8,100", "--iters", "1", "--no-naive"]);
    assert!(!stdout.contains("candle composition"), "{stdout}");
}

/// `rlvr example --model` on the tiny model (no download needed): a padded dump of real
/// rollouts that `rlvr stats` reads, seeded, in f32 and bf16.
#[test]
fn example_with_a_model_writes_rollouts_that_stats_reads() {
    let dir = TempDir::new("model");
    let model = dir.path("tiny.gguf");
    rlvr_kernels::lm::tiny::write_tiny_llama(Path::new(&model), &Default::default()).unwrap();
    let dump = |name: &str, dtype: &str| {
        let path = dir.path(name);
        let stdout =
            ok(&["example", "--model", &model, "--out", &path, "--dtype", dtype, "--batch", "4", "--seq-len", "6"]);
        assert!(stdout.contains("wrote") && stdout.contains("4 responses"), "{stdout}");
        path
    };
    let (a, b, c) = (dump("a.safetensors", "f32"), dump("b.safetensors", "f32"), dump("c.safetensors", "bf16"));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "same seed, same file");
    let (f, h) = (Input::read(&a), Input::read(&c));
    let (t, v) = (f.shape[1], f.vocab());
    assert!(f.shape[0] == 4 && (1..=6).contains(&t) && h.shape == f.shape, "{:?} {:?}", f.shape, h.shape);
    assert!(f.logits.iter().zip(&h.logits).all(|(&x, &y)| bf16::from_f64(x).to_f64() == y), "bf16 = rounded f32");
    for seq in f.mask.chunks(t) {
        // The response from the first position on, then padding.
        let len = seq.iter().take_while(|&&m| m == 1.0).count();
        assert!(len >= 1 && seq[len..].iter().all(|&m| m == 0.0), "mask {seq:?}");
    }
    for input in [&a, &c] {
        let stdout = ok(&["stats", "--input", input]);
        assert!(stdout.contains(&format!("N = {} tokens, V = {v}", 4 * t)), "{stdout}");
        assert!(stdout.contains("log-PPL  4 sequences (4 with counted tokens)"), "{stdout}");
    }

    // `rlvr bench --rows real` times the model's own rows.
    let stdout = ok(&["bench", "--rows", "real", "--model", &model, "--shape", &format!("32,{v}"), "--iters", "1"]);
    assert!(stdout.contains(&format!("[N, V] = [32, {v}] bf16 real rows")), "{stdout}");
    fails(&["bench", "--rows", "real", "--model", &model, "--shape", "32,7"], 2, &["--shape V = 7", &v.to_string()]);

    // A dump whose logits are narrower than its targets' vocabulary (V cut to the largest
    // target id): a one-line error naming the target and V, not a panic.
    let top = *f.targets.iter().max().unwrap() as usize;
    let narrow: Vec<f32> = f.logits.chunks(v).flat_map(|row| row[..top].iter().map(|&x| x as f32)).collect();
    let targets: Vec<i64> = f.targets.iter().map(|&y| y as i64).collect();
    let mask: Vec<u8> = f.mask.iter().map(|&m| m as u8).collect();
    let cut = dir.path("cut.safetensors");
    write_st(
        &cut,
        &[
            ("logits", Dtype::F32, vec![4, t, top], bytes(&narrow)),
            ("targets", Dtype::I64, vec![4, t], bytes(&targets)),
            ("mask", Dtype::U8, vec![4, t], mask),
        ],
    );
    fails(&["stats", "--input", &cut], 1, &[&format!("target {top} at token"), &format!("vocabulary size {top}")]);

    // A model that is not there names the command that fetches it; --vocab is the model's own.
    let out = Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .args(["example", "--model", "smollm2", "--out", &dir.path("x.safetensors")])
        .env("RLVR_MODEL_DIR", dir.path("no-models"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bash scripts/fetch-model.sh") && !stderr.contains("panicked"), "{stderr}");
    fails(&["example", "--model", &model, "--out", &dir.path("y.safetensors"), "--vocab", "9"], 2, &["--vocab"]);
}
