//! `rlvr train --quick` and `rlvr rft --quick` end to end: the metrics file parses line by line,
//! has every record kind with finite values that obey the definitions (Pass@k monotone in k and
//! in [0, 1], Pass@1 = c/n, Pass@n = 1 − |unsolvable|/P, overlap arithmetic), every plot is a
//! valid PNG of non-trivial size drawn without system fonts, the same seed gives the same
//! evaluations, and bad flags are usage errors (exit 2) that name the setting.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rlvr-train-{}-{test}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `rlvr args` with fontconfig pointed at nothing, so a plot that needed system fonts
/// would fail here.
fn rlvr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .args(args)
        .env("FONTCONFIG_FILE", "/nonexistent/fonts.conf")
        .env("FONTCONFIG_PATH", "/nonexistent")
        .output()
        .expect("run rlvr")
}

fn ok(args: &[&str]) -> String {
    let out = rlvr(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rlvr {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

fn fails(args: &[&str], needles: &[&str]) {
    let out = rlvr(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "rlvr {args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "rlvr {args:?} panicked: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "rlvr {args:?}: stderr lacks `{needle}`:\n{stderr}");
    }
}

/// Every line of `metrics.jsonl` as a JSON object with a string `kind`.
fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
            assert!(v["kind"].is_string(), "line {} has no kind: {line}", i + 1);
            v
        })
        .collect()
}

fn of_kind<'a>(recs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["kind"] == kind).collect()
}

/// JSON has no NaN/inf (serde_json writes them as null), so a null is a non-finite value unless
/// the field is one of the documented optional ones.
const OPTIONAL: [&str; 4] = ["entropy_correct", "entropy_incorrect", "probe_pass_at_1", "target"];

fn assert_no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => {
            let field = path.rsplit('.').next().unwrap_or("");
            assert!(OPTIONAL.contains(&field), "null (non-finite?) value at {path}");
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| assert_no_nulls(x, &format!("{path}[{i}]"))),
        Value::Object(o) => o.iter().for_each(|(k, x)| assert_no_nulls(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn u(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("`{key}` is not an integer in {v}")) as usize
}

fn nums(v: &Value, key: &str) -> Vec<f64> {
    v[key].as_array().unwrap_or_else(|| panic!("`{key}` is not an array")).iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Pass@k, unsolvable set and position-entropy fields of one evaluation, against their
/// definitions.
fn check_eval(e: &Value, bins: usize) {
    let name = e["checkpoint"].as_str().unwrap();
    let n = u(e, "n");
    let counts: Vec<usize> = nums(e, "correct_counts").iter().map(|&c| c as usize).collect();
    let pass = nums(e, "pass_at_k");
    let ks: Vec<usize> = nums(e, "k").iter().map(|&k| k as usize).collect();
    assert_eq!(ks, (1..=pass.len()).collect::<Vec<_>>(), "{name}: k = 1..K");
    assert!(counts.iter().all(|&c| c <= n), "{name}: a count above n");
    // The product formula is exact up to f64 rounding of at most n factors: 1e-12 is far above
    // that (n·2^-53 ≈ 2e-15) and far below any real violation (steps are multiples of 1/(P·C(n,k))).
    const TOL: f64 = 1e-12;
    for (i, &p) in pass.iter().enumerate() {
        assert!((-TOL..=1.0 + TOL).contains(&p), "{name}: pass@{} = {p}", i + 1);
        if i > 0 {
            assert!(p + TOL >= pass[i - 1], "{name}: pass@k falls from k={} to k={}: {pass:?}", i, i + 1);
        }
    }
    let problems = counts.len() as f64;
    let mean_c = counts.iter().sum::<usize>() as f64 / (n as f64 * problems);
    assert!((pass[0] - mean_c).abs() < TOL, "{name}: pass@1 {} != mean c/n {mean_c}", pass[0]);
    let unsolvable = e["unsolvable"].as_array().unwrap();
    let zero = counts.iter().filter(|&&c| c == 0).count();
    if u(e, "unsolvable_k") == n {
        assert_eq!(unsolvable.len(), zero, "{name}: n-rollout unsolvable set != problems with c = 0");
        let want = 1.0 - zero as f64 / problems;
        assert!((pass[n - 1] - want).abs() < TOL, "{name}: pass@n {} != 1 - |unsolvable|/P {want}", pass[n - 1]);
    }
    let h = nums(e, "entropy_by_position");
    let hc = nums(e, "entropy_by_position_correct");
    let c = nums(e, "position_counts");
    let cc = nums(e, "position_counts_correct");
    assert!([h.len(), hc.len(), c.len(), cc.len()].iter().all(|&l| l == bins), "{name}: {bins} position bins");
    assert!(h.iter().chain(&hc).all(|&x| x >= 0.0), "{name}: negative entropy");
    assert!(c.iter().zip(&cc).all(|(a, b)| b <= a), "{name}: more correct tokens than tokens in a bin");
    // Every counted token lands in exactly one bin: Σ counts = mean length · P · n (the mean is
    // an f64 of an integer total, so 1e-6 relative is generous).
    let total = c.iter().sum::<f64>();
    let want = f(e, "response_len") * problems * n as f64;
    assert!((total - want).abs() <= 1e-6 * want.max(1.0), "{name}: bins hold {total} tokens, lengths say {want}");
    let g = f(e, "garbage_mass");
    assert!((0.0..=1.0 + 1e-6).contains(&g), "{name}: garbage mass {g}");
    assert!(f(e, "mean_branch") >= 1.0, "{name}: branch < 1");
}

/// Overlap arithmetic: |A| = |A∩B| + |A∖B|, |B| likewise, Jaccard = |A∩B| / |A∪B|.
fn check_overlap(o: &Value) {
    let (a, b, both) = (u(o, "unsolvable_a"), u(o, "unsolvable_b"), u(o, "both"));
    let (only_a, only_b) = (u(o, "only_a"), u(o, "only_b"));
    assert_eq!(a, both + only_a, "{o}");
    assert_eq!(b, both + only_b, "{o}");
    let union = both + only_a + only_b;
    let want = if union == 0 { 1.0 } else { both as f64 / union as f64 };
    assert!((f(o, "jaccard") - want).abs() < 1e-12, "{o}");
}

/// A valid PNG: the 8-byte signature, an IHDR chunk first with non-zero dimensions, an IEND
/// chunk last, and more than a blank canvas's worth of bytes.
fn check_png(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}: PNG signature", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}: IHDR first", path.display());
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(w >= 200 && h >= 200, "{}: {w}x{h}", path.display());
    assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND", "{}: IEND last", path.display());
    // A white canvas of this size compresses to ~2 KB; axes, text and lines add far more.
    assert!(bytes.len() > 10_000, "{}: only {} bytes", path.display(), bytes.len());
    (w, h)
}

