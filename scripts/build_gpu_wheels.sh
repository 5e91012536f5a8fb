#!/usr/bin/env bash
# Wheels of what `make gpu-check` needs beyond a bare CUDA machine (torch, transformers,
# lightning, accelerate, peft): every distribution in scripts/gpu_wheels.txt as a pure-Python
# wheel at the version of the CUDA lock (requirements/gpu.txt), plus the SmolLM2 tokenizer the
# check's random-init models use, into .gpu-wheels/ (git-ignored, at most 60 MiB). Build it on
# a machine with `make install` done; the folder then travels with the work tree.
#   bash scripts/build_gpu_wheels.sh [OUT]        (default .gpu-wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-.gpu-wheels}
TMP="$OUT.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"

specs=()
while read -r name; do
  spec=$(grep -i -m1 "^$name==" requirements/gpu.txt || true)
  if [ -z "$spec" ]; then
    echo "error: $name (scripts/gpu_wheels.txt) is not in requirements/gpu.txt; run make lock" >&2
    exit 1
  fi
  specs+=("$spec")
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/gpu_wheels.txt)
echo "building wheels: ${specs[*]}"
# --no-deps: each listed distribution is built alone (their requirements are either listed
# too or on the bare machine); sdists such as antlr4-python3-runtime are built into wheels.
"$PY" -m pip wheel -q --no-deps -w "$TMP" "${specs[@]}"
for whl in "$TMP"/*.whl; do
  case "$whl" in
    *-none-any.whl) ;;
    *) echo "error: $whl is not a pure-Python wheel; it would not install on another Python" >&2; exit 1 ;;
  esac
done

"$PY" - "$TMP/smollm2-tokenizer" <<'PYEOF'
import sys
from transformers import AutoTokenizer
from matrix.llm.embedded import smollm2_hf_dir
AutoTokenizer.from_pretrained(smollm2_hf_dir()).save_pretrained(sys.argv[1])
PYEOF

bytes=$(du -sb "$TMP" | cut -f1)
if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
  echo "error: $TMP holds $((bytes / 1024 / 1024)) MiB, over the 60 MiB limit" >&2
  exit 1
fi
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "wrote $OUT ($((bytes / 1024)) KiB): $(cd "$OUT" && ls *.whl | tr '\n' ' ')"
