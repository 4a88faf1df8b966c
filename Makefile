# Entry points for a fresh machine: `make train`, `make test` (everything) and `make test-fast` (all but the tests
# marked slow, under a minute). Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are installed first and pinned, so pip does not pick another (multi-GB) build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/mnist.yaml
ARGS ?=

.PHONY: install train test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/dae fit --config $(CONFIG) $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
