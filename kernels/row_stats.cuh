// Per-row softmax statistics and the exact top-p count, shared by every kernel that reads rows of
// logits once (token_stats.cu, grpo.cu): the single pass (online max/sum/weighted sum, non-finite
// flag, the top-p candidates with pruning), the block merge, and the radix selection of the branch
// count. The traffic budget and reduction order are those stated in token_stats.cu's header.
//
// Everything here is called by a whole CTA (ROW_BLOCK = 512 threads; barriers inside). `row_stats`
// is the driver: one call per row; the kernel decides what to write.
//
// Top-p masses (DESIGN.md §5). A candidate's mass is the fixed-point integer
//   unit(z) = rn(2^frac · 2^{rn(z·c − r)}),   c = log2(e)/T,  r = rn(m·c),  frac = 61 − ⌊log2 s⌋,
// taken after the pass, relative to the row max m (so a token's mass never depends on where the
// row sits: the count is shift-invariant) and from the same FFMA and ex2 as the token's term of
// s = Σ 2^{rn(z·c − r)}, which bounds the sum: Σ unit < 2^62 + V/2 < 2^63. Masses are summed as
// integers (exact, order-free), and the crossing target is the integer ⌈p·(1 − 2^-19)·s·2^frac⌉.
// Rounding costs at most 1/2 unit per token: relative to the target, ≤ V·2^-63/p, far inside the
// 1e-5 band of DESIGN.md §4.
// - 16-bit keys: pass 1 counts every candidate per key, u16 counters two per word, with ONE
//   shared reduction (no result) per candidate, and counts its candidates in a register. After
//   the pass a sweep of the counters marks the touched coarse buckets (32 keys each); one warp per
//   touched bucket then sums count·unit(value) over its 32 keys (a lane per key): exact masses,
//   at the cost of what the row touched. The counters wrapped iff they sum to less than the
//   candidates (a wrap loses a multiple of 65536): then the row re-reads itself with u32 counters.
// - f32 keys: pass 1 appends the candidates' keys to a list in shared memory (32768 keys); the
//   three radix levels (11 + 11 + 10 bits) then run over the list. A row with more candidates
//   re-reads itself: level 1 over the row, then the crossing bucket's keys gathered into the list
//   (or, if they do not fit either, levels 2 and 3 over the row as well).
// Candidates are the tokens with z ≥ m_running + prune_z, a superset of those with z ≥ m + prune_z
// (the "kept" set): every level counts only kept tokens, so the result does not depend on the
// timing-dependent running max (nor on which path a row took: both sum the same integers).
//
// Static performance model (scripts/kernel-model.sh): code between the markers
// "(model: rare path from here: TAG)" and "(model: rare path ends)" runs only on some rows, which
// the model costs through the frequency of TAG in its simulated rows, not per row: `wrapped` (the
// 16-bit counters wrapped), `overflow` (the f32 candidates overflow the list), `overflow2` (the
// f32 crossing bucket overflows it too), `first` (a thread's elements before its first finite one).
#pragma once

#include "common.cuh"

