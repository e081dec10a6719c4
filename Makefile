# moeserve — the two commands a newcomer runs: `make setup && make run`, and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 is on disk on the project's machines; installing it
# first keeps pip from resolving a multi-GB CUDA build for the range in pyproject.toml.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup run test lint typecheck contracts pytest bench fuzz helm clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(BIN)/moeserve run

test: lint typecheck contracts pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

contracts: setup
	$(BIN)/lint-imports

pytest: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

bench: setup
	$(BIN)/python bench/vs_transformers.py

# The long fuzz run: schemathesis against the live app's OpenAPI with two workspaces'
# tokens (`make test` runs the short seeded one).
fuzz: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MOESERVE_FUZZ_EXAMPLES=300 MOESERVE_FUZZ_SEED=random \
		$(BIN)/pytest -q tests/fuzz --timeout 3600

# The real Helm binary the chart tests run, cached in .cache/helm/ (they fetch it if missing).
helm: setup
	$(BIN)/python -m tests.deploy.fetch_helm

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
