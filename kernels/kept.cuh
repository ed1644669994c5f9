// The sampler's kept set K of a row (DESIGN.md §4, "Sampling filter and replay") and the row's
// statistics over it: lse_K, H̃, ℓ̃ (ℓ when the target is outside K), |K| and the outside flag,
// exactly as `reference::kept_*` defines them. Used by token_stats.cu's `token_stats_kept_*`
// entry points; the default (no filter) kernels do not include this code, so their instantiations
// are unchanged.
//
// K recomputed from a filter (top-k, top-p, top-k then top-p over the top-k-renormalised mass):
// K = {i : key(z_i) ≥ τ, z_i > −inf} for a threshold key τ found by radix selection over the
// order-preserving keys (16-bit keys: 11 + 5 bits; f32: 11 + 11 + 10 bits), one re-read of the row
// per level (in reverse order: the part most likely still in L2 first). Each level histograms the
// candidates whose key has the prefix found so far: a u32 count and the u64 fixed-point mass
// `rows::unit` (row_stats.cuh) per bucket, then `rows::block_crossing` scans the buckets top-down:
//   - top-k: the bucket where the cumulative count reaches k; after the last level the crossing
//     bucket is one key, the k-th largest value, and K_k = every token with a key ≥ it (so every
//     token tied with the k-th is kept). Fewer than k finite tokens: all are kept.
//   - top-p (over K_k when top-k is given): the bucket where the cumulative mass reaches
//     ⌈p·(1 − 2^-19)·M⌉, M = K_k's exact integer mass (or, without top-k, 2^frac·s as the branch
//     count of row_stats.cuh takes it); the last level's crossing key is the crossing value τ and
//     K = every token ≥ τ (all ties at the crossing kept). The masses are row_stats.cuh's: their
//     rounding keeps |K| inside reference::kept_band's p·(1 ± 1e-5).
// Then one more read of the row sums K's softmax state (the same online FFMA/ex2 recurrence and
// block merge as pass 1, over the kept tokens only), which gives lse_K, H̃, ℓ̃ by the formulas of
// row_lse / row_entropy / row_logp, and |K| by a block sum.
//
// K given (an engine's CSR mask: ids u32, offsets u64, validated on the host): a gather of the
// row's kept ids, the same online state over them, and the target's membership by comparison.
//
// Everything here is called by the whole CTA (barriers inside). All sums of integers are exact and
// the float reductions have a fixed order: the same bits on every run.
#pragma once

#include "row_stats.cuh"

