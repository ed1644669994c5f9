// Shared device code for every kernel of the crate: element decoding, 16-byte row reading with a
// uniform trip count, order-preserving keys, and warp/block reductions in a fixed order.
//
// Determinism: every reduction here combines values in an order fixed by thread and warp index
// (xor butterflies inside a warp, then warp 0 over the warps in index order), never by arrival
// time, so a kernel built on them returns the same bits on every run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// The only lines that differ between the nvcc build and the host build of the executed-kernel
// suite (scripts/kernel-sim.sh compiles these files with g++ and -DRLVR_KERNEL_SIM against
// sim/cuda_sim.h): inline PTX has no host twin, and the dynamic shared memory of a simulated block
// is a buffer of the launch's exact size rather than an `extern __shared__` array.
//   RLVR_EX2(y, x)              y = 2^x by ex2.approx.ftz.f32 (host: exp2f, subnormals flushed)
//   RLVR_DYNAMIC_SMEM_SIZE(v)   v = the launch's dynamic shared memory in bytes
//   RLVR_DYNAMIC_SHARED(T, p)   declares `p`, the block's dynamic shared memory as T[]
//   RLVR_PREFETCH_L2(p)         brings the line of global address p into L2 (host: nothing; a hint
//                               only, so the simulator loses no check by skipping it)
//   RLVR_PREFETCH_L2_BULK(p, n) brings n bytes from p (both multiples of 16) into L2 with one
//                               bulk (TMA) prefetch, sm_90 (host: nothing, as above)
#ifdef RLVR_KERNEL_SIM
#define RLVR_EX2(y, x) ((y) = rlvr_sim::ex2_approx(x))
#define RLVR_DYNAMIC_SMEM_SIZE(v) ((v) = rlvr_sim::dynamic_smem_size())
#define RLVR_DYNAMIC_SHARED(T, p) T* const p = static_cast<T*>(rlvr_sim::dynamic_shared())
#define RLVR_PREFETCH_L2(p) ((void)(p))
#define RLVR_PREFETCH_L2_BULK(p, n) ((void)(p), (void)(n))
#else
#define RLVR_EX2(y, x) asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x))
#define RLVR_DYNAMIC_SMEM_SIZE(v) asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v))
#define RLVR_DYNAMIC_SHARED(T, p) extern __shared__ __align__(16) T p[]
#define RLVR_PREFETCH_L2(p) asm volatile("prefetch.global.L2 [%0];" ::"l"(p))
#define RLVR_PREFETCH_L2_BULK(p, n)                                                                                 \
    asm volatile("{\n\t.reg .u64 g;\n\tcvta.to.global.u64 g, %0;\n\tcp.async.bulk.prefetch.L2.global [g], %1;\n\t}" ::"l"(p), \
                 "r"(n)                                                                                               \
                 : "memory")
#endif

namespace rlvr {

constexpr unsigned FULL_MASK = 0xffffffffu;
// Threads per CTA of every row kernel. Without top-p two CTAs per SM (__launch_bounds__(ROW_BLOCK,
// 2): at most 64 registers), so that one CTA's per-row work overlaps the other's streaming; with
// top-p one (its histogram fills the SM's shared memory; up to 128 registers). 512 threads with
// four 16-byte loads each keep 32 KiB in flight per CTA, past what HBM latency × the SM's share
// of bandwidth needs (~15 KiB). src/cuda/context.rs launches with the same number.
constexpr int ROW_BLOCK = 512;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float NEG_INF = -__builtin_huge_valf();
constexpr float POS_INF = __builtin_huge_valf();

// 2^x by the special-function unit (one MUFU.EX2, relative error ~2^-22, flushes tiny results
// to 0). Deterministic: the same input gives the same bits on every run of the same chip.
__device__ __forceinline__ float ex2(float x) {
    float y;
    RLVR_EX2(y, x);
    return y;
}

// Order-preserving key of an f32: unsigned comparison of keys = numeric order of the values
// (-inf < finite < +inf; NaNs sort outside, -NaN below -inf, +NaN above +inf; -0 just below +0).
__device__ __forceinline__ uint32_t key32(float v) {
    uint32_t b = __float_as_uint(v);
    return b ^ ((b & 0x80000000u) ? 0xffffffffu : 0x80000000u);
}
__device__ __forceinline__ float from_key32(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k);
}

// The same for 16-bit patterns (bf16, f16 share the sign-magnitude layout).
__device__ __forceinline__ uint32_t key16(uint32_t b) { return b ^ ((b & 0x8000u) ? 0xffffu : 0x8000u); }
__device__ __forceinline__ uint32_t bits_from_key16(uint32_t k) { return (k & 0x8000u) ? (k ^ 0x8000u) : (~k & 0xffffu); }

