//! A tiny llama-architecture GGUF file with random weights, for tests and examples: the same
//! metadata keys and tensor names as SmolLM2-135M-Instruct, a byte-level BPE vocabulary of the
//! three ChatML control tokens, the 256 byte tokens and merges learned from [`TINY_CORPUS`], and
//! weights from a seeded RNG. [`write_tiny_llama_with`] lets a test break the file on purpose
//! (another architecture, a missing tensor, a wrong shape).
//!
//! Tensors are F32, except `token_embd.weight` and the `ffn_down.weight`s, which are Q8_0 when
//! their last dimension is a multiple of 32 (as in the default spec), so a reader's dequantization
//! is exercised; SmolLM2's own `token_embd.weight` is Q8_0 too.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::lm::tokenizer::{bytes_to_unicode, pre_tokenize};

/// The English text the tiny vocabulary's merges are learned from.
pub const TINY_CORPUS: &str = "The answer is the number that makes the statement true. \
To solve the problem, think step by step: read the question, write what is given, and then \
compute the result. If the question asks for the sum of two numbers, add them; if it asks for \
the difference, subtract the smaller from the larger. Check the answer before you write it. \
There is always a reason in the text, and the reasoning is where the model explores. \
In the morning the teacher gave the students three problems, and they solved them together.";

/// The ChatML template of the tiny model: SmolLM2's, with its own default system prompt.
pub const TINY_CHAT_TEMPLATE: &str =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}\
{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The shape of a tiny llama model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinySpec {
    /// How many BPE merges to learn from [`TINY_CORPUS`] (fewer if the corpus runs out of
    /// pairs seen twice); V = 3 + 256 + the new tokens.
    pub merges: usize,
    /// Embedding width d.
    pub d_model: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads; d_model / heads is the head width, which must be even (RoPE rotates pairs).
    pub heads: usize,
    /// Key/value heads (grouped-query attention); must divide `heads`.
    pub kv_heads: usize,
    /// Hidden width of the SwiGLU feed-forward block.
    pub ffn: usize,
    /// Context length in tokens.
    pub context: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self { merges: 64, d_model: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, context: 128, seed: 0 }
    }
}

impl TinySpec {
    fn check(&self) -> Result<()> {
        let bad = |name: &'static str, value: usize, why: &'static str| {
            Err(Error::InvalidConfig { name, value: value.to_string(), why })
        };
        for (name, v) in
            [("d_model", self.d_model), ("layers", self.layers), ("ffn", self.ffn), ("context", self.context)]
        {
            if v == 0 {
                return bad(name, v, "must be at least 1");
            }
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) || !(self.d_model / self.heads).is_multiple_of(2)
        {
            return bad("heads", self.heads, "must divide d_model into heads of even width");
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad("kv_heads", self.kv_heads, "must divide heads");
        }
        Ok(())
    }
}

/// GPT-2 style BPE training on `text` (pre-tokenized as SmolLM2 does): `n` times, the most
/// frequent adjacent pair (ties: the smallest pair in string order, so the result is fixed)
/// becomes a merge, until no pair occurs twice. Returns the merges as (left, right) strings.
pub fn learn_merges(text: &str, n: usize) -> Vec<(String, String)> {
    let table = bytes_to_unicode();
    let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
    for piece in pre_tokenize(text) {
        *counts.entry(piece.bytes().map(|b| table[b as usize].to_string()).collect()).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
    words.sort();
    let mut merges = Vec::new();
    while merges.len() < n {
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *pairs.entry((&p[0], &p[1])).or_default() += c;
            }
        }
        // max_by_key returns the last maximum; iterate in reverse so ties go to the smallest pair.
        let Some((&(a, b), &count)) = pairs.iter().rev().max_by_key(|&(_, &c)| c) else { break };
        if count < 2 {
            break;
        }
        let (a, b) = (a.to_string(), b.to_string());
        for (w, _) in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i].push_str(&b);
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push((a, b));
    }
    merges
}

