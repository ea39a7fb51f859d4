# The two commands a new user needs: `make train` and `make test`.
# Both create .venv with the system python3 if it is missing and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/ppo_cartpole.yaml

.PHONY: train test bench install install-dev tensorboard clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Train the default agent (PPO on CartPole-v1, int8 actors); ARGS passes extra options.
train: $(VENV)/.installed
	$(BIN)/python scripts/train.py --config $(CONFIG) $(ARGS)

## Run the test suite.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks (prints a table, writes benchmarks/*.json).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps gymnax flashbax
	$(BIN)/python scripts/bench.py $(ARGS)

tensorboard: $(VENV)/.installed
	$(BIN)/tensorboard --logdir runs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
