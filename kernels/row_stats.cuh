// Per-row softmax statistics and the exact top-p count, shared by every kernel that reads rows of
// logits once (token_stats.cu, grpo.cu): the single pass (online max/sum/weighted sum, non-finite
// flag, top-p histograms with pruning), the block merge, and the radix refinement of the branch
// count. The traffic budget and reduction order are those stated in token_stats.cu's header.
//
// Everything here is called by a whole CTA of BLOCK threads (barriers inside). `row_stats` is the
// driver: one call per row; the kernel decides what to write.
#pragma once

#include "common.cuh"

namespace rlvr {
namespace rows {
constexpr int BLOCK = 1024;
constexpr int COARSE_BITS = 11;
constexpr int NB = 1 << COARSE_BITS;   // coarse buckets
constexpr int FINE_WORDS = 32768;      // 65536 u16 counters (16-bit keys) or 32768 u32 keys (f32 list)
constexpr uint32_t LIST_CAP = FINE_WORDS;
constexpr uint32_t ROW_NON_FINITE = 1, ROW_ALL_NEG_INF = 2, ROW_BAD_TARGET = 4;
// The scans look for p·(1 - 2^-19) rather than p: the kept (unpruned) mass exceeds p by
// (1-p)·kept/V at least, which for p near 1 and few kept tokens is near the ~1e-6 rounding of
// the histogram masses. With this slack the scan always crosses, so the result never depends on
// which tokens the timing-dependent pruning kept; it stays inside the band p·(1 ± 1e-5).
constexpr double TARGET_SLACK = 1.0 - 1.0 / 524288.0;

// Dynamic shared memory of the top-p kernels (155648 bytes; one CTA per SM).
struct Hist {
    unsigned long long mass[NB];
    uint32_t cnt[NB];
    uint32_t fine[FINE_WORDS];
};

struct Crossing {
    int idx;               // bucket where the cumulative mass reaches the target; -1: none
    uint32_t count_above;  // elements in buckets above it
    double mass_above;     // their mass
    uint32_t total_count;  // elements in all buckets
};

struct Shared {
    union {
        Softmax sm[32];
        uint32_t u[32];
    } red;
    double wmass[32];
    uint32_t wcnt[32];
    int win;
    Crossing res;
    uint32_t lb_key;    // key32 of a lower bound of the row max (for pruning)
    uint32_t list_len;  // f32 gather list length
    uint32_t reread;    // the row's top-p refinement re-read it (in reverse order); reset per row
};

// The cumulative mass of buckets visited top-down (bucket n-1 first) reaches `target` first at
// the returned bucket. Each thread scans a contiguous run of items; runs are combined by warp and
// block scans in a fixed order; the first crossing item wins by atomicMin (order-independent).
// Must be called by the whole block (contains barriers).
template <typename MassF, typename CountF>
__device__ Crossing block_crossing(int n, double target, MassF mass_of, CountF count_of, Shared& sh) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int per = (n + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = min(n, tid * per), hi = min(n, lo + per);
    double msum = 0.0;
    uint32_t csum = 0;
    for (int i = lo; i < hi; ++i) {
        msum += mass_of(n - 1 - i);
        csum += count_of(n - 1 - i);
    }
    double mi = msum;
    uint32_t ci = csum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double mo = __shfl_up_sync(FULL_MASK, mi, o);
        const uint32_t co = __shfl_up_sync(FULL_MASK, ci, o);
        if (lane >= o) mi += mo, ci += co;
    }
    double mex = __shfl_up_sync(FULL_MASK, mi, 1);
    uint32_t cex = __shfl_up_sync(FULL_MASK, ci, 1);
    if (lane == 0) mex = 0.0, cex = 0;
    if (lane == 31) sh.wmass[warp] = mi, sh.wcnt[warp] = ci;
    if (tid == 0) sh.win = INT_MAX;
    __syncthreads();
    if (warp == 0) {
        double m = lane < nw ? sh.wmass[lane] : 0.0;
        uint32_t c = lane < nw ? sh.wcnt[lane] : 0u;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double mo = __shfl_up_sync(FULL_MASK, m, o);
            const uint32_t co = __shfl_up_sync(FULL_MASK, c, o);
            if (lane >= o) m += mo, c += co;
        }
        double me = __shfl_up_sync(FULL_MASK, m, 1);
        uint32_t ce = __shfl_up_sync(FULL_MASK, c, 1);
        if (lane == 0) me = 0.0, ce = 0;
        if (lane == 31) sh.res.total_count = c;
        __syncwarp();
        if (lane < nw) sh.wmass[lane] = me, sh.wcnt[lane] = ce;
    }
    __syncthreads();
    const double base = sh.wmass[warp] + mex;
    const uint32_t cbase = sh.wcnt[warp] + cex;
    double run = base;
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

// Probability e^{x - lse} of value z, with x - lse = (z - m)/T - ln S (no large common offset).
__device__ __forceinline__ double prob_of(float z, float m, float inv_t, float ln_s) {
    return (double)ex2(((z - m) * inv_t - ln_s) * LOG2E);
}

// The count at an exact level, where every element of a bucket has the same probability p:
// ties are interchangeable, so k = above + ceil((target - mass_above) / p), at most the ties.
__device__ __forceinline__ uint32_t exact_count(const Crossing& c, double target, uint32_t ties, double p) {
    if (c.idx < 0) return c.total_count;
    double need = ceil((target - c.mass_above) / p);
    need = fmin(fmax(need, 1.0), (double)ties);
    return c.count_above + (uint32_t)need;
}

// Adds element (key, z) to the level histogram of keys with (key >> prefix_shift) == prefix,
// bucketed by the bits above digit_shift. EXACT levels (digit_shift = 0: one value per bucket)
// count only; others also add mass relative to the bucket's upper edge.
template <typename E, bool EXACT>
__device__ __forceinline__ void level_add(uint32_t key, float z, uint32_t prefix, int prefix_shift, int digit_shift,
                                          uint32_t digit_mask, float c, float two_frac, Hist& h) {
    if (!(z > NEG_INF) || (key >> prefix_shift) != prefix) return;
    const uint32_t d = (key >> digit_shift) & digit_mask;
    atomicAdd(&h.cnt[d], 1u);
    if (!EXACT) {
        const float edge = Elem<E>::value_of_key(key | ((1u << digit_shift) - 1u));
        atomicAdd(&h.mass[d], (unsigned long long)__float2ull_rn(ex2((z - edge) * c) * two_frac));
    }
}

template <typename E, bool EXACT>
__device__ void level_pass_row(const RowSplit<E>& rs, uint32_t prefix, int prefix_shift, int digit_shift,
                               uint32_t digit_mask, float c, float two_frac, Hist& h) {
    for_each_vec<2>(rs, true, [&](const uint4& r) {
#pragma unroll
        for (int i = 0; i < Elem<E>::VEC; ++i) {
            const uint32_t b = vec_bits<E>(r, i);
            level_add<E, EXACT>(Elem<E>::key_of_bits(b), Elem<E>::value_of_bits(b), prefix, prefix_shift, digit_shift,
                                digit_mask, c, two_frac, h);
        }
    });
}

template <bool EXACT>
__device__ void level_pass_list(uint32_t len, uint32_t prefix, int prefix_shift, int digit_shift, uint32_t digit_mask,
                                float c, float two_frac, Hist& h) {
    for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
        const uint32_t k = h.fine[i];
        level_add<float, EXACT>(k, from_key32(k), prefix, prefix_shift, digit_shift, digit_mask, c, two_frac, h);
    }
}

