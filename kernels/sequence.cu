// The O(N) sequence side of DESIGN.md §4 on the device: sequence log-PPL, the PPL weight (group
// z-score after an IQR filter), GRPO advantages, PPL and position shaping, the fused advantage
// pipeline, and the per-sequence counts behind the aggregation weights.
//
// Layout: N = B·T tokens as the [B, T] view; groups are G consecutive sequences. One CTA of 1024
// threads per sequence (or per group), sequences/groups in a 1-D grid-stride loop, so any B works.
// Traffic: each kernel reads its per-token inputs once and writes its outputs once (the fused
// pipeline reads the mask twice when position shaping is on: once for |o|, once for positions;
// and old_logp once more when PPL shaping is on). All of it is O(N) floats: microseconds next to
// the logits pass.
//
// Precision and order (deterministic, same bits every run): sums of f32 inputs are f64, combined
// by block_sum (per thread in index order, xor butterfly, warps in index order); counts and
// positions are exact integers (ballot/popc scans). The quartiles are taken on values sorted by
// an in-block bitonic network, with the reference's interpolation expression evaluated without
// FMA contraction, so the IQR fence is the reference's to the last bit on the same f64 values.
// Only the order of the f64 sums (log-PPL, μ, σ, reward mean/std) differs from the CPU's token
// order: a relative 1e-16 before the single rounding to f32.
//
// Limit: the PPL weight sorts one group per CTA in shared memory, one value per thread, so
// G <= MAX_GROUP = 1024 for ppl_weight and token_advantages (the Rust wrapper returns an error
// above). grpo_advantages takes any G.
//
// Value checks: every kernel takes a status array (null = no checks) and records the first bad
// index per kind (common.cuh, StatusWord); it never reads or writes out of bounds on bad values.
#include "common.cuh"

using namespace rlvr;

