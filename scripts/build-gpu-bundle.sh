#!/usr/bin/env bash
# Builds the `cuda` test and bench binaries here (a CPU-only machine is fine) and packs them, with
# scripts/gpu-check.sh, into the git-ignored .gpu/ folder: copy that folder to a GPU host (CUDA
# 13.0 driver, no Rust needed) and run `bash .gpu/gpu-check.sh` there.
#
# Binaries are stripped and compressed (candle's CUDA kernels make each ~40 MB; PTX compresses well)
# so the bundle stays far below 64 MiB. Uses CARGO_TARGET_DIR=target/cuda unless set, so the
# CUDA build does not invalidate or lock the CPU build in target/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source "${RLVR_CUDA_TOOLCHAIN:-$repo/.cuda-toolchain}/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cuda}

# "name path" of the executables of target kind $1 (test, bench) that cargo built, from its JSON
# messages (cargo also builds the `rlvr` binary for integration tests: not wanted here).
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and sys.argv[1] in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])' "$1"
}

# The GPU tests are the test files that exist only with the feature: `#![cfg(feature = "cuda")]`.
gpu_tests=$(grep -l '^#!\[cfg(feature = "cuda")\]' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')
[[ -n $gpu_tests ]] || { echo "build-gpu-bundle: no test file has #![cfg(feature = \"cuda\")]" >&2; exit 1; }
test_args=$(printf -- '--test %s ' $gpu_tests)
# shellcheck disable=SC2086
tests=$(cargo test --release --features cuda $test_args --no-run --message-format=json 2>/dev/null | executables test)
benches=$(cargo bench --features cuda --bench cuda --no-run --message-format=json 2>/dev/null | executables bench)
# The command line too, so the GPU host can run `rlvr stats/bench/train --device cuda` end to end.
cli=$(cargo build --release --features cuda --bin rlvr --message-format=json 2>/dev/null | executables bin)
[[ -n $tests && -n $benches && -n $cli ]] || { echo "build-gpu-bundle: a cuda test, bench or rlvr binary was not built" >&2; exit 1; }

rm -rf .gpu
mkdir -p .gpu
# xz packs candle's PTX-heavy binaries to less than half of gzip's size (5.4 vs 11 MB each), so the
# binaries stay below 64 MiB; gpu-check.sh unpacks .xz with xz or Python's lzma.
pack() { # name path
    strip -o ".gpu/$1" "$2"
    if command -v xz >/dev/null; then xz -6 -T0 ".gpu/$1"; else gzip -9 ".gpu/$1"; fi
}
while read -r name path; do pack "$name" "$path"; done <<<"$tests"
while read -r name path; do pack "bench_$name" "$path"; done <<<"$benches"
while read -r name path; do pack "$name" "$path"; done <<<"$cli"
cp scripts/gpu-check.sh .gpu/
du -b .gpu/* | awk '{printf "%10d  %s\n", $1, $2; t += $1} END {printf "%10d  total (%.1f MiB)\n", t, t / 1048576}'
