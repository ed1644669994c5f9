#!/usr/bin/env bash
# The executed-kernel suite: the GPU test binaries (tests/cuda_*.rs) run against the kernel
# simulator (sim/: kernels/*.cu built for the host, behind a simulated CUDA driver), so the
# kernels' own source passes the GPU suite's assertions on a machine without a GPU.
#
#   bash scripts/kernel-sim.sh              # build what it needs, run the suite, print a summary
#   bash scripts/kernel-sim.sh --mutations  # then check that the suite catches six kernel bugs
#
# Steps: the CUDA toolchain (scripts/cuda-toolchain.sh), the `cuda` test binaries (cargo, the
# default target dir), the simulator (sim/build.sh: -O2 and AddressSanitizer builds); every GPU
# test binary on the -O2 build (RLVR_SIM_CASES proptest cases per property, default 256; thread
# orders from RLVR_SIM_SEED, default a fresh one per run, printed); the `sanitizer_small_case`
# of every binary on the AddressSanitizer + UBSan build; one line per kernel family last.
# Exits non-zero on any failure, including a binary that found no device (the simulator was not
# picked up). Logs: target/kernel-sim/logs/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mutations=0
for a in "$@"; do
    case $a in
        --mutations) mutations=1 ;;
        *) echo "usage: bash scripts/kernel-sim.sh [--mutations]" >&2; exit 2 ;;
    esac
