// The fused shaped-GRPO loss (DESIGN.md §4-§5): the forward (per-row statistics, per-token loss
// terms, the saved scalars of the backward), the backward to dlogits, and both in one kernel.
// One CTA of ROW_BLOCK = 512 threads per row (two per SM without top-p, one with), rows in a 1-D
// grid-stride loop (any N, 64-bit offsets).
//
// Traffic budget per row of V elements of b bytes (plus O(1) per-token scalars):
// - forward: read V·b once (the single pass of row_stats.cuh: lse, H, top-p histograms) and the
//   target's logit; thread 0 then computes ρ, clip flags, KL, the token loss, a_t, g_t, h_t.
// - backward: read V·b, write V·b (dlogits in the logits' dtype, new buffer or in place). Rows with
//   g = h = 0 (masked, or clipped without KL and entropy bonus) write zeros without reading.
// - fused forward+backward: the forward's pass, then at once the backward's pass over the same
//   row, which the CTA has just read: it runs in reverse order (or forward after a top-p re-read,
//   which itself ran in reverse) so that it starts with the part most likely still in L2, and
//   reads with evict-first loads. In place, the first pass reads coherently (not through the
//   read-only cache: the kernel writes these rows). The re-read hits L2 only for the part of the
//   row read last: with 132 SMs each streaming a 304 KB bf16 row (two per SM without top-p), the
//   static model (scripts/kernel-model.sh) puts HBM traffic at 1 write + 1.6–1.8 reads per
//   element at [4096, 151936]. 1 read + 1 write needs the row held on chip (a cluster's
//   distributed shared memory, DESIGN.md §5): not done yet. The scalar loss is needed only by
//   the caller, so nothing waits for it.
//
// Top-p placement. The exact count usually costs no traffic at all: bf16/f16 rows keep per-key
// counts and f32 rows their candidates' keys in shared memory (row_stats.cuh). Rows with too many
// candidates (flat f32 rows; 16-bit rows whose u16 counters wrapped) re-read themselves,
// tail first, mostly from L2. Moving that into the backward's re-read would make `branch` depend
// on whether (and when) a backward runs, and put the 155 KB histogram into the backward of every
// dtype; so it stays in the forward, as in token_stats.cu, and the fused kernel orders its second
// pass to follow it.
//
// Reduction order (deterministic, same bits every run): row statistics as in token_stats.cu;
// per-token terms in one thread; the loss Σ a_t·total_t as f64 per token, summed by
// sum_chunks_f64 (fixed chunks of CHUNK tokens, each by one CTA with block_sum) then by
// grpo_loss_final (one CTA over the chunk sums): no float atomics, same bits on every device.
#include "row_stats.cuh"

using namespace rlvr;
using namespace rlvr::rows;

