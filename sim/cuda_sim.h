// The CUDA subset that kernels/*.cu use, for building them with the host C++ compiler
// (scripts/kernel-sim.sh force-includes this header: g++ -include sim/cuda_sim.h). Together with
// sim/runtime.cpp (threads as fibers, barriers, warp collectives) and sim/driver.cpp (a CUDA
// driver API over host memory) it runs the kernels' own source on the CPU, unchanged: the only
// lines of kernels/ that differ between nvcc and this build are the macros at the top of
// kernels/common.cuh (RLVR_KERNEL_SIM).
//
// What is modelled, and how:
// - threadIdx/blockIdx/blockDim/gridDim: the running fiber's and launch's values.
// - __shared__: thread_local of the OS thread that runs the block (a block runs on one OS thread;
//   its fibers share it), poisoned with 0xff before every block so that a read of shared memory
//   nobody wrote in this block gives garbage, as on the GPU. Dynamic shared memory is a heap
//   buffer of exactly the launch's size (overruns are caught by AddressSanitizer), poisoned too.
// - __syncthreads, warp collectives (__shfl_*_sync, __ballot_sync, __reduce_*_sync, __syncwarp):
//   switch points of the fiber scheduler. A barrier must be reached by every live thread of the
//   block at the same source line; a collective by every lane of its mask, at the same line with
//   the same mask and kind, and a lane must name itself and its source lane in the mask.
//   Anything else is reported (kernel, block, thread, both source lines) and the process aborts.
// - Global loads/stores through __ldg/__ldcs/__stcs and global atomics are checked against the
//   device allocations (in bounds, aligned to the access size); a launch that writes memory it
//   read through the non-coherent path (__ldg) is reported. Plain pointer accesses are checked
//   only by the AddressSanitizer build (scripts/kernel-sim.sh runs one).
// - Arithmetic: IEEE host float/double. __f*_rn / __d*_rn are the plain operations (the build uses
//   -ffp-contract=off, so there is no hidden FMA: nvcc contracts a·b + c where the source does
//   not forbid it, the host build never does). ex2.approx.ftz is std::exp2f with subnormal
//   results flushed to zero: exact where the GPU's is within 2 ulp. bf16/f16 conversions are
//   NVIDIA's own host implementations (cuda_bf16.hpp, cuda_fp16.hpp), so rounding is CUDA's.
//
// Not modelled: the memory model (every write is visible at once to every later reader, so a
// missing fence between blocks or a racy read that happens to be ordered is not found unless the
// thread order makes it matter), timing, occupancy, L1/L2, register limits, warp-synchronous
// code without __syncwarp, and partial warps (blocks must be a multiple of 32 threads).
#pragma once

#ifndef RLVR_KERNEL_SIM
#define RLVR_KERNEL_SIM 1
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Storage and function qualifiers: host functions; shared variables per OS thread (see above).
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local
#define __restrict__ __restrict

#include <vector_functions.h>
#include <vector_types.h>

namespace rlvr_sim {

// The running thread of a block and the launch it belongs to (sim/runtime.cpp).
struct ThreadRegs {
    uint3 tid;
};
struct LaunchRegs {
    uint3 block_idx;
    dim3 block_dim, grid_dim;
};
extern thread_local ThreadRegs* current_thread __attribute__((tls_model("initial-exec")));
extern thread_local LaunchRegs* current_launch __attribute__((tls_model("initial-exec")));

enum WarpOp : int {
    SHFL_IDX,
    SHFL_UP,
    SHFL_DOWN,
    SHFL_XOR,
    BALLOT,
    REDUCE_MAX,
    REDUCE_MIN,
    REDUCE_OR,
    REDUCE_AND,
    REDUCE_ADD,
    SYNCWARP,
};

void barrier(const char* file, int line);
// One lane's part of a warp collective; returns this lane's result (raw bits, low bytes used).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, unsigned bytes, int param, const char* file,
                         int line);
// Global memory access check: [p, p + bytes) inside one device allocation and `align`-aligned.
// `nc` marks a read through the non-coherent (read-only) path; `write` a store or atomic.
void check_global(const void* p, size_t bytes, size_t align, bool nc, bool write, const char* file, int line);
[[noreturn]] void trap(const char* file, int line);
unsigned dynamic_smem_size();
void* dynamic_shared();

