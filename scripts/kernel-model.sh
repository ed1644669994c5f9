#!/usr/bin/env bash
# The static performance model of the CUDA kernels (scripts/kernel_model.py says how it works):
# compiles kernels/*.cu for sm_90 with ptxas -v and -lineinfo, reads registers, spills and shared
# memory, finds each kernel's per-element hot loops in the SASS (nvdisasm), and predicts its time
# at [4096, 151936] on an H100 and an H200. Every figure it prints is **predicted**, never measured.
#
# Usage:  bash scripts/kernel-model.sh              # table; fails on a spill, on a calibration miss,
#                                                   # or on a >10% regression vs scripts/kernel-model.expected
#         bash scripts/kernel-model.sh --update     # also rewrites scripts/kernel-model.expected
#         bash scripts/kernel-model.sh --markdown   # the table as markdown (for BENCHMARKS.md)
# The last line is always `predicted H100 ms: stats_bf16_topp=X stats_f32_topp=Y grpo_fused_bf16_topp=Z`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source .cuda-toolchain/env.sh
expected=scripts/kernel-model.expected
args=()
for a in "$@"; do
    case $a in
        --update) args+=(--update "$expected") ;;
        --markdown) args+=(--markdown) ;;
        *) echo "kernel-model: unknown argument $a" >&2; exit 2 ;;
    esac
done
[[ -f $expected ]] && args+=(--check "$expected")
exec python3 scripts/kernel_model.py "${args[@]}"
