//! The byte-level BPE tokenizer of a GGUF model (`tokenizer.ggml.model` = "gpt2"), built from the
//! file's own vocabulary, token types and merges.
//!
//! Encoding, step by step (as llama.cpp does it for `tokenizer.ggml.pre` = "smollm"):
//! 1. Control tokens written literally in the text (`<|im_start|>`) become their ids; the text
//!    between them is encoded as plain text.
//! 2. Pre-tokenization ([`pre_tokenize`]) cuts the text into pieces with two regexes applied in
//!    sequence: `\p{N}` (every digit its own piece), then, inside each piece, GPT-2's
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! 3. Each piece's UTF-8 bytes start as their byte tokens (GPT-2's byte-to-unicode mapping:
//!    a space is `Ġ`, a newline `Ċ`), and the adjacent pair whose merge has the lowest rank is
//!    merged until no pair has a merge (ties: leftmost first).
//!
//! Decoding maps each normal token's characters back to bytes and reads them as UTF-8 (lossy);
//! control tokens are written as their text.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::lm::gguf::Gguf;

/// The system prompt of SmolLM2's ChatML template, used when the file has no template to read it
/// from.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The stand-in for a byte the vocabulary has no token for: no merge names it, and it is dropped
/// from the output.
const NO_TOKEN: u32 = u32::MAX;

/// `tokenizer.ggml.token_type` of a control token (`<|im_start|>`): matched literally in text,
/// decoded as its text.
const TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` of a user-defined token: treated like a control token.
const TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's byte-to-unicode table: byte `b` is written as the character `table[b]` in the
/// vocabulary. Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves;
/// the other 68 (controls, space, DEL, NBSP, soft hyphen) map in byte order to U+0100.. .
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

/// `\p{L}`, approximated: alphabetic and not numeric. Rust's `Alphabetic` adds `Other_Alphabetic`
/// (some combining vowel signs, e.g. Devanagari's) to the letter categories; llama.cpp (general
/// category L only) puts those with punctuation. Letter-number characters (Ⅻ) are numbers in both.
fn is_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric()
}

/// `\p{N}`: Rust's `is_numeric` is exactly the categories Nd, Nl and No.
fn is_number(c: char) -> bool {
    c.is_numeric()
}

/// Cuts text into the pieces BPE runs on, as llama.cpp's pre-tokenizer for `pre` = "smollm"
/// (shared with starcoder). Pass 1, `\p{N}`: every numeric character is its own piece, and each
/// run between them is one piece. Pass 2 runs GPT-2's regex on each run separately, so the lookahead
/// of `\s+(?!\S)` stops at the run's end: a whitespace run followed by a non-space gives all but
/// its last character as one piece (the last space then prefixes the next word), and a run at the
/// end of a pass-1 piece (end of text, or before a digit) stays whole.
///
/// `\s` is Unicode `White_Space` (Rust's `is_whitespace`, the same set as llama.cpp's table);
/// `\p{L}` is approximated as in `is_letter` (differs only for combining marks in the Alphabetic
/// property); characters llama.cpp has no category for (unassigned code points) are treated as
/// punctuation here, where llama.cpp makes each its own piece.
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if is_number(c) {
            if start < i {
                gpt2_split(&text[start..i], &mut pieces);
            }
            let end = i + c.len_utf8();
            pieces.push(&text[i..end]);
            start = end;
        }
    }
    if start < text.len() {
        gpt2_split(&text[start..], &mut pieces);
    }
    pieces
}

/// Character classes of GPT-2's regex; `None` past the end of the piece (no class at all).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: Option<char>) -> Option<Class> {
    c.map(|c| {
        if is_letter(c) {
            Class::Letter
        } else if is_number(c) {
            Class::Number
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    })
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` over one piece,
/// the alternatives tried in order at each position (the structure of llama.cpp's
/// `unicode_regex_split_custom_gpt2`).
fn gpt2_split<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let at = |j: usize| chars.get(j).map(|&(_, c)| c);
    let byte = |j: usize| chars.get(j).map_or(text.len(), |&(b, _)| b);
    let mut pos = 0;
    while pos < n {
        let start = pos;
        let c = chars[pos].1;
        // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
        let contraction = if c == '\'' {
            match (at(pos + 1), at(pos + 2)) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            }
        } else {
            0
        };
        if contraction > 0 {
            pos += contraction;
        } else {
            // ` ?X+` for X = letters, numbers, other: the optional space looks one char ahead.
            let ahead = class(if c == ' ' { at(pos + 1) } else { Some(c) });
            match ahead {
                Some(k @ (Class::Letter | Class::Number | Class::Other)) => {
                    pos += usize::from(c == ' ');
                    while class(at(pos)) == Some(k) {
                        pos += 1;
                    }
                }
                _ => {
                    let spaces = (pos..n).take_while(|&j| chars[j].1.is_whitespace()).count();
                    pos += match spaces {
                        // \s+(?!\S): leave the last space to prefix what follows.
                        s if s > 1 && pos + s < n => s - 1,
                        // \s+ (also a single space before a non-space, or a run at the end).
                        s if s > 0 => s,
                        // Unreachable with the classes above; one char keeps the loop moving.
                        _ => 1,
                    };
                }
            }
        }
        out.push(&text[byte(start)..byte(pos)]);
    }
}

