# Two commands set everything up on a fresh machine:
#   make run   - create .venv, install the serving extras, serve weights/default on 127.0.0.1:8000
#   make test  - create .venv, install everything, then ruff, mypy and pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA_DIR ?= var

.PHONY: run test lint typecheck pytest system-deps web-runtime screenshots bench default-bundle xray-bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving only: no torch.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

# Everything: serving, training (torch from this machine's disk, pinned) and the dev tools.
$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,train,dev]'
	touch $@ $(VENV)/.serve-installed

run: $(VENV)/.serve-installed
	$(BIN)/cites-vision serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

# Debian packages the tests drive for real: Chromium for the browser tests, PostgreSQL for the
# storage tests. Best effort: the tests that need them skip, naming what is missing.
system-deps:
	@bash .ci/system-deps.sh

# The browser runtime for identifying offline on the phone (ONNX Runtime Web, WASM), installed
# from the committed lockfile into service/web/node_modules (ignored by git). Without it,
# `make run` still works and the page works online only, saying so.
WEB_DIR := service/web
web-runtime: $(WEB_DIR)/node_modules/.installed

$(WEB_DIR)/node_modules/.installed: $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	cd $(WEB_DIR) && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# Regenerate the offline screenshots in docs/screenshots (tests never write them otherwise).
screenshots: $(VENV)/.all-installed system-deps web-runtime
	CITES_WRITE_SCREENSHOTS=1 $(BIN)/pytest -q tests/service/test_offline_browser.py

lint: $(VENV)/.all-installed
	$(BIN)/ruff check model service training tests bench
	$(BIN)/ruff format --check model service training tests bench

typecheck: $(VENV)/.all-installed
	$(BIN)/mypy model service training bench

pytest: $(VENV)/.all-installed system-deps web-runtime
	$(BIN)/pytest -q -rs

test: lint typecheck pytest

# Rebuild weights/default from ../shared/data (see docs/training.md for the figures and time).
default-bundle: $(VENV)/.all-installed
	BIN=$(BIN) training/build_default.sh

# Rebuild weights/xray: synthetic composites, training, screening figures (docs/xray.md).
xray-bundle: $(VENV)/.all-installed
	BIN=$(BIN) training/build_xray.sh

# The benchmark-only packages (LitServe, py-spy, psutil) go into the same .venv.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.all-installed
	$(BIN)/pip install --quiet -e '.[serve,train,dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
