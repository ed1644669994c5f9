//! Real-rollout logits dumps (`lm::dump`): the padded `[B, T, V]` layout (zeros in padding, the
//! mask, targets = the sampled ids), seeded files, bf16 as the f32 dump rounded to nearest even,
//! and `rlvr stats` on a dump agreeing with the statistics the sampler recorded while sampling.
//! On the tiny model written here; on SmolLM2-135M-Instruct too when it has been fetched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;
use half::bf16;
use rlvr_kernels::lm::dump::{prompts, real_rows, sample_dump, Dump, DumpSettings, RealRows};
use rlvr_kernels::lm::generate::Response;
use rlvr_kernels::lm::llama::Llama;
use rlvr_kernels::lm::tiny::{write_tiny_llama, TinySpec};
use rlvr_kernels::lm::tokenizer::Tokenizer;
use rlvr_kernels::lm::{self, gguf};
use rlvr_kernels::{cpu, DType, Error, TokenStatsConfig};
use safetensors::{Dtype, SafeTensors};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rlvr-dump-{}-{test}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny(dir: &TempDir) -> (Llama, Tokenizer) {
    let path = dir.path("tiny.gguf");
    write_tiny_llama(&path, &TinySpec::default()).unwrap();
    lm::load(&path, &Device::Cpu).unwrap()
}

/// Small settings for the tiny model: 6 responses, 2 per prompt, at most 8 tokens, batches of 4
/// (so the sampler's chunks are exercised).
fn small(seed: u64) -> DumpSettings {
    DumpSettings { responses: 6, samples: 2, max_new: 8, batch: 4, seed, ..Default::default() }
}

/// A tensor of a safetensors file: dtype, shape, bytes.
fn tensor(path: &Path, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let data = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

#[test]
fn layout_pads_with_zeros_and_masks_exactly_the_response_tokens() {
    // Three responses of 3, 1 and 2 tokens over V = 4: T = 3, every logit numbered.
    let v = 4;
    let response = |tokens: Vec<u32>, first: f32| Response {
        logits: Some((0..tokens.len() * v).map(|i| first + i as f32).collect()),
        tokens,
        ..Default::default()
    };
    let responses = vec![response(vec![3, 1, 2], 1.0), response(vec![2], 100.0), response(vec![0, 3], 200.0)];
    let d = Dump::from_responses(responses, v).unwrap();
    assert_eq!((d.batch, d.seq_len, d.vocab), (3, 3, 4));
    assert_eq!(d.targets, [3, 1, 2, 2, 0, 0, 0, 3, 0]);
    assert_eq!(d.mask, [1, 1, 1, 1, 0, 0, 1, 1, 0]);
    let row = |b: usize, t: usize| &d.logits[(b * 3 + t) * v..][..v];
    assert_eq!(row(0, 2), [9.0, 10.0, 11.0, 12.0]);
    assert_eq!(row(1, 0), [100.0, 101.0, 102.0, 103.0]);
    assert_eq!(row(2, 1), [204.0, 205.0, 206.0, 207.0]);
    for (b, t) in [(1, 1), (1, 2), (2, 2)] {
        assert_eq!(row(b, t), [0.0; 4], "padding ({b}, {t})");
    }
    assert!(d.responses.iter().all(|r| r.logits.is_none()), "logits are moved, not copied");
    let rows = d.response_rows();
    assert_eq!((rows.rows(), rows.targets.clone()), (6, vec![3, 1, 2, 2, 0, 3]));
    assert_eq!(&rows.logits[4 * v..5 * v], [200.0, 201.0, 202.0, 203.0]);

    // Responses without their logits, or with an id outside V, are errors, not a bad file.
    let bare = vec![Response { tokens: vec![1], ..Default::default() }];
    assert!(matches!(Dump::from_responses(bare, v), Err(Error::ShapeMismatch { .. })));
    let outside = vec![response(vec![1, 4], 0.0)];
    assert!(matches!(Dump::from_responses(outside, v), Err(Error::TargetOutOfRange { token: 1, target: 4, vocab: 4 })));
}

#[test]
fn sampled_dump_holds_the_sampled_ids_and_logits_in_the_stats_format() {
    let dir = TempDir::new("layout");
    let (model, tok) = tiny(&dir);
    let v = model.config().vocab;
    let mut ticks = Vec::new();
    let d = sample_dump(&model, &tok, &small(3), &mut |n| ticks.push(n)).unwrap();
    assert_eq!((d.batch, d.vocab), (6, v));
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "progress counts tokens across chunks: {ticks:?}");
    assert_eq!(*ticks.last().unwrap(), d.counted());
    for (b, r) in d.responses.iter().enumerate() {
        let len = r.tokens.len();
        assert!((1..=8).contains(&len) && len <= d.seq_len);
        assert_eq!(&d.targets[b * d.seq_len..][..len], &r.tokens[..], "targets = sampled ids");
        assert!(d.mask[b * d.seq_len..][..d.seq_len].iter().enumerate().all(|(t, &m)| m == u8::from(t < len)));
        assert!(d.logits[(b * d.seq_len + len) * v..(b + 1) * d.seq_len * v].iter().all(|&z| z == 0.0));
    }
    // Prompts come in pairs: responses 0 and 1 answer the same question, 2 another.
    let p = prompts(&tok, &small(3)).unwrap();
    assert!(p.len() == 6 && p[0] == p[1] && p[1] != p[2] && p[2] == p[3]);

    let path = dir.path("d.safetensors");
    d.write(&path, DType::F32).unwrap();
    let (dt, shape, bytes) = tensor(&path, "logits");
    assert_eq!((dt, shape), (Dtype::F32, vec![6, d.seq_len, v]));
    assert_eq!(bytes, bytemuck::cast_slice::<f32, u8>(&d.logits));
    let (dt, shape, bytes) = tensor(&path, "targets");
    assert_eq!((dt, shape), (Dtype::I64, vec![6, d.seq_len]));
    assert_eq!(
        bytemuck::pod_collect_to_vec::<u8, i64>(&bytes),
        d.targets.iter().map(|&t| t as i64).collect::<Vec<_>>()
    );
    assert_eq!(tensor(&path, "mask"), (Dtype::U8, vec![6, d.seq_len], d.mask.clone()));
    assert_eq!(RealRows::read(&path).unwrap(), d.response_rows(), "read back: the response rows");
}