// Zeroes the coarse histogram; with `fine16`, also the u16 counters of every touched bucket
// (only those: a row touches few buckets, and the rest stayed zero). Barrier before and after.
__device__ inline void clear_hist(Hist& h, bool fine16) {
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < NB; b += blockDim.x) {
        if (fine16 && h.cnt[b] != 0) {
            uint4* f = reinterpret_cast<uint4*>(h.fine + b * 16);
#pragma unroll
            for (int q = 0; q < 4; ++q) f[q] = make_uint4(0, 0, 0, 0);
        }
        h.cnt[b] = 0;
        h.mass[b] = 0;
    }
    __syncthreads();
}

// Per-row constants shared by the top-p steps.
struct RowCtx {
    float m, inv_t, c, ln_s, two_frac;
    int frac;
};

__device__ __forceinline__ double fixed_to_double(unsigned long long f, int frac) { return ldexp((double)f, -frac); }

// Coarse level: buckets are the key's top 11 bits.
template <typename E>
__device__ Crossing coarse_crossing(double target, const RowCtx& r, Hist& h, Shared& sh) {
    constexpr int SHIFT = Elem<E>::KEY_BITS - COARSE_BITS;
    return block_crossing(
        NB, target,
        [&](int b) {
            const unsigned long long f = h.mass[b];
            if (f == 0) return 0.0;
            const float edge = Elem<E>::value_of_key(((uint32_t)b << SHIFT) | ((1u << SHIFT) - 1u));
            return fixed_to_double(f, r.frac) * prob_of(edge, r.m, r.inv_t, r.ln_s);
        },
        [&](int b) { return h.cnt[b]; }, sh);
}

