//! The exact top-p branch count (Rollout Branching Factor) of one f32 row without sorting
//! (bf16/f16 rows have their own, simpler path: [`crate::cpu::hist16`]).
//!
//! The statistics pass reads the row once; the count is then found from a small candidate set,
//! gathered either during that pass or, after it, from a few cached blocks of the row:
//!
//! 1. **Phase 0**: the pass writes the e_i = e^{(z_i − m)/T} of its first [`PHASE0_BLOCKS`]
//!    blocks (8192 tokens) aside, m the running max (when m grows, every e_i kept so far is
//!    rescaled). At their end, if the row is flat enough (its max at most [`FLAT_RATIO`] times
//!    the mean e_i), every 8th of them estimates where the crossing of p lies, as if the rest of
//!    the row were like them: the threshold hi on e where their mass from the top reaches p − δ,
//!    δ three standard errors of that fraction ([`bottom_threshold`]).
//! 2. **Bottom mode** (rows where the estimate puts ≤ [`BOTTOM_MAX`] of the tokens at or below
//!    hi, e.g. flat rows, whose 95% set is most of the row): the threshold becomes a logit,
//!    zhi = m + T·ln hi, and every logit ≤ zhi — phase 0's (read again from L2) and, for the
//!    rest of the pass, each block's, in the same loop that finds the block's max while it comes
//!    from memory — is appended to the candidate set by a branch-free 8-lane compaction. The
//!    `exp` loop stays that of the statistics alone (it stores nothing), and nothing else is
//!    needed from the pass: the mass above zhi is S minus the candidates' mass, and their number
//!    is V minus theirs. A logit threshold needs no rescaling when the running max grows. If a
//!    block brings more mass than the estimate allows (a spike after phase 0), bottom mode is
//!    abandoned for the row.
//! 3. After the pass (S known): in bottom mode the candidates' e_i are taken (an `exp` for
//!    about a tenth of the row, relative to the row's max), and if the mass above zhi is below
//!    p·S the crossing is among them (exact; else the estimate missed: step 5).
//! 4. **Head** (peaked rows, or bottom mode abandoned): the blocks' maxima, noted during the pass,
//!    sorted down until their e_i sum to p·S: every token at or above the k-th largest maximum t
//!    lies in a block whose max is ≥ t, and together they hold ≥ p·S, so the crossing is among
//!    them. Only those blocks are read again (on LM-like rows, one to four).
//! 5. **Fallback** (rare: a missed estimate, or a head of more than [`HEAD_MAX_BLOCKS`] blocks):
//!    every token with e_i ≥ ½(1 − p)·S/V — a token with p_i < (1 − p)/V can never be in the
//!    top-p set (DESIGN.md §5) — from a second read of the row.
//! 6. **Radix select** on the candidates: e_i ≥ 0, so its f32 bits are an order-preserving
//!    integer key. A histogram of f64 mass over the top bits of (key − min key) (about 4 values
//!    per bucket, at most 4096 buckets), a top-down
//!    scan to the bucket where the cumulative mass reaches p·S, keep only that bucket's members
//!    (and count those above it, vectorised), repeat on the remaining bits until one key value
//!    τ is left. Then the tie rule of DESIGN.md §4: k = #{e > τ} + ceil((p·S − M_{>τ}) / τ),
//!    capped by the number of ties at τ. Sets larger than [`DIRECT`] are first narrowed by
//!    sampled windows and exact vectorised passes ([`narrow`]).
//!
//! Every step that decides the count is exact; the estimates only choose which exact step runs.
//! Everything runs in row order with f64 masses: deterministic. Mass errors stay at the level of
//! the statistics pass's S (≲ 3e−6 relative), inside the 1e−5 band; a phase-0 e_i rescaled
//! because the running max grew after it was kept carries one more f32 rounding (≲ 1e−7
//! relative).

use crate::cpu::math::{self, BLOCK};

/// Most bits resolved per histogram level (4096 buckets: 32 KB of f64 masses).
const LEVEL_BITS: u32 = 12;
/// Bits of a sample's mass histogram (1024 buckets for the samples of 1024).
const SAMPLE_BITS: u32 = 10;
/// Blocks of phase 0 (8192 tokens): the sample that places bottom mode's threshold.
const PHASE0_BLOCKS: usize = 16;
/// Every 8th phase-0 token (1024) goes into the estimate.
const PHASE0_STRIDE: usize = 8;
/// Bottom mode is used when the estimate puts at most this fraction of the tokens at or below
/// its threshold (compaction is branch-free: its cost does not depend on the fraction, but the
/// exp and the selection after the pass do).
const BOTTOM_MAX: f64 = 0.5;
/// Bottom mode is abandoned when the row's sum so far exceeds this multiple of what phase 0's
/// rate predicts (a spike arrived: the crossing moves up).
const ABANDON: f64 = 2.0;
/// Bottom mode is considered only for rows whose phase-0 tokens are at most this many times
/// less likely than its max on average (flat rows: ≈ 1.6; LM-like rows: hundreds).
const FLAT_RATIO: f64 = 64.0;
/// Most blocks the head step reads again.
const HEAD_MAX_BLOCKS: usize = 64;

