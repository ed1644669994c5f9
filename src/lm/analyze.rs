//! `rlvr analyze`: the exploration analysis of arXiv 2508.07534 on a real chat model.
//!
//! n responses per problem at temperature T (KV-cached, batched), verified exactly; from the
//! fused token statistics over the model's full vocabulary: Pass@k for k = 1..n, the n-rollout
//! unsolvable set, entropy / branching factor / log-prob per token split by correct vs incorrect
//! responses and by relative position, sequence log-PPL of correct vs incorrect responses, and
//! the RFT selections of DESIGN.md §4 with what each selects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::generate::{sample, Response, SampleSettings};
use super::llama::Llama;
use super::task::{is_correct, problems, Problem, TaskKind};
use super::tokenizer::Tokenizer;
use crate::cpu;
use crate::error::{Error, Result};
use crate::metrics::{entropy_by_position, mean_by_correctness, pass_at_k_curve};
use crate::rft::{select, RftStrategy, RolloutRecord};
use crate::train::log::{io_error, MetricsLog, Record};
use crate::train::plot::{save, Chart, Series};
use crate::train::Progress;

/// Settings of one analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzeConfig {
    /// The GGUF file.
    pub model: PathBuf,
    /// Which questions.
    pub task: TaskKind,
    /// Problems.
    pub problems: usize,
    /// Responses per problem n (Pass@k for k = 1..n; the unsolvable set at k = n).
    pub samples: usize,
    /// Most tokens per response.
    pub max_new: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Rows per forward batch.
    pub batch: usize,
    /// Seed of the problems and of the sampler.
    pub seed: u64,
    /// Relative-position bins.
    pub bins: usize,
    /// Output folder (`metrics.jsonl`, PNGs).
    pub out_dir: PathBuf,
}

impl AnalyzeConfig {
    /// The defaults: 40 one-digit additions, 16 samples each, ≤ 10 minutes on 2 cores.
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            task: TaskKind::default(),
            problems: 40,
            samples: 16,
            max_new: 40,
            temperature: 1.0,
            batch: 128,
            seed: 0,
            bins: 10,
            out_dir: PathBuf::from("runs/analyze"),
        }
    }

    /// The same pipeline, smaller: under 2 minutes on 2 cores.
    pub fn quick(model: PathBuf) -> Self {
        Self { problems: 6, samples: 16, max_new: 32, ..Self::new(model) }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: usize, why| Err(Error::InvalidConfig { name, value: value.to_string(), why });
        if self.samples < 2 {
            return bad("samples", self.samples, "must be >= 2 (Pass@k and the correct/incorrect split)");
        }
        if self.bins == 0 {
            return bad("bins", 0, "must be >= 1");
        }
        SampleSettings {
            max_new: self.max_new,
            temperature: self.temperature,
            batch: self.batch,
            ..Default::default()
        }
        .validate()?;
        if self.problems == 0 || self.problems > self.task.distinct() {
            return bad("problems", self.problems, "must be >= 1 and at most the task's distinct problems");
        }
        Ok(())
    }
}

/// Means of one per-token quantity over correct and incorrect responses.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Split {
    /// Over the tokens of correct responses.
    pub correct: Option<f64>,
    /// Over the tokens of incorrect responses.
    pub incorrect: Option<f64>,
    /// Over every response token.
    pub all: Option<f64>,
}

/// What one RFT strategy selects from the sampled responses.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RftOutcome {
    /// Strategy name.
    pub strategy: String,
    /// Responses selected.
    pub selected: usize,
    /// Of which incorrect (noise).
    pub incorrect: usize,
    /// Problems with at least one selected response.
    pub problems: usize,
    /// Mean over the selected responses of their mean token entropy.
    pub mean_entropy: f64,
    /// Mean over the selected responses of their mean branching factor.
    pub mean_branch: f64,
    /// Mean over the selected responses of their log-PPL.
    pub mean_log_ppl: f64,
    /// Mean length (tokens) of the selected responses.
    pub mean_len: f64,
}