/// The tiny model's metadata: llama hyper-parameters from `spec` and the tokenizer (see the
/// module docs).
pub fn tiny_metadata(spec: &TinySpec) -> Result<Vec<(String, Value)>> {
    spec.check()?;
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).into();
    let mut types = vec![3i32; 3];
    // Byte tokens in GPT-2's order (printable bytes first), as in SmolLM2's vocabulary.
    let table = bytes_to_unicode();
    let mut bytes: Vec<char> = table.to_vec();
    bytes.sort();
    tokens.extend(bytes.iter().map(char::to_string));
    types.extend(std::iter::repeat_n(1, 256));
    let merges = learn_merges(TINY_CORPUS, spec.merges);
    for (a, b) in &merges {
        let joined = format!("{a}{b}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
            types.push(1);
        }
    }
    let u32v = |x: usize| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.to_string());
    let md = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tiny-llama")),
        ("llama.block_count", u32v(spec.layers)),
        ("llama.context_length", u32v(spec.context)),
        ("llama.embedding_length", u32v(spec.d_model)),
        ("llama.feed_forward_length", u32v(spec.ffn)),
        ("llama.attention.head_count", u32v(spec.heads)),
        ("llama.attention.head_count_kv", u32v(spec.kv_heads)),
        ("llama.rope.freq_base", Value::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u32v(tokens.len())),
        ("llama.rope.dimension_count", u32v(spec.d_model / spec.heads)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect())),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", u32v(1)),
        ("tokenizer.ggml.eos_token_id", u32v(2)),
        ("tokenizer.ggml.unknown_token_id", u32v(0)),
        ("tokenizer.ggml.padding_token_id", u32v(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", s(TINY_CHAT_TEMPLATE)),
    ];
    Ok(md.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The tiny model's tensors in candle's `[out, in]` shapes, for a vocabulary of `vocab` tokens:
/// `token_embd.weight` `[V, d]` U(±1); per block `attn_norm`/`ffn_norm` `[d]` around 1, `attn_q`
/// `[d, d]`, `attn_k`/`attn_v` `[kv·dh, d]`, `attn_output` `[d, d]`, `ffn_gate`/`ffn_up` `[ffn, d]`,
/// `ffn_down` `[d, ffn]`, each U(±1/√fan_in); `output_norm.weight` `[d]`. No `output.weight`: the
/// head is tied to the embedding, as in SmolLM2.
pub fn tiny_tensors(spec: &TinySpec, vocab: usize) -> Result<Vec<(String, QTensor)>> {
    spec.check()?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (d, f) = (spec.d_model, spec.ffn);
    let kv = spec.kv_heads * (d / spec.heads);
    let mut out = Vec::new();
    let mut add = |name: String, dims: &[usize], scale: f32, offset: f32| -> Result<()> {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + rng.random_range(-scale..scale)).collect();
        let t = Tensor::from_vec(data, dims, &Device::Cpu)?;
        let last = dims[dims.len() - 1];
        let q8 = (name == "token_embd.weight" || name.ends_with("ffn_down.weight")) && last.is_multiple_of(32);
        out.push((name, QTensor::quantize(&t, if q8 { GgmlDType::Q8_0 } else { GgmlDType::F32 })?));
        Ok(())
    };
    let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    add("token_embd.weight".into(), &[vocab, d], 1.0, 0.0)?;
    for i in 0..spec.layers {
        let b = |t: &str| format!("blk.{i}.{t}.weight");
        add(b("attn_norm"), &[d], 0.1, 1.0)?;
        add(b("attn_q"), &[d, d], w(d), 0.0)?;
        add(b("attn_k"), &[kv, d], w(d), 0.0)?;
        add(b("attn_v"), &[kv, d], w(d), 0.0)?;
        add(b("attn_output"), &[d, d], w(d), 0.0)?;
        add(b("ffn_norm"), &[d], 0.1, 1.0)?;
        add(b("ffn_gate"), &[f, d], w(d), 0.0)?;
        add(b("ffn_up"), &[f, d], w(d), 0.0)?;
        add(b("ffn_down"), &[d, f], w(f), 0.0)?;
    }
    add("output_norm.weight".into(), &[d], 0.1, 1.0)?;
    Ok(out)
}

/// Sets a metadata entry, replacing the old value (or appending) — for `write_tiny_llama_with`
/// edits.
pub fn set_metadata(metadata: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => metadata.push((key.to_string(), value)),
    }
}

/// Writes a GGUF file (version 2) of these entries and tensors.
pub fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    let io =
        |e: &dyn std::fmt::Display| Error::Io { context: format!("writing {}", path.display()), msg: e.to_string() };
    let mut w = BufWriter::new(File::create(path).map_err(|e| io(&e))?);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut w, &md, &ts).map_err(|e| io(&e))?;
    w.into_inner().map_err(|e| io(&e))?.sync_all().map_err(|e| io(&e))
}

/// Writes the tiny llama model of `spec` to `path`.
pub fn write_tiny_llama(path: &Path, spec: &TinySpec) -> Result<()> {
    write_tiny_llama_with(path, spec, |_, _| {})
}

