//! Configuration structs with the defaults of DESIGN.md §4, and their validation.
//!
//! Every struct implements `Default`; change fields with struct-update syntax:
//! `GrpoConfig { entropy_coef: 0.01, ..Default::default() }`.

use crate::error::{Error, Result};

/// Default top-p for the Rollout Branching Factor (the paper's 95% mass).
pub const DEFAULT_TOP_P: f32 = 0.95;

/// Settings of the per-token statistics pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenStatsConfig {
    /// Sampling temperature T > 0: statistics are of softmax(z / T).
    pub temperature: f32,
    /// Top-p ∈ (0, 1) for the branch count (Rollout Branching Factor); `None` skips it.
    pub top_p: Option<f32>,
    /// Return [`Error::NonFiniteLogits`] for NaN/+inf logits. With `false` those rows give NaN
    /// statistics instead (on a GPU this saves a host synchronisation).
    pub check_finite: bool,
    /// The rollout sampler's filter: with it the statistics also give the truncated log-prob ℓ̃,
    /// entropy H̃, lse and size of the kept set K (see [`SamplingFilter`]); `None` (the default)
    /// computes exactly what it computed before filters existed.
    pub filter: Option<SamplingFilter>,
}

impl Default for TokenStatsConfig {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: Some(DEFAULT_TOP_P), check_finite: true, filter: None }
    }
}

impl TokenStatsConfig {
    /// Checks temperature, top-p and the filter.
    pub fn validate(&self) -> Result<()> {
        check_temperature(self.temperature)?;
        check_top_p(self.top_p)?;
        self.filter.map_or(Ok(()), |f| f.validate())
    }
}

/// A rollout engine's sampling filter, applied to p = softmax(z / T): top-k, top-p, or top-k
/// then top-p over the top-k-renormalised distribution (vLLM's order).
///
/// The kept set K is every token whose probability is above the filter's crossing probability
/// τ plus **all** tokens tied at τ. (A sampler keeps an unspecified subset of the tied tokens;
/// keeping all of them is the one choice that does not depend on an order the sampler does
/// not define.) Tokens with p = 0 (logit −inf) are never kept. Top-p = 1 keeps every token of
/// positive probability; top-k ≥ V keeps every token. See DESIGN.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SamplingFilter {
    /// Keep the k most probable tokens (k ≥ 1; all ties at the k-th probability are kept too).
    pub top_k: Option<u32>,
    /// Keep the smallest most-probable set holding ≥ p of the (top-k-renormalised) mass,
    /// p ∈ (0, 1] (all ties at the crossing are kept too).
    pub top_p: Option<f32>,
}

impl SamplingFilter {
    /// Top-p only.
    pub const fn top_p(p: f32) -> Self {
        Self { top_k: None, top_p: Some(p) }
    }

    /// Top-k only.
    pub const fn top_k(k: u32) -> Self {
        Self { top_k: Some(k), top_p: None }
    }

    /// Top-k, then top-p over what top-k kept.
    pub const fn top_k_top_p(k: u32, p: f32) -> Self {
        Self { top_k: Some(k), top_p: Some(p) }
    }

    /// Checks k ≥ 1, p ∈ (0, 1] and that at least one part is set.
    pub fn validate(&self) -> Result<()> {
        if self.top_k.is_none() && self.top_p.is_none() {
            return Err(Error::InvalidConfig {
                name: "filter",
                value: "{}".into(),
                why: "a filter needs top_k, top_p or both (no filter is `None`)",
            });
        }
        if self.top_k == Some(0) {
            return Err(Error::InvalidConfig { name: "filter.top_k", value: "0".into(), why: "must be >= 1" });
        }
        match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                Err(Error::InvalidConfig { name: "filter.top_p", value: p.to_string(), why: "must be in (0, 1]" })
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for SamplingFilter {
    /// `top-k=50,top-p=0.95` (the form `rlvr stats --filter` takes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self.top_k.map(|k| format!("top-k={k}"));
        let p = self.top_p.map(|p| format!("top-p={p}"));
        let parts: Vec<String> = k.into_iter().chain(p).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl std::str::FromStr for SamplingFilter {
    type Err = Error;

    /// Parses `top-p=0.95`, `top-k=50` or both joined by a comma (either order), and validates.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &'static str| Error::InvalidConfig { name: "filter", value: s.to_string(), why };
        let mut f = SamplingFilter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = part.split_once('=').ok_or_else(|| bad("expected top-p=P and/or top-k=K"))?;
            match key.trim() {
                "top-p" | "top_p" if f.top_p.is_none() => {
                    f.top_p = Some(val.trim().parse().map_err(|_| bad("top-p must be a number in (0, 1]"))?);
                }
                "top-k" | "top_k" if f.top_k.is_none() => {
                    f.top_k = Some(val.trim().parse().map_err(|_| bad("top-k must be an integer >= 1"))?);
                }
                "top-p" | "top_p" | "top-k" | "top_k" => return Err(bad("each of top-p and top-k may appear once")),
                _ => return Err(bad("unknown part: expected top-p=P and/or top-k=K")),
            }
        }
        f.validate()?;
        Ok(f)
    }
}

/// Which KL estimator to use against the reference policy (u = ℓ_ref − ℓ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlEstimator {
    /// k1 = ℓ − ℓ_ref.
    K1,
    /// k2 = ½(ℓ − ℓ_ref)².
    K2,
    /// k3 = e^u − u − 1 with u = clamp(ℓ_ref − ℓ, −20, 20), clamped to [−10, 10] (the default).
    #[default]
    K3,
}

