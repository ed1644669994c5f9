//! The llama model and the sampler, on a tiny GGUF written here (and on SmolLM2-135M-Instruct when
//! it has been fetched): logits against a plain float64 forward written from the llama equations,
//! the KV-cached path against the full forward, left padding, sampling statistics against the
//! model's own logits, and bad model files.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rlvr_kernels::lm::generate::{sample, SampleSettings};
use rlvr_kernels::lm::gguf::{model_dir, resolve, Gguf, SMOLLM2_FILE};
use rlvr_kernels::lm::llama::Llama;
use rlvr_kernels::lm::tiny::{set_metadata, write_tiny_llama, write_tiny_llama_with, TinySpec};
use rlvr_kernels::lm::{self, tokenizer::Tokenizer};
use rlvr_kernels::{reference, Error};

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(name: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("rlvr-lm-{}-{name}.gguf", std::process::id())))
}

fn tiny(name: &str) -> (TempFile, Llama, Tokenizer) {
    let f = temp(name);
    write_tiny_llama(&f.0, &TinySpec::default()).unwrap();
    let (m, t) = lm::load(&f.0, &Device::Cpu).unwrap();
    (f, m, t)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A plain float64 llama forward over the file's weights: RMSNorm, interleaved rope on Q and K,
/// grouped-query causal attention, SwiGLU, tied head. Returns `[T, V]` logits.
fn reference_forward(path: &Path, tokens: &[u32]) -> Vec<Vec<f64>> {
    let mut g = Gguf::open(path).unwrap();
    let cfg = rlvr_kernels::lm::llama::LlamaConfig::from_gguf(&g).unwrap();
    let (d, h, kvh, f) = (cfg.d_model, cfg.heads, cfg.kv_heads, cfg.ffn);
    let dh = d / h;
    let mut w = |name: &str, dims: &[usize]| -> Vec<f64> {
        let t = g.tensor_f32(name, dims, &Device::Cpu).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    };
    let matvec = |m: &[f64], rows: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| m[r * x.len()..(r + 1) * x.len()].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let s = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + cfg.rms_eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v / s * g).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        for i in 0..dh / 2 {
            let a = pos as f64 * cfg.rope_theta.powf(-2.0 * i as f64 / dh as f64);
            let (x0, x1) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = x0 * a.cos() - x1 * a.sin();
            x[2 * i + 1] = x0 * a.sin() + x1 * a.cos();
        }
    };
    let emb = w("token_embd.weight", &[cfg.vocab, d]);
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
    for l in 0..cfg.layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let (an, wq, wk, wv, wo) = (
            w(&n("attn_norm"), &[d]),
            w(&n("attn_q"), &[d, d]),
            w(&n("attn_k"), &[kvh * dh, d]),
            w(&n("attn_v"), &[kvh * dh, d]),
            w(&n("attn_output"), &[d, d]),
        );
        let (fnorm, wg, wu, wd) =
            (w(&n("ffn_norm"), &[d]), w(&n("ffn_gate"), &[f, d]), w(&n("ffn_up"), &[f, d]), w(&n("ffn_down"), &[d, f]));
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (p, x) in xs.iter().enumerate() {
            let xn = rms(x, &an);
            let (mut q, mut k) = (matvec(&wq, d, &xn), matvec(&wk, kvh * dh, &xn));
            for hh in 0..h {
                rope(&mut q[hh * dh..(hh + 1) * dh], p);
            }
            for hh in 0..kvh {
                rope(&mut k[hh * dh..(hh + 1) * dh], p);
            }
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, kvh * dh, &xn));
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut y = vec![0.0; d];
            for hh in 0..h {
                let kh = hh / (h / kvh);
                let q = &qs[p][hh * dh..(hh + 1) * dh];
                let s: Vec<f64> = (0..=p)
                    .map(|j| {
                        q.iter().zip(&ks[j][kh * dh..(kh + 1) * dh]).map(|(a, b)| a * b).sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..dh {
                        y[hh * dh + i] += ej / z * vs[j][kh * dh + i];
                    }
                }
            }
            let o = matvec(&wo, d, &y);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rms(x, &fnorm);
            let (gt, up) = (matvec(&wg, f, &xn), matvec(&wu, f, &xn));
            let act: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = matvec(&wd, d, &act);
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
    }
    let on = w("output_norm.weight", &[d]);
    xs.iter().map(|x| matvec(&emb, cfg.vocab, &rms(x, &on))).collect()
}