/// The analysis' results (the `"summary"` line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeReport {
    /// Problems.
    pub problems: usize,
    /// Responses per problem.
    pub samples: usize,
    /// Response tokens sampled (end-of-turn tokens included).
    pub tokens: usize,
    /// Responses cut at the token limit (counted incorrect).
    pub unfinished: usize,
    /// Pass@k for k = 1..n (unbiased estimator, averaged over problems).
    pub pass_at_k: Vec<f64>,
    /// Correct responses per problem.
    pub correct_counts: Vec<usize>,
    /// Problems with no correct response among their n (the n-rollout unsolvable set).
    pub unsolvable: BTreeSet<usize>,
    /// Token entropy (nats).
    pub entropy: Split,
    /// Rollout Branching Factor (top-p 0.95).
    pub branch: Split,
    /// Log-prob of the sampled token.
    pub logp: Split,
    /// Sequence log-PPL (−mean log-prob of a response), averaged over responses.
    pub log_ppl: Split,
    /// Entropy per relative-position bin: (correct, incorrect) means, `None` for an empty bin.
    pub entropy_by_position: Vec<(Option<f64>, Option<f64>)>,
    /// Branching factor per relative-position bin: (correct, incorrect).
    pub branch_by_position: Vec<(Option<f64>, Option<f64>)>,
    /// The RFT strategies' selections.
    pub rft: Vec<RftOutcome>,
    /// Sampling wall time (seconds).
    pub sample_seconds: f64,
    /// Whole run's wall time (seconds).
    pub seconds: f64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// One response, decoded and verified (a `"response"` line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
struct ResponseRecord {
    problem: usize,
    text: String,
    correct: bool,
    finished: bool,
    tokens: usize,
    mean_entropy: f64,
    mean_branch: f64,
    log_ppl: Option<f32>,
}

/// Runs the analysis: loads the model, samples, verifies, computes and writes everything.
pub fn run_analyze(cfg: &AnalyzeConfig, progress: &mut dyn Progress) -> Result<AnalyzeReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let device = candle_core::Device::Cpu;
    let (model, tok) = super::load(&cfg.model, &device)?;
    analyze_with(&model, &tok, cfg, progress, t0)
}

/// [`run_analyze`] with a model already loaded (tests use a tiny one).
pub fn analyze_with(
    model: &Llama,
    tok: &Tokenizer,
    cfg: &AnalyzeConfig,
    progress: &mut dyn Progress,
    t0: Instant,
) -> Result<AnalyzeReport> {
    cfg.validate()?;
    let set = problems(cfg.task, cfg.problems, cfg.seed)?;
    let n = cfg.samples;
    let prompts: Vec<Vec<u32>> =
        set.iter().flat_map(|p| std::iter::repeat_n(tok.encode(&tok.chat_prompt(None, &p.question)), n)).collect();
    let settings =
        SampleSettings { max_new: cfg.max_new, temperature: cfg.temperature, batch: cfg.batch, ..Default::default() };
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5EED_A11A);
    let ts = Instant::now();
    progress.start("sampling (tokens)", (prompts.len() * cfg.max_new) as u64);
    let mut last = 0usize;
    let responses = {
        let mut tick = |done: usize| {
            // Tokens within the current chunk restart at 0 for each chunk.
            if done < last {
                last = 0;
            }
            for _ in last..done {
                progress.step("");
            }
            last = done;
        };
        sample(model, &prompts, tok.eos_id(), &settings, &mut rng, &mut tick)?
    };
    progress.finish();
    let sample_seconds = ts.elapsed().as_secs_f64();
    let v = Verified::new(&set, &responses, tok, cfg)?;
    let mut report = summarize(&set, &responses, &v, cfg)?;
    report.sample_seconds = sample_seconds;
    write_outputs(&set, &responses, &v, cfg, &mut report)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Per-token arrays in the padded `[B, R]` view (R = `max_new`), with the response mask.
struct Padded {
    r: usize,
    mask: Vec<f32>,
    entropy: Vec<f32>,
    branch: Vec<f32>,
    logp: Vec<f32>,
}

