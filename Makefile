# Every target sets up (or updates) the virtualenv itself; a second run is a no-op.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The versions the lock (requirements/*.txt, `make lock`) is made for. torch's build is picked
# for the machine (scripts/install.sh): CUDA where `nvidia-smi` answers, CPU elsewhere;
# override with TORCH_BUILD=cpu|cuda, and TORCH_INDEX=<url> for where the CPU build comes from.
TORCH_VERSION := 2.13.0
VLLM_VERSION := 0.32.0
STAMP := $(VENV)/.matrix-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install lock demo test test-all llm-server bench-llm bench-server gpu-check gpu-wheels lint format config-doc clean-demo clean-stale soak

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install.sh $(wildcard requirements/*.txt)
	bash scripts/install.sh $(VENV)
	@touch $@

# Regenerate the lock after changing a range in pyproject.toml (scripts/lock.sh says how).
lock: install
	bash scripts/lock.sh

# The whole loop on the embedded model: simulate -> generate -> train -> evaluate into runs/demo/.
demo: install
	$(PY) -m matrix.pipeline experiment=demo

test: install
	$(PY) -m pytest -q -m "not slow and not server"

# Everything, including the slow tests and the real OpenAI-compatible server tests (vLLM's
# CPU build in its own virtualenv, .venv-vllm, set up by scripts/setup_llm_server.sh).
# Two runs: the server tests first, so the vLLM server they share is gone before the slow
# tests' 8 x 1024-token training (14 GB) starts; together they can outgrow a 24 GiB machine.
test-all: install
	bash scripts/setup_llm_server.sh
	$(PY) -m pytest -q -m server; s=$$?; $(PY) -m pytest -q -m "not server"; n=$$?; exit $$((s || n))

# An OpenAI-compatible vLLM server on 127.0.0.1:$(PORT) in its own venv (.venv-vllm: the CPU
# build without CUDA, the CUDA build with it). MODEL: a Hugging Face folder (default: the
# embedded SmolLM2, served as "smollm2"); SERVED_NAME: the served name (default: the folder's name);
# TP/DP: tensor- and data-parallel size. Prints the `llm=` overrides that point the stages at it.
#   make llm-server MODEL=/models/Meta-Llama-3-8B-Instruct SERVED_NAME=llama3-8b-instruct TP=2 DP=4
MODEL ?=
SERVED_NAME ?=
PORT ?= 8000
TP ?= 1
DP ?= 1
MAX_MODEL_LEN ?= 2048
llm-server: install
	bash scripts/setup_llm_server.sh
	$(PY) -m matrix.llm.server --port $(PORT) --max-model-len $(MAX_MODEL_LEN) \
	  --tensor-parallel-size $(TP) --data-parallel-size $(DP) \
	  $(if $(MODEL),--model-dir $(MODEL),) $(if $(SERVED_NAME),--served-name $(SERVED_NAME),)

bench-llm: install
	bash scripts/setup_llm_server.sh
	$(PY) bench/llm.py --server

# The same simulate + generate work through the server and in process (docs/llm.md).
bench-server: install
	bash scripts/setup_llm_server.sh
	$(PY) bench/server_vs_inprocess.py

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
	$(PY) -m tools.long_functions --check
	$(PY) -m tools.long_modules --check
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# docs/config.md, the config reference, regenerated from conf/ (a test fails when it is stale).
config-doc: install
	$(PY) -m tools.config_reference

clean-demo:
	rm -rf runs/demo

# Outputs a stage set aside when it started fresh over another config's folder
# (runs/<run>/.stale/<stage>__<config hash>__<time>/): listed with sizes, removed once you say
# so (YES=1: without asking). Nothing else ever deletes them.
RUNS ?= $(or $(MATRIX_RUNS_DIR),runs)
YES ?=
clean-stale:
	@found=$$(find "$(RUNS)" -type d -name .stale -prune 2>/dev/null); \
	if [ -z "$$found" ]; then echo "nothing set aside under $(RUNS)"; exit 0; fi; \
	du -sh $$found/* 2>/dev/null; \
	if [ "$(YES)" != 1 ]; then read -r -p "remove these set-aside outputs? [y/N] " a; \
	  [ "$$a" = y ] || [ "$$a" = Y ] || { echo "kept"; exit 0; }; fi; \
	rm -rf $$found; echo "removed $$(echo $$found | wc -w) .stale folder(s)"

# 20 random SIGKILLs per stage on debug=tiny (slow, not in CI): kills survived, rows lost,
# duplicated and changed, work redone; see docs/robustness.md.
soak: install
	$(PY) -m tests.core.soak --kills 20