// Exact level over `n` values whose keys are key_base + j, counts from cnt_of(j).
template <typename E, typename CountF>
__device__ uint32_t exact_level(int n, uint32_t key_base, double target, const RowCtx& r, CountF cnt_of,
                                Shared& sh) {
    auto p_of = [&](int j) { return prob_of(Elem<E>::value_of_key(key_base + (uint32_t)j), r.m, r.inv_t, r.ln_s); };
    const Crossing c = block_crossing(
        n, target, [&](int j) { return (double)cnt_of(j) * p_of(j); }, cnt_of, sh);
    return c.idx < 0 ? c.total_count : exact_count(c, target, cnt_of(c.idx), p_of(c.idx));
}

// Branch count of a 16-bit row after pass 1 (coarse histogram + u16 count per key). Leaves the
// histograms zeroed.
template <typename E>
__device__ uint32_t branch16(const RowSplit<E>& rs, double target, const RowCtx& r, Hist& h, Shared& sh) {
    const Crossing c1 = coarse_crossing<E>(target, r, h, sh);
    if (c1.idx < 0) {
        clear_hist(h, true);
        return c1.total_count;
    }
    const uint32_t b1 = (uint32_t)c1.idx, n1 = h.cnt[b1];
    uint32_t result;
    if (n1 == 1) {
        result = c1.count_above + 1;
    } else if (n1 < 65536) {  // no u16 counter of this bucket can have wrapped
        auto fine = [&](int j) {
            const uint32_t k = (b1 << 5) | (uint32_t)j;
            return (h.fine[k >> 1] >> ((k & 1) << 4)) & 0xffffu;
        };
        result = c1.count_above + exact_level<E>(32, b1 << 5, target - c1.mass_above, r, fine, sh);
    } else {  // >= 65536 tokens in one bucket: count its 32 values exactly by re-reading the row
        if (threadIdx.x == 0) sh.reread = 1;
        clear_hist(h, true);
        level_pass_row<E, true>(rs, b1, 5, 0, 31, r.c, r.two_frac, h);
        __syncthreads();
        result = c1.count_above +
                 exact_level<E>(32, b1 << 5, target - c1.mass_above, r, [&](int j) { return h.cnt[j]; }, sh);
    }
    clear_hist(h, true);
    return result;
}

// Appends the keys of the row with (key >> 21) == b1 to the shared list (warp-aggregated).
__device__ inline void gather_f32(const RowSplit<float>& rs, uint32_t b1, Hist& h, Shared& sh) {
    const uint32_t lane = threadIdx.x & 31;
    for_each_vec<2>(rs, true, [&](const uint4& r) {
        uint32_t k[4], mine = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t b = vec_bits<float>(r, i);
            k[i] = key32(__uint_as_float(b));
            const bool hit = (k[i] >> 21) == b1 && __uint_as_float(b) > NEG_INF;
            mine += hit;
            k[i] = hit ? k[i] : 0u;  // key 0 is a -NaN pattern: never in a crossing bucket
        }
        uint32_t incl = mine;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t t = __shfl_up_sync(FULL_MASK, incl, o);
            if (lane >= o) incl += t;
        }
        const uint32_t total = __shfl_sync(FULL_MASK, incl, 31);
        uint32_t base = 0;
        if (lane == 31 && total != 0) base = atomicAdd(&sh.list_len, total);
        base = __shfl_sync(FULL_MASK, base, 31);
        uint32_t pos = base + incl - mine;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (k[i] != 0u) {
                if (pos < LIST_CAP) h.fine[pos] = k[i];
                ++pos;
            }
        }
    });
}