/// Scratch of the selection, reused across rows.
#[derive(Debug, Default)]
pub(crate) struct TopPScratch {
    /// Phase 0's e_i (relative to the running max), from `Keeper::p0` on (see [`aligned_start`]).
    phase0: Vec<f32>,
    /// Max logit of each block of the row, in row order.
    block_max: Vec<f32>,
    /// The head step's blocks: (max logit, its e), by descending max.
    order: Vec<(f32, f32)>,
    /// Candidates: their logits, then (after the pass) their e_i, with 8 spare slots for the
    /// 8-lane compaction stores.
    kept: Vec<f32>,
    /// The next level's members (swapped with `kept`).
    next: Vec<f32>,
    /// Bucket masses of the current level.
    mass: Vec<f64>,
    /// A strided sample (of phase 0, or of a large candidate set), or the blocks' max e_i.
    sample_src: Vec<f32>,
    /// How many values the last [`split`] left in `next`.
    partition_len: usize,
    /// The count's candidate logits, kept for the kept set (see [`Keeper::finish`]).
    zc: Vec<f32>,
    /// Their e_i, in the same order (empty when some were dropped as 0).
    ec: Vec<f32>,
}

/// What the statistics pass does for the count.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Collecting phase 0.
    Phase0,
    /// Appending every logit ≤ `zhi` to the candidates, in the max pass.
    Bottom { zhi: f32 },
    /// Nothing during the pass (head, then fallback, after it).
    Off,
}

/// Which step found the count (for the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Bottom,
    Head,
    Fallback,
}

/// The count's state during one row's statistics pass.
pub(crate) struct Keeper<'a> {
    sc: &'a mut TopPScratch,
    /// The row's logits.
    row: &'a [f32],
    top_p: f32,
    inv_t: f32,
    mode: Mode,
    /// Candidates so far (bottom mode).
    n: usize,
    /// Tokens seen so far.
    seen: usize,
    /// Whether the pass wrote the current block's e_i (see [`Keeper::e_out`]).
    written: bool,
    /// S per token at the end of phase 0, relative to the running max (for the abandon test).
    rate0: f64,
    /// Phase 0's e_i are `sc.phase0[p0..p0 + p0_len]`.
    p0: usize,
    p0_len: usize,
}

impl TopPScratch {
    /// The candidate logits [`Keeper::finish`] left, and their e_i if kept.
    pub(crate) fn bottom_logits(&self) -> (&[f32], Option<&[f32]>) {
        (&self.zc, (self.ec.len() == self.zc.len()).then_some(&self.ec[..]))
    }

    /// Starts the count of the f32 logits `row` at `top_p` and inverse temperature `inv_t` (the
    /// keeper reads the row again for phase 0's candidates and the head and fallback steps, and
    /// places phase 0's buffer by its address, see [`aligned_start`]).
    pub(crate) fn start<'a>(&'a mut self, top_p: f32, inv_t: f32, row: &'a [f32]) -> Keeper<'a> {
        let vocab = row.len();
        for v in [&mut self.kept, &mut self.next] {
            if v.len() < vocab + 8 {
                v.resize(vocab + 8, 0.0);
            }
        }
        if self.phase0.len() < PHASE0_BLOCKS * BLOCK + PAGE_F32 {
            self.phase0.resize(PHASE0_BLOCKS * BLOCK + PAGE_F32, 0.0);
        }
        self.block_max.clear();
        let p0 = aligned_start(&self.phase0, row.as_ptr());
        Keeper {
            sc: self,
            row,
            top_p,
            inv_t,
            mode: Mode::Phase0,
            n: 0,
            seen: 0,
            written: false,
            rate0: 0.0,
            p0,
            p0_len: 0,
        }
    }
}

