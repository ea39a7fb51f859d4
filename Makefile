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
	# Stable-Baselines3 for its rows; torch's CPU build (a plain `pip install torch` may fetch CUDA).
	$(BIN)/python -m pip install --quiet "torch==2.13.0" stable-baselines3 || echo "no SB3: its rows will report an error"
	$(BIN)/python scripts/bench.py $(ARGS)
	$(BIN)/python scripts/bench_latency.py

tensorboard: $(VENV)/.installed
	$(BIN)/tensorboard --logdir runs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