namespace {

constexpr float LOG_CLAMP = 20.f;    // the ratio's log clamp and the k3 estimator's u clamp
constexpr float K3_CAP = 10.f;       // the k3 estimator's value cap
constexpr float LN_P_FLOOR = -200.f; // exp(-200) is 0 in f32: keeps -inf logits at p = 0, 0·ln 0 = 0
constexpr uint32_t CLIPPED = 1, DUAL_CLIPPED = 2;
constexpr int KL_OFF = -1, KL_K1 = 0, KL_K2 = 1;  // else k3

// Settings of the per-token loss (mirrors config::GrpoConfig).
struct LossParams {
    float clip_low, clip_high;
    float dual_clip;     // c > 1, or 0 = off
    float kl_coef;       // β_kl (0 when off)
    float entropy_coef;  // c_H
    int kl_estimator;    // KL_OFF, KL_K1, KL_K2, 2 = k3
};

// clamp that keeps NaN (Rust's f32::clamp), so bad rows stay NaN as on the CPU.
__device__ __forceinline__ float clamp_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

struct TokenLoss {
    float ratio, kl, total, dtotal;  // dtotal = ∂(L + β_kl·KL)/∂ℓ
    uint32_t flags;
};

// A KL estimate and its derivative w.r.t. ℓ (cpu::kl_term, branch for branch).
__device__ __forceinline__ void kl_term(float logp, float ref, int est, float& v, float& dv) {
    const float d = logp - ref;
    if (est == KL_K1) {
        v = d, dv = 1.f;
    } else if (est == KL_K2) {
        v = 0.5f * d * d, dv = d;
    } else {
        const float raw = -d, u = clamp_nan(raw, -LOG_CLAMP, LOG_CLAMP);
        const float em1 = expm1f(u);  // e^u - u - 1 as expm1(u) - u: no cancellation for small u
        v = em1 - u;
        if (v > K3_CAP) {
            v = K3_CAP, dv = 0.f;
        } else {
            dv = fabsf(raw) > LOG_CLAMP ? 0.f : -em1;
        }
    }
}

// One token's loss terms in f32 (cpu::token_loss / reference::token_loss, branch for branch).
__device__ TokenLoss token_loss(float logp, float old_logp, float ref_logp, float adv, float entropy,
                                const LossParams& p) {
    const float d = logp - old_logp;
    const float ratio = expf(clamp_nan(d, -LOG_CLAMP, LOG_CLAMP));
    const float dratio = fabsf(d) <= LOG_CLAMP ? ratio : 0.f;  // the clamp is flat outside ±20
    const float clipped_ratio = clamp_nan(ratio, 1.f - p.clip_low, 1.f + p.clip_high);
    const float unclipped = -adv * ratio, clip_branch = -adv * clipped_ratio;
    const bool clipped = clip_branch > unclipped;
    float policy = clipped ? clip_branch : unclipped, dpolicy = clipped ? 0.f : -adv * dratio;
    bool dual = false;
    if (p.dual_clip > 0.f && adv < 0.f) {
        const float cap = -adv * p.dual_clip;
        if (policy > cap) policy = cap, dpolicy = 0.f, dual = true;
    }
    float kl = 0.f, dkl = 0.f, beta = 0.f;
    if (p.kl_estimator != KL_OFF) {
        kl_term(logp, ref_logp, p.kl_estimator, kl, dkl);
        beta = p.kl_coef;
    }
    // Explicit roundings (no FMA contraction): the CPU's expression, and the same bits in every
    // kernel that inlines this function.
    const float total = __fsub_rn(__fadd_rn(policy, __fmul_rn(beta, kl)), __fmul_rn(p.entropy_coef, entropy));
    return TokenLoss{ratio, kl, total, __fadd_rn(dpolicy, __fmul_rn(beta, dkl)),
                     (clipped ? CLIPPED : 0u) | (dual ? DUAL_CLIPPED : 0u)};
}

// Per-token inputs and outputs of the forward (device pointers; optional ones may be null).
struct TokenIo {
    const uint32_t* targets;
    const float *mask, *old_logp, *ref_logp, *adv;
    const uint32_t* lens;  // counted tokens per sequence (seq_counts)
    uint32_t seq_len;
    float *token_loss, *logp, *ratio, *kl;
    uint8_t* clip_flags;
    float *lse, *entropy, *grad_logp, *grad_entropy;
    double* contrib;  // a_t·total_t (f64) for counted tokens, 0 otherwise
    unsigned long long* status;
};

// The backward's per-row constants: with c = grad·(1/T), γ = c·g, β = -c·h,
// dz_j = p_j·(β·(ln p_j + H) - γ) off the target, -γ·expm1(ln p_y) + β·p_y·(ln p_y + H) at it.
struct BackCoef {
    float inv_t, lse, entropy, cg, beta;
    bool zero;  // g = h = 0: the row's gradient is exactly 0
};

__device__ __forceinline__ BackCoef back_coef(float lse, float entropy, float g, float h, float inv_t, float grad) {
    const float c = grad * inv_t;
    return BackCoef{inv_t, lse, entropy, c * g, -c * h, g == 0.f && h == 0.f};
}

// Thread 0's work on a row after its statistics: every per-token output, and (return) the
// backward's constants for a fused pass.
template <typename E>
__device__ BackCoef token_outputs(uint64_t row, const RowStats& r, const RowSplit<E>& rs, uint32_t vocab,
                                  const TokenIo& io, const AggParams& agg, const BatchTotals& tot,
                                  const LossParams& lp, float inv_t, float grad) {
    const float nan = __int_as_float(0x7fffffff);
    if (r.flag & ROW_NON_FINITE) report(io.status, STATUS_ROW_NON_FINITE, row);
    if (r.flag & ROW_ALL_NEG_INF) report(io.status, STATUS_ROW_ALL_NEG_INF, row);
    const uint32_t y = io.targets[row];
    float logp = nan;
    if (y >= vocab) {
        report(io.status, STATUS_TARGET, row);  // never read: the row gets NaN terms
    } else if (!r.flag) {
        logp = row_logp(r, Elem<E>::value_of_bits(rs.bits_at(y)), inv_t);
    }
    const float lse = r.flag ? nan : row_lse(r, inv_t), entropy = r.flag ? nan : row_entropy(r);
    const float m = io.mask[row], old = io.old_logp[row], adv = io.adv[row];
    const float ref = io.ref_logp != nullptr ? io.ref_logp[row] : nan;
    if (m != 0.f && m != 1.f) report(io.status, STATUS_MASK, row);
    if (!finite(old)) report(io.status, STATUS_OLD_LOGP, row);
    if (!finite(adv)) report(io.status, STATUS_ADVANTAGES, row);
    if (io.ref_logp != nullptr && !finite(ref)) report(io.status, STATUS_REF_LOGP, row);
    const TokenLoss t = token_loss(logp, old, ref, adv, entropy, lp);
    const bool counts = m != 0.f;
    const float a = counts ? agg_weight(agg, io.lens[row / io.seq_len], tot) : 0.f;
    const float g = counts ? a * t.dtotal : 0.f, h = counts ? -a * lp.entropy_coef : 0.f;
    io.token_loss[row] = t.total;
    io.logp[row] = logp;
    io.ratio[row] = t.ratio;
    io.clip_flags[row] = (uint8_t)t.flags;
    if (io.kl != nullptr) io.kl[row] = t.kl;
    io.lse[row] = lse;
    io.entropy[row] = entropy;
    io.grad_logp[row] = g;
    io.grad_entropy[row] = h;
    io.contrib[row] = counts ? (double)a * (double)t.total : 0.0;
    return back_coef(lse, entropy, g, h, inv_t, grad);
}

__device__ __forceinline__ float ln_p(const BackCoef& k, float z) {
    // fmaxf returns the non-NaN operand: NaN and -inf give p = 0, a finite product (one FMNMX).
    return fmaxf(__fmaf_rn(z, k.inv_t, -k.lse), LN_P_FLOOR);
}

// dz of one element (the target gets the exact form of δ - p: -expm1(ln p_y), no cancellation).
// Explicit roundings: the fused and the separate backward give the same bits. The vector loop
// computes every element as a non-target (dz_off: no expm1, which costs as much as the rest) and
// then redoes the one target element of the row (dz_target).
__device__ __forceinline__ float dz_off(const BackCoef& k, float z) {
    const float lp = ln_p(k, z), p = ex2(__fmul_rn(lp, LOG2E)), h = __fadd_rn(lp, k.entropy);
    return __fmul_rn(p, __fmaf_rn(k.beta, h, -k.cg));
}
__device__ __forceinline__ float dz_target(const BackCoef& k, float z) {
    const float lp = ln_p(k, z), p = ex2(__fmul_rn(lp, LOG2E)), h = __fadd_rn(lp, k.entropy);
    return __fadd_rn(__fmul_rn(-k.cg, expm1f(lp)), __fmul_rn(__fmul_rn(k.beta, p), h));
}
__device__ __forceinline__ float dz_of(const BackCoef& k, float z, bool target) {
    return target ? dz_target(k, z) : dz_off(k, z);
}

// Element j of row `src` -> dst (scalar path: head/tail elements and rows whose source and
// destination are not equally aligned).
template <typename E>
__device__ __forceinline__ void backward_elem(const E* src, E* dst, uint32_t j, uint32_t y, const BackCoef& k) {
    float v = 0.f;
    if (!k.zero) {
        const uint32_t b = Elem<E>::KEY_BITS == 32
                               ? __float_as_uint(__ldcs(reinterpret_cast<const float*>(src + j)))
                               : (uint32_t)__ldcs(reinterpret_cast<const unsigned short*>(src + j));
        v = dz_of(k, Elem<E>::value_of_bits(b), j == y);
    }
    const uint32_t o = Elem<E>::bits_of_value(v);
    if (Elem<E>::KEY_BITS == 32) {
        __stcs(reinterpret_cast<float*>(dst + j), __uint_as_float(o));
    } else {
        __stcs(reinterpret_cast<unsigned short*>(dst + j), (unsigned short)o);
    }
}

// One row of dlogits from the source row `rs` into `dst` (which may be the source itself: every
// element is read and written by the same thread, read first). Whole block; no barrier.
// Zero rows are written without reading the source.
template <typename E>
__device__ void backward_row(const RowSplit<E>& rs, E* dst, uint32_t y, const BackCoef& k, bool reverse) {
    constexpr int VEC = Elem<E>::VEC, U = 4;
    const uint32_t tid = threadIdx.x, bd = blockDim.x, vocab = rs.vocab;
    if ((((uintptr_t)dst ^ (uintptr_t)rs.row) & 15u) != 0) {  // unequal alignment: no 16-byte stores
        for (uint32_t j = tid; j < vocab; j += bd) backward_elem(rs.row, dst, j, y, k);
        return;
    }
    const uint32_t tail = vocab - rs.tail_start;
    if (tid < rs.head) backward_elem(rs.row, dst, tid, y, k);
    if (tid >= rs.head && tid < rs.head + tail) backward_elem(rs.row, dst, rs.tail_start + tid - rs.head, y, k);
    uint4* out = reinterpret_cast<uint4*>(dst + rs.head);
    const uint32_t step = U * bd, iters = (rs.nvec + step - 1) / step;
    // The vector (and lane) holding the target, if it is in the aligned part.
    const uint32_t yv = y >= rs.head && y < rs.tail_start ? (y - rs.head) / VEC : 0xffffffffu;
    const int ylane = (int)((y - rs.head) % VEC);
    for (uint32_t it = 0; it < iters; ++it) {
        const uint32_t base = (reverse ? iters - 1 - it : it) * step;
        uint4 r[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint32_t j = base + (uint32_t)u * bd + tid;
            r[u] = (!k.zero && j < rs.nvec) ? __ldcs(rs.vecs + j) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint32_t j = base + (uint32_t)u * bd + tid;
            if (j >= rs.nvec) continue;
            uint4 o = make_uint4(0, 0, 0, 0);
            if (!k.zero) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float z = Elem<E>::value_of_bits(vec_bits<E>(r[u], i));
                    vec_set<E>(o, i, Elem<E>::bits_of_value(dz_off(k, z)));
                }
                if (j == yv) {  // once per row
                    const float z = Elem<E>::value_of_bits(vec_bits<E>(r[u], ylane));
                    vec_set<E>(o, ylane, Elem<E>::bits_of_value(dz_target(k, z)));
                }
            }
            __stcs(out + j, o);
        }
    }
}