impl Keeper<'_> {
    /// Where the pass should write the next block's `len` values e_i = e^{(z_i − m)/T}
    /// (relative to the running max m), if the count needs them: in phase 0. The pass asks only
    /// when m is finite; a block it did not write holds only −inf (e_i = 0).
    #[inline(always)]
    pub(crate) fn e_out(&mut self, len: usize) -> Option<&mut [f32]> {
        match self.mode {
            Mode::Phase0 => {
                self.written = true;
                let at = self.p0 + self.p0_len;
                self.p0_len += len;
                Some(&mut self.sc.phase0[at..at + len])
            }
            Mode::Bottom { .. } | Mode::Off => None,
        }
    }

    /// The block's max and whether it holds a NaN or +inf ([`math::max_and_bad`]); in bottom
    /// mode the same read also appends its logits ≤ zhi to the candidates.
    #[inline(always)]
    pub(crate) fn scan<const AVX2: bool>(&mut self, zb: &[f32]) -> (f32, bool) {
        match self.mode {
            Mode::Bottom { zhi } => math::max_and_bad_compact::<AVX2>(zb, zhi, &mut self.sc.kept, &mut self.n),
            _ => math::max_and_bad::<AVX2>(zb),
        }
    }

    /// The running max grew by a factor `c` = e^{(m_old − m_new)/T} in e: phase 0's e_i kept so
    /// far are multiplied by it (one f32 rounding each, ≲ 1e−7 relative: far inside the count's
    /// 1e−5 band), bottom mode's rate; its logit threshold and candidates need nothing.
    #[inline(always)]
    pub(crate) fn rescale(&mut self, c: f32) {
        let kept = match &mut self.mode {
            Mode::Phase0 => &mut self.sc.phase0[self.p0..self.p0 + self.p0_len],
            Mode::Bottom { .. } => {
                self.rate0 *= c as f64;
                return;
            }
            Mode::Off => return,
        };
        for v in kept {
            *v *= c;
        }
    }

    /// Called for every block of the pass, in order, after its sums (and after [`Keeper::e_out`]'s
    /// slice was written): `len` its length, `bmax` its max, `m` the running max and `s_run` =
    /// Σ e^{(z_i − m)/T} so far (this block included).
    #[inline(always)]
    pub(crate) fn block<const AVX2: bool>(&mut self, len: usize, bmax: f32, m: f32, s_run: f64) {
        self.sc.block_max.push(bmax);
        self.seen += len;
        let written = std::mem::replace(&mut self.written, false);
        match self.mode {
            Mode::Phase0 => {
                if !written {
                    let at = self.p0 + self.p0_len;
                    self.sc.phase0[at..at + len].fill(0.0);
                    self.p0_len += len;
                }
                if self.sc.block_max.len() == PHASE0_BLOCKS {
                    self.estimate::<AVX2>(m, s_run);
                }
            }
            Mode::Bottom { .. } => {
                if s_run > ABANDON * self.rate0 * self.seen as f64 {
                    self.mode = Mode::Off;
                    self.n = 0;
                }
            }
            Mode::Off => {}
        }
    }

    /// The end of phase 0: places the threshold on phase 0's e_i and picks the mode.
    #[inline(always)]
    fn estimate<const AVX2: bool>(&mut self, m: f32, s_run: f64) {
        self.mode = Mode::Off;
        if m == f32::NEG_INFINITY || s_run <= 0.0 {
            return;
        }
        // Gate: only a flat enough row (its largest e_i, 1, at most FLAT_RATIO times the mean)
        // has its crossing deep in the row; peaked rows go to the head step after the pass.
        if self.seen as f64 > FLAT_RATIO * s_run {
            return;
        }
        let sample = &mut self.sc.sample_src;
        sample.clear();
        let phase0 = &self.sc.phase0[self.p0..self.p0 + self.p0_len];
        sample.extend(phase0.iter().step_by(PHASE0_STRIDE));
        let n_s = sample.len();
        sample.retain(|&e| e > 0.0);
        let len = sample.len();
        let (s1, s2) = lane_sums(sample);
        if len == 0 || s1 <= 0.0 {
            return;
        }
        // hi: where the sample's mass from the top reaches p − δ of its total, δ three standard
        // errors of that fraction (≈ √(p(1 − p)/ESS), ESS = (Σe)²/Σe² the effective size).
        let p = self.top_p as f64;
        let delta = 3.0 * (p * (1.0 - p) * s2 / (s1 * s1)).sqrt();
        let hi = bottom_threshold(self.sc, (1.0 - p + delta).min(1.0) * s1);
        if hi <= 0.0 {
            return;
        }
        let below = self.sc.sample_src.iter().filter(|&&e| e <= hi).count() + (n_s - len);
        if below as f64 > BOTTOM_MAX * n_s as f64 {
            return;
        }
        // Bottom mode: the threshold as a logit (any value would be exact; this one keeps about
        // what e_i ≤ hi keeps), and phase 0's own candidates first (their logits are in L2).
        let zhi = m + (hi.ln() / self.inv_t);
        self.mode = Mode::Bottom { zhi };
        self.rate0 = s_run / self.seen as f64;
        math::compact_at_most::<AVX2>(&self.row[..self.seen], zhi, &mut self.sc.kept, &mut self.n);
    }

    /// The branch count at `top_p` of the row, whose max logit is `zmax` and
    /// S = Σ e^{(z_i − zmax)/T}.
    #[inline(always)]
    pub(crate) fn branch<const AVX2: bool>(self, zmax: f32, s: f64) -> u32 {
        self.branch_path::<AVX2>(zmax, s).0
    }

    /// [`Keeper::branch`] and the step that found it.
    #[inline(always)]
    pub(crate) fn branch_path<const AVX2: bool>(self, zmax: f32, s: f64) -> (u32, Path) {
        let Keeper { sc, row, top_p, inv_t, mode, mut n, .. } = self;
        let need = top_p as f64 * s;
        let vocab = row.len();
        if let Mode::Bottom { .. } = mode {
            let all = n;
            let mass = to_e::<AVX2>(&mut sc.kept, &mut n, zmax, inv_t);
            let above = Above { count: vocab - all, mass: s - mass };
            if above.mass < need {
                return (select::<AVX2>(sc, n, need, above), Path::Bottom);
            }
        }
        head::<AVX2>(sc, row, top_p, inv_t, zmax, s)
    }

    /// The count (when `count`) as [`Keeper::branch`], and with `kept` the crossing's e value τ
    /// (e = `math::exp((z − zmax)·(1/T))`; the smallest positive f32 when rounding left the
    /// candidates short: every token with mass) with the candidates' logits in
    /// [`TopPScratch::bottom_logits`], and whether they are a superset of the kept set
    /// K = {e ≥ τ} (head, fallback) or of its complement (bottom mode), see
    /// [`crate::cpu::kept::from_split`]. Same count as [`Keeper::branch`].
    #[inline(always)]
    pub(crate) fn finish<const AVX2: bool>(
        self,
        zmax: f32,
        s: f64,
        count: bool,
        kept: bool,
    ) -> (u32, Option<(f32, bool)>) {
        if !kept {
            return (if count { self.branch::<AVX2>(zmax, s) } else { 0 }, None);
        }
        let Keeper { sc, row, top_p, inv_t, mode, mut n, .. } = self;
        let need = top_p as f64 * s;
        if let Mode::Bottom { .. } = mode {
            let all = n;
            let mass = keep_and_to_e::<AVX2>(sc, &mut n, zmax, inv_t);
            let above = Above { count: row.len() - all, mass: s - mass };
            if above.mass < need {
                let c = crossing::<AVX2>(sc, n, need, above);
                let tau = match &c {
                    Ok(c) => c.tau,
                    Err(_) => f32::from_bits(1),
                };
                return (count_of(c, need), Some((tau, false)));
            }
        }
        let (k, _, tau) = head_kept::<AVX2>(sc, row, top_p, inv_t, zmax, s, true);
        (k, tau.map(|t| (t, true)))
    }
}

