# Two commands set everything up on a fresh machine:
#   make run   - create .venv, install the serving extras, serve weights/default on 127.0.0.1:8000
#   make test  - create .venv, install everything, then ruff, mypy and pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA_DIR ?= var

.PHONY: run test test-fast lint typecheck pytest system-deps web-runtime screenshots bench default-bundle default-bundle-refresh xray-bundle clean

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
# storage tests. Installed once: the script returns at once when both are present. Best effort:
# the tests that need them skip, naming what is missing (in CI, CI=true, they fail instead).
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

# Regenerate the screenshots in docs/screenshots (docs/web.md; tests never write them otherwise:
# they take them into a temporary folder).
screenshots: $(VENV)/.all-installed system-deps web-runtime
	CITES_WRITE_SCREENSHOTS=1 $(BIN)/pytest -q tests/service/test_offline_browser.py \
		tests/service/test_browser_permit.py tests/service/test_browser.py \
		tests/service/test_browser_answers.py

lint: $(VENV)/.all-installed
	$(BIN)/ruff check model service training tests bench
	$(BIN)/ruff format --check model service training tests bench

typecheck: $(VENV)/.all-installed
	$(BIN)/mypy model service training bench

# Two pytest workers, one test file at a time each (a file's module fixtures, e.g. its
# PostgreSQL server or its service process, stay on one worker): 10 min instead of 13.
pytest: $(VENV)/.all-installed system-deps web-runtime
	$(BIN)/pytest -q -rs -n 2 --dist loadfile

test: lint typecheck pytest

# The edit-test loop (under a minute, docs/architecture.md): lint, then the tests that need no
# browser, no PostgreSQL, no torch and no service process, and are not slow, on two pytest
# workers (pytest-xdist). `make test` runs everything.
FAST_MARKERS := not slow and not browser and not postgres and not train and not live
test-fast: $(VENV)/.all-installed
	$(BIN)/ruff check model service training tests bench
	$(BIN)/pytest -q -x -n 2 -m "$(FAST_MARKERS)" -p no:cacheprovider

# Rebuild weights/default from ../shared/data (see docs/training.md for the figures and time).
default-bundle: $(VENV)/.all-installed
	BIN=$(BIN) training/build_default.sh

# Keep weights/default's trained model; redo calibration, OOD model, INT8, reports, open set.
default-bundle-refresh: $(VENV)/.all-installed
	BIN=$(BIN) training/build_default.sh --from-bundle weights/default

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
