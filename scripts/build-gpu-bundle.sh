#!/usr/bin/env bash
# Builds the `cuda` test and bench binaries here (a CPU-only machine is fine) and packs them, with
# scripts/gpu-check.sh, into the git-ignored .gpu/ folder: copy that folder to a GPU host (CUDA
# 13.0 driver, no Rust needed) and run `bash .gpu/gpu-check.sh` there.
#
# Contents: the cuda_* test binaries, bench_cuda, the rlvr command line (all stripped and
# compressed: candle's PTX makes each ~40 MB, and our kernels add ~12 MB of fatbins, SASS for
# sm_90 and sm_100 plus PTX), and gpu-check.sh; the total stays below the 64 MiB a device call
# carries. Builds in the default target dir (target/), so the CPU and CUDA builds share their
# dependencies (the `cuda` feature rebuilds only what depends on it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source "${RLVR_CUDA_TOOLCHAIN:-$repo/.cuda-toolchain}/env.sh"

# shellcheck source=scripts/cargo-bins.sh
source scripts/cargo-bins.sh

# The GPU tests are the test files that exist only with the feature: `#![cfg(feature = "cuda")]`.
gpu_tests=$(gpu_test_names)
[[ -n $gpu_tests ]] || { echo "build-gpu-bundle: no test file has #![cfg(feature = \"cuda\")]" >&2; exit 1; }
# gpu-check.sh runs `sanitizer_small_case` of each under compute-sanitizer: each must have it.
for t in $gpu_tests; do
    grep -q '^fn sanitizer_small_case()' "tests/$t.rs" ||
        { echo "build-gpu-bundle: tests/$t.rs has no #[test] fn sanitizer_small_case() (gpu-check.sh needs one)" >&2; exit 1; }
done
test_args=$(printf -- '--test %s ' $gpu_tests)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# cargo's own messages go to $log, shown if a build fails.
# shellcheck disable=SC2086
tests=$(cargo test --release --features cuda $test_args --no-run --message-format=json 2>>"$log" | executables test) || true
benches=$(cargo bench --features cuda --bench cuda --no-run --message-format=json 2>>"$log" | executables bench) || true
# The command line too, so the GPU host can run `rlvr stats/bench/train --device cuda` end to end.
cli=$(cargo build --release --features cuda --bin rlvr --message-format=json 2>>"$log" | executables bin) || true
# target/release/rlvr is shared by every feature set (a concurrent CPU build replaces it): take the
# deps/rlvr-<hash> file cargo hard-linked it from, while it is still the one just built.
if [[ -n $cli ]]; then
    read -r cli_name cli_path <<<"$cli"
    own=$(find "$(dirname "$cli_path")/deps" -maxdepth 1 -samefile "$cli_path" 2>/dev/null | head -n 1)
    cli="$cli_name ${own:-$cli_path}"
fi
if [[ -z $tests || -z $benches || -z $cli || $(wc -l <<<"$tests") -ne $(wc -w <<<"$gpu_tests") ]]; then
    tail -n 40 "$log" >&2
    echo "build-gpu-bundle: a cuda test, bench or rlvr binary was not built (cargo's messages above)" >&2
    exit 1
fi

rm -rf .gpu
mkdir -p .gpu
# xz packs candle's PTX-heavy binaries to less than half of gzip's size (5.4 vs 11 MB each), so the
# binaries stay below 64 MiB; gpu-check.sh unpacks .xz with xz or Python's lzma.
pack() { # name path
    strip -o ".gpu/$1" "$2"
    # A binary without libcuda is a CPU build (it would fail every step there): stop here instead.
    readelf -d ".gpu/$1" | grep -q 'NEEDED.*libcuda\.so' ||
        { echo "build-gpu-bundle: $2 is not a cuda build (no libcuda): rerun" >&2; exit 1; }
    if command -v xz >/dev/null; then xz -6 -T0 ".gpu/$1"; else gzip -9 ".gpu/$1"; fi
}
while read -r name path; do pack "$name" "$path"; done <<<"$tests"
while read -r name path; do pack "bench_$name" "$path"; done <<<"$benches"
while read -r name path; do pack "$name" "$path"; done <<<"$cli"
cp scripts/gpu-check.sh scripts/kernel-model.expected .gpu/
du -b .gpu/* | awk '{printf "%10d  %s\n", $1, $2; t += $1} END {printf "%10d  total (%.1f MiB)\n", t, t / 1048576}'
total=$(du -cb .gpu/* | tail -n 1 | cut -f1)
((total < 64 * 1048576)) || { echo "build-gpu-bundle: .gpu/ is over the 64 MiB a device call carries" >&2; exit 1; }