/// Copies the candidate logits `sc.kept[..n]` to `sc.zc`, turns them into their e
/// ([`to_e`]) and keeps those e in `sc.ec` too when none was dropped (same order as `zc`).
#[inline(always)]
fn keep_and_to_e<const AVX2: bool>(sc: &mut TopPScratch, n: &mut usize, zmax: f32, inv_t: f32) -> f64 {
    sc.zc.clear();
    sc.zc.extend_from_slice(&sc.kept[..*n]);
    let all = *n;
    let mass = to_e::<AVX2>(&mut sc.kept, n, zmax, inv_t);
    sc.ec.clear();
    if *n == all {
        sc.ec.extend_from_slice(&sc.kept[..*n]);
    }
    mass
}

/// The head and fallback steps of [`Keeper::branch_path`] (after the pass; `sc.block_max` holds
/// the blocks' maxima).
#[inline(always)]
fn head<const AVX2: bool>(sc: &mut TopPScratch, row: &[f32], top_p: f32, inv_t: f32, zmax: f32, s: f64) -> (u32, Path) {
    let (k, path, _) = head_kept::<AVX2>(sc, row, top_p, inv_t, zmax, s, false);
    (k, path)
}

/// [`head`], and with `kept` the crossing's e value τ with the candidates' logits (a superset
/// of K = {e ≥ τ}) and e kept in `sc.zc` / `sc.ec` (see [`keep_and_to_e`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head_kept<const AVX2: bool>(
    sc: &mut TopPScratch,
    row: &[f32],
    top_p: f32,
    inv_t: f32,
    zmax: f32,
    s: f64,
    kept: bool,
) -> (u32, Path, Option<f32>) {
    let need = top_p as f64 * s;
    let vocab = row.len();
    // Head: blocks by descending max until their maxima alone hold p·S.
    // Only maxima of e ≥ need/(4·HEAD_MAX_BLOCKS) are sorted: if those cannot reach p·S
    // within HEAD_MAX_BLOCKS blocks, the head step is not worth it (the order of the
    // maxima that are sorted is the full order's prefix, so any t found is the same).
    let floor = need / (4 * HEAD_MAX_BLOCKS) as f64;
    sc.sample_src.clear();
    sc.sample_src.extend(sc.block_max.iter().map(|&bm| math::exp::<AVX2>((bm - zmax) * inv_t)));
    sc.order.clear();
    sc.order
        .extend(sc.block_max.iter().zip(&sc.sample_src).filter(|&(_, &e)| e as f64 >= floor).map(|(&bm, &e)| (bm, e)));
    sc.order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut cum = 0.0;
    let mut t = None;
    for &(bm, e) in sc.order.iter().take(HEAD_MAX_BLOCKS) {
        cum += e as f64;
        if cum >= need {
            t = Some(bm);
            break;
        }
    }
    let (from, path) = match t {
        Some(t) => (t, Path::Head),
        // Fallback: the safe cut e_i ≥ ½(1 − p)·S/V, as a logit.
        None => (zmax + ((0.5 * (1.0 - top_p as f64) * s / vocab as f64).ln() as f32) / inv_t, Path::Fallback),
    };
    let mut n = 0;
    for (block, &bm) in row.chunks(BLOCK).zip(&sc.block_max) {
        if bm >= from {
            math::compact_range::<AVX2>(block, from, f32::INFINITY, &mut sc.kept, &mut n);
        }
    }
    if !kept {
        to_e::<AVX2>(&mut sc.kept, &mut n, zmax, inv_t);
        return (select::<AVX2>(sc, n, need, Above::default()), path, None);
    }
    keep_and_to_e::<AVX2>(sc, &mut n, zmax, inv_t);
    let c = crossing::<AVX2>(sc, n, need, Above::default());
    let tau = match &c {
        Ok(c) => c.tau,
        Err(_) => f32::from_bits(1),
    };
    (count_of(c, need), path, Some(tau))
}