namespace rlvr {
namespace rows {
constexpr int BLOCK = 1024;
constexpr int COARSE_BITS = 11;
constexpr int NB = 1 << COARSE_BITS;   // coarse buckets
constexpr int FINE_WORDS = 32768;      // 65536 u16 counters (16-bit keys) or 32768 u32 keys (f32 list)
constexpr uint32_t LIST_CAP = FINE_WORDS;
constexpr uint32_t HEAVY = 65536;      // a bucket this full may have wrapped a u16 counter
constexpr uint32_t ROW_NON_FINITE = 1, ROW_ALL_NEG_INF = 2, ROW_BAD_TARGET = 4;
// The scans look for p·(1 - 2^-19) rather than p: the kept mass exceeds p by (1-p)·kept/V at
// least, which for p near 1 and few kept tokens is near the ~1e-6 error of S. With this slack the
// scan always crosses; the result stays inside the band p·(1 ± 1e-5).
constexpr double TARGET_SLACK = 1.0 - 1.0 / 524288.0;

// Dynamic shared memory of the top-p kernels (155904 bytes; one CTA per SM).
struct Hist {
    unsigned long long mass[NB];  // fixed-point mass of each bucket of the current level
    uint32_t cnt[NB];             // kept tokens of each bucket of the current level
    uint32_t fine[FINE_WORDS];    // u16 count per 16-bit key, or the f32 key list
    uint32_t touched[NB / 32];    // 16-bit keys: one bit per coarse bucket with a nonzero counter
};

struct Crossing {
    int idx;                        // bucket where the cumulative mass reaches the target; -1: none
    uint32_t count_above;           // kept tokens in buckets above it
    unsigned long long mass_above;  // their mass
    uint32_t total_count;           // kept tokens in all buckets
};

struct Shared {
    union {
        Softmax sm[32];
        uint32_t u[32];
        long long ll[32];
    } red;
    unsigned long long wmass[32];
    uint32_t wcnt[32];
    int win;
    Crossing res;
    uint32_t lb_key;    // key32 of a lower bound of the row max (for pruning)
    uint32_t list_len;  // f32 candidate / gather list length (may exceed LIST_CAP: then incomplete)
    uint32_t reread;    // the row's top-p count re-read it (in reverse order); reset per row
};

// Per-row constants of the top-p count.
struct RowCtx {
    float m, c, thr;   // row max (z units), log2(e)/T, the kept threshold m + prune_z
    float r;           // ref(m, c): the pass's reference, so that a token's unit is its term of S
    float two_frac;    // 2^frac
};

// rn(2^frac · 2^{rn(z·c − r)}) for a kept z (≤ m): the fixed-point mass of one token, from the
// same FFMA and ex2 as its term of S in pass 1.
__device__ __forceinline__ unsigned long long unit(const RowCtx& r, float z) {
    return __float2ull_rn(ex2(__fmaf_rn(z, r.c, -r.r)) * r.two_frac);
}

// Inclusive scan over the lanes of a warp of (mass, count) pairs, in lane order (integer sums:
// exact, any order gives the same result). The whole warp must call it.
__device__ __forceinline__ void warp_inclusive_scan(unsigned long long& m, uint32_t& c) {
    const uint32_t lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long mo = __shfl_up_sync(FULL_MASK, m, o);
        const uint32_t co = __shfl_up_sync(FULL_MASK, c, o);
        if (lane >= (uint32_t)o) m += mo, c += co;
    }
}

// The cumulative mass of buckets visited top-down (bucket n-1 first) reaches `target` first at
// the returned bucket. Each thread scans a contiguous run of items; runs are combined by warp and
// block scans in a fixed order (integer sums: exact); the first crossing item wins by atomicMin.
// Must be called by the whole block (contains barriers).
template <typename MassF, typename CountF>
__device__ Crossing block_crossing(int n, unsigned long long target, MassF mass_of, CountF count_of, Shared& sh) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int per = (n + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = min(n, tid * per), hi = min(n, lo + per);
    unsigned long long msum = 0;
    uint32_t csum = 0;
    for (int i = lo; i < hi; ++i) {
        msum += mass_of(n - 1 - i);
        csum += count_of(n - 1 - i);
    }
    unsigned long long mi = msum;
    uint32_t ci = csum;
    warp_inclusive_scan(mi, ci);
    unsigned long long mex = __shfl_up_sync(FULL_MASK, mi, 1);
    uint32_t cex = __shfl_up_sync(FULL_MASK, ci, 1);
    if (lane == 0) mex = 0, cex = 0;
    if (lane == 31) sh.wmass[warp] = mi, sh.wcnt[warp] = ci;
    if (tid == 0) sh.win = INT_MAX;
    __syncthreads();
    if (warp == 0) {
        unsigned long long m = lane < nw ? sh.wmass[lane] : 0;
        uint32_t c = lane < nw ? sh.wcnt[lane] : 0u;
        warp_inclusive_scan(m, c);
        unsigned long long me = __shfl_up_sync(FULL_MASK, m, 1);
        uint32_t ce = __shfl_up_sync(FULL_MASK, c, 1);
        if (lane == 0) me = 0, ce = 0;
        if (lane == 31) sh.res.total_count = c;
        __syncwarp();
        if (lane < nw) sh.wmass[lane] = me, sh.wcnt[lane] = ce;
    }
    __syncthreads();
    const unsigned long long base = sh.wmass[warp] + mex;
    const uint32_t cbase = sh.wcnt[warp] + cex;
    unsigned long long run = base;
    for (int i = lo; i < hi; ++i) {
        run += mass_of(n - 1 - i);
        if (run >= target) {
            atomicMin(&sh.win, i);
            break;
        }
    }
    __syncthreads();
    const int win = sh.win;
    if (win >= lo && win < hi) {
        run = base;
        uint32_t crun = cbase;
        for (int i = lo; i < win; ++i) run += mass_of(n - 1 - i), crun += count_of(n - 1 - i);
        sh.res.mass_above = run;
        sh.res.count_above = crun;
    }
    __syncthreads();
    Crossing r = sh.res;
    r.idx = win == INT_MAX ? -1 : n - 1 - win;
    __syncthreads();
    return r;
}

// Exact level over `n` values whose keys are key_base + j, each with cnt_of(j) kept tokens of one
// value (so one unit each): ties are interchangeable, so the count is the tokens above plus
// ⌈(target − mass above) / unit⌉, at most the ties. With no crossing: every kept token.
template <typename E, typename CountF>
__device__ uint32_t exact_level(int n, uint32_t key_base, unsigned long long target, const RowCtx& r, CountF cnt_of,
                                Shared& sh) {
    auto unit_of = [&](int j) { return unit(r, Elem<E>::value_of_key(key_base + (uint32_t)j)); };
    // Only keys with kept tokens are evaluated: a key above the row max has no unit (its ex2
    // would overflow), and has no tokens.
    auto mass_of = [&](int j) {
        const uint32_t c = cnt_of(j);
        return c == 0 ? 0ull : (unsigned long long)c * unit_of(j);
    };
    const Crossing c = block_crossing(n, target, mass_of, cnt_of, sh);
    if (c.idx < 0) return c.total_count;
    const unsigned long long u = max(unit_of(c.idx), 1ull), left = target - c.mass_above;
    const unsigned long long need = (left + u - 1) / u;
    return c.count_above + (uint32_t)min(max(need, 1ull), (unsigned long long)cnt_of(c.idx));
}

// exact_level over the 32 keys key_base + j of one 16-bit bucket, by warp 0 alone (lane l holds
// key j = 31 − l, so lane order is the top-down order): an inclusive scan over the lanes instead
// of block_crossing's barriers. The same integer sums, so the same count. Whole block (a barrier
// hands warp 0's result to everyone).
template <typename E, typename CountF>
__device__ uint32_t exact_level32(uint32_t key_base, unsigned long long target, const RowCtx& r, CountF cnt_of,
                                  Shared& sh) {
    const uint32_t lane = threadIdx.x & 31;
    if (threadIdx.x < 32) {
        const int j = 31 - (int)lane;
        const uint32_t c = cnt_of(j);
        const unsigned long long u = c == 0 ? 0ull : unit(r, Elem<E>::value_of_key(key_base + (uint32_t)j));
        const unsigned long long m = (unsigned long long)c * u;
        unsigned long long mi = m;
        uint32_t ci = c;
        warp_inclusive_scan(mi, ci);
        const uint32_t ball = __ballot_sync(FULL_MASK, mi >= target);
        const uint32_t total = __shfl_sync(FULL_MASK, ci, 31);
        if (ball == 0) {
            if (lane == 0) sh.res.total_count = total;
        } else if (lane == (uint32_t)(__ffs(ball) - 1)) {
            const unsigned long long left = target - (mi - m), uu = max(u, 1ull);
            const unsigned long long need = (left + uu - 1) / uu;
            sh.res.total_count = (ci - c) + (uint32_t)min(max(need, 1ull), (unsigned long long)c);
        }
    }
    __syncthreads();
    const uint32_t result = sh.res.total_count;
    __syncthreads();
    return result;
}

// Adds the kept element (key, z) whose key satisfies (key & pmask) == prefix to the level
// histogram, bucketed by (key >> digit_shift) & digit_mask: a count and, unless COUNT_ONLY (the
// exact level: one value per bucket), its unit.
template <bool COUNT_ONLY>
__device__ __forceinline__ void level_add(uint32_t key, float z, uint32_t pmask, uint32_t prefix, int digit_shift,
                                          uint32_t digit_mask, const RowCtx& r, Hist& h) {
    if (!(z >= r.thr) || (key & pmask) != prefix) return;
    const uint32_t d = (key >> digit_shift) & digit_mask;
    atomicAdd(&h.cnt[d], 1u);
    if (!COUNT_ONLY) atomicAdd(&h.mass[d], unit(r, z));
}

// One level over the row (a re-read, in reverse order: it starts with the part of the row most
// likely still in L2).
template <typename E, bool COUNT_ONLY>
__device__ void level_pass_row(const RowSplit<E>& rs, uint32_t pmask, uint32_t prefix, int digit_shift,
                               uint32_t digit_mask, const RowCtx& r, Hist& h) {
    for_each_vec<2>(rs, true, [&](const uint4& v) {
#pragma unroll
        for (int i = 0; i < Elem<E>::VEC; ++i) {
            const uint32_t b = vec_bits<E>(v, i);
            level_add<COUNT_ONLY>(Elem<E>::key_of_bits(b), Elem<E>::value_of_bits(b), pmask, prefix, digit_shift,
                                  digit_mask, r, h);
        }
    });
}

// One level over the f32 key list (the first `len` keys of h.fine).
template <bool COUNT_ONLY>
__device__ void level_pass_list(uint32_t len, uint32_t pmask, uint32_t prefix, int digit_shift, uint32_t digit_mask,
                                const RowCtx& r, Hist& h) {
    for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
        const uint32_t k = h.fine[i];
        level_add<COUNT_ONLY>(k, from_key32(k), pmask, prefix, digit_shift, digit_mask, r, h);
    }
}

