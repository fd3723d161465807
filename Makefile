# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: set TORCH to the build for your CUDA (e.g. TORCH="torch --index-url ...") or
# install torch into .venv yourself first; the project never replaces an installed torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.retia-installed
PYTEST_ARGS ?=
# Test processes: about half the suite's time is waiting (sockets, timeouts, child processes),
# so two share two cores well. Each file runs in one of them (its module-scoped cluster starts once).
PYTEST_WORKERS ?= 2

.PHONY: setup test lint demo clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[test]'
	$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# The dashboard's browser tests drive the distribution's Chromium; they skip (saying why) without it.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y chromium chromium-driver || echo "note: could not install chromium; the dashboard's browser tests will skip"; \
	else echo "note: no /usr/bin/chromium; install chromium and chromium-driver (as root) for the dashboard's browser tests, which skip without them"; fi

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# mypy maps files to modules by folder; the package's folders (common/ is `retia`) are linked
# into build/typecheck/retia so it checks them under the names users import.
# tests/ is checked as `tests`; sys_path/ has tests/common's files, top-level as pytest imports them.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	rm -rf $(TYPECHECK)/retia $(TYPECHECK)/tests $(TYPECHECK)/sys_path
	mkdir -p $(TYPECHECK)/retia $(TYPECHECK)/sys_path
	for f in common/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/retia/; done
	for d in client dispatcher worker; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/retia/$$d; done
	ln -s "$(CURDIR)/tests" $(TYPECHECK)/tests
	for f in tests/common/*.py; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/sys_path/; done
	cd $(TYPECHECK) && MYPYPATH=sys_path "$(CURDIR)/$(PY)" -m mypy --config-file "$(CURDIR)/pyproject.toml" -p retia -p tests

demo: $(STAMP)
	$(PY) examples/digits_nas.py

clean:
	rm -rf $(VENV) retia-runs .pytest_cache build .mypy_cache .ruff_cache