/// Turns the candidate logits `kept[..n]` into their e_i = e^{(z_i − zmax)/T}, drops those of
/// probability 0 (they hold no mass and are never counted), and returns the sum of all.
#[inline(always)]
fn to_e<const AVX2: bool>(kept: &mut [f32], n: &mut usize, zmax: f32, inv_t: f32) -> f64 {
    for v in kept[..*n].iter_mut() {
        *v = math::exp::<AVX2>((*v - zmax) * inv_t);
    }
    drop_zeros::<AVX2>(kept, n)
}

/// Drops the candidates `kept[..n]` (e_i ≥ 0) of probability 0 (they hold no mass and are
/// never counted) and returns the sum of all.
#[inline(always)]
fn drop_zeros<const AVX2: bool>(kept: &mut [f32], n: &mut usize) -> f64 {
    let (positive, mass) = math::sum_at_least::<AVX2>(&kept[..*n], f32::from_bits(1));
    if positive < *n {
        let mut j = 0;
        for i in 0..*n {
            let v = kept[i];
            kept[j] = v;
            j += usize::from(v > 0.0);
        }
        *n = j;
    }
    mass
}

/// (Σ v, Σ v²) of values ≥ 0, each summed as `math::sum_at_least` sums: 8 f32 lanes per 256
/// values, then f64.
#[inline(always)]
fn lane_sums(values: &[f32]) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for block in values.chunks(256) {
        let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
        let chunks = block.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for j in 0..8 {
                a[j] += c[j];
                b[j] += c[j] * c[j];
            }
        }
        for (j, &v) in tail.iter().enumerate() {
            a[j] += v;
            b[j] += v * v;
        }
        s1 += math::fold8(a) as f64;
        s2 += math::fold8(b) as f64;
    }
    (s1, s2)
}

/// The count from the candidates `sc.kept[..n]` (e_i > 0; `above` known above them).
#[inline(always)]
fn select<const AVX2: bool>(sc: &mut TopPScratch, n: usize, need: f64, above: Above) -> u32 {
    count_of(crossing::<AVX2>(sc, n, need, above), need)
}

/// The crossing of `need` among the candidates `sc.kept[..n]` (e_i > 0; `above` known above
/// them), or `Err` with everything counted when their total falls short.
#[inline(always)]
fn crossing<const AVX2: bool>(sc: &mut TopPScratch, n: usize, need: f64, above: Above) -> Result<Crossing, Above> {
    let (n, above) = if n > DIRECT { narrow::<AVX2>(sc, n, need, above) } else { (n, above) };
    radix::<AVX2>(&mut sc.kept, &mut sc.next, &mut sc.mass, n, need, above)
}