// A load through the read-only (non-coherent) data path when `nc`, else through L2
// (ld.global.cg). The read-only path is only for memory the kernel never writes: a kernel that
// writes its input in place must read it coherently (the read-only cache may keep the old data).
template <typename T> __device__ __forceinline__ T load(const T* p, bool nc) { return nc ? __ldg(p) : __ldcg(p); }

// A word array in shared memory for integer atomics in a hot loop. Device: addressed by its 32-bit
// shared-window offset, so each atomic is one ATOMS on a register address (through a generic
// pointer to dynamic shared memory, ptxas re-derives the window base from the CTA id before every
// atomic: 4 more instructions each). Host build (the kernel simulator): the pointer and the
// simulator's own checked atomics. This and the macros at the top are the only code that differs
// between the two builds.
struct SharedWords {
#ifdef RLVR_KERNEL_SIM
    uint32_t* p;
    __device__ explicit SharedWords(uint32_t* q) : p(q) {}
    __device__ void add(uint32_t i, uint32_t v) const { atomicAdd(p + i, v); }
#else
    uint32_t a;
    // The address goes through an opaque move: ptxas would otherwise re-derive the shared window
    // base (S2UR of the CTA id, three uniform ops) at every use rather than keep it in a register.
    __device__ explicit SharedWords(uint32_t* q) {
        asm volatile("mov.b32 %0, %1;" : "=r"(a) : "r"((uint32_t)__cvta_generic_to_shared(q)));
    }
    // p[i] += v, no result (a reduction: nothing to wait for).
    __device__ void add(uint32_t i, uint32_t v) const {
        asm volatile("red.shared.add.u32 [%0], %1;" ::"r"(a + 4u * i), "r"(v) : "memory");
    }
#endif
};

// Element traits. VEC elements fill one 16-byte load; KEY_BITS is the width of the radix key;
// NEG_INF_BITS pads partial vectors (-inf has probability 0 and is skipped by every histogram).
template <typename E> struct Elem;

template <> struct Elem<float> {
    static constexpr int VEC = 4;
    static constexpr int KEY_BITS = 32;
    static constexpr uint32_t NEG_INF_BITS = 0xff800000u;
    __device__ static float value_of_bits(uint32_t b) { return __uint_as_float(b); }
    __device__ static uint32_t key_of_bits(uint32_t b) { return key32(__uint_as_float(b)); }
    __device__ static float value_of_key(uint32_t k) { return from_key32(k); }
    __device__ static uint32_t scalar_bits(const float* p, bool nc) { return __float_as_uint(load(p, nc)); }
    __device__ static uint32_t bits_of_value(float v) { return __float_as_uint(v); }
};

