#!/usr/bin/env bash
# `make gpu-check`: the GPU check (tools/gpu_check.py) with this project's venv where
# there is one, else with the machine's python3 plus the wheels of .gpu-wheels/ (built by
# scripts/build_gpu_wheels.sh), installed into .gpu-site/ without touching the machine's own
# packages. Without a CUDA device it runs the dry mode. Arguments go to the check (--out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SITE=.gpu-site
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if [ ! -d .gpu-wheels ]; then
    echo "error: $PY cannot import hydra and there is no .gpu-wheels/; run scripts/build_gpu_wheels.sh on a machine with the project installed and bring the folder along" >&2
    exit 2
  fi
  if [ ! -f "$SITE/.installed" ] || [ .gpu-wheels -nt "$SITE/.installed" ]; then
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu-wheels/*.whl
    touch "$SITE/.installed"
  fi
  export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tools.gpu_check "$@"