// Branch count of an f32 row after pass 1: coarse (bits 31..21), then bits 20..10 with mass,
// then bits 9..0 exactly, over the gathered keys (or the row, if they do not fit).
__device__ inline uint32_t branch32(const RowSplit<float>& rs, double target, const RowCtx& r, Hist& h, Shared& sh) {
    const Crossing c1 = coarse_crossing<float>(target, r, h, sh);
    if (c1.idx < 0 || h.cnt[c1.idx] == 1) {
        const uint32_t res = c1.idx < 0 ? c1.total_count : c1.count_above + 1;
        clear_hist(h, false);
        return res;
    }
    const uint32_t b1 = (uint32_t)c1.idx, n1 = h.cnt[b1];
    if (threadIdx.x == 0) sh.list_len = 0, sh.reread = 1;
    clear_hist(h, false);
    bool list = n1 <= LIST_CAP;
    if (list) {
        gather_f32(rs, b1, h, sh);
        __syncthreads();
        list = sh.list_len <= LIST_CAP;  // pruned tokens of the bucket may come on top of n1
    }
    const uint32_t len = sh.list_len;
    if (list) {
        level_pass_list<false>(len, b1, 21, 10, 0x7ff, r.c, r.two_frac, h);
    } else {
        level_pass_row<float, false>(rs, b1, 21, 10, 0x7ff, r.c, r.two_frac, h);
    }
    __syncthreads();
    const double t2 = target - c1.mass_above;
    const Crossing c2 = block_crossing(
        NB, t2,
        [&](int d) {
            const unsigned long long f = h.mass[d];
            if (f == 0) return 0.0;
            const float edge = from_key32((b1 << 21) | ((uint32_t)d << 10) | 0x3ffu);
            return fixed_to_double(f, r.frac) * prob_of(edge, r.m, r.inv_t, r.ln_s);
        },
        [&](int d) { return h.cnt[d]; }, sh);
    uint32_t result;
    if (c2.idx < 0 || h.cnt[c2.idx] == 1) {
        result = c1.count_above + (c2.idx < 0 ? c2.total_count : c2.count_above + 1);
    } else {
        const uint32_t prefix = (b1 << 11) | (uint32_t)c2.idx;
        clear_hist(h, false);
        if (list) {
            level_pass_list<true>(len, prefix, 10, 0, 0x3ff, r.c, r.two_frac, h);
        } else {
            level_pass_row<float, true>(rs, prefix, 10, 0, 0x3ff, r.c, r.two_frac, h);
        }
        __syncthreads();
        result = c1.count_above + c2.count_above +
                 exact_level<float>(1024, prefix << 10, t2 - c2.mass_above, r, [&](int j) { return h.cnt[j]; }, sh);
    }
    clear_hist(h, false);
    return result;
}

// Pass 1 over a row: online softmax state, non-finite flag and (TOPP) the histograms.
template <typename E, bool TOPP>
__device__ Softmax pass1(const RowSplit<E>& rs, float inv_t, float c, float prune_z, float two_frac, uint32_t& bad,
                         Hist* h, Shared& sh) {
    constexpr int VEC = Elem<E>::VEC;
    constexpr int SHIFT = Elem<E>::KEY_BITS - COARSE_BITS;
    float m = NEG_INF, s = 0.f, w = 0.f;
    uint32_t nonfinite = 0;
    for_each_vec<TOPP ? 2 : 4>(rs, false, [&](const uint4& r) {
        float v[VEC];
        float vmax = NEG_INF;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            v[i] = Elem<E>::value_of_bits(vec_bits<E>(r, i));
            vmax = fmaxf(vmax, v[i]);
            nonfinite |= !(v[i] < POS_INF);  // NaN or +inf
        }
        if (vmax > m) {
            if (s > 0.f) {
                const float f = ex2((m - vmax) * c), d = (m - vmax) * inv_t;
                w = (w + d * s) * f;
                s *= f;
            }
            m = vmax;
        }
        if (m > NEG_INF) {  // an all -inf vector adds nothing (and -inf - -inf is NaN)
            float vs = 0.f, vw = 0.f;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float e = ex2((v[i] - m) * c);
                vs += e;
                vw += e > 0.f ? (v[i] - m) * inv_t * e : 0.f;
            }
            s += vs;
            w += vw;
        }
        if constexpr (TOPP) {
            // Share the running max so that every thread prunes against the block's best bound.
            const uint32_t wk = __reduce_max_sync(FULL_MASK, key32(m));
            uint32_t lb = 0;
            if ((threadIdx.x & 31) == 0) lb = max(atomicMax(&sh.lb_key, wk), wk);
            const float thr = fmaxf(m, from_key32(__shfl_sync(FULL_MASK, lb, 0))) + prune_z;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (v[i] >= thr && v[i] > NEG_INF) {
                    const uint32_t key = Elem<E>::key_of_bits(vec_bits<E>(r, i));
                    const uint32_t b = key >> SHIFT;
                    const float edge = Elem<E>::value_of_key(key | ((1u << SHIFT) - 1u));
                    atomicAdd(&h->cnt[b], 1u);
                    atomicAdd(&h->mass[b], (unsigned long long)__float2ull_rn(ex2((v[i] - edge) * c) * two_frac));
                    if constexpr (Elem<E>::KEY_BITS == 16) atomicAdd(&h->fine[key >> 1], 1u << ((key & 1u) << 4));
                }
            }
        }
    });
    bad = nonfinite;
    return Softmax{m, s, w};
}

