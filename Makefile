# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates/refreshes .venv/ in the repo root (only when pyproject.toml changed).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000

.PHONY: venv serve test test-fast lint register-bench build build-cuda soak clean

venv: $(STAMP)

# pip (not uv) so that torch/torchvision are taken from the local wheel cache when present.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/bentoml serve service:ClipService --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

# A ViT-B-32 with random weights: the real compute cost, for benchmarks.
register-bench: $(STAMP)
	$(BIN)/python -m models register --random-init ViT-B-32

# Bento with the served model pinned (CLIP_MODEL_TAG, else the demo model); prints its tag.
build: $(STAMP)
	$(BIN)/python -m deploy.build_bento

build-cuda: $(STAMP)
	$(BIN)/python -m deploy.build_bento --cuda

# Steady mixed load for SOAK_MINUTES (default 10): errors by status, latency and RSS over time.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
