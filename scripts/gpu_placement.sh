#!/usr/bin/env bash
# The placement benchmark on a GPU machine whose python3 already holds JAX with CUDA, flax,
# optax, orbax, tensorboard and rich (a CUDA image), run from this checkout without a network:
#
#   bash scripts/gpu_placement.sh OUT_DIR [CARD]      # writes OUT_DIR/placement_<CARD>.json/.md
#
# What the image lacks comes as wheels in .whl/, fetched beforehand where a registry answers:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .whl \
#     crc32c farama-notifications flashbax==0.1.3 gymnasium==1.4.0 gymnax==1.0.1 tensorboardX
# rlaccel itself is not installed: the checkout goes on PYTHONPATH, agents/ and envs/ are linked
# where pyproject.toml's package-dir puts them (rlaccel.agents, rlaccel.envs), and a dist-info
# beside the wheels carries the entry points (the algorithm registry reads them).
#
# Rows (rlaccel.bench.rows; `auto` is the GPU): PureJaxRL on the GPU and on the host's CPU;
# rlaccel fused on the GPU (int8 and fp32 actors) and on the CPU; the learner on the GPU with
# int8 actors on the CPU, pipelined and in turn; the same at 1024 envs; 16 seeds vmapped on
# the GPU (PureJaxRL, rlaccel's sweep); DQN. Each row has --row-timeout; the JSON is written
# after every row, so a run cut short keeps what it measured.
set -euo pipefail
out=${1:?usage: scripts/gpu_placement.sh OUT_DIR [CARD]}
card=${2:-nvidia-h200}
site=/tmp/rlaccel-site
rows=${ROWS:-purejaxrl_1,fused_int8,split_int8_cpu_actors,fused_int8_cpu,purejaxrl_1_cpu,fused_fp32,split_serial_int8_cpu_actors,purejaxrl_wide,fused_int8_wide,split_int8_wide_cpu_actors,purejaxrl_wide_cpu,fused_int8_wide_cpu,purejaxrl_16,sweep16_int8,purejaxrl_dqn,dqn_purejaxrl_fp32,dqn_fused_int8}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
for pkg in agents envs; do [ -e "rlaccel/$pkg" ] || ln -s "../$pkg" "rlaccel/$pkg"; done
mkdir -p "$site/rlaccel-0.1.0.dist-info"
printf 'Metadata-Version: 2.1\nName: rlaccel\nVersion: 0.1.0\n' >"$site/rlaccel-0.1.0.dist-info/METADATA"
python3 - "$site/rlaccel-0.1.0.dist-info/entry_points.txt" <<'EOF'
import sys, tomllib
groups = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]
with open(sys.argv[1], "w") as f:
    for group, entries in groups.items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
EOF
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import jax, flax, optax, ml_dtypes, orbax.checkpoint as oc; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'ml_dtypes', ml_dtypes.__version__, jax.devices())"
python3 -m rlaccel bench --rows "$rows" --row-timeout "${ROW_TIMEOUT:-150}" --out "$out/placement_$card.json"