template <> struct Elem<__nv_bfloat16> {
    static constexpr int VEC = 8;
    static constexpr int KEY_BITS = 16;
    static constexpr uint32_t NEG_INF_BITS = 0xff80u;
    // bf16 is the top half of an f32: a shift.
    __device__ static float value_of_bits(uint32_t b) { return __uint_as_float(b << 16); }
    __device__ static uint32_t key_of_bits(uint32_t b) { return key16(b); }
    __device__ static float value_of_key(uint32_t k) { return value_of_bits(bits_from_key16(k)); }
    __device__ static uint32_t scalar_bits(const __nv_bfloat16* p, bool nc) {
        return load(reinterpret_cast<const unsigned short*>(p), nc);
    }
    // Round to nearest even (the write of a gradient in the logits' dtype).
    __device__ static uint32_t bits_of_value(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

template <> struct Elem<__half> {
    static constexpr int VEC = 8;
    static constexpr int KEY_BITS = 16;
    static constexpr uint32_t NEG_INF_BITS = 0xfc00u;
    __device__ static float value_of_bits(uint32_t b) { return __half2float(__ushort_as_half((unsigned short)b)); }
    __device__ static uint32_t key_of_bits(uint32_t b) { return key16(b); }
    __device__ static float value_of_key(uint32_t k) { return value_of_bits(bits_from_key16(k)); }
    __device__ static uint32_t scalar_bits(const __half* p, bool nc) {
        return load(reinterpret_cast<const unsigned short*>(p), nc);
    }
    __device__ static uint32_t bits_of_value(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

// Raw bits of element i of a 16-byte vector.
template <typename E> __device__ __forceinline__ uint32_t vec_bits(const uint4& r, int i);
template <> __device__ __forceinline__ uint32_t vec_bits<float>(const uint4& r, int i) {
    return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}
template <typename E> __device__ __forceinline__ uint32_t vec_bits(const uint4& r, int i) {
    uint32_t w = (i >> 1) == 0 ? r.x : (i >> 1) == 1 ? r.y : (i >> 1) == 2 ? r.z : r.w;
    return (i & 1) ? (w >> 16) : (w & 0xffffu);
}

// Element i of a 16-byte vector set to raw bits `b` (the write-side twin of vec_bits).
template <typename E> __device__ __forceinline__ void vec_set(uint4& r, int i, uint32_t b) {
    if (Elem<E>::KEY_BITS == 32) {
        (i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w) = b;
        return;
    }
    uint32_t& w = (i >> 1) == 0 ? r.x : (i >> 1) == 1 ? r.y : (i >> 1) == 2 ? r.z : r.w;
    w = (i & 1) ? ((w & 0xffffu) | (b << 16)) : ((w & 0xffff0000u) | (b & 0xffffu));
}

// A vector of -inf with element 0 set to `b`: how the < VEC unaligned head/tail elements of a row
// travel through the same code as full vectors.
template <typename E> __device__ __forceinline__ uint4 padded_vec(uint32_t b) {
    if (Elem<E>::KEY_BITS == 32) {
        const uint32_t n = Elem<E>::NEG_INF_BITS;
        return make_uint4(b, n, n, n);
    }
    const uint32_t n = Elem<E>::NEG_INF_BITS, nn = n | (n << 16);
    return make_uint4((b & 0xffffu) | (n << 16), nn, nn, nn);
}
template <typename E> __device__ __forceinline__ uint4 neg_inf_vec() {
    const uint32_t n = Elem<E>::NEG_INF_BITS;
    const uint32_t w = Elem<E>::KEY_BITS == 32 ? n : (n | (n << 16));
    return make_uint4(w, w, w, w);
}

// How one row of V elements splits into 16-byte vectors: `head` elements before the first
// 16-byte boundary, `nvec` aligned vectors, then the rest. Rows of any V and any start address
// (row offsets are 64-bit: row * V can exceed 2^32 elements). `read_only`: the kernel never writes
// these rows, so they may be read through the non-coherent path (see `load`).
template <typename E> struct RowSplit {
    const E* row;
    const uint4* vecs;
    uint32_t head, nvec, tail_start, vocab;
    bool nc;

    __device__ RowSplit(const E* logits, uint64_t row_index, uint32_t V, bool read_only = true)
        : vocab(V), nc(read_only) {
        row = logits + row_index * (uint64_t)V;
        const uint32_t mis = (uint32_t)((uintptr_t)row & 15u);
        head = mis == 0 ? 0u : min(V, (16u - mis) / (uint32_t)sizeof(E));
        nvec = (V - head) / Elem<E>::VEC;
        tail_start = head + nvec * Elem<E>::VEC;
        vecs = reinterpret_cast<const uint4*>(row + head);
    }

    // The one partial vector of thread `tid`: head elements go to threads [0, head), tail
    // elements to [head, head + tail); everyone else gets -inf padding.
    __device__ uint4 partial(uint32_t tid) const {
        const uint32_t tail = vocab - tail_start;
        if (tid < head) return padded_vec<E>(bits_at(tid));
        if (tid < head + tail) return padded_vec<E>(bits_at(tail_start + (tid - head)));
        return neg_inf_vec<E>();
    }

    // Raw bits of element i (< V) of the row; aligned vector j (< nvec).
    __device__ uint32_t bits_at(uint32_t i) const { return Elem<E>::scalar_bits(row + i, nc); }
    __device__ uint4 vec(uint32_t j) const { return load(vecs + j, nc); }
};

// Visits every element of a row as 16-byte vectors: f(const uint4&) is called the same number of
// times by every thread of the block (out-of-range slots get -inf padding), so `f` may use warp
// collectives. Full trips load U vectors per thread, all in the row, before the first is used (U
// loads in flight, no bounds checks); the rest of the row (< U·blockDim vectors) follows one
// vector per thread per step, bounds-checked, so a row's last partial trip costs what it holds,
// not a whole trip. `reverse` visits the row from its end: a re-read then starts with the most
// recently read (most likely still in L2) part of the row.
template <int U, typename E, typename F>
__device__ __forceinline__ void for_each_vec(const RowSplit<E>& rs, bool reverse, F&& f) {
    const uint32_t tid = threadIdx.x, bd = blockDim.x, step = U * bd;
    const uint32_t full = rs.nvec / step, done = full * step, rest = (rs.nvec - done + bd - 1) / bd;
    auto trip = [&](uint32_t t) {
        const uint32_t base = t * step;
        uint4 r[U];
#pragma unroll
        for (int u = 0; u < U; ++u) r[u] = rs.vec(base + (uint32_t)u * bd + tid);
#pragma unroll
        for (int u = 0; u < U; ++u) f(r[reverse ? U - 1 - u : u]);
    };
    auto one = [&](uint32_t k) {  // step k of the rest
        const uint32_t j = done + k * bd + tid;
        f(j < rs.nvec ? rs.vec(j) : neg_inf_vec<E>());
    };
    if (!reverse) {
        f(rs.partial(tid));
        for (uint32_t t = 0; t < full; ++t) trip(t);
        for (uint32_t k = 0; k < rest; ++k) one(k);
    } else {
        for (uint32_t k = rest; k-- > 0;) one(k);
        for (uint32_t t = full; t-- > 0;) trip(t);
        f(rs.partial(tid));
    }
}

// ---- Reductions in a fixed order ----------------------------------------------------------

// Online softmax state over x = z / T in base 2: with c = log2(e)/T and the reference
// r = ref(m, c) = rn(m·c) of the running max m (z units), d_i = rn(z_i·c − r) (one FFMA per
// element: 1/T is applied once, in c), s = Σ 2^{d_i} and w = Σ d_i·2^{d_i}. The rounding of r is a
// common factor 2^{m·c − r} of every term: row_stats.cuh takes it out exactly (RowStats::ln_s_m).
struct Softmax {
    float m, s, w;
};

// The reference of a max: rn(m·c), never contracted into another operation (every use must give
// the same bits).
__device__ __forceinline__ float ref(float m, float c) { return __fmul_rn(m, c); }

// Block-wide merge (blockDim a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 states. Ends with a barrier, so `scratch` may be reused afterwards.
// The block max first (one FMNMX butterfly), then each thread rescales its s, w to it once (one
// ex2) and the block sums them (adds only): cheaper than ten pairwise merges, and still in an
// order fixed by thread index. A thread's NaN s (a non-finite row, flagged by the caller) is
// dropped like an empty state.
__device__ __forceinline__ Softmax block_merge(Softmax v, float c, Softmax* scratch) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float m = v.m;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(FULL_MASK, m, o));
    if (lane == 0) scratch[warp].m = m;
    __syncthreads();
    m = lane < nw ? scratch[lane].m : NEG_INF;  // every warp reduces the warp maxima itself
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(FULL_MASK, m, o));
    if (m == NEG_INF) {
        __syncthreads();
        return Softmax{m, 0.f, 0.f};
    }
    float s = 0.f, w = 0.f;
    if (v.s > 0.f) {
        const float d = __fsub_rn(ref(v.m, c), ref(m, c)), f = ex2(d);
        s = __fmul_rn(v.s, f);
        w = __fmul_rn(__fmaf_rn(d, v.s, v.w), f);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        s += __shfl_xor_sync(FULL_MASK, s, o);
        w += __shfl_xor_sync(FULL_MASK, w, o);
    }
    __syncthreads();  // every warp has read the maxima
    if (lane == 0) scratch[warp].s = s, scratch[warp].w = w;
    __syncthreads();
    if (warp == 0) {
        float ss = lane < nw ? scratch[lane].s : 0.f, ww = lane < nw ? scratch[lane].w : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            ss += __shfl_xor_sync(FULL_MASK, ss, o);
            ww += __shfl_xor_sync(FULL_MASK, ww, o);
        }
        if (lane == 0) scratch[0].s = ss, scratch[0].w = ww;
    }
    __syncthreads();
    const Softmax r{m, scratch[0].s, scratch[0].w};
    __syncthreads();
    return r;
}