// Zeroes the level histogram (counts and masses). Barrier before and after.
__device__ inline void clear_level(Hist& h) {
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < NB; b += blockDim.x) h.cnt[b] = 0, h.mass[b] = 0;
    __syncthreads();
}

// Appends this thread's keys k[0..VEC) that are `hit` to the shared list (warp-aggregated: one
// shared atomic per warp and call; nothing at all when no lane of the warp has a hit). Keys past
// LIST_CAP are counted in list_len but not stored. Every thread of the warp must call it.
template <int VEC>
__device__ __forceinline__ void list_append(const uint32_t (&k)[VEC], uint32_t hits, Hist& h, Shared& sh) {
    const uint32_t lane = threadIdx.x & 31, mine = __popc(hits);
    if (__ballot_sync(FULL_MASK, mine != 0) == 0) return;  // uniform over the warp
    uint32_t incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t t = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= (uint32_t)o) incl += t;
    }
    uint32_t base = 0;
    if (lane == 31) base = atomicAdd(&sh.list_len, incl);
    base = __shfl_sync(FULL_MASK, base, 31);
    uint32_t pos = base + incl - mine;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        if (hits >> i & 1u) {
            if (pos < LIST_CAP) h.fine[pos] = k[i];
            ++pos;
        }
    }
}