namespace {

constexpr int BLOCK = 1024;
constexpr uint32_t MAX_GROUP = 1024;
constexpr double STD_EPS = 1e-6;
constexpr double SIGMA_FLOOR = 1e-6;
constexpr double IQR_FENCE = 1.5;

__device__ __forceinline__ double nan64() { return __longlong_as_double(0x7ff8000000000000ll); }

// Shared memory of the group kernels (static, 26 KB).
struct GroupShared {
    double d[32];
    uint32_t u[33];
    double sorted[MAX_GROUP];
    double log_ppl[MAX_GROUP];
    float adv[MAX_GROUP];
    float factor[MAX_GROUP];
};

// Settings of the shaping step (mirrors config::Shaping; 0/1 flags for the optional parts).
struct ShapeParams {
    int ppl;
    float alpha, lo, hi;
    int position;
    float beta, kappa;
};

// −Σ m·ℓ / Σ m of one sequence (f64), NaN when Σ m = 0; reports bad mask values and non-finite ℓ.
// Whole block.
__device__ double seq_log_ppl_f64(const float* logp, const float* mask, uint32_t seq_len, uint64_t first,
                                  unsigned long long* status, double* scratch) {
    double count = 0.0, sum = 0.0;
    for (uint32_t t = threadIdx.x; t < seq_len; t += blockDim.x) {
        const float m = mask[t], l = logp[t];
        if (m != 0.f && m != 1.f) report(status, STATUS_MASK, first + t);
        if (!finite(l)) report(status, STATUS_OLD_LOGP, first + t);
        count += (double)m;
        sum += (double)l * (double)m;
    }
    count = block_sum(count, scratch);
    sum = block_sum(sum, scratch);
    return count > 0.0 ? -sum / count : nan64();
}

// Bitonic sort, ascending, of v[0, p) for p a power of two <= blockDim.x. Whole block.
__device__ void bitonic_sort(double* v, uint32_t p) {
    for (uint32_t k = 2; k <= p; k <<= 1) {
        for (uint32_t j = k >> 1; j > 0; j >>= 1) {
            const uint32_t i = threadIdx.x, q = i ^ j;
            if (i < p && q > i) {
                const bool up = (i & k) == 0;
                const double a = v[i], b = v[q];
                if ((a > b) == up) {
                    v[i] = b;
                    v[q] = a;
                }
            }
            __syncthreads();
        }
    }
}

// reference::quantile on n sorted values: s[lo] + (s[hi] - s[lo])·(pos - lo), pos = (n - 1)·q,
// with explicit roundings (no FMA), as the reference evaluates it.
__device__ __forceinline__ double quantile(const double* s, uint32_t n, double q) {
    const double pos = __dmul_rn((double)(n - 1), q);
    const double lo = floor(pos), hi = ceil(pos);
    const double a = s[(uint32_t)lo], b = s[(uint32_t)hi];
    return __dadd_rn(a, __dmul_rn(__dsub_rn(b, a), __dsub_rn(pos, lo)));
}

struct GroupStats {
    double mu, sigma;
    bool any;  // the group has a valid value
};

// μ and σ of the group's IQR-filtered valid values. Thread j < g passes member j's value
// (NaN = none); other threads pass NaN. Whole block; g <= MAX_GROUP.
__device__ GroupStats group_stats(double v, uint32_t g, GroupShared& sh) {
    const bool valid = !isnan(v);
    const uint32_t n = block_sum((uint32_t)valid, sh.u);
    if (n == 0) return GroupStats{0.0, 1.0, false};
    uint32_t p = 1;
    while (p < g) p <<= 1;
    // Missing values sort last (+inf), so the n valid values are s[0, n).
    if (threadIdx.x < p) sh.sorted[threadIdx.x] = valid ? v : (double)POS_INF;
    __syncthreads();
    bitonic_sort(sh.sorted, p);
    const double q1 = quantile(sh.sorted, n, 0.25), q3 = quantile(sh.sorted, n, 0.75);
    const double iqr = __dsub_rn(q3, q1);
    const double lo = __dsub_rn(q1, __dmul_rn(IQR_FENCE, iqr)), hi = __dadd_rn(q3, __dmul_rn(IQR_FENCE, iqr));
    const bool keep = valid && v >= lo && v <= hi;
    const uint32_t kept = block_sum((uint32_t)keep, sh.u);
    // Keep all when the fence keeps none (the authors' fallback; unreachable for finite values).
    const bool use = kept == 0 ? valid : keep;
    const double cnt = (double)(kept == 0 ? n : kept);
    const double mu = block_sum(use ? v : 0.0, sh.d) / cnt;
    const double dv = use ? v - mu : 0.0;
    const double sd = sqrt(block_sum(dv * dv, sh.d) / cnt);
    return GroupStats{mu, sd <= SIGMA_FLOOR ? 1.0 : sd, true};
}

// Mean and unbiased std (0 for one member) of a group's G rewards, f64; reports non-finite ones.
// Members are strided over the threads, so any G works. Whole block.
__device__ void reward_stats(const float* r, uint32_t g, uint64_t first, unsigned long long* status, double* scratch,
                             double& mean, double& std) {
    double s = 0.0;
    for (uint32_t j = threadIdx.x; j < g; j += blockDim.x) {
        if (!finite(r[j])) report(status, STATUS_REWARDS, first + j);
        s += (double)r[j];
    }
    mean = block_sum(s, scratch) / (double)g;
    std = 0.0;
    if (g > 1) {
        double ss = 0.0;
        for (uint32_t j = threadIdx.x; j < g; j += blockDim.x) {
            const double d = (double)r[j] - mean;
            ss += d * d;
        }
        std = sqrt(block_sum(ss, scratch) / (double)(g - 1));
    }
}

__device__ __forceinline__ float advantage(float r, double mean, double std, bool scale_by_std) {
    const double d = (double)r - mean;
    return (float)(scale_by_std ? d / (std + STD_EPS) : d);
}

// clip(1 - α·w, lo, hi) in f64 (explicit roundings, NaN kept), rounded once: cpu::ppl_factor.
__device__ __forceinline__ float ppl_factor(double w, const ShapeParams& sp) {
    const double f = __dsub_rn(1.0, __dmul_rn((double)sp.alpha, w));
    const double lo = (double)sp.lo, hi = (double)sp.hi;
    return (float)(f < lo ? lo : (f > hi ? hi : f));
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// One sequence's shaped advantages (cpu::shape_sequence): counted tokens get
// (A + sign(A)·min(β·σ(κ·(2(t-1) - |o|)/(2|o|)), |A|/2))·factor, the rest A·factor. Positions t
// come from a chunked block scan of the mask. Reports bad mask values. Whole block.
__device__ void shape_sequence(float a, float factor, const float* mask, float* out, uint32_t seq_len,
                               uint64_t first, const ShapeParams& sp, unsigned long long* status, GroupShared& sh) {
    const float plain = a * factor;
    const bool pos = sp.position != 0 && a != 0.f;  // uniform over the block
    uint32_t len = 0;
    if (pos) {
        uint32_t c = 0;
        for (uint32_t t = threadIdx.x; t < seq_len; t += blockDim.x) c += mask[t] != 0.f;
        len = block_sum(c, sh.u);
    }
    // κ·(r - ½) = κ·(2(t-1) - |o|)/(2|o|): an exact integer numerator, as on the CPU.
    const float scale = pos ? sp.kappa / (float)(2u * len) : 0.f;
    const float cap = 0.5f * fabsf(a), sign = a > 0.f ? 1.f : (a < 0.f ? -1.f : a);
    uint32_t base = 0;  // counted tokens before this chunk
    for (uint32_t c0 = 0; c0 < seq_len; c0 += blockDim.x) {
        const uint32_t t = c0 + threadIdx.x;
        const float m = t < seq_len ? mask[t] : 0.f;
        if (t < seq_len && m != 0.f && m != 1.f) report(status, STATUS_MASK, first + t);
        uint32_t before = 0, chunk = 0;
        if (pos) before = block_exclusive_count(t < seq_len && m != 0.f, sh.u, chunk);
        if (t < seq_len) {
            float v = plain;
            if (pos && m != 0.f) {
                const float numerator = (float)(2ll * (long long)(base + before) - (long long)len);
                const float bonus = fminf(sp.beta * sigmoid(scale * numerator), cap);
                v = (a + sign * bonus) * factor;
            }
            out[t] = v;
        }
        base += chunk;
    }
}

}  // namespace

// Entry points (blockDim.x = 1024; any grid; `status` = u64[STATUS_WORDS] zeroed, or null).

// lens[i] = counted tokens (m != 0) of sequence i; totals += (Σ lens, #{i: lens > 0}) by integer
// atomics (exact, order-free; `totals` zeroed before). Reports mask values other than 0/1.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) seq_counts(const float* mask, uint64_t n_seq, uint32_t seq_len,
                                                               uint32_t* lens, BatchTotals* totals,
                                                               unsigned long long* status) {
    __shared__ uint32_t scratch[32];
    for (uint64_t i = blockIdx.x; i < n_seq; i += gridDim.x) {
        const float* m = mask + i * seq_len;
        uint32_t c = 0;
        for (uint32_t t = threadIdx.x; t < seq_len; t += blockDim.x) {
            const float v = m[t];
            c += v != 0.f;
            if (v != 0.f && v != 1.f) report(status, STATUS_MASK, i * seq_len + t);
        }
        c = block_sum(c, scratch);
        if (threadIdx.x == 0) {
            lens[i] = c;
            if (c > 0) {
                atomicAdd(&totals->tokens, (unsigned long long)c);
                atomicAdd(&totals->valid, 1ull);
            }
        }
    }
}