// What one row's single pass gives every thread of the block.
struct RowStats {
    Softmax st;     // merged over the block: max m (z units), S, W relative to m
    double ln_s;    // ln S
    uint32_t flag;  // ROW_NON_FINITE or ROW_ALL_NEG_INF (then the values are meaningless), else 0
};

// lse = m/T + ln S, H = ln S - W/S, logp = (z_y - m)/T - ln S: each a difference of two terms of
// the row's scale, so they are formed in f64 and rounded once.
__device__ __forceinline__ float row_lse(const RowStats& r, float inv_t) {
    return (float)((double)(r.st.m * inv_t) + r.ln_s);
}
__device__ __forceinline__ float row_entropy(const RowStats& r) {
    return (float)(r.ln_s - (double)r.st.w / (double)r.st.s);
}
__device__ __forceinline__ float row_logp(const RowStats& r, float z_y, float inv_t) {
    return (float)((double)((z_y - r.st.m) * inv_t) - r.ln_s);
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
    return h;
}

// Per-row settings of the single pass.
struct PassParams {
    float inv_t;    // 1/T
    float top_p;    // in (0, 1) (TOPP only)
    float prune_z;  // (ln((1-p)/V) - margin)·T <= 0 (TOPP only)
    int frac;       // fixed-point bits of the mass histogram (TOPP only)
};

// One row: the single pass and block merge, then `on_stats(RowStats)` (every thread; the kernel
// writes its per-row outputs there), then, with TOPP, the exact branch count (0 for a flagged
// row), returned to every thread. Ends with a barrier, so shared state may be reused by the next
// row.
template <typename E, bool TOPP, typename OnStats>
__device__ __forceinline__ uint32_t row_stats(const RowSplit<E>& rs, const PassParams& pp, Hist* h, Shared& sh,
                                              OnStats&& on_stats) {
    const float inv_t = pp.inv_t, c = inv_t * LOG2E;
    const float two_frac = __int_as_float((127 + pp.frac) << 23);  // 2^frac, 0 <= frac <= 62
    if (threadIdx.x == 0) sh.lb_key = key32(NEG_INF), sh.reread = 0;
    __syncthreads();
    uint32_t bad;
    Softmax st = pass1<E, TOPP>(rs, inv_t, c, pp.prune_z, two_frac, bad, h, sh);
    st = block_merge(st, c, inv_t, sh.red.sm);
    bad = block_or(bad, sh.red.u);
    const uint32_t flag = bad ? ROW_NON_FINITE : (st.m == NEG_INF ? ROW_ALL_NEG_INF : 0u);
    const RowStats r{st, log((double)st.s), flag};
    on_stats(r);
    uint32_t k = 0;
    if constexpr (TOPP) {
        if (flag) {
            clear_hist(*h, Elem<E>::KEY_BITS == 16);
        } else {
            const RowCtx ctx{st.m, inv_t, c, (float)r.ln_s, two_frac, pp.frac};
            const double target = (double)pp.top_p * TARGET_SLACK;
            if constexpr (Elem<E>::KEY_BITS == 16) {
                k = branch16<E>(rs, target, ctx, *h, sh);
            } else {
                k = branch32(rs, target, ctx, *h, sh);
            }
        }
    }
    __syncthreads();  // sh.lb_key and the reductions' scratch are reused by the next row
    return k;
}

}  // namespace rows
}  // namespace rlvr
