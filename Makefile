# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone: both build .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Python 3.12 is required by lerobot 0.6.1: take python3.12 from PATH, else the newest 3.12 pyenv knows.
# (a pyenv shim exists even when 3.12 is not selected, so it is only trusted if it runs)
PYTHON312 ?= $(shell if python3.12 --version >/dev/null 2>&1; then command -v python3.12; \
	elif command -v pyenv >/dev/null 2>&1; then ls -d $$(pyenv root)/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -n1; fi)
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most tests leave a core idle (one training thread, subprocesses waiting on each
# other), so 2 processes finish the suite on a 2-core machine in about half the time; a test file stays in one process
# (--dist loadfile), so its module fixtures are built once. TEST_JOBS=0 runs in this process only.
TEST_JOBS ?= 2

.PHONY: install test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: no Python 3.12 found (install it, e.g. 'pyenv install 3.12', or pass PYTHON312=/path/to/python3.12)"; exit 1; fi
	@[ -x $(PY) ] || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	@touch $@

install: $(VENV)/.installed

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/smolvla-train --demo

bench: install
	$(PY) bench/loader.py

clean:
	rm -rf $(VENV) build *.egg-info
