//! Host-side inputs and outputs shared by `reference::` and `cpu::` (and mirrored by `cuda::`).

use crate::error::Result;
use crate::validate;

/// Per-token statistics of an `[N, V]` logits matrix (x = z / T, p = softmax(x)).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenStats {
    /// log-sum-exp: lse = m + ln Σ exp(x_i − m).
    pub lse: Vec<f32>,
    /// Entropy H = −Σ p_i ln p_i = lse − Σ x_i·e^{x_i−m} / Σ e^{x_i−m}, in nats.
    pub entropy: Vec<f32>,
    /// log p of the target token: x_y − lse (when targets were given).
    pub logp: Option<Vec<f32>>,
    /// Rollout Branching Factor: the smallest k whose k most probable tokens hold ≥ top-p of the
    /// mass, ties interchangeable (when top-p was given).
    pub branch: Option<Vec<u32>>,
    /// The statistics over the sampler's kept set K (when a filter or a kept mask was given).
    pub kept: Option<KeptStats>,
}

/// Per-token statistics over the kept set K of a sampling filter or an engine's mask
/// (DESIGN.md §4): p̃ = p / Σ_K p on K.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeptStats {
    /// lse_K = ln Σ_{i∈K} e^{x_i}.
    pub lse: Vec<f32>,
    /// Truncated entropy H̃ = −Σ_K p̃ ln p̃.
    pub entropy: Vec<f32>,
    /// Truncated log-prob ℓ̃ = x_y − lse_K when y ∈ K; ℓ (the unfiltered log-prob) when y ∉ K
    /// (flagged in `outside`). When targets were given.
    pub logp: Option<Vec<f32>>,
    /// |K|.
    pub count: Vec<u32>,
    /// 1 where the target is outside K (it could not have been sampled under this filter from
    /// these logits), else 0. When targets were given.
    pub outside: Option<Vec<u8>>,
}

impl KeptStats {
    /// How many targets fall outside K (0 without targets).
    pub fn outside_count(&self) -> usize {
        self.outside.as_ref().map_or(0, |o| o.iter().filter(|&&b| b != 0).count())
    }
}

/// A rollout engine's kept set per row, in vLLM's CSR layout (`SamplingMask { token_ids,
/// offsets }`): row r kept `token_ids[offsets[r]..offsets[r + 1]]`. `offsets` has N + 1
/// entries, starts at 0, never decreases and ends at `token_ids.len()`; ids are < V and not
/// repeated within a row; a row keeps at least one token.
#[derive(Debug, Clone, Copy)]
pub struct KeptMask<'a> {
    /// Kept token ids, row after row.
    pub token_ids: &'a [u32],
    /// Row starts into `token_ids` (N + 1 entries).
    pub offsets: &'a [u64],
}

impl<'a> KeptMask<'a> {
    /// Row r's kept ids (assumes a validated mask).
    pub fn row(&self, r: usize) -> &'a [u32] {
        &self.token_ids[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }

    /// Checks the layout against N rows of V logits ([`crate::Error::InvalidKeptMask`] naming
    /// the row, or [`crate::Error::ShapeMismatch`] for the offsets' length).
    pub fn validate(&self, n: usize, vocab: usize) -> Result<()> {
        validate::kept_mask(self, n, vocab)
    }
}

/// Bit in [`GrpoForward::clip_flags`]: the clipped branch of the PPO objective was active
/// (−Ã·clip(ρ) > −Ã·ρ), so the token's policy gradient is 0.
pub const CLIPPED: u8 = 1;
/// Bit in [`GrpoForward::clip_flags`]: the dual clip (Ã < 0, loss capped at −Ã·c) was active.
pub const DUAL_CLIPPED: u8 = 2;
/// Bit in [`GrpoForward::clip_flags`]: with a filter or kept mask, the target is outside the
/// kept set K; the token's log-prob (and its gradient) is then the unfiltered ℓ.
pub const OUTSIDE_KEPT: u8 = 4;

/// Per-token inputs of the GRPO loss; all slices have N = B·T entries (rows of the logits).
#[derive(Debug, Clone, Copy)]
pub struct GrpoInputs<'a> {
    /// Sampled token ids y_t (< V).
    pub targets: &'a [u32],
    /// 1 = a response token that counts, 0 = padding/prompt.
    pub mask: &'a [f32],
    /// log-prob of y_t under the rollout policy (ℓ_old).
    pub old_logp: &'a [f32],
    /// log-prob of y_t under the reference policy (ℓ_ref); needed when the KL penalty is on.
    pub ref_logp: Option<&'a [f32]>,
    /// Shaped per-token advantages Ã_t (see `cpu::token_advantages`).
    pub advantages: &'a [f32],
    /// T: tokens per sequence; sequences are the rows of the `[B, T]` view.
    pub seq_len: usize,
    /// The rollout engine's kept set per token (replaces `GrpoConfig::filter`'s recomputed K;
    /// the two are exclusive).
    pub kept_mask: Option<KeptMask<'a>>,
}