// Re-reads the row and appends the keys of its kept elements with (key >> 21) == b1 to the list.
__device__ inline void gather_f32(const RowSplit<float>& rs, uint32_t b1, const RowCtx& r, Hist& h, Shared& sh) {
    for_each_vec<2>(rs, true, [&](const uint4& v) {
        uint32_t k[4], hits = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float z = __uint_as_float(vec_bits<float>(v, i));
            k[i] = key32(z);
            hits |= (uint32_t)(z >= r.thr && (k[i] >> 21) == b1) << i;
        }
        list_append<4>(k, hits, h, sh);
    });
}

// The crossing of the level histogram in `h` (NB buckets). `settled`: the count is known without a
// finer level (no crossing: every kept token; or a crossing bucket of one token), and is `count`.
struct Level {
    Crossing c;
    bool settled;
    uint32_t count;
};
__device__ inline Level level_crossing(unsigned long long target, const Hist& h, Shared& sh) {
    const Crossing c = block_crossing(
        NB, target, [&](int b) { return h.mass[b]; }, [&](int b) { return h.cnt[b]; }, sh);
    if (c.idx < 0) return Level{c, true, c.total_count};
    if (h.cnt[c.idx] == 1) return Level{c, true, c.count_above + 1};
    return Level{c, false, 0u};
}

// Zeroes the u16 counters of the touched buckets and the touched bits (a 16-bit row's whole
// histogram state, at the cost of what the row touched). Barrier before (the counters are read
// up to then) and after.
__device__ inline void clear_touched(Hist& h) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    for (uint32_t wi = warp; wi < NB / 32; wi += nw) {
        uint32_t bits = h.touched[wi];
        while (bits != 0) {
            const uint32_t b = wi * 32 + (uint32_t)__ffs(bits) - 1;
            bits &= bits - 1;
            if (lane < 16) h.fine[b * 16 + lane] = 0;  // 32 u16 counters = 16 words
        }
        __syncwarp();
        if (lane == 0) h.touched[wi] = 0;
    }
    __syncthreads();
}

// Sets the touched bit of every coarse bucket with a nonzero u16 counter: each thread ORs the 16
// counter words of its buckets (16-byte shared loads: one pass over the 128 KiB, instead of a
// second atomic per candidate in pass 1). Barrier after.
__device__ inline void mark_touched(Hist& h) {
    const uint4* f = reinterpret_cast<const uint4*>(h.fine);
    for (uint32_t g = threadIdx.x; g < NB / 4; g += blockDim.x) {  // 4 buckets = 16 uint4
        uint32_t bits = 0;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            uint32_t any = 0;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const uint4 x = f[g * 16 + b * 4 + q];
                any |= x.x | x.y | x.z | x.w;
            }
            bits |= (uint32_t)(any != 0) << b;
        }
        if (bits != 0) atomicOr(&h.touched[g >> 3], bits << ((g & 7u) * 4));
    }
    __syncthreads();
}

