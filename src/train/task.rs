//! The verifiable toy task: addition of two zero-padded d-digit numbers, character-level
//! tokens, exact-match reward.
//!
//! A prompt is `<bos> a₁…a_d + b₁…b_d =` (operands zero-padded, so every prompt has the same
//! length and the digits line up); the answer is the sum's digits least significant first, then
//! `<eos>`, e.g. `<bos>037+485=` → `225<eos>` (522). Writing the sum backwards, as many studies
//! of arithmetic in small transformers do, makes each answer digit depend only on two aligned
//! operand digits and the carry from the digit just written; written forwards, our tiny model
//! stayed on its loss plateau far longer than the CPU time budget allows. Only the first [`TASK_TOKENS`] ids are ever used; the
//! model's vocabulary is padded far beyond them with never-used "garbage" ids, so the
//! per-token work spans a realistic vocabulary and RL's early pruning of that mass is visible.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Padding after a finished response (never counted).
pub const PAD: u32 = 0;
/// Start of a prompt.
pub const BOS: u32 = 1;
/// End of a response.
pub const EOS: u32 = 2;
/// `+`.
pub const PLUS: u32 = 3;
/// `=`.
pub const EQUALS: u32 = 4;
/// The digit 0; digit k is `DIGIT0 + k`.
pub const DIGIT0: u32 = 5;
/// Ids the task uses; every id at or above this is a garbage token.
pub const TASK_TOKENS: usize = 15;
/// Most operand digits: the answer must fit a u64 and the problem space the sampler below.
pub const MAX_DIGITS: usize = 9;

/// One addition problem `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    /// First operand.
    pub a: u64,
    /// Second operand.
    pub b: u64,
}

/// The task at a given operand width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// Operand digits d (1..=[`MAX_DIGITS`]).
    pub digits: usize,
}

impl Task {
    /// A task over d-digit operands; errors for d outside 1..=[`MAX_DIGITS`].
    pub fn new(digits: usize) -> Result<Self> {
        if !(1..=MAX_DIGITS).contains(&digits) {
            return Err(Error::InvalidConfig { name: "digits", value: digits.to_string(), why: "must be in 1..=9" });
        }
        Ok(Self { digits })
    }

    /// Tokens per prompt: `<bos>`, d digits, `+`, d digits, `=`.
    pub fn prompt_len(&self) -> usize {
        2 * self.digits + 3
    }

    /// Most response tokens: d + 1 answer digits and `<eos>`.
    pub fn max_response(&self) -> usize {
        self.digits + 2
    }

    /// Number of distinct problems, 10^(2d).
    pub fn space(&self) -> u128 {
        10u128.pow(2 * self.digits as u32)
    }

    /// The prompt's tokens.
    pub fn prompt(&self, p: &Problem) -> Vec<u32> {
        let mut t = Vec::with_capacity(self.prompt_len());
        t.push(BOS);
        t.extend(digits_padded(p.a, self.digits));
        t.push(PLUS);
        t.extend(digits_padded(p.b, self.digits));
        t.push(EQUALS);
        t
    }

    /// The reference response: the sum's digits, least significant first, then `<eos>`.
    pub fn answer(&self, p: &Problem) -> Vec<u32> {
        let s = (p.a + p.b).to_string();
        let mut t: Vec<u32> = s.bytes().rev().map(|c| DIGIT0 + (c - b'0') as u32).collect();
        t.push(EOS);
        t
    }

    /// The verifier: 1 when the response up to and including its first `<eos>` equals the
    /// answer exactly, else 0 (no `<eos>` = wrong).
    pub fn reward(&self, p: &Problem, response: &[u32]) -> f32 {
        let answer = self.answer(p);
        let ok = match response.iter().position(|&t| t == EOS) {
            Some(end) => response[..=end] == answer[..],
            None => false,
        };
        if ok {
            1.0
        } else {
            0.0
        }
    }
}

fn digits_padded(x: u64, width: usize) -> impl Iterator<Item = u32> {
    let s = format!("{x:0width$}");
    s.into_bytes().into_iter().map(|c| DIGIT0 + (c - b'0') as u32)
}