/// Writes the tiny llama model of `spec` to `path` after `edit` has changed its metadata and
/// tensors (e.g. [`set_metadata`] of `general.architecture`, or removing a tensor).
pub fn write_tiny_llama_with(
    path: &Path,
    spec: &TinySpec,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>),
) -> Result<()> {
    let mut metadata = tiny_metadata(spec)?;
    let vocab = match metadata.iter().find(|(k, _)| k == "llama.vocab_size") {
        Some((_, Value::U32(v))) => *v as usize,
        _ => unreachable!("tiny_metadata sets llama.vocab_size"),
    };
    let mut tensors = tiny_tensors(spec, vocab)?;
    edit(&mut metadata, &mut tensors);
    write_gguf(path, &metadata, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::gguf::Gguf;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rlvr-tiny-{}-{name}.gguf", std::process::id()))
    }

    #[test]
    fn round_trips_through_gguf_open() {
        let (path, spec) = (temp("round-trip"), TinySpec::default());
        write_tiny_llama(&path, &spec).unwrap();
        let mut g = Gguf::open(&path).unwrap();
        assert_eq!(g.string("general.architecture").unwrap(), "llama");
        assert_eq!(g.usize("llama.block_count").unwrap(), 2);
        assert_eq!(g.usize("llama.attention.head_count_kv").unwrap(), 2);
        assert_eq!(g.usize("llama.rope.dimension_count").unwrap(), 8);
        assert_eq!(g.f64("llama.rope.freq_base").unwrap(), 100000.0);
        let v = g.usize("llama.vocab_size").unwrap();
        assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap().len(), v);
        assert!(v > 259 + 40, "only {} merged tokens learned", v - 259);
        // Every tensor reads back in candle's [out, in] shape with the values written: the file
        // holds the quantized blocks byte for byte, so even Q8_0 compares exactly.
        let written = tiny_tensors(&spec, v).unwrap();
        assert_eq!(written.len(), 2 + 9 * 2);
        for (name, q) in &written {
            let t = g.tensor_f32(name, q.shape().dims(), &Device::Cpu).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap();
            let diff = (t - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
        assert_eq!(written[0].1.dtype(), GgmlDType::Q8_0);
        assert!(!g.has_tensor("output.weight"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_file_is_a_model_error() {
        let path = temp("truncated");
        write_tiny_llama(&path, &TinySpec::default()).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        File::options().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
        match Gguf::open(&path) {
            Err(Error::Model { msg, .. }) => assert!(msg.contains("truncated"), "{msg}"),
            other => panic!("expected a truncated-model error, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn edits_reach_the_file() {
        let path = temp("edit");
        write_tiny_llama_with(&path, &TinySpec::default(), |md, ts| {
            set_metadata(md, "general.architecture", Value::String("gpt2".into()));
            ts.retain(|(n, _)| n != "blk.1.ffn_up.weight");
        })
        .unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.string("general.architecture").unwrap(), "gpt2");
        assert!(!g.has_tensor("blk.1.ffn_up.weight") && g.has_tensor("blk.0.ffn_up.weight"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn weights_follow_the_seed() {
        let spec = TinySpec { layers: 1, ..TinySpec::default() };
        let a = tiny_tensors(&spec, 300).unwrap();
        let b = tiny_tensors(&spec, 300).unwrap();
        let c = tiny_tensors(&TinySpec { seed: 1, ..spec }, 300).unwrap();
        let data = |t: &[(String, QTensor)]| t[1].1.data().unwrap().into_owned();
        assert_eq!(data(&a), data(&b));
        assert_ne!(data(&a), data(&c));
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            TinySpec { heads: 3, ..TinySpec::default() },
            TinySpec { heads: 16, ..TinySpec::default() }, // head width 2 is fine ...
            TinySpec { heads: 32, ..TinySpec::default() }, // ... 1 is odd
            TinySpec { kv_heads: 3, ..TinySpec::default() },
            TinySpec { layers: 0, ..TinySpec::default() },
        ] {
            let ok = spec.heads == 16;
            assert_eq!(tiny_metadata(&spec).is_ok(), ok, "{spec:?}");
        }
    }

    #[test]
    fn merges_learned_are_frequent_pairs() {
        let merges = learn_merges(TINY_CORPUS, 64);
        assert_eq!(merges.len(), 64);
        // " t" + "he" style pairs of English come first; "Ġthe" is among the tokens.
        let joined: Vec<String> = merges.iter().map(|(a, b)| format!("{a}{b}")).collect();
        assert!(joined.iter().any(|t| t == "Ġthe"), "{joined:?}");
        assert_eq!(learn_merges("ab ab", 10), [("a".to_string(), "b".to_string())]);
    }
}
