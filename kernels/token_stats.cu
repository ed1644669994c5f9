// Fused per-row token statistics: lse, entropy, target log-prob and the exact top-p branch count
// (Rollout Branching Factor), DESIGN.md §4-§5. One CTA of ROW_BLOCK = 512 threads per row, rows in
// a 1-D grid-stride loop (any N, 64-bit row offsets): two CTAs per SM without top-p (one CTA's
// per-row reductions overlap the other's streaming), one with top-p (its histogram fills the SM's
// shared memory).
//
// Traffic budget per row of V elements of b bytes: read V·b once (16-byte loads), plus the target
// id (4 B, loaded before the pass) and its logit (b, after it: a line the pass has just read);
// write lse, entropy, logp, flags (4 B each) and branch (4 B). Top-p adds no traffic for bf16/f16
// rows: a u16 count per 16-bit key lives in shared memory, and the masses are computed from those
// counts after the pass. For f32 (32-bit keys) the pass keeps the candidates' keys in shared memory
// (32768 of them); a row with more candidates (flat rows) re-reads itself, in reverse order so
// that it starts with the part most likely still in L2: once for the coarse level, once to gather
// the crossing bucket (and twice more if even that does not fit). So do 16-bit rows whose u16
// counters wrapped (65536 candidates of one value). row_stats.cuh states the algorithm and its
// error bound.
//
// Reduction order (deterministic, same bits every run): per thread, elements in load order;
// the block max by xor butterflies; each thread's sums rescaled to it once, then summed by xor
// butterflies in each warp and over the warps in index order. Histograms are integer atomics
// (order-independent): counts, and masses as integers rn(2^frac·2^{rn(z·c − r)}) relative to the
// row max. Scans walk buckets top-down in a fixed order with integer sums. The pruning of §5 (skip
// x < m_running + ln((1-p)/V)) depends on timing through the running block max, but never changes
// the result: every level counts only tokens above the final threshold m + ln((1-p)/V).
#include "kept.cuh"

using namespace rlvr;
using namespace rlvr::rows;

namespace {

template <typename E, bool TOPP>
__device__ void token_stats_rows(const E* __restrict__ logits, uint64_t n_rows, uint32_t vocab,
                                 const uint32_t* __restrict__ targets, float inv_t, float top_p, float prune_z,
                                 float* __restrict__ lse, float* __restrict__ entropy,
                                 float* __restrict__ logp, uint32_t* __restrict__ branch,
                                 uint32_t* __restrict__ flags) {
    __shared__ Shared sh;
    RLVR_DYNAMIC_SHARED(unsigned char, dyn);
    Hist* h = nullptr;
    if constexpr (TOPP) h = init_hist(dyn);
    const PassParams pp{inv_t, top_p, prune_z};
    const bool want_logp = targets != nullptr && logp != nullptr;
    for (uint64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
        const RowSplit<E> rs(logits, row, vocab);
        // Thread 0's target id, loaded before the pass and used after it: its latency is hidden.
        const uint32_t y = threadIdx.x == 0 && want_logp ? targets[row] : 0u;
        const E* next = row + gridDim.x < n_rows ? logits + (row + gridDim.x) * (uint64_t)vocab : nullptr;
        const uint32_t k = row_stats<E, TOPP>(rs, pp, h, sh, next, [&](const RowStats& r) {
            if (threadIdx.x != 0) return;
            const float nan = __int_as_float(0x7fffffff);
            uint32_t f = r.flag;
            lse[row] = r.flag ? nan : row_lse(r, inv_t);
            entropy[row] = r.flag ? nan : row_entropy(r);
            if (want_logp) {
                float lp = nan;
                if (y >= vocab) {
                    f |= ROW_BAD_TARGET;
                } else if (!r.flag) {
                    lp = row_logp(r, Elem<E>::value_of_bits(rs.bits_at(y)), inv_t);
                }
                logp[row] = lp;
            }
            flags[row] = f;
        });
        if (TOPP && threadIdx.x == 0) branch[row] = k;
    }
}


// The statistics over the sampler's kept set K (kept.cuh) beside the default outputs (the same
// lse, entropy, logp and flags as token_stats_<dtype>: the same pass 1 and formulas): K from
// the filter (top_k, 0 = none; top_p in (0, 1], 0 = none), or, when `ids` is not null, the CSR
// mask ids[offsets[r] .. offsets[r+1]). Per row: k_lse, k_entropy (NaN on a flagged row), k_logp
// (ℓ̃; ℓ when the target is outside K; NaN for a flagged row or a target >= V), k_count (|K|,
// 0 on a flagged row) and k_outside (1 when the target is outside K).
template <typename E>
__device__ void token_stats_kept_rows(const E* __restrict__ logits, uint64_t n_rows, uint32_t vocab,
                                      const uint32_t* __restrict__ targets, float inv_t, uint32_t top_k, float top_p,
                                      const uint32_t* __restrict__ ids, const uint64_t* __restrict__ offsets,
                                      float* __restrict__ lse, float* __restrict__ entropy, float* __restrict__ logp,
                                      uint32_t* __restrict__ flags, float* __restrict__ k_lse,
                                      float* __restrict__ k_entropy, float* __restrict__ k_logp,
                                      uint32_t* __restrict__ k_count, uint8_t* __restrict__ k_outside) {
    __shared__ Shared sh;
    __shared__ kept::KeptHist kh;
    kept::clear_hist(kh);
    const PassParams pp{inv_t, 0.f, 0.f};
    const bool want_logp = targets != nullptr && logp != nullptr;
    const float c = inv_t * LOG2E, nan = __int_as_float(0x7fffffff);
    for (uint64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
        const RowSplit<E> rs(logits, row, vocab);
        const uint32_t y = want_logp ? targets[row] : 0u;  // every thread (the mask's membership test)
        RowStats st{};
        row_stats<E, false>(rs, pp, nullptr, sh, nullptr, [&](const RowStats& r) {
            st = r;
            if (threadIdx.x != 0) return;
            uint32_t f = r.flag;
            lse[row] = r.flag ? nan : row_lse(r, inv_t);
            entropy[row] = r.flag ? nan : row_entropy(r);
            if (want_logp) {
                float lp = nan;
                if (y >= vocab) {
                    f |= ROW_BAD_TARGET;
                } else if (!r.flag) {
                    lp = row_logp(r, Elem<E>::value_of_bits(rs.bits_at(y)), inv_t);
                }
                logp[row] = lp;
            }
            flags[row] = f;
        });
        float kl = nan, ke = nan, klp = nan;
        uint32_t count = 0;
        uint8_t outside = 0;
        if (!st.flag) {  // uniform over the block
            uint32_t tau = 0;
            bool y_in = false;
            Softmax ks;
            if (ids != nullptr) {
                ks = kept::mask_sums<E>(rs, ids, offsets[row], offsets[row + 1], y, c, count, y_in, sh);
            } else {
                tau = kept::kept_threshold<E>(rs, st, c, top_k, top_p, kh, sh);
                ks = kept::kept_sums<E>(rs, tau, c, count, sh);
            }
            if (threadIdx.x == 0) {
                if (ks.m > NEG_INF) {
                    const RowStats kr = kept::stats_of(ks, c);
                    kl = row_lse(kr, inv_t);
                    ke = row_entropy(kr);
                    if (want_logp && y < vocab) {
                        const uint32_t b = rs.bits_at(y);
                        const float z_y = Elem<E>::value_of_bits(b);
                        if (ids == nullptr) y_in = z_y > NEG_INF && kept::kept_key<E>(b, z_y) >= tau;
                        klp = y_in ? row_logp(kr, z_y, inv_t) : row_logp(st, z_y, inv_t);
                        outside = !y_in;
                    }
                }
            }
        }
        if (threadIdx.x == 0) {
            k_lse[row] = kl;
            k_entropy[row] = ke;
            k_count[row] = count;
            if (want_logp) {
                k_logp[row] = klp;
                k_outside[row] = outside;
            }
        }
    }
}

}  // namespace

