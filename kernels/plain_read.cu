// The bandwidth reference for the fused kernels: read every element of each row once with the
// same 16-byte loads, block shape and grid-stride loop as token_stats.cu, sum it, write one f32.
// Nothing a useful row kernel can do moves fewer bytes, so "fused time / plain time" is the
// overhead of the fused math.
//
// Traffic budget per row: read V·b, write 4 B. Reduction order: per thread in load order, warp
// xor butterfly, warps in index order (deterministic).
#include "common.cuh"

using namespace rlvr;

namespace {

template <typename E>
__device__ void plain_read_rows(const E* __restrict__ logits, uint64_t n_rows, uint32_t vocab, float* __restrict__ out) {
    __shared__ float scratch[32];
    for (uint64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
        const RowSplit<E> rs(logits, row, vocab);
        float acc = 0.f;
        for_each_vec<4>(rs, false, [&](const uint4& r) {
#pragma unroll
            for (int i = 0; i < Elem<E>::VEC; ++i) {
                const float v = Elem<E>::value_of_bits(vec_bits<E>(r, i));
                acc += v > NEG_INF ? v : 0.f;  // the -inf padding must not poison the sum
            }
        });
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) out[row] = acc;
    }
}

}  // namespace

// plain_read_<dtype>(logits [n_rows * vocab], n_rows, vocab, out [n_rows]); blockDim.x = ROW_BLOCK.
#define RLVR_PLAIN_READ(NAME, E)                                                                                   \
    extern "C" __global__ void __launch_bounds__(ROW_BLOCK, 2)                                                     \
        plain_read_##NAME(const E* logits, uint64_t n_rows, uint32_t vocab, float* out) {                          \
        plain_read_rows<E>(logits, n_rows, vocab, out);                                                            \
    }

RLVR_PLAIN_READ(f32, float)
RLVR_PLAIN_READ(bf16, __nv_bfloat16)
RLVR_PLAIN_READ(f16, __half)