fn padded(responses: &[Response], r: usize) -> Padded {
    let b = responses.len();
    let mut p = Padded {
        r,
        mask: vec![0.0; b * r],
        entropy: vec![0.0; b * r],
        branch: vec![0.0; b * r],
        logp: vec![0.0; b * r],
    };
    for (i, resp) in responses.iter().enumerate() {
        for t in 0..resp.tokens.len() {
            let at = i * r + t;
            p.mask[at] = 1.0;
            p.entropy[at] = resp.entropy[t];
            p.branch[at] = resp.branch[t] as f32;
            p.logp[at] = resp.logp[t];
        }
    }
    p
}

/// Each response decoded and verified once, and the padded per-token view with its log-PPLs.
struct Verified {
    text: Vec<String>,
    correct: Vec<bool>,
    padded: Padded,
    log_ppl: Vec<Option<f32>>,
}

impl Verified {
    fn new(set: &[Problem], responses: &[Response], tok: &Tokenizer, cfg: &AnalyzeConfig) -> Result<Self> {
        let text: Vec<String> = responses.iter().map(|r| r.text(tok, tok.eos_id())).collect();
        let correct =
            responses.iter().zip(&text).map(|(r, t)| is_correct(&set[r.prompt / cfg.samples], t, r.finished)).collect();
        let padded = padded(responses, cfg.max_new);
        let log_ppl = cpu::log_ppl(&padded.logp, &padded.mask, padded.r)?;
        Ok(Self { text, correct, padded, log_ppl })
    }
}

fn token_split(values: &[f32], mask: &[f32], r: usize, correct: &[bool]) -> Split {
    let mean = |keep: &dyn Fn(usize) -> bool| {
        let (mut s, mut c) = (0.0f64, 0usize);
        for (t, (&v, &m)) in values.iter().zip(mask).enumerate() {
            if m != 0.0 && keep(t / r) {
                s += v as f64;
                c += 1;
            }
        }
        (c > 0).then(|| s / c as f64)
    };
    Split { correct: mean(&|i| correct[i]), incorrect: mean(&|i| !correct[i]), all: mean(&|_| true) }
}

fn by_position(values: &[f32], p: &Padded, correct: &[bool], bins: usize) -> Result<Vec<(Option<f64>, Option<f64>)>> {
    let masked = |want: bool| -> Vec<f32> {
        p.mask.iter().enumerate().map(|(t, &m)| if correct[t / p.r] == want { m } else { 0.0 }).collect()
    };
    let c = entropy_by_position(values, &masked(true), p.r, bins)?;
    let w = entropy_by_position(values, &masked(false), p.r, bins)?;
    Ok(c.into_iter().zip(w).map(|((a, na), (b, nb))| ((na > 0).then_some(a), (nb > 0).then_some(b))).collect())
}