// out[k] = a_k (common.cuh agg_weight) for counted tokens, 0 for the rest; one thread per token.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) agg_weights(const float* mask, uint64_t n_tokens, uint32_t seq_len,
                                                                const uint32_t* lens, const BatchTotals* totals,
                                                                AggParams agg, float* out) {
    const BatchTotals t = *totals;
    const uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n_tokens; k += step) {
        out[k] = mask[k] != 0.f ? agg_weight(agg, lens[k / seq_len], t) : 0.f;
    }
}

// out[i] = log PPL of sequence i (f32), NaN when it has no counted token.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) seq_log_ppl(const float* logp, const float* mask, uint64_t n_seq,
                                                                uint32_t seq_len, float* out,
                                                                unsigned long long* status) {
    __shared__ double scratch[32];
    for (uint64_t i = blockIdx.x; i < n_seq; i += gridDim.x) {
        const uint64_t first = i * seq_len;
        const double v = seq_log_ppl_f64(logp + first, mask + first, seq_len, first, status, scratch);
        if (threadIdx.x == 0) out[i] = (float)v;
    }
}

// out[i] = PPL weight of sequence i from log_ppl (NaN = no PPL); groups of `group` <= 1024.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) ppl_weight(const float* log_ppl, uint64_t n_groups, uint32_t group,
                                                               float* out) {
    __shared__ GroupShared sh;
    for (uint64_t gi = blockIdx.x; gi < n_groups; gi += gridDim.x) {
        const uint64_t base = gi * group;
        const uint32_t j = threadIdx.x;
        const double v = j < group ? (double)log_ppl[base + j] : nan64();
        const GroupStats st = group_stats(v, group, sh);
        if (j < group) out[base + j] = st.any && !isnan(v) ? (float)((v - st.mu) / st.sigma) : 0.f;
    }
}