/// The count of a [`crossing`] of `need`.
#[inline(always)]
fn count_of(crossing: Result<Crossing, Above>, need: f64) -> u32 {
    match crossing {
        // One value τ left, held by `ties` tokens: the tie rule of DESIGN.md §4.
        Ok(Crossing { tau, ties, above }) => {
            let need_ties = ((need - above.mass) / tau as f64).ceil().max(1.0);
            (above.count + (need_ties as usize).min(ties)) as u32
        }
        // Rounding left the total below p·S: count every token with mass.
        Err(above) => above.count as u32,
    }
}

/// Tokens known to lie above the current candidate set: how many, and their f64 mass.
#[derive(Debug, Clone, Copy, Default)]
struct Above {
    count: usize,
    mass: f64,
}

/// The value τ at which the descending cumulative mass reaches the goal, its number of ties,
/// and what lies above it.
struct Crossing {
    tau: f32,
    ties: usize,
    above: Above,
}

/// Sets larger than this are first narrowed by sampled windows (vectorised passes); smaller
/// ones go straight to the histogram.
const DIRECT: usize = 4096;
/// Sample size for the window estimate.
const SAMPLE: usize = 1024;
/// Most narrowing rounds (each one or two vectorised passes over the set).
const MAX_ROUNDS: usize = 6;

/// Narrows the candidate set `sc.kept[..n]` (with `above` known above it) to a smaller set that
/// still holds the crossing of `need`, with vectorised passes instead of the histogram's
/// scatter (which costs ~3× more per value: on a flat row every token would go through it).
///
/// A strided sample of the set stands for its body. Its 8 largest values mark the head: one
/// exact pass measures the mass at or above the 8th (on peaked rows, the few tokens that hold
/// most of the mass, which a sample cannot weigh). The rest of the sample then places a window
/// [lo, hi] around the crossing, and one exact pass counts and sums everything above the window
/// and compacts its members. Since the passes are exact, a window that misses (the sample is
/// only an estimate) is detected and the side holding the crossing is kept instead. At most
/// [`MAX_ROUNDS`] rounds; the histogram finishes whatever is left.
#[inline(always)]
fn narrow<const AVX2: bool>(sc: &mut TopPScratch, mut n: usize, need: f64, mut above: Above) -> (usize, Above) {
    for _ in 0..MAX_ROUNDS {
        if n <= DIRECT {
            break;
        }
        sc.sample_src.clear();
        sc.sample_src.extend(sc.kept[..n].iter().step_by(n / SAMPLE).take(SAMPLE));
        // A flat sample (effective size ≥ half its length) has no heavy head to measure.
        let (s1, s2) = lane_sums(&sc.sample_src);
        let flat = s1 * s1 >= s2 * (sc.sample_src.len() / 2) as f64;
        let h = if flat { f32::INFINITY } else { eighth_largest(&sc.sample_src) };
        let (head, m_head) = if flat { (0, 0.0) } else { math::sum_at_least::<AVX2>(&sc.kept[..n], h) };
        let (from, to) = if above.mass + m_head >= need {
            // The crossing is in the head.
            (h, f32::INFINITY)
        } else {
            if head > 0 {
                sc.sample_src.retain(|&e| e < h);
            }
            let (lo, hi) = sample_window(sc, n - head, need - above.mass - m_head);
            let (cnt, m_hi, m_in) = split::<AVX2>(sc, n, lo, hi);
            let window = sc.partition_len;
            if above.mass + m_hi >= need {
                (next_up(hi), f32::INFINITY)
            } else if above.mass + m_hi + m_in < need {
                above = Above { count: above.count + cnt + window, mass: above.mass + m_hi + m_in };
                (0.0, f32::from_bits(lo.to_bits().saturating_sub(1)))
            } else {
                // The window holds the crossing: it becomes the set.
                above = Above { count: above.count + cnt, mass: above.mass + m_hi };
                std::mem::swap(&mut sc.kept, &mut sc.next);
                n = window;
                continue;
            }
        };
        let mut k = 0;
        math::compact_range::<AVX2>(&sc.kept[..n], from, to, &mut sc.next, &mut k);
        std::mem::swap(&mut sc.kept, &mut sc.next);
        let progress = k < n;
        n = k;
        if !progress {
            break;
        }
    }
    (n, above)
}

/// The 8th largest of `values` (their smallest if fewer), by a running top-8: no sort.
fn eighth_largest(values: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; 8];
    for &v in values {
        if v > top[7] {
            let mut i = 7;
            while i > 0 && top[i - 1] < v {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = v;
        }
    }
    top.iter().rev().copied().find(|v| v.is_finite()).unwrap_or(0.0)
}