fn summarize(set: &[Problem], responses: &[Response], v: &Verified, cfg: &AnalyzeConfig) -> Result<AnalyzeReport> {
    let n = cfg.samples;
    let correct = v.correct.as_slice();
    let correct_counts: Vec<usize> = correct.chunks(n).map(|c| c.iter().filter(|&&x| x).count()).collect();
    let ks: Vec<usize> = (1..=n).collect();
    let pass_at_k = pass_at_k_curve(&correct_counts, n, &ks)?;
    let unsolvable = correct_counts.iter().enumerate().filter(|(_, &c)| c == 0).map(|(i, _)| i).collect();
    let p = &v.padded;
    let ppl: Vec<f64> = v.log_ppl.iter().map(|x| x.map_or(f64::NAN, |v| v as f64)).collect();
    let (ppl_c, ppl_w) = mean_by_correctness(&ppl, correct)?;
    let ppl_all = ppl.iter().sum::<f64>() / ppl.len().max(1) as f64;
    let records: Vec<RolloutRecord> = responses
        .iter()
        .zip(correct)
        .map(|(r, &c)| RolloutRecord {
            problem: r.prompt / n,
            correct: c,
            mean_entropy: mean(r.entropy.iter().map(|&x| x as f64)),
            mean_branch: mean(r.branch.iter().map(|&x| x as f64)),
        })
        .collect();
    let rft = crate::train::rft_run::strategies(crate::rft::DEFAULT_NOISE, crate::rft::DEFAULT_TOP_FRACTION)
        .into_iter()
        .map(|(name, s)| rft_outcome(name, &s, &records, &ppl, responses, cfg.seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(AnalyzeReport {
        problems: set.len(),
        samples: n,
        tokens: responses.iter().map(|r| r.tokens.len()).sum(),
        unfinished: responses.iter().filter(|r| !r.finished).count(),
        pass_at_k,
        correct_counts,
        unsolvable,
        entropy: token_split(&p.entropy, &p.mask, p.r, correct),
        branch: token_split(&p.branch, &p.mask, p.r, correct),
        logp: token_split(&p.logp, &p.mask, p.r, correct),
        log_ppl: Split { correct: ppl_c, incorrect: ppl_w, all: Some(ppl_all) },
        entropy_by_position: by_position(&p.entropy, p, correct, cfg.bins)?,
        branch_by_position: by_position(&p.branch, p, correct, cfg.bins)?,
        rft,
        sample_seconds: 0.0,
        seconds: 0.0,
        files: Vec::new(),
    })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0, 0usize);
    for x in xs {
        s += x;
        c += 1;
    }
    if c == 0 {
        0.0
    } else {
        s / c as f64
    }
}

fn rft_outcome(
    name: &str,
    s: &RftStrategy,
    records: &[RolloutRecord],
    ppl: &[f64],
    responses: &[Response],
    seed: u64,
) -> Result<RftOutcome> {
    let picked = select(records, s, seed)?;
    let problems: BTreeSet<usize> = picked.iter().map(|&i| records[i].problem).collect();
    Ok(RftOutcome {
        strategy: name.to_string(),
        selected: picked.len(),
        incorrect: picked.iter().filter(|&&i| !records[i].correct).count(),
        problems: problems.len(),
        mean_entropy: mean(picked.iter().map(|&i| records[i].mean_entropy)),
        mean_branch: mean(picked.iter().map(|&i| records[i].mean_branch)),
        mean_log_ppl: mean(picked.iter().map(|&i| ppl[i])),
        mean_len: mean(picked.iter().map(|&i| responses[i].tokens.len() as f64)),
    })
}

fn write_outputs(
    set: &[Problem],
    responses: &[Response],
    v: &Verified,
    cfg: &AnalyzeConfig,
    report: &mut AnalyzeReport,
) -> Result<()> {
    let mut log = MetricsLog::create(&cfg.out_dir)?;
    let config = serde_json::json!({
        "command": "analyze",
        "model": cfg.model.display().to_string(),
        "task": cfg.task.name(),
        "problems": cfg.problems,
        "samples": cfg.samples,
        "max_new": cfg.max_new,
        "temperature": cfg.temperature,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "bins": cfg.bins,
    });
    log.write(&Record::Config(&config))?;
    let n = cfg.samples;
    for (i, r) in responses.iter().enumerate() {
        let rec = ResponseRecord {
            problem: r.prompt / n,
            correct: v.correct[i],
            finished: r.finished,
            tokens: r.tokens.len(),
            mean_entropy: mean(r.entropy.iter().map(|&x| x as f64)),
            mean_branch: mean(r.branch.iter().map(|&x| x as f64)),
            log_ppl: v.log_ppl[i],
            text: v.text[i].clone(),
        };
        write_json(&mut log, "response", &rec)?;
    }
    for (i, (pr, &c)) in set.iter().zip(&report.correct_counts).enumerate() {
        let v = serde_json::json!({ "id": i, "question": pr.question, "answer": pr.answer, "correct": c, "n": n });
        write_json(&mut log, "problem", &v)?;
    }
    report.files = figures(&cfg.out_dir, report, responses, v, cfg)?;
    report.files.insert(0, log.path().to_path_buf());
    write_json(&mut log, "summary", &*report)?;
    Ok(())
}

/// One line `{"kind": kind, ...fields of value}`.
fn write_json(log: &mut MetricsLog, kind: &str, value: &impl Serialize) -> Result<()> {
    let mut v = serde_json::to_value(value).map_err(|e| io_error(log.path(), e))?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("kind".into(), kind.into());
    }
    log.write_value(&v)
}

const PANEL: (u32, u32) = (720, 440);