// out[i] = GRPO advantage of sequence i from rewards (any group size).
extern "C" __global__ void __launch_bounds__(BLOCK, 1) grpo_advantages(const float* rewards, uint64_t n_groups,
                                                                    uint32_t group, int scale_by_std, float* out,
                                                                    unsigned long long* status) {
    __shared__ double scratch[32];
    for (uint64_t gi = blockIdx.x; gi < n_groups; gi += gridDim.x) {
        const uint64_t base = gi * group;
        double mean, std;
        reward_stats(rewards + base, group, base, status, scratch, mean, std);
        for (uint32_t j = threadIdx.x; j < group; j += blockDim.x) {
            out[base + j] = advantage(rewards[base + j], mean, std, scale_by_std != 0);
        }
    }
}

// out[B·T] = shaped per-token advantages from per-sequence adv[B] (and ppl_w[B] when sp.ppl).
extern "C" __global__ void __launch_bounds__(BLOCK, 1) shape_advantages(const float* adv, const float* mask,
                                                                     const float* ppl_w, uint64_t n_seq,
                                                                     uint32_t seq_len, ShapeParams sp, float* out,
                                                                     unsigned long long* status) {
    __shared__ GroupShared sh;
    for (uint64_t i = blockIdx.x; i < n_seq; i += gridDim.x) {
        const uint64_t first = i * seq_len;
        const float factor = sp.ppl ? ppl_factor((double)ppl_w[i], sp) : 1.f;
        shape_sequence(adv[i], factor, mask + first, out + first, seq_len, first, sp, status, sh);
    }
}

// The whole pipeline per group (cpu::token_advantages): rewards -> A; with sp.ppl, log-PPL of
// old_logp (f64, kept in shared memory) -> IQR z-score -> PPL factor; then each sequence shaped.
// group <= 1024.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) token_advantages(const float* rewards, const float* old_logp,
                                                                     const float* mask, uint64_t n_groups,
                                                                     uint32_t group, uint32_t seq_len,
                                                                     int scale_by_std, ShapeParams sp, float* out,
                                                                     unsigned long long* status) {
    __shared__ GroupShared sh;
    const uint32_t j = threadIdx.x;
    for (uint64_t gi = blockIdx.x; gi < n_groups; gi += gridDim.x) {
        const uint64_t seq0 = gi * group, tok0 = seq0 * seq_len;
        double mean, std;
        reward_stats(rewards + seq0, group, seq0, status, sh.d, mean, std);
        if (j < group) {
            sh.adv[j] = advantage(rewards[seq0 + j], mean, std, scale_by_std != 0);
            sh.factor[j] = 1.f;
        }
        if (sp.ppl) {
            for (uint32_t s = 0; s < group; ++s) {
                const uint64_t first = tok0 + (uint64_t)s * seq_len;
                const double lp = seq_log_ppl_f64(old_logp + first, mask + first, seq_len, first, status, sh.d);
                if (j == 0) sh.log_ppl[s] = lp;
            }
            __syncthreads();
            const double v = j < group ? sh.log_ppl[j] : nan64();
            const GroupStats st = group_stats(v, group, sh);
            // A sequence without log-PPL (or a group without any) has w = 0.
            if (j < group) sh.factor[j] = ppl_factor(st.any && !isnan(v) ? (v - st.mu) / st.sigma : 0.0, sp);
        }
        __syncthreads();
        for (uint32_t s = 0; s < group; ++s) {
            const uint64_t first = tok0 + (uint64_t)s * seq_len;
            shape_sequence(sh.adv[s], sh.factor[s], mask + first, out + first, seq_len, first, sp, status, sh);
        }
        __syncthreads();  // sh.adv / sh.factor are rewritten by the next group
    }
}