#[test]
fn logits_match_a_float64_forward_of_the_llama_equations() {
    let (f, m, _) = tiny("reference");
    let tokens: Vec<u32> = vec![1, 40, 77, 200, 5, 300, 12, 2, 99];
    let want = reference_forward(&f.0, &tokens);
    let t = Tensor::from_vec(tokens.clone(), (1, tokens.len()), &Device::Cpu).unwrap();
    for differentiable in [true, false] {
        let h = m.hidden(&t, &[0], differentiable).unwrap();
        let got = m.logits(&h).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = g.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            let scale = w.iter().map(|v| v.abs()).fold(1.0, f64::max);
            // f32 accumulation over d = 32 and two blocks: ~1e-6 relative; 1e-4 leaves margin
            // and still catches a wrong rope pairing, head grouping or norm (errors ≥ 1e-2).
            assert!(err <= 1e-4 * scale, "position {p}, differentiable {differentiable}: error {err}");
        }
    }
}

#[test]
fn the_cache_and_left_padding_give_the_full_forward_logits() {
    let (_f, m, _) = tiny("cache");
    let tokens: Vec<u32> = vec![1, 40, 77, 200, 5, 300, 12];
    let t = Tensor::from_vec(tokens.clone(), (1, 7), &Device::Cpu).unwrap();
    let full = m.logits(&m.hidden(&t, &[0], false).unwrap()).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let mut cache = m.new_cache(vec![0]);
    let first = m.extend(&t.narrow(1, 0, 4).unwrap(), &mut cache).unwrap();
    assert!(max_diff(&first.squeeze(0).unwrap().to_vec1().unwrap(), &full[3]) < 1e-5);
    for (p, want) in full.iter().enumerate().skip(4) {
        let l = m.extend(&t.narrow(1, p, 1).unwrap(), &mut cache).unwrap();
        assert!(max_diff(&l.squeeze(0).unwrap().to_vec1().unwrap(), want) < 1e-5, "position {p}");
    }
    // Row 1 is the same prefix of 4 tokens behind 3 pad columns (any id: they are never seen).
    let batch =
        Tensor::from_vec([tokens.clone(), vec![9, 9, 9, 1, 40, 77, 200]].concat(), (2, 7), &Device::Cpu).unwrap();
    let mut cache = m.new_cache(vec![0, 3]);
    let l = m.extend(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap();
    assert!(max_diff(&l[0], &full[6]) < 1e-5);
    assert!(max_diff(&l[1], &full[3]) < 1e-5, "left padding changed the logits");
    // Dropping row 0 keeps row 1's cache intact.
    cache.retain(&[1]).unwrap();
    let next = m.extend(&Tensor::from_vec(vec![5u32], (1, 1), &Device::Cpu).unwrap(), &mut cache).unwrap();
    assert!(max_diff(&next.squeeze(0).unwrap().to_vec1().unwrap(), &full[4]) < 1e-5);
    assert!(cache.retain(&[3]).is_err());
    // The differentiable full forward with padding agrees too.
    let h = m.hidden(&batch, &[0, 3], true).unwrap();
    let lp = m.logits(&h).unwrap().to_vec3::<f32>().unwrap();
    assert!(max_diff(&lp[1][6], &full[3]) < 1e-5);
}

#[test]
fn sampled_statistics_are_those_of_the_models_logits_and_seeded() {
    let (_f, m, tok) = tiny("sample");
    let prompts: Vec<Vec<u32>> =
        ["What is 3 + 4?", "Hi", "the number"].iter().map(|q| tok.encode(&tok.chat_prompt(None, q))).collect();
    // The tiny model's random weights make it nearly deterministic at T = 1 (one token takes
    // almost all the mass); T = 6 spreads the distribution so that seeds differ.
    let settings = SampleSettings { max_new: 12, temperature: 6.0, batch: 2, keep_logits: true, ..Default::default() };
    let run =
        |seed| sample(&m, &prompts, tok.eos_id(), &settings, &mut StdRng::seed_from_u64(seed), &mut |_| {}).unwrap();
    let a = run(5);
    assert_eq!(a, run(5), "same seed, same responses");
    assert_ne!(
        a.iter().map(|r| r.tokens.clone()).collect::<Vec<_>>(),
        run(6).iter().map(|r| r.tokens.clone()).collect::<Vec<_>>()
    );
    let v = m.config().vocab;
    for r in &a {
        assert!(!r.tokens.is_empty() && r.tokens.len() <= 12);
        assert_eq!(r.finished, r.tokens.last() == Some(&tok.eos_id()));
        assert!(!r.tokens[..r.tokens.len() - 1].contains(&tok.eos_id()), "tokens after the end of turn");
        // Rescore prompt + response with the full forward: the logits the sampler saw.
        let seq: Vec<u32> = prompts[r.prompt].iter().chain(&r.tokens).copied().collect();
        let t = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
        let lg = m.logits_of(&t, &[0], prompts[r.prompt].len(), false).unwrap().squeeze(0).unwrap();
        let lg = lg.to_vec2::<f32>().unwrap();
        let kept = r.logits.as_ref().unwrap();
        for (i, &y) in r.tokens.iter().enumerate() {
            // The response's last token is not an input of the rescoring forward, the others are.
            assert!(max_diff(&kept[i * v..(i + 1) * v], &lg[i]) < 1e-4, "step {i}");
            let row: Vec<f64> = lg[i].iter().map(|&z| z as f64).collect();
            let st = reference::row_stats(&row, Some(y), 6.0, Some(0.95));
            assert!((r.logp[i] as f64 - st.logp.unwrap()).abs() < 1e-4);
            assert!((r.entropy[i] as f64 - st.entropy).abs() < 1e-4);
            let (lo, hi) = reference::branch_band(&row, 6.0, 0.95);
            assert!((lo..=hi).contains(&r.branch[i]), "branch {} outside [{lo}, {hi}]", r.branch[i]);
        }
    }
    // Greedy: each token is the argmax of its step's logits.
    let g = sample(
        &m,
        &prompts[..1],
        tok.eos_id(),
        &SampleSettings { greedy: true, keep_logits: true, max_new: 6, ..settings },
        &mut StdRng::seed_from_u64(0),
        &mut |_| {},
    )
    .unwrap();
    let kept = g[0].logits.as_ref().unwrap();
    for (i, &y) in g[0].tokens.iter().enumerate() {
        let row = &kept[i * v..(i + 1) * v];
        assert!(row.iter().all(|&z| z <= row[y as usize]));
    }
}

#[test]
fn bad_model_files_and_prompts_are_clear_errors() {
    let expect_model_err = |f: &TempFile, needle: &str| match lm::load(&f.0, &Device::Cpu) {
        Err(Error::Model { msg, .. }) => assert!(msg.contains(needle), "{msg}"),
        other => panic!("expected a model error containing {needle:?}, got {other:?}"),
    };
    let missing = temp("missing");
    expect_model_err(&missing, "No such file");
    let f = temp("arch");
    write_tiny_llama_with(&f.0, &TinySpec::default(), |md, _| {
        set_metadata(md, "general.architecture", Value::String("gpt2".into()))
    })
    .unwrap();
    expect_model_err(&f, "architecture `gpt2`");
    let f = temp("no-tensor");
    write_tiny_llama_with(&f.0, &TinySpec::default(), |_, ts| ts.retain(|(n, _)| n != "blk.1.ffn_up.weight")).unwrap();
    expect_model_err(&f, "blk.1.ffn_up.weight");
    let f = temp("vocab");
    write_tiny_llama_with(&f.0, &TinySpec::default(), |md, _| {
        let v = match md.iter().find(|(k, _)| k == "llama.vocab_size") {
            Some((_, Value::U32(v))) => *v,
            _ => unreachable!(),
        };
        set_metadata(md, "llama.vocab_size", Value::U32(v + 1));
    })
    .unwrap();
    // The embedding has V rows, the metadata says V + 1: caught at the tensor's shape check.
    expect_model_err(&f, "token_embd.weight");
    let f = temp("truncated");
    write_tiny_llama(&f.0, &TinySpec::default()).unwrap();
    let len = std::fs::metadata(&f.0).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f.0).unwrap().set_len(len - 100).unwrap();
    expect_model_err(&f, "truncated");
    let f = temp("garbage");
    std::fs::write(&f.0, b"not a gguf file at all").unwrap();
    expect_model_err(&f, "not a readable GGUF");

    // A prompt that leaves no room for the response, an empty prompt, an id outside V.
    let (_f, m, tok) = tiny("prompts");
    let long = vec![5u32; 120];
    let s = SampleSettings { max_new: 16, ..Default::default() };
    let mut rng = StdRng::seed_from_u64(0);
    match sample(&m, &[vec![1, 2], long], tok.eos_id(), &s, &mut rng, &mut |_| {}) {
        Err(Error::PromptTooLong { index: 1, len: 120, new: 16, context: 128 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(sample(&m, &[vec![]], tok.eos_id(), &s, &mut rng, &mut |_| {}), Err(Error::ShapeMismatch { .. })));
    let bad = Tensor::from_vec(vec![1u32, 100_000], (1, 2), &Device::Cpu).unwrap();
    assert!(matches!(m.hidden(&bad, &[0], false), Err(Error::TargetOutOfRange { target: 100_000, .. })));
    // `smollm2` resolves under RLVR_MODEL_DIR; when the file is missing the error names the fetch script.
    if !model_dir().join(SMOLLM2_FILE).is_file() {
        let e = resolve("smollm2").unwrap_err().to_string();
        assert!(e.contains("bash scripts/fetch-model.sh"), "{e}");
    }
    assert!(resolve("/nonexistent/model.gguf").is_err());
}

/// SmolLM2-135M-Instruct, when fetched: greedy, it answers the capital question correctly.
#[test]
fn smollm2_answers_the_capital_of_france() {
    let path = model_dir().join(SMOLLM2_FILE);
    if !path.is_file() {
        println!("skipped: model not fetched (bash scripts/fetch-model.sh)");
        return;
    }
    let (m, tok) = lm::load(&path, &Device::Cpu).unwrap();
    assert_eq!(m.config().vocab, 49152);
    assert_eq!((m.config().layers, m.config().d_model, m.config().heads, m.config().kv_heads), (30, 576, 9, 3));
    let prompt = tok.encode(&tok.chat_prompt(None, "What is the capital of France?"));
    let s = SampleSettings { greedy: true, max_new: 12, ..Default::default() };
    let r = sample(&m, &[prompt], tok.eos_id(), &s, &mut StdRng::seed_from_u64(0), &mut |_| {}).unwrap();
    let text = tok.decode(&r[0].tokens);
    assert!(text.starts_with("The capital of France is Paris."), "{text:?}");
    // Greedy tokens are confident here: the first one's entropy is finite and its logp ≤ 0.
    assert!(r[0].logp.iter().all(|&l| l <= 0.0) && r[0].entropy.iter().all(|h| h.is_finite()));
}

/// `rlvr analyze`'s pipeline end to end on the tiny model: the files, and the summary's numbers
/// against the per-response lines it wrote.
#[test]
fn the_analysis_pipeline_writes_consistent_outputs() {
    use rlvr_kernels::lm::analyze::{analyze_with, AnalyzeConfig};
    let (f, m, tok) = tiny("analyze");
    let dir = std::env::temp_dir().join(format!("rlvr-lm-analyze-{}", std::process::id()));
    let cfg = AnalyzeConfig {
        problems: 3,
        samples: 4,
        max_new: 8,
        temperature: 6.0,
        out_dir: dir.clone(),
        ..AnalyzeConfig::quick(f.0.clone())
    };
    let r = analyze_with(&m, &tok, &cfg, &mut rlvr_kernels::train::NoProgress, std::time::Instant::now()).unwrap();
    assert_eq!((r.problems, r.samples, r.pass_at_k.len()), (3, 4, 4));
    for name in ["metrics.jsonl", "pass_at_k.png", "position.png", "distributions.png"] {
        let p = dir.join(name);
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 0, "{name}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds = |k: &str| lines.iter().filter(|v| v["kind"] == k).count();
    assert_eq!((kinds("config"), kinds("response"), kinds("problem"), kinds("summary")), (1, 12, 3, 1));
    let tokens: u64 = lines.iter().filter(|v| v["kind"] == "response").map(|v| v["tokens"].as_u64().unwrap()).sum();
    assert_eq!(tokens as usize, r.tokens);
    let mut counts = vec![0usize; 3];
    for v in lines.iter().filter(|v| v["kind"] == "response") {
        if v["correct"].as_bool().unwrap() {
            counts[v["problem"].as_u64().unwrap() as usize] += 1;
        }
    }
    assert_eq!(counts, r.correct_counts);
    let want: Vec<f64> =
        (1..=4).map(|k| rlvr_kernels::metrics::pass_at_k_curve(&counts, 4, &[k]).unwrap()[0]).collect();
    assert_eq!(r.pass_at_k, want);
    assert_eq!(r.unsolvable.len(), counts.iter().filter(|&&c| c == 0).count());
    assert_eq!(r.rft.len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}
