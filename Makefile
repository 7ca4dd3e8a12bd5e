# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# PYTHON may be python3.11, python3.12 or python3.13 (e.g. make test PYTHON=python3.13); a
# .venv made by another Python is made again.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STAMP  := $(VENV)/.installed-$(PYVER)

.PHONY: demo test lint typecheck unit bench bench-quick soak clean system-deps

$(STAMP): pyproject.toml
	@test -n "$(PYVER)" || { echo "make: $(PYTHON) does not run" >&2; exit 1; }
	test "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
	  = "$(PYVER)" || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[blender,usd,fuse,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/turntable/demo.py

test: $(STAMP) system-deps lint typecheck unit

# Slurm, munge and chromium for the real-engine tests: only as root with apt-get, best effort.
system-deps:
	@sh scripts/ci-system-deps.sh

SOURCES := $(wildcard jitrender hooks tests benchmarks examples)

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy --strict jitrender

# In parallel (pytest-xdist): most tests wait on real processes, so workers beyond the cores
# still help. PYTEST_WORKERS=0 runs in this process; tests/conftest.py says what is shared.
PYTEST_WORKERS ?= 4
unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadscope tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# Kill soak (not part of `make test`): random kill -9 / SIGTERM of real runs on file:// and
# gs://, each rerun to completion; prints the counts that must all be 0 (~8 s a trial).
SOAK_TRIALS ?= 100
soak: $(STAMP)
	$(BIN)/python -m tests.soak.soak_kill --trials $(SOAK_TRIALS)

clean:
	rm -rf $(VENV) examples/*/bucket examples/*/.cache examples/*/work benchmarks/results