#[test]
fn a_seed_gives_the_same_file() {
    let dir = TempDir::new("seed");
    let (model, tok) = tiny(&dir);
    let file = |name: &str, seed: u64| {
        let p = dir.path(name);
        sample_dump(&model, &tok, &small(seed), &mut |_| {}).unwrap().write(&p, DType::BF16).unwrap();
        std::fs::read(p).unwrap()
    };
    let (a, b, c) = (file("a", 5), file("b", 5), file("c", 6));
    assert!(a == b, "same seed, same bytes");
    assert!(a != c, "another seed, another file");
}

#[test]
fn bf16_and_f16_dumps_are_the_f32_dump_rounded_to_nearest_even() {
    // half's conversion rounds ties to even: 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7.
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F80_8000)).to_bits(), 0x3F80);
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F81_8000)).to_bits(), 0x3F82);
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F80_8001)).to_bits(), 0x3F81);

    let dir = TempDir::new("bf16");
    let (model, tok) = tiny(&dir);
    let d = sample_dump(&model, &tok, &small(9), &mut |_| {}).unwrap();
    let (p32, p16, ph) = (dir.path("f32"), dir.path("bf16"), dir.path("f16"));
    d.write(&p32, DType::F32).unwrap();
    d.write(&p16, DType::BF16).unwrap();
    d.write(&ph, DType::F16).unwrap();
    let (dt, shape, bytes) = tensor(&p16, "logits");
    assert_eq!((dt, shape), (Dtype::BF16, vec![d.batch, d.seq_len, d.vocab]));
    let want: Vec<u16> = d.logits.iter().map(|&z| bf16::from_f32(z).to_bits()).collect();
    assert_eq!(bytemuck::pod_collect_to_vec::<u8, u16>(&bytes), want);
    let want: Vec<u16> = d.logits.iter().map(|&z| half::f16::from_f32(z).to_bits()).collect();
    assert_eq!(bytemuck::pod_collect_to_vec::<u8, u16>(&tensor(&ph, "logits").2), want);
    for name in ["targets", "mask"] {
        assert_eq!(tensor(&p16, name), tensor(&p32, name), "{name}: the same in every dtype");
    }

    // The statistics move by no more than the rounding allows: every logit moves by at most
    // eps = max|z|·2^-8 (bf16 keeps 8 significant bits), so lse by at most eps and logp = z_y − lse by at most 2·eps.
    let (r32, r16) = (RealRows::read(&p32).unwrap(), RealRows::read(&p16).unwrap());
    assert_eq!(r32.targets, r16.targets);
    let eps = r32.logits.iter().fold(0f32, |m, z| m.max(z.abs())) / 256.0;
    let cfg = TokenStatsConfig::default();
    let s32 = cpu::token_stats(&r32.logits, d.vocab, Some(&r32.targets), &cfg).unwrap();
    let s16 = cpu::token_stats(&r16.logits, d.vocab, Some(&r16.targets), &cfg).unwrap();
    for i in 0..r32.rows() {
        // 1e-5: the f32 rounding of two lse computations on top of the bound.
        let (a, b) = (s32.lse[i], s16.lse[i]);
        assert!((a - b).abs() <= eps + 1e-5, "lse of row {i}: {a} vs {b}, eps {eps}");
        let (a, b) = (s32.logp.as_ref().unwrap()[i], s16.logp.as_ref().unwrap()[i]);
        assert!((a - b).abs() <= 2.0 * eps + 1e-5, "logp of row {i}: {a} vs {b}");
    }
}