// ex2.approx.ftz.f32: 2^x with subnormal inputs and results flushed to (sign-preserving) zero.
inline float ex2_approx(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
    const float y = std::exp2f(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

template <typename T>
inline uint64_t to_bits(T v) {
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace rlvr_sim

// ---- Built-in variables ----------------------------------------------------------------------
#define threadIdx (rlvr_sim::current_thread->tid)
#define blockIdx (rlvr_sim::current_launch->block_idx)
#define blockDim (rlvr_sim::current_launch->block_dim)
#define gridDim (rlvr_sim::current_launch->grid_dim)
#define warpSize 32

// ---- Synchronisation ---------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    rlvr_sim::barrier(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    rlvr_sim::warp_collective(rlvr_sim::SYNCWARP, mask, 0, 0, 0, file, line);
}
[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    rlvr_sim::trap(file, line);
}

// ---- Warp collectives --------------------------------------------------------------------------
#define RLVR_SIM_SHFL(NAME, OP)                                                                          \
    template <typename T>                                                                                \
    inline T NAME(unsigned mask, T v, int param, int width = 32, const char* file = __builtin_FILE(),    \
                  int line = __builtin_LINE()) {                                                         \
        static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");                                  \
        if (width != 32) rlvr_sim::trap(file, line); /* sub-warp widths are not modelled */              \
        return rlvr_sim::from_bits<T>(                                                                   \
            rlvr_sim::warp_collective(OP, mask, rlvr_sim::to_bits(v), sizeof(T), param, file, line));    \
    }
RLVR_SIM_SHFL(__shfl_sync, rlvr_sim::SHFL_IDX)
RLVR_SIM_SHFL(__shfl_up_sync, rlvr_sim::SHFL_UP)
RLVR_SIM_SHFL(__shfl_down_sync, rlvr_sim::SHFL_DOWN)
RLVR_SIM_SHFL(__shfl_xor_sync, rlvr_sim::SHFL_XOR)
#undef RLVR_SIM_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return (unsigned)rlvr_sim::warp_collective(rlvr_sim::BALLOT, mask, pred != 0, 4, 0, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) == mask;
}
#define RLVR_SIM_REDUCE(NAME, OP)                                                                        \
    inline unsigned NAME(unsigned mask, unsigned v, const char* file = __builtin_FILE(),                 \
                         int line = __builtin_LINE()) {                                                  \
        return (unsigned)rlvr_sim::warp_collective(OP, mask, v, 4, 0, file, line);                       \
    }
RLVR_SIM_REDUCE(__reduce_max_sync, rlvr_sim::REDUCE_MAX)
RLVR_SIM_REDUCE(__reduce_min_sync, rlvr_sim::REDUCE_MIN)
RLVR_SIM_REDUCE(__reduce_or_sync, rlvr_sim::REDUCE_OR)
RLVR_SIM_REDUCE(__reduce_and_sync, rlvr_sim::REDUCE_AND)
RLVR_SIM_REDUCE(__reduce_add_sync, rlvr_sim::REDUCE_ADD)
#undef RLVR_SIM_REDUCE

// ---- Bit casts, integer intrinsics ---------------------------------------------------------------
inline unsigned __float_as_uint(float v) { return (unsigned)rlvr_sim::to_bits(v); }
inline int __float_as_int(float v) { return (int)rlvr_sim::to_bits(v); }
inline float __uint_as_float(unsigned b) { return rlvr_sim::from_bits<float>(b); }
inline float __int_as_float(int b) { return rlvr_sim::from_bits<float>((uint32_t)b); }
inline double __longlong_as_double(long long b) { return rlvr_sim::from_bits<double>((uint64_t)b); }
inline long long __double_as_longlong(double v) { return (long long)rlvr_sim::to_bits(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(unsigned v) { return v == 0 ? 32 : __builtin_clz(v); }
inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }

// CUDA's integer min/max overloads (device code calls them unqualified).
#define RLVR_SIM_MINMAX(T)                                 \
    inline T min(T a, T b) { return a < b ? a : b; }       \
    inline T max(T a, T b) { return a > b ? a : b; }
RLVR_SIM_MINMAX(int)
RLVR_SIM_MINMAX(unsigned)
RLVR_SIM_MINMAX(long long)
RLVR_SIM_MINMAX(unsigned long long)
RLVR_SIM_MINMAX(long)
RLVR_SIM_MINMAX(unsigned long)
#undef RLVR_SIM_MINMAX

// ---- Arithmetic with explicit rounding (no contraction: -ffp-contract=off) ----------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// f32 -> u64, round to nearest even, saturating as the GPU does (NaN and negatives -> 0).
inline unsigned long long __float2ull_rn(float v) {
    if (!(v > 0.f)) return 0ull;
    const float r = std::nearbyintf(v);  // default rounding mode: to nearest even
    if (r >= 18446744073709551616.f) return ~0ull;
    return (unsigned long long)r;
}

using std::isnan;

// ---- Global memory through the cache-hinted paths ----------------------------------------------
template <typename T>
inline T __ldg(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    rlvr_sim::check_global(p, sizeof(T), sizeof(T), true, false, file, line);
    return *p;
}
#define RLVR_SIM_LOAD(NAME)                                                                              \
    template <typename T>                                                                                \
    inline T NAME(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {        \
        rlvr_sim::check_global(p, sizeof(T), sizeof(T), false, false, file, line);                       \
        return *p;                                                                                       \
    }
RLVR_SIM_LOAD(__ldcs)
RLVR_SIM_LOAD(__ldcg)
RLVR_SIM_LOAD(__ldca)
RLVR_SIM_LOAD(__ldlu)
RLVR_SIM_LOAD(__ldcv)
#undef RLVR_SIM_LOAD
#define RLVR_SIM_STORE(NAME)                                                                             \
    template <typename T>                                                                                \
    inline void NAME(T* p, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {      \
        rlvr_sim::check_global(p, sizeof(T), sizeof(T), false, true, file, line);                        \
        *p = v;                                                                                          \
    }
RLVR_SIM_STORE(__stcs)
RLVR_SIM_STORE(__stcg)
RLVR_SIM_STORE(__stwb)
RLVR_SIM_STORE(__stwt)
#undef RLVR_SIM_STORE

// ---- Atomics ----------------------------------------------------------------------------------------
// A block's threads are fibers of one OS thread and never switch inside an atomic; blocks of a
// launch run one after another. So a plain read-modify-write is atomic here. Device addresses
// are bounds-checked; shared-memory ones are not in the allocation table and pass unchecked.
#define RLVR_SIM_ATOMIC(NAME, T, EXPR)                                                                   \
    inline T NAME(T* p, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {         \
        rlvr_sim::check_global(p, sizeof(T), sizeof(T), false, true, file, line);                        \
        const T old = *p;                                                                                \
        *p = (EXPR);                                                                                     \
        return old;                                                                                      \
    }
#define RLVR_SIM_ATOMIC_INTS(NAME, EXPR)                \
    RLVR_SIM_ATOMIC(NAME, int, EXPR)                    \
    RLVR_SIM_ATOMIC(NAME, unsigned, EXPR)               \
    RLVR_SIM_ATOMIC(NAME, unsigned long long, EXPR)     \
    RLVR_SIM_ATOMIC(NAME, long long, EXPR)
RLVR_SIM_ATOMIC_INTS(atomicAdd, old + v)
RLVR_SIM_ATOMIC(atomicAdd, float, old + v)
RLVR_SIM_ATOMIC(atomicAdd, double, old + v)
RLVR_SIM_ATOMIC_INTS(atomicSub, old - v)
RLVR_SIM_ATOMIC_INTS(atomicMax, old > v ? old : v)
RLVR_SIM_ATOMIC_INTS(atomicMin, old < v ? old : v)
RLVR_SIM_ATOMIC_INTS(atomicOr, old | v)
RLVR_SIM_ATOMIC_INTS(atomicAnd, old & v)
RLVR_SIM_ATOMIC_INTS(atomicXor, old ^ v)
RLVR_SIM_ATOMIC_INTS(atomicExch, v)
#undef RLVR_SIM_ATOMIC_INTS
#undef RLVR_SIM_ATOMIC
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    rlvr_sim::check_global(p, sizeof(unsigned), sizeof(unsigned), false, true, file, line);
    const unsigned old = *p;
    if (old == cmp) *p = v;
    return old;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v,
                                    const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    rlvr_sim::check_global(p, sizeof(v), sizeof(v), false, true, file, line);
    const unsigned long long old = *p;
    if (old == cmp) *p = v;
    return old;
}

// The registry of kernel entry points of a translation unit (sim/kernels_*.cpp): name -> a
// launcher that unpacks cuLaunchKernel's `void** params` into the kernel's own parameter types.
namespace rlvr_sim {
using Launcher = void (*)(void** params);
struct KernelEntry {
    const char* name;
    Launcher launch;
    unsigned params;  // number of parameters, to check against what the caller's PTX declares
};
template <typename... A, size_t... I>
inline void call_unpacked(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(p[I])...);
}
template <auto F>
struct Unpack;
template <typename... A, void (*F)(A...)>
struct Unpack<F> {
    static void launch(void** p) { call_unpacked(F, p, std::index_sequence_for<A...>{}); }
    static constexpr unsigned count = sizeof...(A);
};
}  // namespace rlvr_sim
#define RLVR_SIM_KERNEL(name) \
    rlvr_sim::KernelEntry { #name, &rlvr_sim::Unpack<&name>::launch, rlvr_sim::Unpack<&name>::count }