// Block-wide reduction by `op` (commutative; blockDim a multiple of 32, at most 1024): xor
// butterfly in each warp, then warp 0 over the warps in index order; every thread gets the result.
// `scratch` holds 32 values; ends with a barrier, so it may be reused afterwards. `identity` pads
// the missing warps. Deterministic for any `op` (the combination order is fixed by thread index).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, T* scratch, Op op) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T u = lane < nw ? scratch[lane] : identity;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) u = op(u, __shfl_xor_sync(FULL_MASK, u, o));
        if (lane == 0) scratch[0] = u;
    }
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

// Sum (float, double, integers) and minimum (integers) over the block, see `block_reduce`.
template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
    return block_reduce(v, T(0), scratch, [](T a, T b) { return a + b; });
}
template <typename T> __device__ __forceinline__ T block_min(T v, T* scratch) {
    return block_reduce(v, ~T(0), scratch, [](T a, T b) { return a < b ? a : b; });
}

// Exclusive prefix count of `flag` over the block in thread order (ballot + popc in each warp,
// warp 0 scans the warp counts), and the block's total in `total`. `scan` holds 33 words; ends
// with a barrier. Integer counts: exact and deterministic.
__device__ __forceinline__ uint32_t block_exclusive_count(bool flag, uint32_t* scan, uint32_t& total) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const uint32_t ballot = __ballot_sync(FULL_MASK, flag);
    const uint32_t in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) scan[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {
        const uint32_t c = lane < nw ? scan[lane] : 0u;
        uint32_t incl = c;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t t = __shfl_up_sync(FULL_MASK, incl, o);
            if (lane >= (uint32_t)o) incl += t;
        }
        __syncwarp();
        scan[lane] = incl - c;
        if (lane == 31) scan[32] = incl;
    }
    __syncthreads();
    const uint32_t before = scan[warp] + in_warp;
    total = scan[32];
    __syncthreads();
    return before;
}

