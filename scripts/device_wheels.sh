#!/usr/bin/env bash
# Wheels for a GPU machine without a network whose python3 (3.12, x86-64) already holds JAX with
# CUDA, flax, optax, orbax, tensorboard, rich, torch (a CUDA image): what rlaccel and its
# baselines import beyond those, fetched here into .whl/ (ignored by git) to be carried there.
#
#   bash scripts/device_wheels.sh          # rlaccel's bench rows and the PureJaxRL baselines (~1 MB)
#   bash scripts/device_wheels.sh zoo      # also MuJoCo and Stable-Baselines3: `rlaccel bench zoo` rows (~23 MB)
#
# The versions are the ones this checkout's .venv runs; scripts/device_env.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
names=(crc32c farama-notifications flashbax gymnasium gymnax tensorboardX)
[ "${1:-}" = zoo ] && names+=(mujoco mujoco-core mujoco-studio glfw pyopengl stable-baselines3)
pins=()
for n in "${names[@]}"; do pins+=("$n==$(version "$n")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