// Branch count of a 16-bit row after pass 1 (a u16 count per key and `ncand`, this thread's
// candidates). Leaves the histogram state zeroed.
//
// One warp per touched bucket, a lane per key: kept count and exact mass Σ count·unit(value),
// summed over the warp. The counters have wrapped iff the touched counters sum to less than the
// candidates (a wrap loses a multiple of 65536, and nothing else changes the sum): then the row
// is counted again with u32 counters (the re-read path).
template <typename E>
__device__ uint32_t branch16(const RowSplit<E>& rs, unsigned long long target, const RowCtx& r, uint32_t ncand,
                             Hist& h, Shared& sh) {
    auto fine16 = [&](uint32_t k) { return (h.fine[k >> 1] >> ((k & 1) << 4)) & 0xffffu; };
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    long long lost = -(long long)ncand;  // Σ counters − Σ candidates, summed over the block
    mark_touched(h);
    // Warp w owns the bitmap words [w·wpw, (w+1)·wpw): a contiguous range of buckets, whose
    // totals it keeps (lane 0) for the crossing below.
    const uint32_t wpw = (NB / 32 + nw - 1) / nw, w_lo = min(warp * wpw, NB / 32u), w_hi = min(w_lo + wpw, NB / 32u);
    unsigned long long wmass = 0;
    uint32_t wcnt = 0;
    for (uint32_t wi = w_lo; wi < w_hi; ++wi) {
        uint32_t bits = h.touched[wi];
        while (bits != 0) {
            const uint32_t b = wi * 32 + (uint32_t)__ffs(bits) - 1;
            bits &= bits - 1;
            const uint32_t k = (b << 5) | lane, cnt = fine16(k);
            const float z = Elem<E>::value_of_key(k);
            const bool kept = cnt != 0 && z >= r.thr;  // a counted key is a value <= the row max
            unsigned long long mass = kept ? (unsigned long long)cnt * unit(r, z) : 0ull;
            uint32_t kc = kept ? cnt : 0u, raw = cnt;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                mass += __shfl_xor_sync(FULL_MASK, mass, o);
                kc += __shfl_xor_sync(FULL_MASK, kc, o);
                raw += __shfl_xor_sync(FULL_MASK, raw, o);
            }
            if (lane == 0) h.mass[b] = mass, h.cnt[b] = kc, lost += raw;
            wmass += mass, wcnt += kc;
        }
    }
    if (lane == 0) sh.wmass[warp] = wmass, sh.wcnt[warp] = wcnt;
    uint32_t result;
    if (block_sum(lost, sh.red.ll) == 0) {  // (its barriers make every warp's totals visible)
        // The crossing, top-down: warp 0 finds the warp range where the cumulative mass reaches
        // the target, then that warp finds the bucket in its range. Buckets without a bit hold
        // stale entries: they read as empty. The same integer sums as block_crossing.
        if (warp == 0) {
            const uint32_t w = nw - 1 - lane;  // lane 0: the highest range
            const unsigned long long m = lane < nw ? sh.wmass[w] : 0ull;
            const uint32_t c = lane < nw ? sh.wcnt[w] : 0u;
            unsigned long long mi = m;
            uint32_t ci = c;
            warp_inclusive_scan(mi, ci);
            const uint32_t ball = __ballot_sync(FULL_MASK, mi >= target);
            if (lane == 31) sh.res.total_count = ci;
            if (ball == 0) {
                if (lane == 0) sh.win = -1;
            } else if (lane == (uint32_t)(__ffs(ball) - 1)) {
                sh.win = (int)w, sh.res.mass_above = mi - m, sh.res.count_above = ci - c;
            }
        }
        __syncthreads();
        const int wx = sh.win;
        if (wx >= 0 && warp == (uint32_t)wx) {
            unsigned long long base = sh.res.mass_above;
            uint32_t cbase = sh.res.count_above;
            for (uint32_t wi = w_hi; wi-- > w_lo;) {  // warp-uniform
                const uint32_t b = wi * 32 + 31 - lane, t = (h.touched[wi] >> (31 - lane)) & 1u;
                const unsigned long long m = t ? h.mass[b] : 0ull;
                const uint32_t c = t ? h.cnt[b] : 0u;
                unsigned long long mi = m;
                uint32_t ci = c;
                warp_inclusive_scan(mi, ci);
                const uint32_t ball = __ballot_sync(FULL_MASK, base + mi >= target);
                if (ball != 0) {
                    if (lane == (uint32_t)(__ffs(ball) - 1)) {
                        sh.res.idx = (int)b, sh.res.mass_above = base + mi - m, sh.res.count_above = cbase + ci - c;
                    }
                    break;
                }
                base += __shfl_sync(FULL_MASK, mi, 31), cbase += __shfl_sync(FULL_MASK, ci, 31);
            }
        }
        __syncthreads();
        const Crossing c{wx < 0 ? -1 : sh.res.idx, sh.res.count_above, sh.res.mass_above, sh.res.total_count};
        __syncthreads();
        if (c.idx < 0) {
            result = c.total_count;
        } else if (h.cnt[c.idx] == 1) {
            result = c.count_above + 1;
        } else {
            const uint32_t b1 = (uint32_t)c.idx;
            auto kept = [&](int j) {
                const uint32_t k = (b1 << 5) | (uint32_t)j;
                return Elem<E>::value_of_key(k) >= r.thr ? fine16(k) : 0u;
            };
            result = c.count_above + exact_level32<E>(b1 << 5, target - c.mass_above, r, kept, sh);
        }
    } else {  // (model: rare path from here: wrapped)
        // A counter has wrapped: count the row again, level by level, with u32 counters.
        if (threadIdx.x == 0) sh.reread = 1;
        clear_level(h);
        level_pass_row<E, false>(rs, 0u, 0u, 16 - COARSE_BITS, NB - 1, r, h);
        __syncthreads();
        const Level l1 = level_crossing(target, h, sh);
        if (l1.settled) {
            result = l1.count;
        } else {
            const uint32_t b1 = (uint32_t)l1.c.idx;
            clear_level(h);
            level_pass_row<E, true>(rs, 0xffe0u, b1 << 5, 0, 31, r, h);
            __syncthreads();
            result = l1.c.count_above + exact_level32<E>(b1 << 5, target - l1.c.mass_above, r,
                                                         [&](int j) { return h.cnt[j]; }, sh);
        }
    }  // (model: rare path ends)
    clear_touched(h);
    return result;
}

