# The two commands: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch by default (a wheel of it is on our machines). A GPU host
# installs its CUDA build first, see the README.
TORCH_SPEC ?= torch==2.13.0
# pip's notes about missing local index folders are noise here, not problems.
QUIET_PIP = 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (once; again only when pyproject.toml changes)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel $(QUIET_PIP)
	$(PY) -m pip install -q $(TORCH_SPEC) $(QUIET_PIP)
	$(PY) -m pip install -q -e ".[test]" $(QUIET_PIP)
	touch $@

# make demo ADDR=127.0.0.1:8001 serves on another address.
ADDR ?= 127.0.0.1:8000

demo: $(STAMP)
	DEBUG=$${DEBUG:-1} $(PY) manage.py demo --addr $(ADDR)

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
