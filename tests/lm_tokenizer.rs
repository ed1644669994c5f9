//! The byte-level BPE tokenizer, on a tiny GGUF written here and on SmolLM2-135M-Instruct when it
//! has been fetched. Expected SmolLM2 ids were checked against Hugging Face `tokenizers` (BPE over
//! the same vocabulary and merges, pre-tokenizer Digits(individual) then ByteLevel).

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Value;
use rlvr_kernels::lm::gguf::{model_dir, Gguf, SMOLLM2_FILE};
use rlvr_kernels::lm::tiny::{set_metadata, write_tiny_llama_with, TinySpec};
use rlvr_kernels::lm::tokenizer::{pre_tokenize, Tokenizer};
use rlvr_kernels::Error;

type Metadata = Vec<(String, Value)>;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rlvr-tok-{}-{name}.gguf", std::process::id()))
}

/// The tokenizer of the tiny model, after `edit` has changed its metadata.
fn tiny_with(name: &str, edit: impl FnOnce(&mut Metadata)) -> rlvr_kernels::Result<Tokenizer> {
    let path = temp(name);
    write_tiny_llama_with(&path, &TinySpec::default(), |md, _| edit(md)).unwrap();
    let t = Gguf::open(&path).and_then(|g| Tokenizer::from_gguf(&g));
    std::fs::remove_file(&path).unwrap();
    t
}

fn tiny(name: &str) -> Tokenizer {
    tiny_with(name, |_| {}).unwrap()
}

fn strings(md: &Metadata, key: &str) -> Vec<String> {
    match md.iter().find(|(k, _)| k == key) {
        Some((_, Value::Array(a))) => a.iter().map(|v| v.to_string().unwrap().clone()).collect(),
        _ => panic!("no array {key}"),
    }
}

/// Replaces the merges, appending each merge's token (type normal) when it is new.
fn with_merges(md: &mut Metadata, merges: &[&str]) {
    let mut tokens = strings(md, "tokenizer.ggml.tokens");
    for m in merges {
        let joined = m.replace(' ', "");
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
    }
    let types = (0..tokens.len()).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect();
    set_metadata(md, "tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect()));
    set_metadata(md, "tokenizer.ggml.token_type", Value::Array(types));
    let merges = merges.iter().map(|m| Value::String(m.to_string())).collect();
    set_metadata(md, "tokenizer.ggml.merges", Value::Array(merges));
}

fn token_strings(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| t.token(i).unwrap().to_string()).collect()
}

#[test]
fn pieces_follow_llama_cpps_smollm_pre_tokenizer() {
    // A whitespace run before a word gives all but its last space; that space prefixes the word.
    assert_eq!(pre_tokenize("  hello world\n\n"), [" ", " hello", " world", "\n\n"]);
    assert_eq!(pre_tokenize("abc123"), ["abc", "1", "2", "3"]);
    assert_eq!(pre_tokenize("it's"), ["it", "'s"]);
    assert_eq!(pre_tokenize("hi   "), ["hi", "   "]);
    // Digits are cut out first, so a space before one stays alone and `?\p{N}+` never groups.
    assert_eq!(pre_tokenize("x 12+7"), ["x", " ", "1", "2", "+", "7"]);
    assert_eq!(pre_tokenize("a\n\n  b"), ["a", "\n\n ", " b"]);
    assert_eq!(pre_tokenize("héllo — 世界"), ["héllo", " —", " 世界"]);
    assert_eq!(pre_tokenize(""), Vec::<&str>::new());
}

#[test]
fn decode_inverts_encode_on_the_tiny_vocabulary() {
    let t = tiny("round-trip");
    for text in [
        "The answer is 42.",
        "0123456789 9876543210",
        "a  b   c    d\t\te  ",
        "\n\nline one\nline two\r\n\n",
        "héllo — 世界 🙂",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
        "<|im_start <|im_end|x|>",
        "",
    ] {
        let ids = t.encode(text);
        assert_eq!(t.decode(&ids), text, "{ids:?}");
        assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
    }
}

