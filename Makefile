# The README's two commands: `make demo` and `make test`. Each creates the
# virtual environment on first use (about 2 minutes), then runs its job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/discomkd-geo demo --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(BIN)/ruff check discomkd_geo tests benchmarks
	$(BIN)/python -m pytest

# The edit loop's tier: everything but the tests marked slow (under a minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/ruff check discomkd_geo tests benchmarks
	$(BIN)/python -m pytest -m "not slow" -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