// Forward (BWD = false) or fused forward+backward over rows.
template <typename E, bool TOPP, bool BWD>
__device__ void grpo_rows(const E* logits, E* dlogits, uint64_t n_rows, uint32_t vocab, const TokenIo& io,
                          const BatchTotals* totals, const AggParams& agg, const LossParams& lp,
                          const PassParams& pp, float grad_value, const float* grad_ptr, uint32_t* branch) {
    __shared__ Shared sh;
    __shared__ BackCoef coef;
    RLVR_DYNAMIC_SHARED(unsigned char, dyn);
    Hist* h = nullptr;
    if constexpr (TOPP) h = init_hist(dyn);
    const BatchTotals tot = *totals;
    const float grad = BWD ? grad_value * (grad_ptr != nullptr ? *grad_ptr : 1.f) : 0.f;
    // In place (fused only): the rows are read from dlogits, which this kernel writes, so they
    // are read coherently (RowSplit's read_only = false), never through the read-only cache.
    const bool in_place = logits == nullptr;
    const E* src = in_place ? dlogits : logits;
    for (uint64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
        const RowSplit<E> rs(src, row, vocab, !in_place);
        if (threadIdx.x == 0) {  // thread 0's per-token inputs: in L2 by the time the pass ends
            RLVR_PREFETCH_L2(io.targets + row);
            RLVR_PREFETCH_L2(io.mask + row);
            RLVR_PREFETCH_L2(io.old_logp + row);
            RLVR_PREFETCH_L2(io.adv + row);
            if (io.ref_logp != nullptr) RLVR_PREFETCH_L2(io.ref_logp + row);
        }
        // The forward kernel with top-p prefetches its next row during its per-row work; the fused
        // one does not: its backward's re-read needs that L2 space.
        const E* next = !BWD && row + gridDim.x < n_rows ? src + (row + gridDim.x) * (uint64_t)vocab : nullptr;
        const uint32_t k = row_stats<E, TOPP>(rs, pp, h, sh, next, [&](const RowStats& r) {
            if (threadIdx.x == 0) coef = token_outputs<E>(row, r, rs, vocab, io, agg, tot, lp, pp.inv_t, grad);
        });
        if (TOPP && threadIdx.x == 0) branch[row] = k;
        if constexpr (BWD) {
            // row_stats ended with a barrier: `coef` is visible to every thread.
            // After a top-p re-read (in reverse) the row's head is the most recently read part.
            const BackCoef c = coef;
            backward_row(rs, dlogits + row * (uint64_t)vocab, io.targets[row], c, sh.reread == 0);
            __syncthreads();  // `coef` is rewritten for the next row
        }
    }
}

}  // namespace