// Branch count of an f32 row after pass 1 (the candidates' keys in the list, unless there were
// more than LIST_CAP): bits 31..21, then 20..10 with masses, then 9..0 exactly.
__device__ inline uint32_t branch32(const RowSplit<float>& rs, unsigned long long target, const RowCtx& r, Hist& h,
                                    Shared& sh) {
    bool list = sh.list_len <= LIST_CAP;
    uint32_t len = sh.list_len;
    if (!list && threadIdx.x == 0) sh.reread = 1;
    if (list) {
        level_pass_list<false>(len, 0u, 0u, 21, 0x7ff, r, h);
    } else {  // (model: rare path from here: overflow)
        level_pass_row<float, false>(rs, 0u, 0u, 21, 0x7ff, r, h);
    }  // (model: rare path ends)
    __syncthreads();
    const Level l1 = level_crossing(target, h, sh);
    if (l1.settled) {
        clear_level(h);
        return l1.count;
    }
    const uint32_t b1 = (uint32_t)l1.c.idx;
    clear_level(h);
    if (!list) {  // gather the crossing bucket's kept keys: the list holds them if they fit
        // (model: rare path from here: overflow)
        if (threadIdx.x == 0) sh.list_len = 0;
        __syncthreads();
        gather_f32(rs, b1, r, h, sh);
        __syncthreads();
        len = sh.list_len;
        list = len <= LIST_CAP;
    }  // (model: rare path ends)
    if (list) {
        level_pass_list<false>(len, 0xffe00000u, b1 << 21, 10, 0x7ff, r, h);
    } else {  // (model: rare path from here: overflow2)
        level_pass_row<float, false>(rs, 0xffe00000u, b1 << 21, 10, 0x7ff, r, h);
    }  // (model: rare path ends)
    __syncthreads();
    const unsigned long long t2 = target - l1.c.mass_above;
    const Level l2 = level_crossing(t2, h, sh);
    uint32_t result = l1.c.count_above + l2.count;
    if (!l2.settled) {
        const uint32_t prefix = (b1 << 11) | (uint32_t)l2.c.idx;
        clear_level(h);
        if (list) {
            level_pass_list<true>(len, 0xfffffc00u, prefix << 10, 0, 0x3ff, r, h);
        } else {  // (model: rare path from here: overflow2)
            level_pass_row<float, true>(rs, 0xfffffc00u, prefix << 10, 0, 0x3ff, r, h);
        }  // (model: rare path ends)
        __syncthreads();
        result = l1.c.count_above + l2.c.count_above +
                 exact_level<float>(1024, prefix << 10, t2 - l2.c.mass_above, r, [&](int j) { return h.cnt[j]; }, sh);
    }
    clear_level(h);
    return result;
}