/// A byte-level BPE tokenizer read from a GGUF file (see the module docs for the algorithm).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Control or user-defined: matched literally in text, decoded as its text.
    literal: Vec<bool>,
    /// Control only (`token_type` 3).
    control: Vec<bool>,
    /// (left, right) -> (rank, merged token).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each byte; [`NO_TOKEN`] for the bytes the vocabulary lacks (SmolLM2 has no
    /// token for 21 of them: rare controls such as 0x04, and 0xC0, 0xC1, 0xF1, 0xF2, 0xF5..=0xFF,
    /// which UTF-8 text almost never holds).
    byte_ids: [u32; 256],
    /// The inverse of [`bytes_to_unicode`].
    char_bytes: HashMap<char, u8>,
    /// Literal tokens, longest first (the longest match wins where two start at one place).
    specials: Vec<u32>,
    bos: u32,
    eos: u32,
    pad: u32,
    default_system: String,
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata. Errors
    /// ([`Error::Model`]): a model other than "gpt2", a pre-tokenizer other than "smollm",
    /// token/type arrays of different lengths, a duplicate token, a merge that is not "a b" over
    /// known tokens whose concatenation is a token, or a special id out of range.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let bad = |msg: String| Error::Model { path: g.path().display().to_string(), msg };
        let model = g.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(bad(format!("tokenizer model `{model}` is not supported (only byte-level BPE, \"gpt2\")")));
        }
        let pre = g.string("tokenizer.ggml.pre")?;
        if pre != "smollm" {
            return Err(bad(format!("pre-tokenizer `{pre}` is not supported (only \"smollm\")")));
        }
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let types = g.ints("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(bad(format!(
                "inconsistent tokenizer: {} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let merges = g.strings("tokenizer.ggml.merges")?;
        let id = |key: &str| -> Result<u32> {
            let v = g.usize(key)?;
            if v >= tokens.len() {
                return Err(bad(format!("`{key}` = {v} is not below the vocabulary size {}", tokens.len())));
            }
            Ok(v as u32)
        };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
        let pad = if g.metadata().contains_key("tokenizer.ggml.padding_token_id") {
            id("tokenizer.ggml.padding_token_id")?
        } else {
            eos
        };
        let default_system = g
            .string("tokenizer.chat_template")
            .ok()
            .and_then(template_system_prompt)
            .unwrap_or(DEFAULT_SYSTEM_PROMPT)
            .to_string();
        Self::from_parts(&tokens, &types, &merges, bos, eos, pad, default_system).map_err(bad)
    }

    /// The checks and tables shared by every source; errors are messages for [`Error::Model`].
    fn from_parts(
        tokens: &[&str],
        types: &[i64],
        merge_list: &[&str],
        bos: u32,
        eos: u32,
        pad: u32,
        default_system: String,
    ) -> std::result::Result<Self, String> {
        if tokens.len() >= NO_TOKEN as usize {
            return Err(format!("{} tokens do not fit u32 ids", tokens.len()));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(t.to_string(), i as u32) {
                return Err(format!("inconsistent tokenizer: token {i} {t:?} repeats token {first}"));
            }
        }
        let literal: Vec<bool> = types.iter().map(|&t| t == TYPE_CONTROL || t == TYPE_USER_DEFINED).collect();
        let control: Vec<bool> = types.iter().map(|&t| t == TYPE_CONTROL).collect();
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, m) in merge_list.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| format!("merge {rank} {m:?} is not two tokens \"a b\""))?;
            let known =
                |t: &str| ids.get(t).copied().ok_or_else(|| format!("merge {rank} {m:?} names unknown token {t:?}"));
            let (l, r, joined) = (known(a)?, known(b)?, known(&format!("{a}{b}"))?);
            // A repeated pair keeps its first (lowest) rank, as a rank table built in order would.
            merges.entry((l, r)).or_insert((rank as u32, joined));
        }
        let table = bytes_to_unicode();
        let byte_ids = table.map(|c| ids.get(c.to_string().as_str()).copied().unwrap_or(NO_TOKEN));
        let char_bytes = table.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let mut specials: Vec<u32> = (0..tokens.len() as u32).filter(|&i| literal[i as usize]).collect();
        specials.retain(|&i| !tokens[i as usize].is_empty());
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let tokens = tokens.iter().map(|t| t.to_string()).collect();
        Ok(Self {
            tokens,
            ids,
            literal,
            control,
            merges,
            byte_ids,
            char_bytes,
            specials,
            bos,
            eos,
            pad,
            default_system,
        })
    }

    /// The number of tokens, V.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token ids of `text`: control tokens written in it become their ids, the rest is
    /// byte-level BPE. No BOS is added (`add_bos_token` is false for SmolLM2). A byte the
    /// vocabulary has no token for is dropped, as llama.cpp drops it (SmolLM2 lacks 21, e.g. 0x04:
    /// see `byte_ids`), so `decode(encode(text)) == text` for all text without those bytes.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut plain = 0; // start of the text not yet encoded
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some(&id) = self.specials.iter().find(|&&s| rest.starts_with(self.tokens[s as usize].as_str())) {
                self.encode_plain(&text[plain..i], &mut out);
                out.push(id);
                i += self.tokens[id as usize].len();
                plain = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_plain(&text[plain..], &mut out);
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        for piece in pre_tokenize(text) {
            self.bpe(piece, out);
        }
    }

    /// Merges one piece's byte tokens by rank. Quadratic in the piece's length, which is a word
    /// or a run of spaces or punctuation in practice.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(rank, joined)| (rank, i, joined)))
                .min();
            let Some((_, i, joined)) = best else { break };
            syms[i] = joined;
            syms.remove(i + 1);
        }
        out.extend(syms.into_iter().filter(|&s| s != NO_TOKEN));
    }

    /// The text of `ids`: each token's characters mapped back to bytes, read as UTF-8 (invalid
    /// sequences become U+FFFD); control tokens written as their text; an id out of range as
    /// U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.tokens.get(id as usize) {
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
                Some(t) if self.literal[id as usize] => bytes.extend_from_slice(t.as_bytes()),
                Some(t) => {
                    for c in t.chars() {
                        match self.char_bytes.get(&c) {
                            Some(&b) => bytes.push(b),
                            // Not a byte character (a malformed vocabulary): keep it as it is.
                            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw vocabulary string of a token (`"Ġworld"`), or `None` out of range.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a raw vocabulary string.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The beginning-of-sequence token (`<|im_start|>` for SmolLM2).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end-of-sequence token (`<|im_end|>` for SmolLM2): generation stops here.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// True for a control token (`token_type` 3, e.g. `<|endoftext|>`, `<|im_start|>`).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The default system prompt: read from the file's ChatML template, else
    /// [`DEFAULT_SYSTEM_PROMPT`].
    pub fn default_system_prompt(&self) -> &str {
        &self.default_system
    }

    /// A one-turn ChatML prompt that ends where the assistant's answer begins:
    /// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
    /// `None` uses [`default_system_prompt`](Self::default_system_prompt).
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> String {
        let system = system.unwrap_or(&self.default_system);
        format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    }
}

/// The system prompt a ChatML template inserts when the conversation has none: the text between
/// the template's `<|im_start|>system\n` and the next `<|im_end|>`.
fn template_system_prompt(template: &str) -> Option<&str> {
    const OPEN: &str = "<|im_start|>system\n";
    let start = template.find(OPEN)? + OPEN.len();
    let len = template[start..].find("<|im_end|>")?;
    Some(&template[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the control tokens, the 256 byte tokens and the merged tokens of `merges`.
    fn tok(merges: &[&str]) -> Tokenizer {
        let table = bytes_to_unicode();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        tokens.extend(table.iter().map(|c| c.to_string()));
        for m in merges {
            let joined = m.replace(' ', "");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let types: Vec<i64> = (0..tokens.len()).map(|i| if i < 3 { 3 } else { 1 }).collect();
        Tokenizer::from_parts(&refs, &types, merges, 1, 2, 2, DEFAULT_SYSTEM_PROMPT.into()).unwrap()
    }

    fn strs(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| tok.token(i).unwrap().to_string()).collect()
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!((t[b' ' as usize], t[b'\n' as usize], t[b'a' as usize]), ('Ġ', 'Ċ', 'a'));
        assert_eq!((t[0], t[0xAD]), ('\u{100}', '\u{143}'));
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn gpt2_regex_alternatives() {
        assert_eq!(pre_tokenize("it's they'll I'M"), ["it", "'s", " they", "'ll", " I", "'", "M"]);
        assert_eq!(pre_tokenize("a  b\n\nc"), ["a", " ", " b", "\n", "\n", "c"]);
        assert_eq!(pre_tokenize("x?!  "), ["x", "?!", "  "]);
        assert_eq!(pre_tokenize(" ,ab"), [" ,", "ab"]);
        // Before a digit the run stays whole: pass 1 cut the text there.
        assert_eq!(pre_tokenize("a  1"), ["a", "  ", "1"]);
    }

    #[test]
    fn merges_apply_by_rank_not_position() {
        // "abc": rank 0 is "b c", so a+b never forms although it comes first in the text.
        let t = tok(&["b c", "a b", "a bc"]);
        assert_eq!(strs(&t, &t.encode("abc")), ["abc"]);
        let t = tok(&["b c", "a b"]);
        assert_eq!(strs(&t, &t.encode("abc")), ["a", "bc"]);
        let t = tok(&["a b", "b c"]);
        assert_eq!(strs(&t, &t.encode("abc")), ["ab", "c"]);
        // Equal pairs merge leftmost first: "aaa" -> "aa" "a".
        let t = tok(&["a a"]);
        assert_eq!(strs(&t, &t.encode("aaa")), ["aa", "a"]);
    }

    #[test]
    fn inconsistent_vocabularies_are_refused() {
        let refs = ["a", "a"];
        let e = Tokenizer::from_parts(&refs, &[1, 1], &[], 0, 0, 0, String::new()).unwrap_err();
        assert!(e.contains("repeats"), "{e}");
        let table: Vec<String> = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = table.iter().map(String::as_str).collect();
        let e = Tokenizer::from_parts(&refs, &[1; 256], &["a b"], 0, 0, 0, String::new()).unwrap_err();
        assert!(e.contains("unknown token \"ab\""), "{e}");
        let e = Tokenizer::from_parts(&refs, &[1; 256], &["ab"], 0, 0, 0, String::new()).unwrap_err();
        assert!(e.contains("not two tokens"), "{e}");
    }

    #[test]
    fn bytes_without_a_token_are_dropped() {
        // No token for byte 0x04 (as in SmolLM2): "a\x04b" encodes as "a" "b", like llama.cpp.
        let table = bytes_to_unicode();
        let tokens: Vec<String> = table.iter().filter(|&&c| c != table[4]).map(|c| c.to_string()).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let t = Tokenizer::from_parts(&refs, &[1; 255], &[], 0, 0, 0, String::new()).unwrap();
        assert_eq!(t.decode(&t.encode("a\u{4}b")), "ab");
    }

    #[test]
    fn template_default_system_prompt() {
        let tpl = "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}";
        assert_eq!(template_system_prompt(tpl), Some("Be brief."));
        assert_eq!(template_system_prompt("{{ messages }}"), None);
    }
}
