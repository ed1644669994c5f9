//! The figures of `rlvr train` and `rlvr rft`, built from the logged metrics.

use std::path::{Path, PathBuf};

use super::eval::EvalResult;
use super::grpo::StepMetrics;
use super::plot::{moving_average, save, Chart, Series};
use crate::error::Result;

const PANEL: (u32, u32) = (720, 440);

/// Per-step curves of `field` for each shaping, smoothed over `window` steps.
fn per_shaping(steps: &[StepMetrics], window: usize, field: impl Fn(&StepMetrics) -> Option<f64>) -> Vec<Series> {
    let mut names: Vec<&str> = Vec::new();
    for s in steps {
        if !names.contains(&s.shaping) {
            names.push(s.shaping);
        }
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let pts: Vec<(f64, f64)> = steps
                .iter()
                .filter(|s| s.shaping == *name)
                .filter_map(|s| field(s).map(|v| (s.step as f64, v)))
                .collect();
            Series { name: name.to_string(), points: moving_average(&pts, window), color: i, dashed: false }
        })
        .collect()
}

fn step_chart(title: &str, y: &str, series: Vec<Series>) -> Chart {
    Chart { title: title.into(), x_label: "GRPO step".into(), y_label: y.into(), series, ..Default::default() }
}

/// Writes the training figures into `dir`; returns their paths.
pub fn train(dir: &Path, steps: &[StepMetrics], evals: &[EvalResult]) -> Result<Vec<PathBuf>> {
    let per_run = steps.iter().filter(|s| Some(s.shaping) == steps.first().map(|f| f.shaping)).count();
    let w = (per_run / 10).max(1);
    let avg = format!("(moving average, {w} steps)");
    let mut out = Vec::new();
    let mut write = |name: &str, charts: &[Chart], cols: usize| -> Result<()> {
        let path = dir.join(name);
        save(&path, charts, cols, PANEL)?;
        out.push(path);
        Ok(())
    };
    if !steps.is_empty() {
        let reward = per_shaping(steps, w, |s| Some(s.reward));
        write("reward.png", &[step_chart(&format!("Reward = Pass@1 of rollouts {avg}"), "reward", reward)], 1)?;
        let entropy = per_shaping(steps, w, |s| Some(s.entropy));
        write("entropy.png", &[step_chart(&format!("Token entropy {avg}"), "nats", entropy)], 1)?;
        write("entropy_correct_incorrect.png", &correct_vs_incorrect(steps, w), 2)?;
        // log10 of the mass: it falls by decades. The moving average is taken on the log.
        let garbage = per_shaping(steps, w, |s| (s.garbage_mass > 0.0).then(|| s.garbage_mass.log10()));
        let diag = [
            step_chart("Probability mass on garbage ids", "log10 mass per token", garbage),
            step_chart("Branching factor (top-p 0.95)", "tokens", per_shaping(steps, w, |s| Some(s.branch))),
            step_chart("Clip fraction", "fraction of tokens", per_shaping(steps, w, |s| Some(s.clip_frac))),
            step_chart("KL to SFT (k3)", "nats per token", per_shaping(steps, w, |s| Some(s.kl))),
        ];
        write("diagnostics.png", &diag, 2)?;
    }
    write("pass_at_k.png", &[pass_at_k_chart("Held-out Pass@k", evals)], 1)?;
    write("entropy_position.png", &position_charts(evals), 2)?;
    Ok(out)
}

/// One panel per shaping: mean entropy of correct (solid) and incorrect (dashed) responses.
fn correct_vs_incorrect(steps: &[StepMetrics], w: usize) -> Vec<Chart> {
    let correct = per_shaping(steps, w, |s| s.entropy_correct);
    let incorrect = per_shaping(steps, w, |s| s.entropy_incorrect);
    correct
        .into_iter()
        .zip(incorrect)
        .map(|(c, i)| {
            let title = format!("Entropy, shaping {}", c.name);
            let series = vec![
                Series { name: "correct".into(), dashed: false, ..c },
                Series { name: "incorrect".into(), dashed: true, ..i },
            ];
            step_chart(&title, "mean entropy per response (nats)", series)
        })
        .collect()
}

/// Pass@k against k for each checkpoint.
pub fn pass_at_k_chart(title: &str, evals: &[EvalResult]) -> Chart {
    let series = evals
        .iter()
        .enumerate()
        .map(|(i, e)| Series {
            name: e.checkpoint.clone(),
            points: e.k.iter().zip(&e.pass_at_k).map(|(&k, &p)| (k as f64, p)).collect(),
            color: i,
            dashed: false,
        })
        .collect();
    Chart { title: title.into(), x_label: "k".into(), y_label: "Pass@k".into(), series, legend_low: true }
}

/// Entropy against relative position (bin centres; empty bins left out), all responses and
/// correct ones. The base model is left out: its near-uniform ~ln V nats would flatten the rest.
fn position_charts(evals: &[EvalResult]) -> Vec<Chart> {
    // Colours by index in the full list, so a checkpoint has one colour in every figure.
    let evals: Vec<(usize, &EvalResult)> = evals.iter().enumerate().filter(|(_, e)| e.checkpoint != "base").collect();
    let curve = |values: &[f64], counts: &[usize]| -> Vec<(f64, f64)> {
        let bins = values.len() as f64;
        (0..values.len()).filter(|&b| counts[b] > 0).map(|b| ((b as f64 + 0.5) / bins, values[b])).collect()
    };
    let series = |correct: bool| -> Vec<Series> {
        evals
            .iter()
            .map(|&(i, e)| Series {
                name: e.checkpoint.clone(),
                points: if correct {
                    curve(&e.entropy_by_position_correct, &e.position_counts_correct)
                } else {
                    curve(&e.entropy_by_position, &e.position_counts)
                },
                color: i,
                dashed: false,
            })
            .collect()
    };
    let chart = |title: &str, correct: bool| Chart {
        title: title.into(),
        x_label: "relative position in response".into(),
        y_label: "mean token entropy (nats)".into(),
        series: series(correct),
        ..Default::default()
    };
    vec![
        chart("Entropy by position, all responses (base left out)", false),
        chart("Entropy by position, correct responses", true),
    ]
}

/// Writes the RFT figure (Pass@k of the SFT model and each strategy); returns its path.
pub fn rft(dir: &Path, evals: &[EvalResult]) -> Result<Vec<PathBuf>> {
    let path = dir.join("rft_pass_at_k.png");
    save(&path, &[pass_at_k_chart("Held-out Pass@k after RFT", evals), position_charts(evals).remove(0)], 2, PANEL)?;
    Ok(vec![path])
}