/// One exact pass over `sc.kept[..n]` (see [`math::partition`]); the members of [lo, hi] go
/// to `sc.next[..sc.partition_len]`.
#[inline(always)]
fn split<const AVX2: bool>(sc: &mut TopPScratch, n: usize, lo: f32, hi: f32) -> (usize, f64, f64) {
    let mut j = 0;
    let r = math::partition::<AVX2>(&sc.kept[..n], lo, hi, &mut sc.next, &mut j);
    sc.partition_len = j;
    r
}

/// The next larger f32 (for e ≥ 0, whose bits are ordered).
fn next_up(v: f32) -> f32 {
    f32::from_bits(v.to_bits() + 1)
}

/// Places a window [lo, hi] around the crossing of `goal` in the body of `n` values that
/// `sc.sample_src` samples: hi where the sample's mass, scaled by n/len, reaches goal·(1 − ε),
/// lo where it reaches goal·(1 + ε) (0 if it never does). ε = 3/√ESS (clamped to [2%, 50%]),
/// with ESS = (Σe)²/Σe² the sample's effective size: three standard errors of a sampled sum,
/// small on flat rows, wide on heavy-tailed ones. One histogram of the sample (≤ 4096 buckets)
/// places both ends, rounded outwards to bucket edges.
#[inline(always)]
fn sample_window(sc: &mut TopPScratch, n: usize, goal: f64) -> (f32, f32) {
    let sample = &sc.sample_src;
    let (s1, s2) = lane_sums(sample);
    if sample.is_empty() || s1 <= 0.0 {
        return (0.0, 0.0);
    }
    let eps = (3.0 / (s1 * s1 / s2).sqrt()).clamp(0.02, 0.5);
    let scale = n as f64 / sample.len() as f64;
    mass_thresholds(sc, goal * (1.0 - eps) / scale, goal * (1.0 + eps) / scale)
}

/// The threshold on the values of `sc.sample_src` (all > 0, not empty) below which they hold at
/// most `below` of mass: the top edge of the highest bucket b of [`sample_histogram`] whose lower
/// buckets hold ≤ `below` (i.e. the mass at or above b's lower edge is ≥ the total minus
/// `below`), found by a scan from the bottom (bottom mode's threshold lies low in the sample: the
/// scan stops after a tenth of the buckets on flat rows).
#[inline(always)]
fn bottom_threshold(sc: &mut TopPScratch, below: f64) -> f32 {
    let (lo_key, hi_key, shift) = sample_histogram(sc);
    let mass = &sc.mass[..((hi_key - lo_key) >> shift) as usize + 1];
    let (mut b, mut cum) = (0, 0.0);
    while b + 1 < mass.len() && cum + mass[b] <= below {
        cum += mass[b];
        b += 1;
    }
    f32::from_bits(hi_key.min(lo_key + (((b + 1) as u32) << shift) - 1))
}

/// The f64 mass histogram of `sc.sample_src` (all > 0, not empty) in `sc.mass`: at most
/// 2^[`SAMPLE_BITS`] buckets over the top bits of (key − min key), key = the f32 bits. Returns
/// (min key, max key, shift): bucket b holds the keys from min key + b·2^shift.
#[inline(always)]
fn sample_histogram(sc: &mut TopPScratch) -> (u32, u32, u32) {
    let sample = &sc.sample_src;
    let (lo_key, hi_key) = key_range(sample);
    let width = u32::BITS - (hi_key - lo_key).leading_zeros();
    let shift = width.saturating_sub(SAMPLE_BITS);
    let nb = ((hi_key - lo_key) >> shift) as usize + 1;
    if sc.mass.len() < nb {
        sc.mass.resize(nb, 0.0);
    }
    let mass = &mut sc.mass[..nb];
    mass.fill(0.0);
    for &e in sample {
        mass[((e.to_bits() - lo_key) >> shift) as usize] += e as f64;
    }
    (lo_key, hi_key, shift)
}

/// (lo, hi) on the values of `sc.sample_src` (all > 0, not empty): hi where their mass summed
/// from the top reaches `upper`, lo where it reaches `lower` (0 if it never does), from
/// [`sample_histogram`], rounded outwards to bucket edges.
#[inline(always)]
fn mass_thresholds(sc: &mut TopPScratch, upper: f64, lower: f64) -> (f32, f32) {
    let (lo_key, hi_key, shift) = sample_histogram(sc);
    let mass = &sc.mass[..((hi_key - lo_key) >> shift) as usize + 1];
    let edge = |b: usize| lo_key + ((b as u32) << shift);
    let (mut hi, mut lo) = (f32::from_bits(hi_key), 0.0);
    let mut cum = 0.0;
    let mut placed_hi = false;
    for (b, &m) in mass.iter().enumerate().rev() {
        cum += m;
        if !placed_hi && cum >= upper {
            hi = f32::from_bits(hi_key.min(edge(b + 1) - 1));
            placed_hi = true;
        }
        if cum >= lower {
            lo = f32::from_bits(edge(b));
            break;
        }
    }
    (lo, hi)
}