// Entry points. Arguments (same order for every dtype):
//   logits [n_rows * vocab] row-major; targets [n_rows] or null; inv_t = 1/T;
//   outputs lse, entropy [n_rows]; logp [n_rows] or null (needs targets); flags [n_rows]
//   (bit 1 NaN/+inf, bit 2 all -inf, bit 4 target >= vocab).
//   Top-p kernels also take top_p in (0,1), prune_z = (ln((1-p)/V) - margin)·T (<= 0) and
//   branch [n_rows]; they need sizeof(Hist) = 155904 bytes of dynamic shared memory. Every
//   variant runs blockDim.x = ROW_BLOCK (512) threads (src/cuda/context.rs).
#define RLVR_TOKEN_STATS(NAME, E)                                                                                    \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, 2)                                                        \
        token_stats_##NAME(const E* logits, uint64_t n_rows, uint32_t vocab, const uint32_t* targets, float inv_t,   \
                           float* lse, float* entropy, float* logp, uint32_t* flags) {                                \
        token_stats_rows<E, false>(logits, n_rows, vocab, targets, inv_t, 0.f, 0.f, lse, entropy, logp, nullptr,     \
                                   flags);                                                                            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, 1) token_stats_topp_##NAME(                               \
        const E* logits, uint64_t n_rows, uint32_t vocab, const uint32_t* targets, float inv_t, float top_p,           \
        float prune_z, float* lse, float* entropy, float* logp, uint32_t* branch, uint32_t* flags) {                  \
        token_stats_rows<E, true>(logits, n_rows, vocab, targets, inv_t, top_p, prune_z, lse, entropy, logp, branch,  \
                                  flags);                                                                             \
    }

// Kept-set variants (kept.cuh): the arguments of token_stats_<dtype>, then top_k (0: none), top_p
// (0: none), ids and offsets (null: K from the filter), then the kept outputs k_lse, k_entropy
// [n_rows], k_logp, k_outside [n_rows] (null without targets), k_count [n_rows]. 24 KiB of static
// shared memory, blockDim.x = ROW_BLOCK.
#define RLVR_TOKEN_STATS_KEPT(NAME, E)                                                                               \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, 2) token_stats_kept_##NAME(                               \
        const E* logits, uint64_t n_rows, uint32_t vocab, const uint32_t* targets, float inv_t, uint32_t top_k,        \
        float top_p, const uint32_t* ids, const uint64_t* offsets, float* lse, float* entropy, float* logp,           \
        uint32_t* flags, float* k_lse, float* k_entropy, float* k_logp, uint32_t* k_count, uint8_t* k_outside) {      \
        token_stats_kept_rows<E>(logits, n_rows, vocab, targets, inv_t, top_k, top_p, ids, offsets, lse, entropy,     \
                                 logp, flags, k_lse, k_entropy, k_logp, k_count, k_outside);                          \
    }

RLVR_TOKEN_STATS_KEPT(f32, float)
RLVR_TOKEN_STATS_KEPT(bf16, __nv_bfloat16)
RLVR_TOKEN_STATS_KEPT(f16, __half)
RLVR_TOKEN_STATS(f32, float)
RLVR_TOKEN_STATS(bf16, __nv_bfloat16)
RLVR_TOKEN_STATS(f16, __half)
