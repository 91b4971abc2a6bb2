# autokd — set-up contract: `make demo` and `make test` work on a fresh clone.
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev demo test test-all clean

# `make demo` installs the plain package; `make test` the `dev` extra (the tests and every extra, e.g. psycopg for
# postgresql+psycopg:// storages). Each re-installs only when pyproject.toml changes (idempotent); the dev install
# also counts as the plain one, so `make demo` after `make test` installs nothing.
install: $(STAMP)

install-dev: $(DEV_STAMP)

# torch/torchvision are named explicitly so pip takes the local wheels on these machines.
define venv_with_torch
test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
$(BIN)/python -m pip install -q --upgrade pip
$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q torch torchvision
endef

$(STAMP): pyproject.toml
	$(venv_with_torch)
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml
	$(venv_with_torch)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP) $(DEV_STAMP)

demo: install
	$(BIN)/autokd search spaces/mobilenet.yaml

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to each at a time, so a file's servers and
# studies stay in one process: on 2 cores, 474 s against 694 s in one process. `make test TEST_WORKERS=0` runs it
# in this process alone.
TEST_WORKERS ?= 2
PYTEST_XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install-dev
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_XDIST)

test-all: install-dev
	$(BIN)/python -m pytest -q $(PYTEST_XDIST)

clean:
	rm -rf $(VENV) studies build *.egg-info
