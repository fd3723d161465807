# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: set TORCH to the build for your CUDA (e.g. TORCH="torch --index-url ...") or
# install torch into .venv yourself first; the project never replaces an installed torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.retia-installed
PYTEST_ARGS ?=

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/digits_nas.py

clean:
	rm -rf $(VENV) retia-runs .pytest_cache