#[test]
fn control_tokens_in_text_become_their_ids() {
    let t = tiny("control");
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>");
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
    assert!(ids[1..ids.len() - 1].iter().all(|&i| !t.is_control(i)));
    // An unfinished control token is plain text.
    assert!(t.encode("<|im_start").iter().all(|&i| !t.is_control(i)));
    assert_eq!((t.bos_id(), t.eos_id(), t.pad_id()), (1, 2, 2));
    assert!(t.is_control(0) && t.is_control(2) && !t.is_control(3) && !t.is_control(1_000_000));
    assert_eq!(t.token(1), Some("<|im_start|>"));
    assert_eq!(t.id("<|im_end|>"), Some(2));
}

#[test]
fn learned_merges_form_words() {
    let t = tiny("merges");
    assert_eq!(t.encode(" the"), [t.id("Ġthe").unwrap()]);
    // Bytes of a character are separate tokens until merged; decoding them alone is lossy.
    let e4 = t.id("ä").unwrap(); // byte 0xE4, the first of the three bytes of 世
    assert_eq!(t.decode(&[e4]), "\u{FFFD}");
    assert_eq!(t.decode(&[u32::MAX]), "\u{FFFD}");
}

#[test]
fn merges_apply_by_rank() {
    // In "abc" the pair a+b comes first in the text, but b+c has the better rank.
    let t = tiny_with("rank-bc", |md| with_merges(md, &["b c", "a b", "a bc"])).unwrap();
    assert_eq!(token_strings(&t, &t.encode("abc")), ["abc"]);
    let t = tiny_with("rank-ab", |md| with_merges(md, &["a b", "b c", "a bc"])).unwrap();
    assert_eq!(token_strings(&t, &t.encode("abc")), ["ab", "c"]);
    // A space prefix merges with the word only through the merges that include it.
    let t = tiny_with("rank-space", |md| with_merges(md, &["Ġ a", "b c", "Ġa bc"])).unwrap();
    assert_eq!(token_strings(&t, &t.encode(" abc")), ["Ġabc"]);
}

