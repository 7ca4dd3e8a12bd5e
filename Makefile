# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-quick clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
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

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) examples/*/bucket examples/*/.cache examples/*/work benchmarks/results
