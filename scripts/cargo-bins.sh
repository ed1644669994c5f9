# Sourced by scripts/build-gpu-bundle.sh and scripts/kernel-sim.sh (run from the repository root).

# The GPU test files: those that exist only with the feature, `#![cfg(feature = "cuda")]`.
gpu_test_names() {
    grep -l '^#!\[cfg(feature = "cuda")\]' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//'
}

# "name path" of the executables of target kind $1 (test, bench, bin) that cargo built, from its
# JSON messages on stdin (cargo also builds the `rlvr` binary for integration tests: filtered out
# by kind).
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