/// Per-token (entropy, branch, logp) of the masked rows, as `rlvr stats --out FILE.csv` prints them.
fn rlvr_stats(input: &Path, csv: &Path) -> Vec<(f32, u32, f32)> {
    let out = Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .args(["stats", "--input", input.to_str().unwrap(), "--out", csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "rlvr stats: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (e, k, l, m) = (col("entropy"), col("branch"), col("logp"), col("mask"));
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f[m] == "1")
        .map(|f| (f[e].parse().unwrap(), f[k].parse().unwrap(), f[l].parse().unwrap()))
        .collect()
}

/// `rlvr stats` on the f32 dump against the sampler's own statistics, response by response.
/// Both run the fused CPU statistics on the same f32 logits, so they should agree to the last
/// bit; 1e-4·(1 + |x|) allows for the sampler's path through candle (another chunking of rows).
fn check_stats_match_sampler(d: &Dump, dir: &TempDir) {
    let path = dir.path("dump-f32.safetensors");
    d.write(&path, DType::F32).unwrap();
    let got = rlvr_stats(&path, &dir.path("stats.csv"));
    let want: Vec<(f32, u32, f32)> =
        d.responses.iter().flat_map(|r| (0..r.tokens.len()).map(|t| (r.entropy[t], r.branch[t], r.logp[t]))).collect();
    assert_eq!(got.len(), want.len(), "one statistic per response token");
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
    let (mut dh, mut dl) = (0f32, 0f32);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(g.0, w.0) && close(g.2, w.2) && g.1 == w.1, "token {i}: rlvr stats {g:?}, sampler {w:?}");
        (dh, dl) = (dh.max((g.0 - w.0).abs()), dl.max((g.2 - w.2).abs()));
    }
    println!("{} tokens: max |entropy difference| {dh:e}, max |logp difference| {dl:e}", got.len());
}

#[test]
fn rlvr_stats_on_the_dump_agrees_with_the_sampler() {
    let dir = TempDir::new("agree");
    let (model, tok) = tiny(&dir);
    let d = sample_dump(&model, &tok, &small(11), &mut |_| {}).unwrap();
    check_stats_match_sampler(&d, &dir);
}

#[test]
fn real_rows_are_the_response_rows_of_successive_rounds() {
    let dir = TempDir::new("rows");
    let (model, tok) = tiny(&dir);
    let s = DumpSettings { responses: 2, samples: 1, max_new: 4, batch: 2, seed: 21, ..Default::default() };
    // At most 8 rows per round: 20 rows need at least three rounds.
    let rows = real_rows(&model, &tok, &s, 20, &mut |_| {}).unwrap();
    assert_eq!((rows.rows(), rows.logits.len()), (20, 20 * model.config().vocab));
    let first = sample_dump(&model, &tok, &s, &mut |_| {}).unwrap().response_rows();
    let n = first.rows();
    assert_eq!(&rows.targets[..n], &first.targets[..], "round 0 is the dump of the seed");
    assert_eq!(&rows.logits[..first.logits.len()], &first.logits[..]);

    let path = dir.path("rows.safetensors");
    rows.write(&path, DType::F32, "test").unwrap();
    assert_eq!(tensor(&path, "logits").1, vec![20, model.config().vocab]);
    assert_eq!(RealRows::read(&path).unwrap(), rows);
}

#[test]
fn a_target_outside_the_vocabulary_is_an_error_when_read() {
    let dir = TempDir::new("outside");
    let rows = RealRows { vocab: 3, logits: vec![0.0; 6], targets: vec![1, 3] };
    let path = dir.path("bad.safetensors");
    rows.write(&path, DType::F32, "test").unwrap();
    assert_eq!(RealRows::read(&path), Err(Error::TargetOutOfRange { token: 1, target: 3, vocab: 3 }));
}

#[test]
fn smollm2_dump_when_fetched() {
    let Ok(path) = gguf::resolve("smollm2") else {
        println!("skipped: model not fetched (bash scripts/fetch-model.sh)");
        return;
    };
    let dir = TempDir::new("smollm2");
    let (model, tok) = lm::load(&path, &Device::Cpu).unwrap();
    let s = DumpSettings { responses: 4, samples: 2, max_new: 12, seed: 1, ..Default::default() };
    let d = sample_dump(&model, &tok, &s, &mut |_| {}).unwrap();
    assert_eq!((d.batch, d.vocab), (4, 49152));
    for (b, r) in d.responses.iter().enumerate() {
        assert_eq!(&d.targets[b * d.seq_len..][..r.tokens.len()], &r.tokens[..]);
        assert_eq!(r.finished, r.tokens.last() == Some(&tok.eos_id()));
    }
    check_stats_match_sampler(&d, &dir);
    let p16 = dir.path("dump-bf16.safetensors");
    d.write(&p16, DType::BF16).unwrap();
    assert_eq!(RealRows::read(&p16).unwrap().rows(), d.counted());
}