/// The plot paths printed after `plots:`; each must exist inside `dir`.
fn printed_plots(stdout: &str, dir: &Path) -> Vec<PathBuf> {
    let after = stdout.split("plots:").nth(1).expect("stdout lists the plots");
    let plots: Vec<PathBuf> = after.lines().map(str::trim).filter(|l| l.ends_with(".png")).map(PathBuf::from).collect();
    assert!(!plots.is_empty(), "no plot paths in:\n{stdout}");
    for p in &plots {
        assert!(p.starts_with(dir), "{} is outside the run dir", p.display());
    }
    plots
}

#[test]
fn train_quick_writes_metrics_and_plots() {
    let tmp = TempDir::new("train");
    let stdout = ok(&["train", "--quick", "--out-dir", tmp.path(), "--name", "t"]);
    let dir = tmp.0.join("t");
    let recs = records(&dir);
    for r in &recs {
        assert_no_nulls(r, r["kind"].as_str().unwrap());
    }
    assert_eq!(of_kind(&recs, "config").len(), 1);
    assert!(!of_kind(&recs, "sft").is_empty());
    // Quick: 4 shapings × 4 steps.
    let steps = of_kind(&recs, "grpo");
    assert_eq!(steps.len(), 16);
    for s in &steps {
        assert!((0.0..=1.0).contains(&f(s, "reward")), "{s}");
        assert!(f(s, "entropy") >= 0.0 && f(s, "branch") >= 1.0, "{s}");
        assert!((0.0..=1.0).contains(&f(s, "clip_frac")), "{s}");
        // k3 ≥ 0 exactly; f32 rounding of e^u − u − 1 near u = 0 can dip by a few ulp.
        assert!(f(s, "kl") >= -1e-6, "{s}");
        assert!((0.0..=1.0 + 1e-6).contains(&f(s, "garbage_mass")), "{s}");
    }
    let evals = of_kind(&recs, "eval");
    let names: Vec<&str> = evals.iter().map(|e| e["checkpoint"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "sft", "grpo-none", "grpo-ppl", "grpo-position", "grpo-both"]);
    evals.iter().for_each(|e| check_eval(e, 10));
    // Every pair of the six checkpoints.
    let overlaps = of_kind(&recs, "overlap");
    assert_eq!(overlaps.len(), 15);
    overlaps.iter().for_each(|o| check_overlap(o));

    let plots = printed_plots(&stdout, &dir);
    let names: Vec<&str> = plots.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    for want in ["reward.png", "entropy.png", "entropy_correct_incorrect.png", "diagnostics.png", "pass_at_k.png"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(names.contains(&"entropy_position.png"));
    for p in &plots {
        check_png(p);
    }
    for col in ["pass@1", "pass@4", "pass@16", "unsolv@16", "grpo-both", "jaccard"] {
        assert!(stdout.contains(col), "summary lacks {col}:\n{stdout}");
    }
}

#[test]
fn rft_quick_compares_every_strategy() {
    let tmp = TempDir::new("rft");
    let stdout = ok(&["rft", "--quick", "--out-dir", tmp.path(), "--name", "r"]);
    let dir = tmp.0.join("r");
    let recs = records(&dir);
    for r in &recs {
        assert_no_nulls(r, r["kind"].as_str().unwrap());
    }
    let sel = of_kind(&recs, "rft_select");
    let names: Vec<&str> = sel.iter().map(|s| s["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "noise", "high-entropy", "high-rbf", "noise+high-rbf"]);
    let selected = |i: usize| (u(sel[i], "selected"), u(sel[i], "incorrect"));
    // Baseline = all correct; the top-fraction strategies keep a subset of them; noise adds
    // only incorrect responses.
    let (all_correct, wrong) = selected(0);
    assert_eq!(wrong, 0);
    for i in [2, 3] {
        assert!(selected(i).0 <= all_correct && selected(i).1 == 0, "{}", sel[i]);
    }
    assert!(selected(1).0 >= all_correct && selected(1).0 - selected(1).1 == all_correct, "{}", sel[1]);
    let evals = of_kind(&recs, "eval");
    let names: Vec<&str> = evals.iter().map(|e| e["checkpoint"].as_str().unwrap()).collect();
    assert_eq!(names, ["sft", "rft-baseline", "rft-noise", "rft-high-entropy", "rft-high-rbf", "rft-noise+high-rbf"]);
    evals.iter().for_each(|e| check_eval(e, 10));
    for p in printed_plots(&stdout, &dir) {
        check_png(&p);
    }
    for s in ["baseline", "noise+high-rbf", "pass@1", "pass@16"] {
        assert!(stdout.contains(s), "rft table lacks {s}:\n{stdout}");
    }
}

/// The same seed gives the same rollouts, updates and evaluations (sampling draws its uniforms
/// in a fixed order; the ops and candle's matmuls do not depend on thread timing).
#[test]
fn same_seed_same_results() {
    let tmp = TempDir::new("seed");
    let evals = |name: &str| -> Vec<Value> {
        ok(&["train", "--quick", "--shaping", "none", "--out-dir", tmp.path(), "--name", name, "--seed", "3"]);
        records(&tmp.0.join(name))
            .into_iter()
            .filter(|r| r["kind"] == "eval")
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("seconds");
                r
            })
            .collect()
    };
    assert_eq!(evals("a"), evals("b"));
}

/// The embedded font is the only one: the binary names no fontconfig library.
#[test]
fn binary_does_not_use_fontconfig() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_rlvr")).unwrap();
    assert!(!bin.windows(10).any(|w| w == b"fontconfig"), "the rlvr binary references fontconfig");
}

