# Sourced on a GPU machine without a network (a CUDA image's python3 with JAX, flax, optax,
# orbax, tensorboard, rich, torch), from the checkout's root:
#
#   source scripts/device_env.sh && python3 -m rlaccel bench ...
#
# installs the wheels scripts/device_wheels.sh put in .whl/ into /tmp/rlaccel-site, and runs
# rlaccel from the checkout without installing it: the checkout on PYTHONPATH, agents/ and
# envs/ linked where pyproject.toml's package-dir puts them (rlaccel.agents, rlaccel.envs), and
# a dist-info carrying pyproject.toml's entry points (the algorithm registry reads them).
# Prints the GPU and the versions it runs with.
site=/tmp/rlaccel-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl || return 1
for pkg in agents envs; do [ -e "rlaccel/$pkg" ] || ln -s "../$pkg" "rlaccel/$pkg"; done
mkdir -p "$site/rlaccel-0.1.0.dist-info"
printf 'Metadata-Version: 2.1\nName: rlaccel\nVersion: 0.1.0\n' >"$site/rlaccel-0.1.0.dist-info/METADATA"
python3 - "$site/rlaccel-0.1.0.dist-info/entry_points.txt" <<'PY' || return 1
import sys, tomllib
groups = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]
with open(sys.argv[1], "w") as f:
    for group, entries in groups.items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
PY
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import jax, flax, optax, ml_dtypes; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'ml_dtypes', ml_dtypes.__version__, jax.devices())"