// Pass 1 over a row: online softmax state (see Softmax), non-finite flag and (TOPP) the top-p
// candidates. Per element: one FFMA for d = rn(z·c − r), ex2, an add, an FFMA for w (d clamped to
// -127, below which ex2 flushes to 0, so that a -inf element adds 0, not -inf·0), and the max.
// Non-finite values need no test of their own: a NaN makes its d, and so the thread's s, NaN; a
// +inf becomes the max, and +inf·c − (+inf) is NaN. Only a thread that has seen no finite value
// yet (m = -inf) looks at its elements for NaN.
// `ncand` counts this thread's 16-bit candidates (branch16 checks the counters against it).
template <typename E, bool TOPP>
__device__ Softmax pass1(const RowSplit<E>& rs, float c, float prune_z, uint32_t& bad, uint32_t& ncand, Hist* h,
                         Shared& sh) {
    constexpr int VEC = Elem<E>::VEC;
    float m = NEG_INF, r = NEG_INF, s = 0.f, w = 0.f;
    uint32_t nan_seen = 0, cand = 0;
    const SharedWords fine(TOPP ? h->fine : nullptr);
    for_each_vec<4>(rs, false, [&](const uint4& q) {
        float v[VEC];
        float vmax = NEG_INF;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            v[i] = Elem<E>::value_of_bits(vec_bits<E>(q, i));
            vmax = fmaxf(vmax, v[i]);
        }
        if (vmax > m) {
            const float rn = ref(vmax, c);
            if (s > 0.f) {
                const float d = __fsub_rn(r, rn), f = ex2(d);
                w = __fmul_rn(__fmaf_rn(d, s, w), f);
                s = __fmul_rn(s, f);
            }
            m = vmax;
            r = rn;
        }
        if (m > NEG_INF) {  // (-inf·c − -inf is NaN: a thread's elements before its first finite one)
            float vs = 0.f, vw = 0.f;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float d = __fmaf_rn(v[i], c, -r), e = ex2(d);
                vs = __fadd_rn(vs, e);
                vw = __fmaf_rn(fmaxf(d, -127.f), e, vw);
            }
            s = __fadd_rn(s, vs);
            w = __fadd_rn(w, vw);
        } else {  // (model: rare path from here: first)
#pragma unroll
            for (int i = 0; i < VEC; ++i) nan_seen |= v[i] != v[i];
        }  // (model: rare path ends)
        if constexpr (TOPP) {
            // Share the running max so that every thread prunes against the block's best bound.
            const uint32_t wk = __reduce_max_sync(FULL_MASK, key32(m));
            uint32_t lb = 0;
            if ((threadIdx.x & 31) == 0) lb = max(atomicMax(&sh.lb_key, wk), wk);
            // At least -FLT_MAX: -inf is never a candidate (probability 0), NaN never compares.
            const float thr = fmaxf(fmaxf(m, from_key32(__shfl_sync(FULL_MASK, lb, 0))) + prune_z, -3.4028235e38f);
            if constexpr (Elem<E>::KEY_BITS == 16) {
                // One shared atomic per candidate, without a result: its key's u16 counter. The
                // keys of a word's two elements are formed together (key16 on both halves).
#pragma unroll
                for (int j = 0; j < VEC / 2; ++j) {
                    const uint32_t wd = j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;
                    const uint32_t keys = wd ^ ((((wd >> 15) & 0x10001u) * 0x7fffu) | 0x80008000u);
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const uint32_t key = half ? keys >> 16 : keys & 0xffffu;
                        if (v[2 * j + half] >= thr) {
                            fine.add(key >> 1, (key & 1u) ? 0x10000u : 1u);
                            ++cand;
                        }
                    }
                }
            } else {
                uint32_t k[VEC], hits = 0;
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    k[i] = key32(v[i]);
                    hits |= (uint32_t)(v[i] >= thr) << i;
                }
                list_append<VEC>(k, hits, *h, sh);
            }
        }
    });
    bad = nan_seen | (uint32_t)!(s == s);
    ncand = cand;
    return Softmax{m, s, w};
}

// What one row's single pass gives every thread of the block.
struct RowStats {
    Softmax st;     // merged over the block: max m (z units); s, w relative to r = ref(m, c)
    double ln_s;    // ln s
    double ln_s_m;  // ln Σ 2^{(z − m)·c} = ln s − (m·c − r)·ln 2: s with the rounding of r taken out
    uint32_t flag;  // ROW_NON_FINITE or ROW_ALL_NEG_INF (then the values are meaningless), else 0
};

constexpr double LN2 = 0.69314718055994530942;

// lse = m/T + ln Σ 2^{(z−m)c}, H = ln s − ln2·w/s (invariant to the reference),
// logp = (z_y − m)/T − ln Σ 2^{(z−m)c}: each a difference of two terms of the row's scale, so
// they are formed in f64 and rounded once.
__device__ __forceinline__ float row_lse(const RowStats& r, float inv_t) {
    return (float)((double)(r.st.m * inv_t) + r.ln_s_m);
}
__device__ __forceinline__ float row_entropy(const RowStats& r) {
    return (float)(r.ln_s - LN2 * (double)r.st.w / (double)r.st.s);
}
__device__ __forceinline__ float row_logp(const RowStats& r, float z_y, float inv_t) {
    return (float)((double)((z_y - r.st.m) * inv_t) - r.ln_s_m);
}

// Zeroes the top-p histograms once per CTA (later rows leave them zeroed); traps if the launch
// gave less dynamic shared memory than `Hist` needs (a launch bug, not bad input).
__device__ __forceinline__ Hist* init_hist(unsigned char* dyn) {
    Hist* h = reinterpret_cast<Hist*>(dyn);
    uint32_t dyn_bytes;
    RLVR_DYNAMIC_SMEM_SIZE(dyn_bytes);
    if (dyn_bytes < sizeof(Hist)) __trap();
    for (uint32_t i = threadIdx.x; i < FINE_WORDS; i += blockDim.x) h->fine[i] = 0;
    for (uint32_t b = threadIdx.x; b < NB; b += blockDim.x) h->cnt[b] = 0, h->mass[b] = 0;
    for (uint32_t i = threadIdx.x; i < NB / 32; i += blockDim.x) h->touched[i] = 0;
    return h;
}