#[allow(clippy::too_many_arguments)]
fn figures(
    dir: &Path,
    report: &AnalyzeReport,
    responses: &[Response],
    v: &Verified,
    cfg: &AnalyzeConfig,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let line = |name: &str, pts: Vec<(f64, f64)>, color: usize, dashed: bool| Series {
        name: name.into(),
        points: pts,
        color,
        dashed,
    };
    let pass = Chart {
        title: format!("Pass@k, {} problems x {} samples", report.problems, report.samples),
        x_label: "k".into(),
        y_label: "Pass@k".into(),
        series: vec![line(
            "Pass@k",
            report.pass_at_k.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v)).collect(),
            0,
            false,
        )],
        legend_low: true,
    };
    let path = dir.join("pass_at_k.png");
    save(&path, &[pass], 1, PANEL)?;
    out.push(path);

    let bins = cfg.bins as f64;
    let pos = |v: &[(Option<f64>, Option<f64>)], correct: bool| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .filter_map(|(b, &(c, w))| (if correct { c } else { w }).map(|y| ((b as f64 + 0.5) / bins, y)))
            .collect()
    };
    let by_pos = |title: &str, y: &str, v: &[(Option<f64>, Option<f64>)]| Chart {
        title: title.into(),
        x_label: "relative position in the response".into(),
        y_label: y.into(),
        series: vec![line("correct", pos(v, true), 2, false), line("incorrect", pos(v, false), 3, true)],
        legend_low: false,
    };
    let path = dir.join("position.png");
    save(
        &path,
        &[
            by_pos("Token entropy by relative position", "nats", &report.entropy_by_position),
            by_pos("Branching factor (top-p 0.95) by relative position", "tokens", &report.branch_by_position),
        ],
        2,
        PANEL,
    )?;
    out.push(path);

    // Distributions: sequence log-PPL and token entropy, correct vs incorrect, as the share of
    // responses (tokens) per bin.
    let (verdict, log_ppl) = (v.correct.as_slice(), v.log_ppl.as_slice());
    let ppl_c: Vec<f64> =
        log_ppl.iter().zip(verdict).filter(|(_, &c)| c).filter_map(|(x, _)| x.map(f64::from)).collect();
    let ppl_w: Vec<f64> =
        log_ppl.iter().zip(verdict).filter(|(_, &c)| !c).filter_map(|(x, _)| x.map(f64::from)).collect();
    let ent = |want: bool| -> Vec<f64> {
        responses
            .iter()
            .zip(verdict)
            .filter(|(_, &c)| c == want)
            .flat_map(|(r, _)| r.entropy.iter().map(|&x| x as f64))
            .collect()
    };
    let (ent_c, ent_w) = (ent(true), ent(false));
    let hist_chart = |title: &str, x: &str, c: &[f64], w: &[f64]| {
        let hi = c.iter().chain(w).copied().fold(0.0f64, f64::max).max(1e-9);
        Chart {
            title: title.into(),
            x_label: x.into(),
            y_label: "share per bin".into(),
            series: vec![
                line("correct", histogram(c, hi, 20), 2, false),
                line("incorrect", histogram(w, hi, 20), 3, true),
            ],
            legend_low: false,
        }
    };
    let path = dir.join("distributions.png");
    save(
        &path,
        &[
            hist_chart("Sequence log-PPL", "log-PPL (nats per token)", &ppl_c, &ppl_w),
            hist_chart("Token entropy", "nats", &ent_c, &ent_w),
        ],
        2,
        PANEL,
    )?;
    out.push(path);
    Ok(out)
}

/// Share of `xs` in each of `bins` equal bins of [0, hi], as (bin centre, share) points.
fn histogram(xs: &[f64], hi: f64, bins: usize) -> Vec<(f64, f64)> {
    if xs.is_empty() {
        return Vec::new();
    }
    let mut counts = vec![0usize; bins];
    for &x in xs {
        let b = ((x.max(0.0) / hi) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    counts.iter().enumerate().map(|(b, &c)| ((b as f64 + 0.5) * hi / bins as f64, c as f64 / xs.len() as f64)).collect()
}
