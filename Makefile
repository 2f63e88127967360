# gapscope: `make demo` serves the bundled example, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RESULTS ?= results
EXAMPLE ?= data/example
REAL ?= $(EXAMPLE)/real
SYNTHETIC ?= $(EXAMPLE)/synthetic
BATCH_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 7860
IMAGE ?= gapscope
# umap-learn compiles with numba on first use: keep the compiled code between runs.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: help setup setup-dev example batch demo test test-random bench lint format clean docker-build docker-run docker-gpu atlas-js

help:
	@echo "make demo    build the bundled example if needed, run the batch job once, serve on $(HOST):$(PORT)"
	@echo "make batch   recompute a run: REAL=dir SYNTHETIC=dir [BATCH_ARGS='--checkpoint m.pth ...']"
	@echo "make test    set up the environment and run the whole test suite"
	@echo "make bench   benchmarks, JSON on stdout and in $(RESULTS)/bench.json"
	@echo "make lint    ruff check and format check"
	@echo "make docker-run  build the CPU image and serve the demo on $(HOST):$(PORT)"
	@echo "make docker-gpu  the GPU image (CUDA torch + RAPIDS cuML) with docker compose"

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

example: setup
	@test -f $(EXAMPLE)/metadata.csv || $(BIN)/python -m batch example --out $(EXAMPLE)

batch: setup example
	$(BIN)/python -m batch run --real $(REAL) --synthetic $(SYNTHETIC) --results $(RESULTS) $(BATCH_ARGS)

demo: setup example
	@$(BIN)/python -m batch runs --results $(RESULTS) | grep -q '^\*' || \
		$(BIN)/python -m batch run --real $(REAL) --synthetic $(SYNTHETIC) --results $(RESULTS) $(BATCH_ARGS)
	$(BIN)/python -m demo --results $(RESULTS) --host $(HOST) --port $(PORT)

test: setup-dev
	$(BIN)/python -m pytest

test-random: setup-dev
	$(BIN)/python -m pytest -p randomly

bench: setup-dev
	$(BIN)/python bench/run.py --out $(RESULTS)/bench.json

# the atlas's scatterplot, bundled once from npm (the bundle is committed: no npm at run time)
atlas-js:
	cd demo/assets/atlas && npm ci --no-audit --no-fund && \
		npx esbuild entry.js --bundle --minify --format=iife --legal-comments=eof \
		--outfile=regl-scatterplot.min.js

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docker-build:
	docker build -t $(IMAGE) .

docker-run: docker-build
	docker run --rm --init -p $(HOST):$(PORT):7860 -v gapscope-results:/app/results -v gapscope-data:/app/data $(IMAGE)

docker-gpu:
	PORT=$(PORT) docker compose -f docker-compose.gpu.yml up --build

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