// Per-row settings of the single pass.
struct PassParams {
    float inv_t;    // 1/T
    float top_p;    // in (0, 1) (TOPP only)
    float prune_z;  // (ln((1-p)/V) - margin)·T <= 0 (TOPP only)
};

// The top-p count of a row whose pass gave `r` (not flagged): the fixed-point scale from s, the
// integer target, then the count for the key width.
template <typename E>
__device__ uint32_t branch_count(const RowSplit<E>& rs, const RowStats& st, const PassParams& pp, float c,
                                 uint32_t ncand, Hist& h, Shared& sh) {
    // s > 1/2 (the max contributes 2^{rn(m·c − r)}, |m·c − r| ≤ half an ulp): 2^frac·s < 2^63.
    const int frac = 61 - ilogbf(st.st.s);
    const RowCtx r{st.st.m, c, st.st.m + pp.prune_z, ref(st.st.m, c), __int_as_float((127 + frac) << 23)};
    const unsigned long long target =
        (unsigned long long)ceil((double)pp.top_p * TARGET_SLACK * (double)st.st.s * ldexp(1.0, frac));
    if constexpr (Elem<E>::KEY_BITS == 16) {
        return branch16<E>(rs, target, r, ncand, h, sh);
    } else {
        return branch32(rs, target, r, h, sh);
    }
}

// How much of its next row a top-p CTA asks L2 for as its pass ends (PREFETCH_CHUNK bytes per
// request, by the first PREFETCH_BYTES / PREFETCH_CHUNK threads): the HBM then streams that part
// while the CTA merges, scans its histogram and writes its outputs, work that the one CTA per SM
// of a top-p kernel cannot otherwise overlap (~6 µs a row, ~150 KB of the SM's bandwidth share).
constexpr uint32_t PREFETCH_CHUNK = 16384, PREFETCH_BYTES = 131072;

// Bulk L2 prefetch of the first PREFETCH_BYTES of the row at `next` (nullptr: none) of `bytes`.
__device__ __forceinline__ void prefetch_row(const void* next, uint64_t bytes) {
    if (next == nullptr) return;
    const uintptr_t lo = ((uintptr_t)next + 15) & ~(uintptr_t)15;  // 16-byte aligned inside the row
    const uintptr_t end = ((uintptr_t)next + bytes) & ~(uintptr_t)15;
    const uintptr_t a = lo + (uintptr_t)threadIdx.x * PREFETCH_CHUNK;
    if (threadIdx.x < PREFETCH_BYTES / PREFETCH_CHUNK && a < end) {
        const uint32_t n = (uint32_t)min((uintptr_t)PREFETCH_CHUNK, end - a);
        RLVR_PREFETCH_L2_BULK(reinterpret_cast<const void*>(a), n);
    }
}

// One row: the single pass and block merge, then `on_stats(RowStats)` (every thread; the kernel
// writes its per-row outputs there), then, with TOPP, the exact branch count (0 for a flagged
// row), returned to every thread. Ends with a barrier, so shared state may be reused by the next
// row. With TOPP, `next` (the CTA's next row, or nullptr) is prefetched to L2 after the pass.
template <typename E, bool TOPP, typename OnStats>
__device__ __forceinline__ uint32_t row_stats(const RowSplit<E>& rs, const PassParams& pp, Hist* h, Shared& sh,
                                              const E* next, OnStats&& on_stats) {
    const float inv_t = pp.inv_t, c = inv_t * LOG2E;
    if (threadIdx.x == 0) sh.lb_key = key32(NEG_INF), sh.reread = 0, sh.list_len = 0;
    __syncthreads();
    uint32_t bad, ncand;
    Softmax st = pass1<E, TOPP>(rs, c, pp.prune_z, bad, ncand, h, sh);
    if constexpr (TOPP) prefetch_row(next, (uint64_t)rs.vocab * sizeof(E));
    st = block_merge(st, c, sh.red.sm);
    bad = block_or(bad, sh.red.u);
    const uint32_t flag = bad ? ROW_NON_FINITE : (st.m == NEG_INF ? ROW_ALL_NEG_INF : 0u);
    const double ln_s = log((double)st.s);
    const RowStats r{st, ln_s, ln_s - ((double)st.m * (double)c - (double)ref(st.m, c)) * LN2, flag};
    on_stats(r);
    uint32_t k = 0;
    if constexpr (TOPP) {
        if (flag) {
            clear_level(*h);
            if (Elem<E>::KEY_BITS == 16) {
                mark_touched(*h);
                clear_touched(*h);
            }
        } else {
            k = branch_count<E>(rs, r, pp, c, ncand, *h, sh);
        }
    }
    __syncthreads();  // sh.lb_key and the reductions' scratch are reused by the next row
    return k;
}

}  // namespace rows
}  // namespace rlvr