// Entry points. blockDim.x = ROW_BLOCK (512). Arguments (same order for every variant):
//   logits [n_rows·vocab]; dlogits [n_rows·vocab] (fused only, may equal logits; else null);
//   n_rows, vocab; per-token inputs targets, mask, old_logp, ref_logp (or null), advantages;
//   lens [B] and totals from seq_counts (sequence.cu), seq_len; agg, loss, pass settings;
//   grad_value, grad_ptr (fused: dlogits are scaled by grad_value·*grad_ptr, grad_ptr may be null);
//   outputs token_loss, logp, ratio, clip_flags (u8), kl (or null), lse, entropy, grad_logp,
//   grad_entropy, contrib (f64), branch (top-p variants; else null); status (u64[8] or null).
//   Top-p variants need sizeof(Hist) = 155904 bytes of dynamic shared memory.
#define RLVR_GRPO_ENTRY(KNAME, E, TOPP, BWD)                                                                          \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, TOPP ? 1 : 2) KNAME(                                      \
        const E* logits, E* dlogits, uint64_t n_rows, uint32_t vocab, const uint32_t* targets, const float* mask,    \
        const float* old_logp, const float* ref_logp, const float* adv, const uint32_t* lens,                        \
        const BatchTotals* totals, uint32_t seq_len, AggParams agg, LossParams lp, PassParams pp, float grad_value,  \
        const float* grad_ptr, float* token_loss, float* logp, float* ratio, uint8_t* clip_flags, float* kl,         \
        float* lse, float* entropy, float* grad_logp, float* grad_entropy, double* contrib, uint32_t* branch,        \
        unsigned long long* status) {                                                                                 \
        const TokenIo io{targets, mask,      old_logp, ref_logp, adv,       lens,         seq_len,      token_loss,  \
                         logp,    ratio,     kl,       clip_flags, lse,     entropy,      grad_logp,    grad_entropy, \
                         contrib, status};                                                                            \
        grpo_rows<E, TOPP, BWD>(logits, dlogits, n_rows, vocab, io, totals, agg, lp, pp, grad_value, grad_ptr,       \
                                branch);                                                                              \
    }