__device__ __forceinline__ uint32_t block_or(uint32_t v, uint32_t* scratch) {
    v = __reduce_or_sync(FULL_MASK, v);
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        uint32_t u = lane < nw ? scratch[lane] : 0u;
        u = __reduce_or_sync(FULL_MASK, u);
        if (lane == 0) scratch[0] = u;
    }
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

// ---- Input checks on the device -------------------------------------------------------------

// Status words of the value checks (u64 each, zeroed before the launch, null = no checks): a bad
// value at index i records max(~i), so the word ends as ~(first bad index) whatever the order in
// which threads find them (integer max: deterministic), and 0 means "none". The host reads the
// words once and turns the first set one into the error the CPU path returns.
enum StatusWord : int {
    STATUS_MASK = 0,         // mask value other than 0 or 1 (token index)
    STATUS_OLD_LOGP = 1,     // NaN/inf old_logp (token index)
    STATUS_REWARDS = 2,      // NaN/inf reward (sequence index)
    STATUS_TARGET = 3,       // target >= V (token index)
    STATUS_ADVANTAGES = 4,   // NaN/inf advantage (token index)
    STATUS_REF_LOGP = 5,     // NaN/inf ref_logp (token index)
    STATUS_ROW_NON_FINITE = 6,  // NaN/+inf logit (row index)
    STATUS_ROW_ALL_NEG_INF = 7, // every logit -inf (row index)
    STATUS_WORDS = 8
};

__device__ __forceinline__ void report(unsigned long long* status, int word, uint64_t index) {
    if (status != nullptr) atomicMax(status + word, ~(unsigned long long)index);
}

// Finite (not NaN, not +-inf) without relying on isfinite's fast-math behaviour.
__device__ __forceinline__ bool finite(float v) { return fabsf(v) < POS_INF; }

// ---- Aggregation weights ----------------------------------------------------------------------

// How per-token losses become the scalar loss (DESIGN.md §4); mirrors config::Aggregation.
enum AggMode : int {
    AGG_TOKEN_MEAN = 0,           // 1 / (tokens of the batch)
    AGG_TOKEN_MEAN_GLOBAL = 1,    // 1 / param (caller-given global token count)
    AGG_SEQ_MEAN_TOKEN_MEAN = 2,  // 1 / (|o_i| · valid sequences)
    AGG_SEQ_MEAN_TOKEN_SUM = 3,   // 1 / valid sequences
    AGG_SEQ_MEAN_TOKEN_SUM_NORM = 4  // 1 / param (constant C)
};

struct AggParams {
    int mode;
    int pad;
    double param;
};

// Counts of the batch, from seq_counts (sequence.cu): counted tokens and sequences with any.
struct BatchTotals {
    unsigned long long tokens;
    unsigned long long valid;
};

// a_t of a counted token of a sequence with `len` counted tokens, in f64 rounded once: the same
// expression as cpu::aggregation_weights on exact integer counts, so the same bits.
__device__ __forceinline__ float agg_weight(const AggParams& a, uint32_t len, const BatchTotals& t) {
    double w;
    switch (a.mode) {
        case AGG_TOKEN_MEAN: w = 1.0 / (double)t.tokens; break;
        case AGG_SEQ_MEAN_TOKEN_MEAN: w = 1.0 / ((double)len * (double)t.valid); break;
        case AGG_SEQ_MEAN_TOKEN_SUM: w = 1.0 / (double)t.valid; break;
        default: w = 1.0 / a.param; break;  // AGG_TOKEN_MEAN_GLOBAL, AGG_SEQ_MEAN_TOKEN_SUM_NORM
    }
    return (float)w;
}

}  // namespace rlvr