/// A KL penalty β_kl·KL added to each token's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlPenalty {
    /// β_kl ≥ 0.
    pub coef: f32,
    /// The estimator.
    pub estimator: KlEstimator,
}

/// How per-token losses ℓ_t (with mask m_t) become the scalar loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    /// Σ m·ℓ / Σ m, or Σ m·ℓ / `global_tokens` when given (data-parallel training: the token
    /// count of the whole global batch). The default.
    TokenMean {
        /// Caller-given denominator (> 0) instead of this batch's Σ m.
        global_tokens: Option<f64>,
    },
    /// Mean over sequences with Σ m > 0 of (Σ_t m·ℓ / Σ_t m).
    SeqMeanTokenMean,
    /// Mean over sequences with Σ m > 0 of Σ_t m·ℓ.
    SeqMeanTokenSum,
    /// Σ m·ℓ / C for a constant C > 0 (Dr. GRPO: the maximum response length).
    SeqMeanTokenSumNorm {
        /// C.
        norm: f64,
    },
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation::TOKEN_MEAN
    }
}

impl Aggregation {
    /// `TokenMean` over this batch's tokens.
    pub const TOKEN_MEAN: Aggregation = Aggregation::TokenMean { global_tokens: None };

    /// Checks the denominators.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Aggregation::TokenMean { global_tokens: Some(g) } if !(g.is_finite() && g > 0.0) => {
                Err(Error::InvalidConfig { name: "global_tokens", value: g.to_string(), why: "must be finite and > 0" })
            }
            Aggregation::SeqMeanTokenSumNorm { norm } if !(norm.is_finite() && norm > 0.0) => {
                Err(Error::InvalidConfig { name: "norm", value: norm.to_string(), why: "must be finite and > 0" })
            }
            _ => Ok(()),
        }
    }
}

/// PPL-based advantage shaping: Ã = A · clip(1 − α·w, lo, hi), w the group z-scored log-PPL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PplShaping {
    /// α (default 0.01).
    pub alpha: f32,
    /// Lower clip of the factor (default 0.8).
    pub lo: f32,
    /// Upper clip of the factor (default 1.2).
    pub hi: f32,
}

impl Default for PplShaping {
    fn default() -> Self {
        Self { alpha: 0.01, lo: 0.8, hi: 1.2 }
    }
}

/// Position-based advantage shaping: Ã = A + sign(A)·min(β·σ(κ·(r − ½)), ½·|A|) with
/// r = (t − 1)/|o| the relative position of the t-th counted token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionShaping {
    /// β (default 0.1).
    pub beta: f32,
    /// κ (default 15).
    pub kappa: f32,
}

impl Default for PositionShaping {
    fn default() -> Self {
        Self { beta: 0.1, kappa: 15.0 }
    }
}

/// Which advantage shapings are on. Both on: position first (its cap uses the unshaped |A|),
/// then the PPL factor multiplies the result.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Shaping {
    /// PPL-based shaping.
    pub ppl: Option<PplShaping>,
    /// Position-based shaping.
    pub position: Option<PositionShaping>,
}

impl Shaping {
    /// No shaping.
    pub const NONE: Shaping = Shaping { ppl: None, position: None };

    /// Checks the coefficients.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self.ppl {
            check_finite_cfg("ppl.alpha", p.alpha)?;
            check_finite_cfg("ppl.lo", p.lo)?;
            check_finite_cfg("ppl.hi", p.hi)?;
            if p.lo > p.hi {
                return Err(Error::InvalidConfig { name: "ppl.lo", value: p.lo.to_string(), why: "must be <= ppl.hi" });
            }
        }
        if let Some(p) = self.position {
            check_finite_cfg("position.beta", p.beta)?;
            check_finite_cfg("position.kappa", p.kappa)?;
            if p.beta < 0.0 {
                return Err(Error::InvalidConfig {
                    name: "position.beta",
                    value: p.beta.to_string(),
                    why: "must be >= 0",
                });
            }
        }
        Ok(())
    }
}