#define RLVR_GRPO(NAME, E)                                                                                            \
    RLVR_GRPO_ENTRY(grpo_forward_##NAME, E, false, false)                                                             \
    RLVR_GRPO_ENTRY(grpo_forward_topp_##NAME, E, true, false)                                                         \
    RLVR_GRPO_ENTRY(grpo_fused_##NAME, E, false, true)                                                                \
    RLVR_GRPO_ENTRY(grpo_fused_topp_##NAME, E, true, true)                                                            \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, 2)                                                        \
        grpo_backward_##NAME(const E* logits, E* dlogits, uint64_t n_rows, uint32_t vocab, const uint32_t* targets,  \
                             const float* lse, const float* entropy, const float* grad_logp,                         \
                             const float* grad_entropy, float inv_t, float grad_value, const float* grad_ptr) {      \
        const float grad = grad_value * (grad_ptr != nullptr ? *grad_ptr : 1.f);                                     \
        const bool in_place = logits == nullptr; /* then read coherently: the rows are written */                     \
        const E* src = in_place ? dlogits : logits;                                                                   \
        for (uint64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {                                             \
            const BackCoef k = back_coef(lse[row], entropy[row], grad_logp[row], grad_entropy[row], inv_t, grad);    \
            backward_row(RowSplit<E>(src, row, vocab, !in_place), dlogits + row * (uint64_t)vocab, targets[row], k,  \
                         false);                                                                                      \
        }                                                                                                             \
    }

RLVR_GRPO(f32, float)
RLVR_GRPO(bf16, __nv_bfloat16)
RLVR_GRPO(f16, __half)

// Chunk sums of f64 values: out[c] = Σ in[c·chunk, min((c+1)·chunk, n)) by one CTA (block_sum),
// chunks in a grid-stride loop; the chunking depends on n only, so the sum is device-independent.
extern "C" __global__ void __launch_bounds__(BLOCK, 1) sum_chunks_f64(const double* in, uint64_t n, uint64_t chunk,
                                                                      double* out) {
    __shared__ double scratch[32];
    const uint64_t n_chunks = (n + chunk - 1) / chunk;
    for (uint64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const uint64_t end = min(n, (c + 1) * chunk);
        double s = 0.0;
        for (uint64_t k = c * chunk + threadIdx.x; k < end; k += blockDim.x) s += in[k];
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) out[c] = s;
    }
}

// loss[0] = (f32) Σ partial[0, n) in one CTA (launch with one block).
extern "C" __global__ void __launch_bounds__(BLOCK, 1) grpo_loss_final(const double* partial, uint64_t n, float* loss) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (uint64_t k = threadIdx.x; k < n; k += blockDim.x) s += partial[k];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) loss[0] = (float)s;
}
