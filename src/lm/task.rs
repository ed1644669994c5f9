//! Verifiable questions for a small chat model: arithmetic with an exact integer answer.
//!
//! The verifier reads the response up to its end-of-turn token and takes the **last integer** in
//! it (an optional minus sign and digits, thousands separators not accepted) as the answer; the
//! response is correct when that integer equals the problem's answer and the response finished
//! (a response cut at the token limit is incorrect). "The answer is 7.", "3 + 4 = 7" and "7" are
//! all correct for 3 + 4; "7, or maybe 8" is not.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Which questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskKind {
    /// a + b with a, b in 1..=9.
    #[default]
    Add1,
    /// a + b with a, b in 10..=99 (two-digit addition, with and without carries).
    Add2,
    /// a + b + c with a, b, c in 1..=9.
    Add3,
    /// a × b with a, b in 2..=12.
    Mul,
}

impl TaskKind {
    /// Parses a command-line name: `add2`, `add3`, `mul`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "add1" => Ok(Self::Add1),
            "add2" => Ok(Self::Add2),
            "add3" => Ok(Self::Add3),
            "mul" => Ok(Self::Mul),
            _ => {
                Err(Error::InvalidConfig { name: "task", value: name.into(), why: "expected add1, add2, add3 or mul" })
            }
        }
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Add1 => "add1",
            Self::Add2 => "add2",
            Self::Add3 => "add3",
            Self::Mul => "mul",
        }
    }

    /// How many distinct problems exist.
    pub fn distinct(self) -> usize {
        match self {
            Self::Add1 => 9 * 9,
            Self::Add2 => 90 * 90,
            Self::Add3 => 9 * 9 * 9,
            Self::Mul => 11 * 11,
        }
    }
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The user's message.
    pub question: String,
    /// The exact answer.
    pub answer: i64,
}

/// `count` distinct problems of `kind`, drawn from `seed` (the same seed gives the same list).
pub fn problems(kind: TaskKind, count: usize, seed: u64) -> Result<Vec<Problem>> {
    if count == 0 || count > kind.distinct() {
        return Err(Error::InvalidConfig {
            name: "problems",
            value: count.to_string(),
            why: "must be >= 1 and at most the number of distinct problems of the task",
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let (terms, answer, op): (Vec<i64>, i64, &str) = match kind {
            TaskKind::Add1 => {
                let (a, b) = (rng.random_range(1..=9), rng.random_range(1..=9));
                (vec![a, b], a + b, "+")
            }
            TaskKind::Add2 => {
                let (a, b) = (rng.random_range(10..=99), rng.random_range(10..=99));
                (vec![a, b], a + b, "+")
            }
            TaskKind::Add3 => {
                let t: Vec<i64> = (0..3).map(|_| rng.random_range(1..=9)).collect();
                let s = t.iter().sum();
                (t, s, "+")
            }
            TaskKind::Mul => {
                let (a, b) = (rng.random_range(2..=12), rng.random_range(2..=12));
                (vec![a, b], a * b, "*")
            }
        };
        if !seen.insert(terms.clone()) {
            continue;
        }
        let expr = terms.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(&format!(" {op} "));
        out.push(Problem { question: format!("What is {expr}? Answer with the number only."), answer });
    }
    Ok(out)
}

/// The last integer in `text` (ASCII digits with an optional `-` right before them).
pub fn last_integer(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 {
        if b[end - 1].is_ascii_digit() {
            let mut start = end - 1;
            while start > 0 && b[start - 1].is_ascii_digit() {
                start -= 1;
            }
            let neg = start > 0 && b[start - 1] == b'-';
            // Absurdly long digit runs are not an answer.
            let v: i64 = text[start..end].parse().ok()?;
            return Some(if neg { -v } else { v });
        }
        end -= 1;
    }
    None
}

/// The verifier: `finished` (the end-of-turn token was sampled) and the last integer of the
/// response text equals the answer.
pub fn is_correct(problem: &Problem, response: &str, finished: bool) -> bool {
    finished && last_integer(response) == Some(problem.answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_integer_is_the_answer() {
        assert_eq!(last_integer("7"), Some(7));
        assert_eq!(last_integer("The answer is 42."), Some(42));
        assert_eq!(last_integer("3 + 4 = 7"), Some(7));
        assert_eq!(last_integer("7, or maybe 8"), Some(8));
        assert_eq!(last_integer("It is -12"), Some(-12));
        assert_eq!(last_integer("a-b 5"), Some(5));
        assert_eq!(last_integer("no number"), None);
        assert_eq!(last_integer(""), None);
        assert_eq!(last_integer("99999999999999999999999"), None);
    }

    #[test]
    fn unfinished_responses_are_wrong() {
        let p = Problem { question: "What is 3 + 4?".into(), answer: 7 };
        assert!(is_correct(&p, "The answer is 7.", true));
        assert!(!is_correct(&p, "The answer is 7.", false));
        assert!(!is_correct(&p, "The answer is 8.", true));
        assert!(!is_correct(&p, "", true));
    }

    #[test]
    fn problems_are_distinct_seeded_and_right() {
        for kind in [TaskKind::Add1, TaskKind::Add2, TaskKind::Add3, TaskKind::Mul] {
            let a = problems(kind, 50, 3).unwrap();
            assert_eq!(a, problems(kind, 50, 3).unwrap());
            assert_ne!(a, problems(kind, 50, 4).unwrap());
            let qs: std::collections::HashSet<_> = a.iter().map(|p| &p.question).collect();
            assert_eq!(qs.len(), 50);
            for p in &a {
                // Recompute the answer from the question's numbers.
                let nums: Vec<i64> = p
                    .question
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                let want: i64 = if p.question.contains('*') { nums.iter().product() } else { nums.iter().sum() };
                assert_eq!(p.answer, want, "{}", p.question);
            }
        }
        assert!(problems(TaskKind::Mul, 122, 0).is_err());
        assert!(problems(TaskKind::Mul, 121, 0).is_ok());
        assert!(problems(TaskKind::Add2, 0, 0).is_err());
        assert!(TaskKind::parse("sub").is_err());
    }
}