/// Human-readable text of token ids (`?` for a garbage id), for examples and debugging.
pub fn decode(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|&t| match t {
            PAD => String::new(),
            BOS => "<bos>".into(),
            EOS => "<eos>".into(),
            PLUS => "+".into(),
            EQUALS => "=".into(),
            d if (DIGIT0..DIGIT0 + 10).contains(&d) => char::from(b'0' + (d - DIGIT0) as u8).to_string(),
            _ => "?".into(),
        })
        .collect()
}

/// Three disjoint problem sets: SFT data, RL prompts, held-out evaluation problems.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// Supervised fine-tuning data.
    pub sft: Vec<Problem>,
    /// GRPO (and RFT) prompts.
    pub rl: Vec<Problem>,
    /// Evaluation only; shares no problem with the other two.
    pub held_out: Vec<Problem>,
}

impl Splits {
    /// Draws `sft + rl + held_out` distinct problems uniformly (seeded) and splits them in that
    /// order. Errors when the task has fewer distinct problems than that.
    pub fn new(task: &Task, sft: usize, rl: usize, held_out: usize, seed: u64) -> Result<Self> {
        let total = sft + rl + held_out;
        // Rejection sampling stays fast while at most half the space is drawn.
        if total as u128 * 2 > task.space() {
            return Err(Error::InvalidConfig {
                name: "problems",
                value: total.to_string(),
                why: "more than half of the task's distinct problems: use more digits or fewer problems",
            });
        }
        let bound = 10u64.pow(task.digits as u32);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = HashSet::with_capacity(total);
        let mut all = Vec::with_capacity(total);
        while all.len() < total {
            let p = Problem { a: rng.random_range(0..bound), b: rng.random_range(0..bound) };
            if seen.insert(p) {
                all.push(p);
            }
        }
        let held_out_set = all.split_off(sft + rl);
        let rl_set = all.split_off(sft);
        Ok(Self { sft: all, rl: rl_set, held_out: held_out_set })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_answer_and_reward() {
        let task = Task::new(3).unwrap();
        let p = Problem { a: 37, b: 485 };
        assert_eq!(decode(&task.prompt(&p)), "<bos>037+485=");
        assert_eq!(task.prompt(&p).len(), task.prompt_len());
        assert_eq!(decode(&task.answer(&p)), "225<eos>");
        assert_eq!(decode(&task.answer(&Problem { a: 0, b: 0 })), "0<eos>");
        let ans = task.answer(&p);
        assert_eq!(task.reward(&p, &ans), 1.0);
        // Trailing padding after <eos> does not matter; a missing <eos> or extra digit does.
        assert_eq!(task.reward(&p, &[ans.clone(), vec![PAD, PAD]].concat()), 1.0);
        assert_eq!(task.reward(&p, &ans[..3]), 0.0);
        assert_eq!(task.reward(&p, &[DIGIT0 + 2, DIGIT0 + 2, DIGIT0 + 5, DIGIT0, EOS]), 0.0);
        assert_eq!(task.reward(&p, &[DIGIT0 + 5, DIGIT0 + 2, DIGIT0 + 2, EOS]), 0.0);
        assert_eq!(task.reward(&Problem { a: 999, b: 999 }, &task.answer(&Problem { a: 999, b: 999 })), 1.0);
        assert!(task.answer(&Problem { a: 999, b: 999 }).len() <= task.max_response());
    }

    #[test]
    fn splits_are_disjoint_and_seeded() {
        let task = Task::new(2).unwrap();
        let s = Splits::new(&task, 100, 200, 50, 7).unwrap();
        let all: HashSet<Problem> = s.sft.iter().chain(&s.rl).chain(&s.held_out).copied().collect();
        assert_eq!(all.len(), 350);
        assert_eq!(s, Splits::new(&task, 100, 200, 50, 7).unwrap());
        assert!(Splits::new(&task, 3000, 2000, 1000, 7).is_err());
    }
}
