# companion-bridge: every target creates and uses .venv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: run test lint unit bench fuzz system-deps clean

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
	$(BIN)/ruff check companion tests bench
	$(BIN)/mypy

## system-deps: Debian packages the tests drive for real (dnsmasq); installed when root
system-deps:
	@scripts/system-deps

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output