#[test]
fn chat_prompt_is_chatml_with_the_templates_system_prompt() {
    let t = tiny("chat");
    assert_eq!(t.default_system_prompt(), "You are a tiny test model");
    let p = t.chat_prompt(None, "hi");
    assert_eq!(p, "<|im_start|>system\nYou are a tiny test model<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    assert!(t.chat_prompt(Some("Be brief."), "hi").starts_with("<|im_start|>system\nBe brief.<|im_end|>"));
    let ids = t.encode(&p);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    // Without a template, SmolLM2's own default.
    let t = tiny_with("no-template", |md| md.retain(|(k, _)| k != "tokenizer.chat_template")).unwrap();
    assert_eq!(t.default_system_prompt(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

fn model_error(r: rlvr_kernels::Result<Tokenizer>) -> String {
    match r {
        Err(Error::Model { msg, .. }) => msg,
        other => panic!("expected a model error, got {other:?}"),
    }
}

#[test]
fn unsupported_or_inconsistent_tokenizers_are_model_errors() {
    let s = |x: &str| Value::String(x.into());
    let msg = model_error(tiny_with("spm", |md| set_metadata(md, "tokenizer.ggml.model", s("llama"))));
    assert!(msg.contains("`llama` is not supported"), "{msg}");
    let msg = model_error(tiny_with("pre", |md| set_metadata(md, "tokenizer.ggml.pre", s("llama3"))));
    assert!(msg.contains("pre-tokenizer `llama3`"), "{msg}");
    let msg = model_error(tiny_with("types", |md| {
        set_metadata(md, "tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 10]))
    }));
    assert!(msg.contains("10 token types"), "{msg}");
    let msg = model_error(tiny_with("merge", |md| {
        let mut merges = strings(md, "tokenizer.ggml.merges");
        merges.push("q zz".into());
        set_metadata(md, "tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
    }));
    assert!(msg.contains("unknown token \"zz\""), "{msg}");
    let msg = model_error(tiny_with("eos", |md| set_metadata(md, "tokenizer.ggml.eos_token_id", Value::U32(1 << 20))));
    assert!(msg.contains("eos_token_id"), "{msg}");
    let msg = model_error(tiny_with("missing", |md| md.retain(|(k, _)| k != "tokenizer.ggml.merges")));
    assert!(msg.contains("`tokenizer.ggml.merges` is missing"), "{msg}");
}

/// SmolLM2's tokenizer, or `None` (after saying so) when the model has not been fetched.
fn smollm2() -> Option<Tokenizer> {
    let path = model_dir().join(SMOLLM2_FILE);
    if !path.is_file() {
        println!("skipped: model not fetched (bash scripts/fetch-model.sh)");
        return None;
    }
    Some(Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap())
}

#[test]
fn smollm2_encodes_as_its_reference_tokenizer() {
    let Some(t) = smollm2() else { return };
    assert_eq!((t.vocab_size(), t.bos_id(), t.eos_id(), t.pad_id()), (49152, 1, 2, 2));
    assert!(t.is_control(16) && !t.is_control(17));
    let hello = t.encode("Hello world");
    assert_eq!(hello, [t.id("Hello").unwrap(), t.id("Ġworld").unwrap()]);
    assert_eq!(hello, [19556, 905]);
    let q = t.encode("What is 12+7?");
    assert_eq!(token_strings(&t, &q), ["What", "Ġis", "Ġ", "1", "2", "+", "7", "?"]);
    let text = "The quick brown fox jumps over the lazy dog.\n\nIt's   12,345 steps!";
    let ids = [
        504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 198, 198, 1589, 506, 333, 33, 34, 28, 35, 36, 37,
        3301, 17,
    ];
    assert_eq!(t.encode(text), ids);

    let hi = t.encode(&t.chat_prompt(None, "hi"));
    assert_eq!(hi.iter().filter(|&&i| i == 1).count(), 3, "<|im_start|> is one id");
    assert_eq!(hi.iter().filter(|&&i| i == 2).count(), 2, "<|im_end|> is one id");
    let prompt = t.chat_prompt(None, "What is 3 + 4?");
    let ids = t.encode(&prompt);
    println!("Hello world -> {hello:?}\nchat_prompt(None, \"What is 3 + 4?\") -> {ids:?}");
    #[rustfmt::skip]
    let want = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
        8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 35, 1232, 216, 36, 47, 2, 198, 1, 520, 9531, 198];
    assert_eq!(ids, want);
    assert_eq!(t.decode(&ids), prompt);
}

#[test]
fn smollm2_round_trips_paragraphs() {
    let Some(t) = smollm2() else { return };
    let paragraphs = [
        "Reinforcement learning with verifiable rewards samples several answers per question, \
         scores each with a checker, and pushes the policy towards the ones that pass. It's simple; \
         it doesn't need a reward model.",
        "Step 1: 12 × 7 = 84.\nStep 2: 84 + 16 = 100.\n\nSo the answer is \\boxed{100}.",
        "fn main() {\n    let x: u32 = 0x1F;\n\tprintln!(\"{x:>8}\");   // trailing\n}\n\n\n",
        "Ça marche très bien — naïve café, Straße, Ελληνικά, русский, 日本語, 中文, 한국어 🙂👍🏽.",
        "   leading spaces, trailing spaces   \n\t\n",
    ];
    for p in paragraphs {
        let ids = t.encode(p);
        assert_eq!(t.decode(&ids), p);
        assert!(ids.len() < p.len(), "BPE should compress: {} tokens for {} bytes", ids.len(), p.len());
    }
}
