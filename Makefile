# companion-bridge: every target creates and uses .venv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
ARGS   ?=

FUZZ_SECONDS ?= 60

.PHONY: run test lint bench bench-smoke fuzz system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: the daemon in the foreground on embedded defaults (ARGS="--config FILE" to pass a config)
run: $(STAMP)
	$(BIN)/companion $(ARGS) run

## test: lint, types, then the whole suite inside a private network namespace (needs root)
test: $(STAMP) system-deps lint
	scripts/netns-run $(BIN)/pytest -q -p no:cacheprovider tests

## lint: ruff on everything, mypy strict on companion/
lint: $(STAMP)
	$(BIN)/ruff check companion tests bench fuzz scripts
	$(BIN)/mypy

## bench: the benchmarks, each against its baseline measured in the same run (in a private netns)
bench: $(STAMP)
	scripts/netns-run $(BIN)/python bench/run.py $(ARGS)

## bench-smoke: every benchmark at tiny sizes, no goals judged (what CI runs)
bench-smoke: $(STAMP)
	scripts/netns-run $(BIN)/python bench/run.py --smoke

## fuzz: coverage-guided fuzzing (atheris) of every parser, FUZZ_SECONDS each
fuzz: $(STAMP)
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

## system-deps: Debian packages the tests drive for real (dnsmasq); installed when root
system-deps:
	@scripts/system-deps

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output
