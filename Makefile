# hiercam developer commands. Everything runs inside .venv, created on first use from a plain Python 3.10+.
#   make test   lint, type check, tests (doctests, examples and the notebook included), docs, wheel smoke test
#   make docs   the documentation site, built into site/ with warnings as errors
#   make demo   the recommended method against Grad-CAM on the bundled data; writes a report with figures
#               (DEMO_ARGS passes options to `hiercam demo`, e.g. make demo DEMO_ARGS='--threads 1')
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The dev/test install pins PyTorch; the library itself only asks for torch>=2.3, torchvision>=0.18.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/python -m pip install --disable-pip-version-check
DEMO_OUT ?= demo-report
DEMO_ARGS ?=
# pytest's worker processes (pytest-xdist), each running whole test files so that a module's fixtures are built
# once. Each worker has one intra-op thread (tests/conftest.py). On the 2-core machine the suite took 514 s with
# two workers against 811-874 s in one process. PYTEST_WORKERS=0 runs in one process (easier to debug).
PYTEST_WORKERS ?= 2
PYTEST_ARGS := --durations=15 --numprocesses=$(PYTEST_WORKERS) --dist=loadfile

.PHONY: test lint typecheck pytest docs wheel-smoke demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(BIN)/python
	$(PIP) $(TORCH_PINS)
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) -e '.[test,docs]' $(TORCH_PINS)
	touch $@

$(VENV)/.docs-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) -e '.[docs]' $(TORCH_PINS)
	touch $@

$(VENV)/.demo-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) -e '.[viz]' $(TORCH_PINS)
	touch $@

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) docs
	$(MAKE) wheel-smoke

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The site: API reference from the docstrings, how-to pages that include the examples' code. --strict turns
# every warning (a broken link, an unresolved cross-reference, a missing included file) into an error.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Build the wheel and import it from outside the source tree, so that missing package data or a
# broken entry point fails here rather than for a user.
wheel-smoke: $(VENV)/.test-installed
	rm -rf build dist
	$(BIN)/python -m build --wheel --outdir dist .
	sh scripts/wheel_smoke.sh "$(abspath $(BIN)/python)" "$(abspath dist)"

demo: $(VENV)/.demo-installed
	$(BIN)/python -m hiercam demo --out $(DEMO_OUT) $(DEMO_ARGS)

clean:
	rm -rf build dist site .mypy_cache .ruff_cache .pytest_cache $(DEMO_OUT)