done
out=$repo/target/kernel-sim
logs=$out/logs
mkdir -p "$logs"
rm -f "$logs"/*.log "$out"/report.tsv "$out"/results.tsv
start=$SECONDS
say() { printf 'kernel-sim: %s\n' "$*"; }

bash scripts/cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source "${RLVR_CUDA_TOOLCHAIN:-$repo/.cuda-toolchain}/env.sh"

# shellcheck source=scripts/cargo-bins.sh
source scripts/cargo-bins.sh
test_args=$(printf -- '--test %s ' $(gpu_test_names))
say "building the cuda test binaries ($((SECONDS - start))s)"
# shellcheck disable=SC2086
bins=$(cargo test --release --features cuda $test_args --no-run --message-format=json 2>"$logs/cargo.log" |
    executables test) || { tail -n 30 "$logs/cargo.log"; exit 1; }
[[ -n $bins ]] || { tail -n 30 "$logs/cargo.log"; say "no test binary was built"; exit 1; }
say "building the simulator ($((SECONDS - start))s)"
bash sim/build.sh "$out" release asan

seed=${RLVR_SIM_SEED:-$(( (RANDOM << 16 | RANDOM) + 1 ))}
cases=${RLVR_SIM_CASES:-256}
asan_lib=$(${CXX:-g++} -print-file-name=libasan.so)
failed=0
declare -A tests_line

# run NAME BINARY VARIANT LOG [test args...]: one binary on one simulator build.
run() {
    local name=$1 bin=$2 variant=$3 log=$4
    shift 4
    local env=(LD_LIBRARY_PATH="$out/$variant:$RLVR_CUDA_STUB_LIBS" RLVR_SIM_SEED="$seed"
        RLVR_SIM_REPORT="$out/report.tsv" PROPTEST_CASES="$cases" RUST_BACKTRACE=1)
    [[ $variant == asan ]] && env+=(LD_PRELOAD="$asan_lib" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)
    local rc=0
    env "${env[@]}" "$bin" --test-threads 2 "$@" >"$log" 2>&1 || rc=$?
    if grep -q "skipping all CUDA tests\|no CUDA device" "$log"; then
        say "FAILED $name ($variant): the binary found no device, the simulator was not loaded (see $log)"
        return 1
    fi
    if ((rc != 0)); then
        say "FAILED $name ($variant), exit $rc; the end of $log:"
        grep -E "^test .*FAILED|panicked|kernel-sim:|ERROR: AddressSanitizer|runtime error|SUMMARY" "$log" | head -n 20 | sed 's/^/    /'
        return 1
    fi
}

while read -r name bin; do
    say "running $name ($((SECONDS - start))s)"
    run "$name" "$bin" release "$logs/$name.log" || failed=1
    tests_line[$name]=$(grep -h '^test result' "$logs/$name.log" | tail -n 1 || true)
    # Properties and fixed tests, from the source (for the summary).
    props=$(python3 - "tests/$name.rs" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
n = 0
for block in re.finditer(r"proptest!\s*\{(.*?)\n\}", src, re.S):
    n += len(re.findall(r"#\[test\]", block.group(1)))
print(n)
EOF
)
    tests_line[$name]="${tests_line[$name]} [$props properties x $cases cases]"
    python3 -c 'import re, sys
m = re.search(r"(\d+) passed; (\d+) failed", sys.argv[2])
print(sys.argv[1], *(m.groups() if m else ("0", "?")), sep="\t")' "$name" "${tests_line[$name]}" >>"$out/results.tsv"
    run "$name" "$bin" asan "$logs/$name.asan.log" sanitizer_small_case || failed=1
    if grep -q "running 0 tests" "$logs/$name.asan.log"; then
        say "FAILED $name (asan): it has no sanitizer_small_case"
        failed=1
    fi
done <<<"$bins"

# One line per binary, then per kernel family: launches, blocks, thread-order seeds.
echo
say "summary, thread-order seed base $seed (RLVR_SIM_SEED=$seed reproduces it), $((SECONDS - start))s"
while read -r name _; do
    printf '  %-18s %s\n' "$name" "${tests_line[$name]:-not run}"
done <<<"$bins"
python3 - "$out/report.tsv" "$out/results.tsv" "$seed" <<'EOF'
import collections, sys
fam = collections.OrderedDict((f, [0, 0, set(), set()]) for f in ("token_stats", "plain_read", "grpo", "sequence"))
def family(k):
    if k.startswith("token_stats"): return "token_stats"
    if k.startswith("plain_read"): return "plain_read"
    if k.startswith(("grpo_forward", "grpo_fused", "grpo_backward")) or k in ("sum_chunks_f64", "grpo_loss_final"):
        return "grpo"
    return "sequence"
def read(path):
    try:
        return [l.rstrip("\n").split("\t") for l in open(path)]
    except FileNotFoundError:
        return []
for exe, kernel, launches, blocks, base, first in read(sys.argv[1]):
    f = fam[family(kernel)]
    f[0] += int(launches); f[1] += int(blocks); f[2].add(kernel); f[3].add(exe.rsplit("-", 1)[0])
results = {name: (passed, failed) for name, passed, failed in read(sys.argv[2])}
for name, (launches, blocks, kernels, exes) in fam.items():
    tests = ", ".join(f"{e} {results[e][0]} passed {results[e][1]} failed" for e in sorted(exes) if e in results)
    print(f"  kernels {name:<11} {len(kernels):2d} entry points, {launches:5d} launches ({blocks:6d} blocks) "
          f"in {tests or 'no test'}; thread-order seed of launch i: mix({sys.argv[3]}, i)")
EOF

if ((mutations)); then
    echo
    say "mutation check: each altered kernel source must make the suite fail ($((SECONDS - start))s)"
    # name | file | sed expression (each must change the file)
    muts=(
        "a barrier guarding shared-memory reuse removed (block_reduce)|common.cuh|/^__device__ __forceinline__ T block_reduce/,/^}/{/^    v = scratch\[0\];$/{n;/__syncthreads();/d}}"
        "a shuffle mask narrowed to 16 lanes (block_merge)|common.cuh|s/m = fmaxf(m, __shfl_xor_sync(FULL_MASK, m, o));/m = fmaxf(m, __shfl_xor_sync(0x0000ffffu, m, o));/"
        "a row offset shifted by one element (RowSplit)|common.cuh|s/row = logits + row_index \* (uint64_t)V;/row = logits + row_index * (uint64_t)V + 1;/"
        "the in-place fused kernel reading its rows through the read-only cache|grpo.cu|s/RowSplit<E> rs(src, row, vocab, !in_place);/RowSplit<E> rs(src, row, vocab);/"
        "the kept set dropping the tokens tied at its crossing (kept_sums)|kept.cuh|s/kept_key<E>(b, z) >= tau/kept_key<E>(b, z) > tau/"
        "top-p after top-k aiming at p of the whole row's mass, not the top-k set's|kept.cuh|s/if (!s.all) lo_key = s.key, mass = (double)s.mass;/if (!s.all) lo_key = s.key;/"
    )
    # A mutant's failing proptest cases would be saved into tests/*.proptest-regressions: keep the
    # files as they are and put them back afterwards (those cases belong to the mutants).
    saved=$out/regressions-before-mutations
    rm -rf "$saved" && mkdir -p "$saved"
    cp tests/*.proptest-regressions "$saved"/ 2>/dev/null || true
    i=0
    for m in "${muts[@]}"; do
        i=$((i + 1))
        IFS='|' read -r what file expr <<<"$m"
        dir=$out/mutant$i
        rm -rf "$dir/kernels"
        mkdir -p "$dir"
        cp -r kernels "$dir/kernels"
        sed -i "$expr" "$dir/kernels/$file"
        if cmp -s "kernels/$file" "$dir/kernels/$file"; then
            say "mutation $i ($what): the edit did not apply, fix its pattern"
            failed=1
            continue
        fi
        RLVR_SIM_KERNELS=$dir/kernels bash sim/build.sh "$dir" release >/dev/null 2>&1
        caught=""
        # Every binary with few cases (the long N·V > 2^32 test aside) until one fails; a simulator
        # report aborts its process, which bash would announce: keep that quiet.
        while read -r name b; do
            log=$logs/mutant$i.$name.log
            if ! { env LD_LIBRARY_PATH="$dir/release:$RLVR_CUDA_STUB_LIBS" RLVR_SIM_SEED="$seed" PROPTEST_CASES=16 \
                "$b" --test-threads 2 --skip offsets_beyond_u32 >"$log" 2>&1; } 2>/dev/null; then
                caught="$name: $(grep -m1 -E 'kernel-sim:|^test .*FAILED' "$log" | cut -c1-160)"
                break
            fi
        done <<<"$bins"
        if [[ -n $caught ]]; then
            say "mutation $i ($what): caught by $caught"
        else
            say "mutation $i ($what): NOT CAUGHT (logs $logs/mutant$i.*)"
            failed=1
        fi
    done
    for f in tests/*.proptest-regressions; do
        if [[ -f $saved/${f##*/} ]]; then cp "$saved/${f##*/}" "$f"; else rm -f "$f"; fi
    done
fi

echo
if ((failed)); then
    say "FAILED ($((SECONDS - start))s); logs in $logs"
    exit 1
fi
say "all passed ($((SECONDS - start))s)"