namespace rlvr {
namespace kept {

using rows::Shared;

// Histogram of one selection level: 2048 buckets (static shared memory, 24 KiB).
struct KeptHist {
    unsigned long long mass[rows::NB];
    uint32_t cnt[rows::NB];
};

// Zeroes the level histogram. Barrier before and after.
__device__ inline void clear_hist(KeptHist& h) {
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < rows::NB; b += blockDim.x) h.cnt[b] = 0, h.mass[b] = 0;
    __syncthreads();
}

// Adds one element to the online softmax state `a` (z units; see Softmax in common.cuh): the
// per-element form of pass 1's recurrence. z must be > −inf and finite.
__device__ __forceinline__ void online_add(Softmax& a, float z, float c) {
    if (z > a.m) {
        const float rn = ref(z, c);
        if (a.s > 0.f) {
            const float d = __fsub_rn(ref(a.m, c), rn), f = ex2(d);
            a.w = __fmul_rn(__fmaf_rn(d, a.s, a.w), f);
            a.s = __fmul_rn(a.s, f);
        }
        a.m = z;
    }
    const float d = __fmaf_rn(z, c, -ref(a.m, c)), e = ex2(d);
    a.s = __fadd_rn(a.s, e);
    a.w = __fmaf_rn(fmaxf(d, -127.f), e, a.w);
}

// The order-preserving key of element bits `b` of value z, with −0 mapped to +0's key: the two
// zeros are one value, so one probability, and a tie at the crossing keeps both.
template <typename E>
__device__ __forceinline__ uint32_t kept_key(uint32_t b, float z) {
    return Elem<E>::key_of_bits(z == 0.f ? 0u : b);
}

// RowStats of a merged softmax state (the formulas of row_lse / row_entropy / row_logp apply).
__device__ __forceinline__ rows::RowStats stats_of(const Softmax& st, float c) {
    const double ln_s = log((double)st.s);
    return rows::RowStats{st, ln_s, ln_s - ((double)st.m * (double)c - (double)ref(st.m, c)) * rows::LN2, 0u};
}

// One level: the row's candidates (z > −inf, key ≥ lo_key, key & pmask == prefix) bucketed by
// (key >> shift) & dmask, with their counts and units.
template <typename E>
__device__ void level_row(const RowSplit<E>& rs, uint32_t lo_key, uint32_t pmask, uint32_t prefix, int shift,
                          uint32_t dmask, const rows::RowCtx& r, KeptHist& h) {
    for_each_vec<2>(rs, true, [&](const uint4& v) {
#pragma unroll
        for (int i = 0; i < Elem<E>::VEC; ++i) {
            const uint32_t b = vec_bits<E>(v, i);
            const float z = Elem<E>::value_of_bits(b);
            const uint32_t key = kept_key<E>(b, z);
            if (z > NEG_INF && key >= lo_key && (key & pmask) == prefix) {
                const uint32_t d = (key >> shift) & dmask;
                atomicAdd(&h.cnt[d], 1u);
                atomicAdd(&h.mass[d], rows::unit(r, z));
            }
        }
    });
}

// Result of a selection: the threshold key (every candidate when `all`), and the exact integer
// mass of the tokens with a key ≥ it (valid when !all).
struct Select {
    uint32_t key;
    bool all;
    unsigned long long mass;
};

// Radix selection over the candidates with key ≥ lo_key: by count (BY_MASS false: the key of the
// `target`-th largest) or by mass (the key where the cumulative mass first reaches `target`).
template <typename E, bool BY_MASS>
__device__ Select select_key(const RowSplit<E>& rs, uint32_t lo_key, unsigned long long target,
                             const rows::RowCtx& r, KeptHist& h, Shared& sh) {
    constexpr int KB = Elem<E>::KEY_BITS;
    constexpr int NLEV = KB == 16 ? 2 : 3;
    uint32_t prefix = 0;
    unsigned long long above = 0;  // mass of the tokens above the current prefix's bucket
#pragma unroll 1
    for (int l = 0; l < NLEV; ++l) {
        // 16-bit keys: bits 15..5, 4..0; f32 keys: 31..21, 20..10, 9..0.
        const int shift = KB == 16 ? (l == 0 ? 5 : 0) : (l == 0 ? 21 : l == 1 ? 10 : 0);
        const int width = KB == 16 ? (l == 0 ? 11 : 5) : (l == 2 ? 10 : 11);
        const uint32_t top = KB == 32 && shift + width == 32 ? 0u : ~((1u << (shift + width)) - 1u);
        const uint32_t pmask = KB == 32 ? top : top & 0xffffu;
        level_row<E>(rs, lo_key, pmask, prefix, shift, (1u << width) - 1u, r, h);
        __syncthreads();
        const rows::Crossing c = rows::block_crossing(
            1 << width, target, [&](int j) { return BY_MASS ? h.mass[j] : (unsigned long long)h.cnt[j]; },
            [&](int j) { return h.cnt[j]; }, sh);
        if (c.idx < 0) {  // never reached (uniform over the block): every candidate is kept
            clear_hist(h);
            return Select{0u, true, 0ull};
        }
        const unsigned long long bucket_mass = h.mass[c.idx];
        unsigned long long mass_above = 0;
        if (BY_MASS) {
            mass_above = c.mass_above;
        } else {  // the mass above the crossing bucket (block_crossing summed counts)
            unsigned long long part = 0;
            for (int j = c.idx + 1 + (int)threadIdx.x; j < (1 << width); j += (int)blockDim.x) part += h.mass[j];
            mass_above = block_sum(part, reinterpret_cast<unsigned long long*>(sh.red.ll));
        }
        above += mass_above;
        target -= BY_MASS ? c.mass_above : (unsigned long long)c.count_above;
        prefix |= (uint32_t)c.idx << shift;
        clear_hist(h);
        if (l == NLEV - 1) return Select{prefix, false, above + bucket_mass};
    }
    return Select{0u, true, 0ull};  // not reached
}

// The threshold key of K for a row whose pass 1 gave `st` (not flagged): K = {z > −inf, key ≥ τ}.
// top_k = 0: no top-k; top_p = 0: no top-p.
template <typename E>
__device__ uint32_t kept_threshold(const RowSplit<E>& rs, const rows::RowStats& st, float c, uint32_t top_k,
                                   float top_p, KeptHist& h, Shared& sh) {
    const int frac = 61 - ilogbf(st.st.s);
    const rows::RowCtx r{st.st.m, c, NEG_INF, ref(st.st.m, c), __int_as_float((127 + frac) << 23)};
    uint32_t lo_key = 0;
    double mass = (double)st.st.s * ldexp(1.0, frac);
    if (top_k != 0) {
        const Select s = select_key<E, false>(rs, 0u, top_k, r, h, sh);
        if (!s.all) lo_key = s.key, mass = (double)s.mass;
    }
    if (top_p > 0.f) {
        const unsigned long long target = (unsigned long long)ceil((double)top_p * rows::TARGET_SLACK * mass);
        const Select s = select_key<E, true>(rs, lo_key, max(target, 1ull), r, h, sh);
        if (!s.all) lo_key = s.key;
    }
    return lo_key;
}

// Softmax state over the row's tokens with z > −inf and key ≥ tau, merged over the block, and
// their number.
template <typename E>
__device__ Softmax kept_sums(const RowSplit<E>& rs, uint32_t tau, float c, uint32_t& count, Shared& sh) {
    Softmax a{NEG_INF, 0.f, 0.f};
    uint32_t n = 0;
    for_each_vec<2>(rs, true, [&](const uint4& v) {
#pragma unroll
        for (int i = 0; i < Elem<E>::VEC; ++i) {
            const uint32_t b = vec_bits<E>(v, i);
            const float z = Elem<E>::value_of_bits(b);
            if (z > NEG_INF && kept_key<E>(b, z) >= tau) {
                online_add(a, z, c);
                ++n;
            }
        }
    });
    count = block_sum(n, sh.red.u);
    return block_merge(a, c, sh.red.sm);
}

// Softmax state over the ids [lo, hi) of a CSR mask (ids < V; validated on the host, and an id
// ≥ V is skipped rather than read), merged over the block; `y_in`: the target is one of them.
template <typename E>
__device__ Softmax mask_sums(const RowSplit<E>& rs, const uint32_t* __restrict__ ids, uint64_t lo, uint64_t hi,
                             uint32_t y, float c, uint32_t& count, bool& y_in, Shared& sh) {
    Softmax a{NEG_INF, 0.f, 0.f};
    uint32_t n = 0, hit = 0;
    for (uint64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const uint32_t id = ids[i];
        if (id >= rs.vocab) continue;
        ++n;
        hit |= id == y;
        const float z = Elem<E>::value_of_bits(rs.bits_at(id));
        if (z > NEG_INF) online_add(a, z, c);
    }
    count = block_sum(n, sh.red.u);
    y_in = block_or(hit, sh.red.u) != 0;
    return block_merge(a, c, sh.red.sm);
}

}  // namespace kept
}  // namespace rlvr