/// GRPO advantages from rewards: A_i = (r_i − mean_g r)/(std_g r + 1e-6) per group of G
/// consecutive sequences (std unbiased; 0 for G = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvantageConfig {
    /// G ≥ 1 (default 8).
    pub group_size: usize,
    /// Divide by the group std (GRPO). `false` = Dr. GRPO (only subtract the mean).
    pub scale_by_std: bool,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self { group_size: 8, scale_by_std: true }
    }
}

/// Settings of the GRPO policy loss.
///
/// Per token: ρ = exp(clamp(ℓ − ℓ_old, −20, 20)); L = max(−Ã·ρ, −Ã·clip(ρ, 1−ε_low, 1+ε_high));
/// with dual-clip c and Ã < 0, L = min(L, −Ã·c); total = L + β_kl·KL − c_H·H.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoConfig {
    /// ε_low (default 0.2).
    pub clip_low: f32,
    /// ε_high (default 0.28, clip-higher).
    pub clip_high: f32,
    /// Dual-clip constant c > 1 (typical 3); `None` = off (default).
    pub dual_clip: Option<f32>,
    /// KL penalty to the reference policy; `None` = off (default).
    pub kl: Option<KlPenalty>,
    /// Entropy bonus coefficient c_H (default 0 = off).
    pub entropy_coef: f32,
    /// Sampling temperature T > 0 the logits are divided by (default 1).
    pub temperature: f32,
    /// Top-p for the per-token branch count reported by the forward; `None` skips it (default).
    pub top_p: Option<f32>,
    /// Loss aggregation (default token-mean).
    pub aggregation: Aggregation,
    /// Error on NaN/+inf logits (default true); see [`TokenStatsConfig::check_finite`].
    pub check_finite: bool,
    /// The sampler's filter (default `None`). With it (or with a given
    /// [`crate::types::KeptMask`] in the inputs) the ratio is built from the truncated log-prob
    /// ℓ̃ = x_y − ln Σ_{i∈K} e^{x_i}, so ℓ_old must be the sampler's own truncated log-prob;
    /// a target outside K is flagged ([`crate::types::OUTSIDE_KEPT`]) and uses ℓ.
    pub filter: Option<SamplingFilter>,
    /// With a filter or mask: the entropy bonus uses the truncated entropy H̃ instead of H
    /// (default false).
    pub kept_entropy: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.28,
            dual_clip: None,
            kl: None,
            entropy_coef: 0.0,
            temperature: 1.0,
            top_p: None,
            aggregation: Aggregation::TOKEN_MEAN,
            check_finite: true,
            filter: None,
            kept_entropy: false,
        }
    }
}

impl GrpoConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        check_temperature(self.temperature)?;
        check_top_p(self.top_p)?;
        if let Some(f) = self.filter {
            f.validate()?;
        }
        self.aggregation.validate()?;
        check_finite_cfg("clip_low", self.clip_low)?;
        check_finite_cfg("clip_high", self.clip_high)?;
        check_finite_cfg("entropy_coef", self.entropy_coef)?;
        if !(0.0..1.0).contains(&self.clip_low) {
            return Err(Error::InvalidConfig {
                name: "clip_low",
                value: self.clip_low.to_string(),
                why: "must be in [0, 1)",
            });
        }
        if self.clip_high < 0.0 {
            return Err(Error::InvalidConfig {
                name: "clip_high",
                value: self.clip_high.to_string(),
                why: "must be >= 0",
            });
        }
        if let Some(c) = self.dual_clip {
            if !(c.is_finite() && c > 1.0) {
                return Err(Error::InvalidConfig {
                    name: "dual_clip",
                    value: c.to_string(),
                    why: "must be finite and > 1",
                });
            }
        }
        if let Some(kl) = self.kl {
            if !(kl.coef.is_finite() && kl.coef >= 0.0) {
                return Err(Error::InvalidConfig {
                    name: "kl.coef",
                    value: kl.coef.to_string(),
                    why: "must be finite and >= 0",
                });
            }
        }
        Ok(())
    }

    /// The settings of the statistics part of the forward pass.
    pub fn token_stats(&self) -> TokenStatsConfig {
        TokenStatsConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            check_finite: self.check_finite,
            filter: self.filter,
        }
    }
}

pub(crate) fn check_temperature(t: f32) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidTemperature(t as f64))
    }
}

pub(crate) fn check_top_p(p: Option<f32>) -> Result<()> {
    match p {
        Some(p) if !(p > 0.0 && p < 1.0) => Err(Error::InvalidTopP(p as f64)),
        _ => Ok(()),
    }
}

fn check_finite_cfg(name: &'static str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidConfig { name, value: v.to_string(), why: "must be finite" })
    }
}