/// Radix select: narrows `a[..n]` (all > 0; `above` known above them) to the single value τ at
/// which the descending cumulative mass reaches `need`; `Err` with everything counted when the
/// set's total falls short. `b` is the second buffer (both hold ≥ n + 8 values).
#[inline(always)]
fn radix<const AVX2: bool>(
    a: &mut Vec<f32>,
    b: &mut Vec<f32>,
    mass: &mut Vec<f64>,
    mut n: usize,
    need: f64,
    mut above: Above,
) -> Result<Crossing, Above> {
    if n == 0 {
        return Err(above);
    }
    let (mut lo, mut hi) = key_range(&a[..n]);
    while lo < hi {
        let width = u32::BITS - (hi - lo).leading_zeros();
        // About 4 values per bucket (at least 2 buckets), at most 2^LEVEL_BITS: the scan for
        // the crossing is a chain of dependent f64 adds, so fewer buckets and one more level
        // (on the crossing bucket's few members) cost less.
        let bits = width.min(LEVEL_BITS).min((usize::BITS - n.leading_zeros()).saturating_sub(2).max(1));
        let shift = width - bits;
        let nb = ((hi - lo) >> shift) as usize + 1;
        if mass.len() < nb {
            mass.resize(nb, 0.0);
        }
        let mass = &mut mass[..nb];
        mass.fill(0.0);
        for &e in &a[..n] {
            mass[((e.to_bits() - lo) >> shift) as usize] += e as f64;
        }
        // Top-down to the bucket where the cumulative mass reaches `need`.
        let mut crossing = None;
        for (k, &m) in mass.iter().enumerate().rev() {
            if above.mass + m >= need {
                crossing = Some(k);
                break;
            }
            above.mass += m;
        }
        let Some(k) = crossing else { return Err(Above { count: above.count + n, ..above }) };
        // Keep only the crossing bucket's members; count the values above it.
        let k_lo = lo + ((k as u32) << shift);
        let k_hi = hi.min(k_lo + ((1u32 << shift) - 1));
        let mut j = 0;
        above.count += math::compact_range::<AVX2>(&a[..n], f32::from_bits(k_lo), f32::from_bits(k_hi), b, &mut j);
        std::mem::swap(a, b);
        n = j;
        (lo, hi) = key_range(&a[..n]);
    }
    Ok(Crossing { tau: f32::from_bits(lo), ties: n, above })
}

/// (min, max) of the keys (f32 bits, order-preserving for e ≥ 0) of `kept`.
#[inline(always)]
fn key_range(kept: &[f32]) -> (u32, u32) {
    kept.iter().fold((u32::MAX, 0), |(lo, hi), e| (lo.min(e.to_bits()), hi.max(e.to_bits())))
}

/// f32 in a 4096-byte page.
const PAGE_F32: usize = 4096 / std::mem::size_of::<f32>();

/// The index of `buf` whose address agrees with `target`'s modulo 4096 bytes (`buf` holds one
/// page more than it needs). In phase 0 the `exp` loop loads z_i from the row and stores e_i
/// into a buffer; a load whose address matches an earlier, still pending store in its low 12
/// bits waits for that store (4K aliasing), which with a buffer at a fixed offset happens for
/// every block of the row that sits a little below the buffer within a page. At the same
/// offset, a load of z_j only ever matches the store of e_j, which comes after it.
#[inline(always)]
fn aligned_start(buf: &[f32], target: *const f32) -> usize {
    let want = (target as usize / std::mem::size_of::<f32>()) % PAGE_F32;
    let have = (buf.as_ptr() as usize / std::mem::size_of::<f32>()) % PAGE_F32;
    (want + PAGE_F32 - have) % PAGE_F32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phase 0's slid buffer starts at the logits' offset within a page and still holds phase 0.
    #[test]
    fn aligned_starts_match_the_logits_page_offset_and_fit() {
        let row = vec![0.0f32; 4 * PAGE_F32];
        let phase0 = vec![0.0f32; PHASE0_BLOCKS * BLOCK + PAGE_F32];
        for shift in 0..PAGE_F32 + 3 {
            let target = row[shift..].as_ptr();
            let at = aligned_start(&phase0, target);
            assert!(at + PHASE0_BLOCKS * BLOCK <= phase0.len(), "shift {shift}: {at}");
            assert_eq!(phase0[at..].as_ptr() as usize % 4096, target as usize % 4096, "shift {shift}");
        }
    }
}