#[test]
fn bad_flags_are_usage_errors() {
    let tmp = TempDir::new("bad");
    let out = tmp.path();
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["train", "--quick", "--out-dir", out];
        args.extend_from_slice(extra);
        fails(&args, needles);
    };
    train(&["--no-such-flag"], &["--no-such-flag"]);
    train(&["--group-size", "0"], &["group-size", ">= 2"]);
    train(&["--group-size", "1"], &["group-size", ">= 2"]);
    train(&["--steps", "0"], &["steps", ">= 1"]);
    train(&["--eval-k", "17"], &["eval-k", "k <= n"]);
    train(&["--eval-samples", "4", "--eval-k", "8"], &["eval-k", "k <= n"]);
    train(&["--vocab", "10"], &["vocab", ">= 15"]);
    train(&["--heads", "3"], &["heads", "divide d_model"]);
    train(&["--digits", "0"], &["digits"]);
    train(&["--digits", "1"], &["digits", "too few distinct problems"]);
    train(&["--lr", "0"], &["lr", "> 0"]);
    train(&["--lr", "nan"], &["lr"]);
    train(&["--clip-low", "1.5"], &["clip_low"]);
    train(&["--kl-coef", "-1"], &["kl.coef"]);
    train(&["--minibatches", "3"], &["minibatches", "divide --prompts"]);
    train(&["--shaping", "entropy"], &["entropy"]);
    train(&["--sft-target", "0"], &["sft-target"]);
    train(&["--name", "a/b"], &["name"]);
    #[cfg(not(feature = "cuda"))]
    train(&["--device", "cuda"], &["cuda"]);
    let rft = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["rft", "--quick", "--out-dir", out];
        args.extend_from_slice(extra);
        fails(&args, needles);
    };
    rft(&["--noise", "2"], &["noise", "[0, 1]"]);
    rft(&["--top-fraction", "0"], &["top fraction", "(0, 1]"]);
    rft(&["--rollouts", "0"], &["rollouts"]);
    rft(&["--eval-k", "32"], &["eval-k"]);
    // Nothing was run, so nothing was written.
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0, "a rejected run wrote output");
}
