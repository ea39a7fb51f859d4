# The two commands a new user needs: `make train` and `make test`.
# Both create .venv if it is missing and install what they need (pip -qq: errors only; the
# editable install's informational note about the agents/ and envs/ folders mapped into the
# rlaccel package is not one).
# The interpreter: python3 when it is 3.11 or newer (JAX, flax, brax and orbax-checkpoint need
# 3.11), else the first python3.13 / python3.12 / python3.11 on PATH; PYTHON=... picks one.
PYTHON ?= $(or $(shell for p in python3 python3.13 python3.12 python3.11; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done),python3)
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/ppo_cartpole.yaml

.PHONY: train test test-fast bench install install-dev tensorboard clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "error: rlaccel needs Python 3.11 or newer (JAX and orbax-checkpoint do); $(PYTHON) is $$($(PYTHON) -V 2>&1 || echo missing): install python3.11 or newer, or run make PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }  # a half-made .venv (Debian without python3-venv) would pass for done next time
	$(BIN)/python -m pip install -qq --upgrade pip

# Installs go through uv (from PyPI, into .venv; the dev extras in ~8 s against pip's ~45 s,
# the same versions), and through pip where uv cannot be had.
define install
	{ $(BIN)/python -m pip install -qq "uv>=0.5" && $(BIN)/uv pip install -q --python $(BIN)/python $(1); } || $(BIN)/python -m pip install -qq $(1)
endef

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(call install,-e .)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(call install,-e '.[dev]')
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Train the default agent (PPO on CartPole-v1, int8 actors); ARGS passes extra options.
train: $(VENV)/.installed
	$(BIN)/rlaccel train --config $(CONFIG) $(ARGS)

# The suite starts dozens of Python processes (pytest's workers, CLI runs, jax.distributed and
# Ray processes), and each compiles the sources it imports unless their bytecode is cached
# (JAX, flax, optax, gymnasium and rlaccel: 5.1-5.7 s to import, 2.6 s from cached bytecode).
# Where the environment sets PYTHONDONTWRITEBYTECODE (the machines here do), nothing is cached,
# so the tests let Python write __pycache__/ (in .venv and the repository's ignored folders):
# make test-fast took 280 s here against 347 s (cold JAX cache both times).
TEST_ENV := PYTHONDONTWRITEBYTECODE=

# pytest-xdist's loadscope hands out modules in the order tests/conftest.py sorts them (the
# longest first); by default (3.5+) it hands out the modules with the most tests first, which
# leaves test_learning_dqn.py (2 tests, ~130 s) for last. On one run's per-module times the
# busier worker's share is 776 s in xdist's order and 703 s longest first (2-core EPYC).
XDIST := -n auto --dist loadscope --no-loadscope-reorder

## Run the whole test suite (learning tests included), on every core (pytest-xdist).
test: $(VENV)/.installed-dev
	$(TEST_ENV) $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

## The inner loop: unit tests and CLI smoke tests, no learning.
test-fast: $(VENV)/.installed-dev
	$(TEST_ENV) $(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

## Benchmarks: `rlaccel bench` (rlaccel/bench/), then `rlaccel bench latency`; prints the tables and
## writes benchmarks/*.json. ARGS go to the main table (e.g. ARGS="--rows purejaxrl_1,fused_int8").
## Fails if an install step or any row fails (both tables are still printed and written).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -qq -e '.[bench]'
	# gymnax and flashbax (the PureJaxRL baselines) without their pins (gymnax's would downgrade
	# gymnasium); the modules they import are in the bench extra. Versions the baselines are checked with.
	$(BIN)/python -m pip install -qq --no-deps "gymnax==1.0.1" "flashbax==0.1.3"
	# Stable-Baselines3 for its rows. torch pinned to the CPU build this machine's pip finds (/opt/wheels);
	# elsewhere add --extra-index-url https://download.pytorch.org/whl/cpu, or PyPI's wheel brings CUDA.
	$(BIN)/python -m pip install -qq "torch==2.13.0" stable-baselines3
	$(BIN)/python -c "import gymnax, flashbax, stable_baselines3"
	status=0; \
	$(BIN)/rlaccel bench $(ARGS) || status=1; \
	$(BIN)/rlaccel bench latency || status=1; \
	exit $$status

tensorboard: $(VENV)/.installed
	$(BIN)/tensorboard --logdir runs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
