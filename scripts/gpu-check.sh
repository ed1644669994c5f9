#!/usr/bin/env bash
# Runs on the GPU host (CUDA 13.0 driver, compute-sanitizer; no Rust) from the .gpu/ folder made
# by scripts/build-gpu-bundle.sh:  bash .gpu/gpu-check.sh
#
# 1. every cuda_* test binary (token stats, GRPO loss forward/backward/fused, sequence kernels, the
#    candle ops: property tests vs the f64 reference, N > 65535, N·V > 2^32, bad input, 10
#    bit-identical runs);
# 2. `rlvr stats` and `rlvr train --quick` with --device cuda;
# 3. the bench (plain read, fused stats with/without top-p, the GRPO loss fwd / fwd+bwd / fused
#    fwd+bwd, candle compositions on a row subset, peak device memory);
# 4. compute-sanitizer memcheck on the test `sanitizer_small_case` of every binary, then racecheck
#    on each (memcheck first: it is the cheaper of the two);
# then a table of every step (ran: ok / FAILED / TIMED OUT; or NOT RUN for budget), last. Logs go
# to $OUT (the device tool's folder) or /tmp/rlvr-gpu/out. Exit status: non-zero if any step
# failed, timed out, skipped its tests, or did not run.
#
# Budget: one device call of 600 s. The steps may use RLVR_GPU_BUDGET_S (570 s) counted from the
# start of this script; the other 30 s cover the table and the device tool. Each step has a
# ceiling (it is killed there and reported TIMED OUT), and the ceilings add up to less than the
# budget, so every step gets its whole ceiling and the table always prints:
#     setup (unpack the binaries, nvidia-smi)                                  20
#   + tests: cuda_grpo 40, cuda_ops 50, cuda_sequence 20, cuda_token_stats 60    170
#   + rlvr example + stats 15, rlvr train --quick 30                             45
#   + bench_cuda                                                                 90
#   + memcheck 4 × 25                                                           100
#   + racecheck 4 × 35                                                          140
#   = 565 s, 5 s under the budget (a step killed at its ceiling gets 5 s to exit: timeout -k 5).
# The expected time of each step (estimates, no GPU figure exists yet) is in BENCHMARKS.md, "GPU
# check budget". A binary not listed below gets the default ceiling of its kind, and the plan line
# printed first says when the ceilings then exceed the budget (the last steps may then be NOT RUN).
#
# RLVR_GPU_DRY_RUN=1: nvidia-smi, compute-sanitizer and every binary's execution become instant
# stubs (plausible log lines, exit 0); everything else (unpacking, the checks of the logs, the
# table) is real. It measures this script's own overhead on any machine:
#   time RLVR_GPU_DRY_RUN=1 bash .gpu/gpu-check.sh
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${TMPDIR:-/tmp}/rlvr-gpu
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
rm -f "$out"/*.log
export PROPTEST_CASES=${PROPTEST_CASES:-1000}
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
dry=${RLVR_GPU_DRY_RUN:-0}

budget=${RLVR_GPU_BUDGET_S:-570}
setup_limit=20
declare -A test_limit=([cuda_grpo]=40 [cuda_ops]=50 [cuda_sequence]=20 [cuda_token_stats]=60)
default_test_limit=40
stats_limit=15
train_limit=30
bench_limit=90
memcheck_limit=25
racecheck_limit=35

# Dry run: every GPU command runs through this stub instead (it prints what the checks below
# look for: a passing libtest summary, a clean compute-sanitizer summary).
run=()
if [[ $dry == 1 ]]; then
    cat >"$work/dry-stub" <<'EOF'
#!/usr/bin/env bash
echo "dry run (no GPU): $*"
for a in "$@"; do [[ $a == --tool ]] && sanitizer=1; [[ $a == sanitizer_small_case ]] && one=1; done
if [[ -n ${one:-} ]]; then
    printf '\nrunning 1 test\ntest sanitizer_small_case ... ok\n\ntest result: ok. 1 passed; 0 failed\n'
else
    printf '\ntest result: ok. 0 passed; 0 failed (dry run: nothing ran)\n'
fi
[[ -n ${sanitizer:-} ]] && echo "========= ERROR SUMMARY: 0 errors (dry run)"
exit 0
EOF
    chmod +x "$work/dry-stub"
    run=("$work/dry-stub")
fi

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
# All at once: the host has 16 cores, and each binary decompresses on one.
for f in "$here"/*.gz "$here"/*.xz; do
    [[ -e $f ]] && unpack "$f" &
done
wait
if [[ $dry == 1 ]]; then
    echo "DRY RUN: no GPU queried, no binary run" | tee "$out/device.txt"
else
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
fi
setup_s=$SECONDS

tests=() # the cuda_* test binaries, by name
for t in "$work"/cuda_*; do [[ -x $t ]] && tests+=("$(basename "$t")"); done
benches=()
for b in "$work"/bench_*; do [[ -x $b ]] && benches+=("$(basename "$b")"); done
planned=$setup_limit
for name in "${tests[@]}"; do
    ((planned += ${test_limit[$name]:-$default_test_limit} + memcheck_limit + racecheck_limit))
done
[[ -x $work/rlvr ]] && ((planned += stats_limit + train_limit))
((planned += ${#benches[@]} * bench_limit))
plan="plan: ${#tests[@]} test binaries, ${#benches[@]} bench, ceilings ${planned}s of a ${budget}s budget"
((planned > budget)) && plan+=" (OVER: the last steps may be NOT RUN)"
echo "$plan; setup took ${setup_s}s"

summary=()
failed=0
ran=0
not_run=0
row() { summary+=("$(printf '%-36s %6s %7s  %s' "$@")"); }
row "step" "limit" "took" "status"
row "setup (unpack, nvidia-smi)" "${setup_limit}s" "${setup_s}s" "$( ((setup_s > setup_limit)) && echo "over its ceiling" || echo ok)"

step() { # name, log, ceiling (s), command...: runs it within the budget and adds its table row
    local name=$1 log=$2 limit=$3 t0=$SECONDS rc status
    shift 3
    local left=$((budget - SECONDS))
    if ((left < 10)); then
        row "$name" "${limit}s" "-" "NOT RUN (budget of ${budget}s spent)"
        failed=1
        ((not_run += 1))
        return 1
    fi
    ((limit > left)) && limit=$left
    timeout -k 5 "$limit" "$@" >"$out/$log" 2>&1
    rc=$?
    ((ran += 1))
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMED OUT (see $out/$log)" ;;
        *) status="FAILED (exit $rc, see $out/$log)" ;;
    esac
    [[ $rc -ne 0 ]] && failed=1
    row "$name" "${limit}s" "$((SECONDS - t0))s" "$status"
    tail -n 3 "$out/$log"
}

note() { # an indented line under the step's row (nothing when empty)
    if [[ -n $* ]]; then summary+=("    $*"); fi
}

fail_note() { # a failed check of a step's log
    note "$* : FAILED"
    failed=1
}

no_skip() { # a GPU host must not skip: that would be a test that silently ran nothing
    if grep -hs "skipping" "$1"; then
        fail_note "SKIPPED on a GPU host (see $1)"
    fi
}

# Order: correctness first, then the numbers, then the sanitizers (slowest per kernel launch).
for name in "${tests[@]}"; do
    step "tests $name" "$name.log" "${test_limit[$name]:-$default_test_limit}" \
        "${run[@]}" "$work/$name" --test-threads 4 --nocapture
    [[ -f $out/$name.log ]] || continue
    no_skip "$out/$name.log"
    note "$(grep -h '^test result' "$out/$name.log" | tail -n 1)"
done

# The command line end to end on the device: a logits dump through `stats`, and the training
# loop's quick setting (candle model, fused ops and kernels on the GPU, metrics and plots).
if [[ -x $work/rlvr ]]; then
    step "rlvr example + stats --device cuda" rlvr_stats.log "$stats_limit" "${run[@]}" bash -c \
        "'$work/rlvr' -q example --out '$work/ex.safetensors' && '$work/rlvr' -q stats --device cuda --input '$work/ex.safetensors'"
    step "rlvr train --quick --device cuda" rlvr_train.log "$train_limit" \
        "${run[@]}" "$work/rlvr" -q train --quick --device cuda --out-dir "$work/runs"
fi

for name in "${benches[@]}"; do
    step "bench $name" "$name.log" "$bench_limit" "${run[@]}" "$work/$name"
    [[ -f $out/$name.log ]] && no_skip "$out/$name.log"
done

# `--exact`: the one test of that name. A binary without it would run 0 tests under the sanitizer
# and pass having checked nothing: that is a failure.
for tool in memcheck racecheck; do
    limit_var=${tool}_limit
    for name in "${tests[@]}"; do
        log="$name.$tool.log"
        step "$tool $name" "$log" "${!limit_var}" "${run[@]}" "$sanitizer" --tool "$tool" \
            --error-exitcode 9 "$work/$name" sanitizer_small_case --exact --test-threads 1 --nocapture
        [[ -f $out/$log ]] || continue
        if ! grep -q '^test sanitizer_small_case \.\.\. ok' "$out/$log"; then
            fail_note "$tool $name ran no passing sanitizer_small_case ($(grep -hm1 '^running [0-9]* test' "$out/$log" || echo 'no test output'))"
        fi
        no_skip "$out/$log"
        note "$(grep -h 'ERROR SUMMARY' "$out/$log" | tail -n 1)"
    done
done

echo
echo "== rlvr-kernels GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(cat "$out/device.txt")"
[[ $dry == 1 ]] && echo "== DRY RUN: stubs instead of the GPU; the times are this script's own overhead"
echo "$plan"
printf '%s\n' "${summary[@]}"
echo "steps: $ran ran, $not_run not run for budget; ${SECONDS}s in all; exit $failed"
for name in "${benches[@]}"; do
    log="$out/$name.log"
    grep -hs "device memory in use\|composition failed" "$log"
    [[ -f $log ]] && sed -n '/^CUDA token statistics/,$p' "$log"
done
# The static model's predictions for this GPU, to put beside the measured rows above (BENCHMARKS.md:
# explain every kernel more than 20% off).
if [[ -f $here/kernel-model.expected ]]; then
    gpu=H100
    grep -qs "H200" "$out/device.txt" && gpu=H200
    echo "== predicted by the static model (scripts/kernel-model.sh), $gpu, [4096, 151936], LM-like rows for top-p:"
    awk -F'\t' -v g="$gpu" '$3 == g && ($2 == "lm" || $2 == "-") && $1 !~ /_f16$/ &&
        $1 ~ /^(plain_read|token_stats|grpo_forward|grpo_fused|grpo_backward)_/ { printf "  %-26s %7.3f ms\n", $1, $4 }' \
        "$here/kernel-model.expected"
fi
exit $failed
