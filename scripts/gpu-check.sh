#!/usr/bin/env bash
# Runs on the GPU host (CUDA 13.0 driver, compute-sanitizer; no Rust) from the .gpu/ folder made
# by scripts/build-gpu-bundle.sh:  bash .gpu/gpu-check.sh
#
# 1. every cuda_* test binary (token stats, GRPO loss forward/backward/fused, sequence kernels:
#    property tests vs the f64 reference, N > 65535, N·V > 2^32, bad input, 10 bit-identical runs);
# 2. `rlvr stats` and `rlvr train --quick` with --device cuda;
# 3. the bench (plain read, fused stats with/without top-p, the GRPO loss fwd / fwd+bwd / fused
#    fwd+bwd, candle compositions, peak device memory);
# 4. compute-sanitizer memcheck on the small case `sanitizer_small_case` of every binary, then
#    racecheck on each (memcheck first: it is the cheaper of the two);
# then a short table, last. Logs go to $OUT (the device tool's folder) or /tmp/rlvr-gpu/out.
# Budget: RLVR_GPU_BUDGET_S (540 s) in all, so one device call of 600 s runs it and still prints the
# table. Exit status: non-zero if any step failed, was skipped, or did not run.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${TMPDIR:-/tmp}/rlvr-gpu
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
rm -f "$out"/*.log
export PROPTEST_CASES=${PROPTEST_CASES:-1000}
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")

unpack() { # file: .gz or .xz (xz, or Python's lzma where xz is not installed)
    local f=$1 base=${1##*/}
    base=${base%.*}
    case $f in
        *.gz) gunzip -c "$f" >"$work/$base" ;;
        *.xz) if command -v xz >/dev/null; then xz -dc "$f" >"$work/$base"; else
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
                "$f" >"$work/$base"; fi ;;
    esac
    chmod +x "$work/$base"
}
for f in "$here"/*.gz "$here"/*.xz; do
    [[ -e $f ]] && unpack "$f"
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"

summary=()
failed=0
# The device tool allows 600 s per command: stop starting steps in time to print the table.
budget=${RLVR_GPU_BUDGET_S:-540}
step() { # name, log, max seconds, command...: runs it, records "name  Ns  ok/FAILED"
    local name=$1 log=$2 limit=$3 t0=$SECONDS rc
    shift 3
    local left=$((budget - SECONDS))
    if ((left < 20)); then
        summary+=("$(printf '%-34s %-8s %s' "$name" "-" "NOT RUN (time budget of ${budget}s spent)")")
        failed=1
        return
    fi
    timeout $((limit < left ? limit : left)) "$@" >"$out/$log" 2>&1
    rc=$?
    local status="ok"
    if [[ $rc -ne 0 ]]; then status="FAILED (exit $rc, see $out/$log)"; failed=1; fi
    summary+=("$(printf '%-34s %-8s %s' "$name" "$((SECONDS - t0))s" "$status")")
    tail -n 3 "$out/$log"
}

no_skip() { # a GPU host must not skip: that would be a test that silently ran nothing
    if grep -hs "skipping" "$1"; then
        summary+=("    SKIPPED on a GPU host: FAILED (see $1)")
        failed=1
    fi
}

# Order: correctness first, then the numbers, then the sanitizers (slowest per kernel launch).
for t in "$work"/cuda_*; do
    [[ -x $t ]] || continue
    name=$(basename "$t")
    step "tests $name" "$name.log" 240 "$t" --test-threads 4 --nocapture
    no_skip "$out/$name.log"
    summary+=("    $(grep -h '^test result' "$out/$name.log" | tail -n 1)")
done

# The command line end to end on the device: a logits dump through `stats`, and the training
# loop's quick setting (candle model, fused ops and kernels on the GPU, metrics and plots).
if [[ -x $work/rlvr ]]; then
    step "rlvr example + stats --device cuda" rlvr_stats.log 60 bash -c \
        "'$work/rlvr' -q example --out '$work/ex.safetensors' && '$work/rlvr' -q stats --device cuda --input '$work/ex.safetensors'"
    step "rlvr train --quick --device cuda" rlvr_train.log 150 "$work/rlvr" -q train --quick --device cuda --out-dir "$work/runs"
fi

for b in "$work"/bench_*; do
    [[ -x $b ]] || continue
    step "bench $(basename "$b")" "$(basename "$b").log" 240 "$b"
    no_skip "$out/$(basename "$b").log"
done

for tool in memcheck racecheck; do
    for t in "$work"/cuda_*; do
        [[ -x $t ]] || continue
        name=$(basename "$t")
        step "$tool $name" "$name.$tool.log" 90 "$sanitizer" --tool "$tool" \
            --error-exitcode 9 "$t" sanitizer_small_case --test-threads 1
        summary+=("    $(grep -h 'ERROR SUMMARY' "$out/$name.$tool.log" 2>/dev/null | tail -n 1)")
    done
done

echo
echo "== rlvr-kernels GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(cat "$out/device.txt")"
printf '%s\n' "${summary[@]}"
for b in "$work"/bench_*; do
    log="$out/$(basename "$b").log"
    grep -hs "device memory in use\|composition failed" "$log"
    [[ -f $log ]] && sed -n '/^CUDA token statistics/,$p' "$log"
done
exit $failed
