//! `rlvr train --model smollm2`: GRPO with the fused ops on a real chat model (no SFT phase):
//! held-out Pass@k before and after, the toy run's per-step metrics and figures.

use rlvr_kernels::lm::gguf;
use rlvr_kernels::lm::grpo::{run_lm_train, LmTrainConfig, LmTrainReport};
use rlvr_kernels::lm::llama::Trainable;
use rlvr_kernels::lm::task::TaskKind;
use rlvr_kernels::train::ShapingKind;

use crate::error::{CliError, CliResult};
use crate::table;
use crate::train_cmd::{candle_device, print_evals, set, shapings, tune_allocator, Bars, LossArg, TrainArgs};

/// The real-model preset with every given flag applied; flags of the toy's model, SFT and
/// problem splits are usage errors here.
pub fn config(args: &TrainArgs) -> CliResult<LmTrainConfig> {
    let c = &args.common;
    for (flag, given) in [
        ("--digits", c.digits.is_some()),
        ("--vocab", c.vocab.is_some()),
        ("--d-model", c.d_model.is_some()),
        ("--layers", c.layers.is_some()),
        ("--heads", c.heads.is_some()),
        ("--sft-problems", c.sft_problems.is_some()),
        ("--rl-problems", c.rl_problems.is_some()),
        ("--held-out", c.held_out.is_some()),
        ("--sft-steps", c.sft_steps.is_some()),
        ("--sft-target", c.sft_target.is_some()),
        ("--sft-all-steps", c.sft_all_steps),
        ("--sft-lr", c.sft_lr.is_some()),
        ("--eval-k", c.eval_k.is_some()),
        ("--loss naive", c.loss == LossArg::Naive),
    ] {
        if given {
            return Err(CliError::usage(format!("{flag} does not apply with --model (the toy model's setting)")));
        }
    }
    let model = args.model.as_deref().unwrap_or("smollm2");
    let path = gguf::resolve(model).map_err(CliError::runtime)?;
    let mut cfg = if c.quick { LmTrainConfig::quick(path) } else { LmTrainConfig::new(path) };
    let name =
        c.name.clone().unwrap_or_else(|| if c.quick { "train-smollm2-quick".into() } else { "train-smollm2".into() });
    cfg.out_dir = c.out_dir.join(name);
    if let Some(t) = &args.task {
        cfg.task = TaskKind::parse(t)?;
    }
    set(&mut cfg.seed, c.seed);
    set(&mut cfg.eval_samples, c.eval_samples);
    set(&mut cfg.bins, c.bins);
    set(&mut cfg.steps, args.steps);
    set(&mut cfg.prompts_per_step, args.prompts);
    set(&mut cfg.group_size, args.group_size);
    set(&mut cfg.epochs, args.epochs);
    set(&mut cfg.minibatches, args.minibatches);
    set(&mut cfg.lr, args.lr);
    set(&mut cfg.grpo.clip_low, args.clip_low);
    set(&mut cfg.grpo.clip_high, args.clip_high);
    set(&mut cfg.kl_coef, args.kl_coef);
    set(&mut cfg.max_new, args.max_new);
    if let Some(b) = args.train_blocks {
        cfg.trainable.blocks = b;
    }
    if args.train_embedding {
        cfg.trainable.embedding = true;
    }
    if cfg.trainable == (Trainable { blocks: 0, embedding: false }) {
        return Err(CliError::usage("--train-blocks 0 without --train-embedding trains nothing"));
    }
    let shaping = if args.shaping.is_empty() { vec![ShapingKind::None] } else { shapings(&args.shaping) };
    if shaping.len() != 1 {
        return Err(CliError::usage("with --model give one --shaping (none, ppl, position or both)"));
    }
    cfg.shaping = shaping[0];
    c.device.check_available()?;
    cfg.device = candle_device(c.device)?;
    cfg.filter = c.filter;
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `rlvr train --model`.
pub fn run(args: &TrainArgs, quiet: bool) -> CliResult<()> {
    let cfg = config(args)?;
    tune_allocator();
    let report = run_lm_train(&cfg, &mut Bars::new(quiet)).map_err(CliError::runtime)?;
    print_report(&cfg, &report);
    Ok(())
}

fn print_report(cfg: &LmTrainConfig, r: &LmTrainReport) {
    println!(
        "\nGRPO on {} ({} task, shaping {}): {} steps x {} prompts x {} responses, {} trainable parameters",
        cfg.model.display(),
        cfg.task.name(),
        cfg.shaping.name(),
        cfg.steps,
        cfg.prompts_per_step,
        cfg.group_size,
        r.trainable_params
    );
    println!("\nHeld-out evaluation ({} problems, n = {} samples each):", cfg.eval_problems, cfg.eval_samples);
    print_evals(&r.evals);
    println!("\nGRPO steps:");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.to_string(),
                format!("{:.3}", s.reward),
                format!("{:.3}", s.entropy),
                opt(s.entropy_correct),
                opt(s.entropy_incorrect),
                format!("{:.2}", s.branch),
                format!("{:.3}", s.clip_frac),
                format!("{:.2e}", s.kl),
                format!("{:.1}", s.response_len),
                format!("{:.1}", s.seconds),
                opt(s.outside_kept),
            ]
        })
        .collect();
    let mut head = vec!["step", "reward", "H", "H ok", "H wrong", "branch", "clip", "KL", "len", "s"];
    match cfg.filter {
        Some(f) => {
            head.push("outside K");
            println!("(sampled with {f}; the loss replays it: \"outside K\" = sampled tokens outside the trainer's kept set)");
        }
        None => rows.iter_mut().for_each(|row| {
            row.pop();
        }),
    }
    table::print(&head, &rows);
    println!("\nmetrics: {}", r.metrics.display());
    println!("plots:");
    for p in &r.plots {
        println!("  {}", p.display());
    }
    println!("total time: {:.1} s", r.seconds);
}