impl GrpoInputs<'_> {
    /// Checks lengths, target range, mask values and finiteness against N rows of V logits.
    pub fn validate(&self, n: usize, vocab: usize, needs_ref: bool) -> Result<()> {
        validate::sequences(n, self.seq_len)?;
        validate::targets(self.targets, n, vocab)?;
        validate::mask(self.mask, n)?;
        validate::len("old_logp", self.old_logp.len(), n, "one per token")?;
        validate::len("advantages", self.advantages.len(), n, "one per token")?;
        validate::finite("old_logp", self.old_logp)?;
        validate::finite("advantages", self.advantages)?;
        if let Some(m) = self.kept_mask {
            m.validate(n, vocab)?;
        }
        match (self.ref_logp, needs_ref) {
            (Some(r), _) => {
                validate::len("ref_logp", r.len(), n, "one per token")?;
                validate::finite("ref_logp", r)
            }
            (None, true) => Err(crate::Error::ShapeMismatch {
                name: "ref_logp",
                expected: format!("{n} elements (the KL penalty is on)"),
                got: "none".into(),
            }),
            (None, false) => Ok(()),
        }
    }
}

/// What the backward pass needs from the forward, per token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpoSaved {
    /// log-sum-exp of x = z / T.
    pub lse: Vec<f32>,
    /// Entropy H_t.
    pub entropy: Vec<f32>,
    /// g_t = a_t · ∂(L + β_kl·KL)/∂ℓ_t (a_t the aggregation weight; 0 for masked tokens).
    pub grad_logp: Vec<f32>,
    /// h_t = −a_t · c_H (0 for masked tokens).
    pub grad_entropy: Vec<f32>,
    /// With a filter or mask: what the backward needs of K.
    pub kept: Option<KeptSaved>,
}

/// What the backward needs of the kept set K, per token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeptSaved {
    /// lse_K = ln Σ_{i∈K} e^{x_i}.
    pub lse: Vec<f32>,
    /// H̃.
    pub entropy: Vec<f32>,
    /// For a recomputed filter, the smallest kept logit z_τ (K = {i : z_i ≥ z_τ}); for a given
    /// mask unused (NaN): K is the mask's row.
    pub threshold: Vec<f32>,
    /// 1 where the target is outside K (its log-prob term then uses the unfiltered p), else 0.
    pub outside: Vec<u8>,
    /// The entropy bonus used H̃ (`GrpoConfig::kept_entropy`); otherwise H.
    pub kept_entropy: bool,
    /// For a given mask, a copy of its ids ([`KeptMask::token_ids`]); empty for a recomputed K.
    pub token_ids: Vec<u32>,
    /// For a given mask, a copy of its N + 1 row starts ([`KeptMask::offsets`]); empty for a
    /// recomputed K (then `threshold` defines K).
    pub offsets: Vec<u64>,
}

impl KeptSaved {
    /// The given mask, when K was given rather than recomputed.
    pub fn mask(&self) -> Option<KeptMask<'_>> {
        (!self.offsets.is_empty()).then_some(KeptMask { token_ids: &self.token_ids, offsets: &self.offsets })
    }
}

/// Output of the fused GRPO forward.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpoForward {
    /// The aggregated scalar loss.
    pub loss: f32,
    /// Per-token total L + β_kl·KL − c_H·H (also for masked tokens; they do not count).
    pub token_loss: Vec<f32>,
    /// Current log-prob of the target used in the ratio: ℓ_t, or with a filter/mask the truncated
    /// ℓ̃_t (ℓ_t where the target is outside K).
    pub logp: Vec<f32>,
    /// Importance ratio ρ_t = exp(clamp(ℓ − ℓ_old, −20, 20)).
    pub ratio: Vec<f32>,
    /// [`CLIPPED`] / [`DUAL_CLIPPED`] / [`OUTSIDE_KEPT`] bits.
    pub clip_flags: Vec<u8>,
    /// Per-token KL estimate (when the KL penalty is on).
    pub kl: Option<Vec<f32>>,
    /// Branch count (when `top_p` is set).
    pub branch: Option<Vec<u32>>,
    /// Saved for the backward; `saved.entropy` is the per-token entropy.
    pub saved: GrpoSaved,
    /// With a filter or mask: lse_K, H̃, ℓ̃, |K| and the outside-K flags per token.
    pub kept: Option<KeptStats>,
}
