# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates/refreshes .venv/ in the repo root (only when pyproject.toml changed).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000

.PHONY: venv serve test test-fast lint register-bench build build-full build-cuda container container-full test-container test-siglip bench-container soak loadtest bench docs-figures demo clean

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
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# A ViT-B-32 with random weights: the real compute cost, for benchmarks.
register-bench: $(STAMP)
	$(BIN)/python -m models register --random-init ViT-B-32

# Bento with the served model pinned (CLIP_MODEL_TAG, else the demo model); prints its tag. The CPU
# bento is the slim one (a compiled entry, no torch); build-full adds torch; build-cuda is for GPUs.
build: $(STAMP)
	$(BIN)/python -m deploy.build_bento

build-full: $(STAMP)
	$(BIN)/python -m deploy.build_bento --variant full

build-cuda: $(STAMP)
	$(BIN)/python -m deploy.build_bento --variant cuda

# The container image of that bento with Docker or Podman (no registry needed); prints the image.
container: $(STAMP)
	$(BIN)/python -m deploy.container

container-full: $(STAMP)
	$(BIN)/python -m deploy.container --variant full

# The slim and full images of a ViT-B-32 measured beside the host (size, start, RSS, images/s at 16
# clients) and a first start that compiles: bench_results/container.json.
bench-container: $(STAMP)
	$(BIN)/python -m bench.container $(BENCH_ARGS)

# Builds the slim image, starts it and checks it against the host service (skips without an engine).
test-container: $(STAMP)
	CLIP_TEST_CONTAINER=1 $(BIN)/python -m pytest -q -ra -n0 tests/container

# open_clip's real ViT-B-16-SigLIP and ViT-B-16-SigLIP2 configs (random weights, local stand-in tokenizers):
# registered, compiled, held to open_clip's ids and embeddings, served on torch and int8 without torch.
# Not part of `make test` (minutes, several GB); the cosines go to bench_results/siglip.json.
test-siglip: $(STAMP)
	CLIP_TEST_SIGLIP=1 $(BIN)/python -m pytest -q -ra -n0 tests/siglip

# Steady mixed load for SOAK_MINUTES (default 10): errors by status, latency and RSS over time.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# Headless locust against a running server (`make serve` in another shell); CSV + HTML reports
# in bench_results/loadtest/. LOADTEST_TAGS picks scenarios: image, text, mixed, openai or a route name.
LOADTEST_HOST ?= http://localhost:3000
LOADTEST_USERS ?= 16
LOADTEST_SPAWN_RATE ?= 4
LOADTEST_TIME ?= 1m
LOADTEST_TAGS ?=
LOADTEST_OUT := bench_results/loadtest

loadtest: $(STAMP)
	@mkdir -p $(LOADTEST_OUT)
	$(BIN)/locust -f locustfile.py --headless --host $(LOADTEST_HOST) -u $(LOADTEST_USERS) \
		-r $(LOADTEST_SPAWN_RATE) -t $(LOADTEST_TIME) --stop-timeout 30 $(if $(LOADTEST_TAGS),--tags $(LOADTEST_TAGS)) \
		--csv $(LOADTEST_OUT)/locust --html $(LOADTEST_OUT)/report.html

# ViT-B-32 (random init) on this machine: in-process limit vs our service (batched and not) vs a
# transformers baseline, and each server's memory; bench_results/bench.json and plots beside it.
# BENCH_ARGS passes options (e.g. --series b --levels 1,16,64 for an A/B).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The docs' figure tables and plots from docs/bench/ (bench.json, container.json); BENCH_JSON=bench_results/bench.json
# (or bench_results/container.json) makes a new run the quoted one first.
BENCH_JSON ?=
docs-figures: $(STAMP)
	$(BIN)/python -m bench.report $(if $(BENCH_JSON),--adopt $(BENCH_JSON))

# Retrain the bundled demo model (models/demo/) from scratch on generated shapes: CPU, seeded.
demo: $(STAMP)
	$(BIN)/python -m models build-demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
