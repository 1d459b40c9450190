# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test check install-run install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install-run: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,agent,train,sql]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all,dev,bench]'

## run: start aiassist on the embedded default (SQLite, in-process) and print its URLs
run: install-run
	$(BIN)/aiassist up

## check: lint and type-check
check: install-test
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

## test: install everything, lint, type-check, run the whole test suite
test: check
	$(BIN)/pytest
