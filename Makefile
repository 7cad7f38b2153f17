# The README's two commands: `make demo` and `make test`. Each creates the
# virtual environment on first use (about 2 minutes), then runs its job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast docs lint bench clean qgis-deps

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/discomkd-geo demo --out $(DEMO_OUT) --overwrite

test: $(STAMP) qgis-deps
	$(BIN)/ruff check discomkd_geo tests benchmarks
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest

# The documentation (Sphinx, docs/), warnings as errors; also built by `make test`.
# Under a minute: the API pages are generated from the docstrings at each build.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# The edit loop's tier: everything but the tests marked slow (under a minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/ruff check discomkd_geo tests benchmarks
	$(BIN)/python -m pytest -m "not slow" -q

# QGIS (Debian/Ubuntu's qgis package, for tests/test_qgis.py's qgis_process runs and the
# README's dialog screenshot under Xvfb): installed where it is missing and apt-get runs
# as root (or through passwordless sudo, as on CI runners); otherwise those tests are
# reported as skipped ("not run: QGIS not installed"). About 1 GB: apt-get update + install took 6 min on our 2-core machine.
qgis-deps:
	@if command -v qgis_process >/dev/null 2>&1; then \
	  echo "qgis-deps: $$(command -v qgis_process) present"; \
	elif command -v apt-get >/dev/null 2>&1 && \
	     { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  as_root=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$as_root apt-get update -q && $$as_root env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends qgis python3-qgis qgis-providers \
	    xvfb xauth; \
	else \
	  echo "qgis-deps: QGIS missing, and no apt-get as root: QGIS tests will not run"; \
	fi

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache docs/_build docs/api/generated
