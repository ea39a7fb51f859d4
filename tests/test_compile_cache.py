"""``rlaccel.compile_cache``: where compiled programs are kept, and that a second process loads
what the first compiled (JAX's real persistent cache, in two fresh interpreters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlaccel import compile_cache

JAX_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE")


@pytest.fixture
def no_cache_env(monkeypatch):
    for name in (*JAX_VARS, compile_cache.ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_where_the_cache_is(no_cache_env, tmp_path):
    no_cache_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = compile_cache.cache_dir()
    assert default.parent == tmp_path / "rlaccel" and default.name.startswith("xla-")
    for off in ("off", "0", "False", " no "):
        no_cache_env.setenv(compile_cache.ENV, off)
        assert compile_cache.cache_dir() is None
    no_cache_env.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"
    no_cache_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax's"))  # JAX's own setting wins
    assert compile_cache.cache_dir() == tmp_path / "jax's"


def test_bench_rows_run_cold_or_with_the_cache_given():
    env = {"JAX_COMPILATION_CACHE_DIR": "/somewhere", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "KEEP": "1", compile_cache.EFFORT_ENV: "fast"}
    cold = compile_cache.bench_env(env)
    assert cold[compile_cache.ENV] == "off" and not any(name in cold for name in JAX_VARS) and cold["KEEP"] == "1"
    assert compile_cache.EFFORT_ENV not in cold  # benchmarks compile at XLA's defaults
    warm = compile_cache.bench_env(env, "/tmp/c")
    assert warm["JAX_COMPILATION_CACHE_DIR"] == warm[compile_cache.ENV] == "/tmp/c"
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/somewhere"  # the caller's environment is untouched


# A program that takes ~0.5-1 s to compile here.
COMPILE = """
import json, os, sys, time
from rlaccel import compile_cache
where = compile_cache.enable()
import jax, jax.numpy as jnp

def f(x):
    for i in range(40):
        x = jnp.tanh(x @ x.T + i)
    return x

hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
start = time.perf_counter()
jax.jit(f).lower(jnp.ones((8, 8))).compile()
print(json.dumps({"where": str(where), "compile_s": time.perf_counter() - start, "hits": len(hits)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("filelock", [True, False], ids=["filelock", "no-filelock"])
def test_a_second_process_loads_what_the_first_compiled(tmp_path, filelock):
    """Also without the ``filelock`` package (a dependency, but an environment may lack it):
    JAX then cannot cap the cache's size, and with the cap set it failed every read and write."""
    cache = tmp_path / "cache"
    # JAX keeps any program (a fast machine compiles this one under MIN_COMPILE_S); enable() leaves a user's own JAX_* settings be
    env = {k: v for k, v in os.environ.items() if k not in JAX_VARS} | {compile_cache.ENV: str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    runs = []
    for _ in range(2):
        prelude = "" if filelock else "import sys; sys.modules['filelock'] = None  # import filelock fails\n"
        out = subprocess.run([sys.executable, "-c", prelude + COMPILE], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if len(runs) == 1:
            entries = list(cache.iterdir())
            assert entries, "the first process wrote nothing to the cache"
    assert runs[0]["where"] == runs[1]["where"] == str(cache)
    assert runs[0]["hits"] == 0 and runs[1]["hits"] >= 1, runs  # JAX's own count: compiled, then loaded (f and the small programs before it)
    assert sorted(cache.iterdir()) == sorted(entries)  # nothing compiled and written again


def test_a_run_enables_the_cache(monkeypatch, tmp_path, cartpole_yaml, tiny_overrides):
    import rlaccel

    calls = []
    real = compile_cache.enable
    monkeypatch.setattr(compile_cache, "enable", lambda: calls.append("enable") or real())
    run = rlaccel.train(str(cartpole_yaml), overrides=tiny_overrides, run_dir=tmp_path / "run", progress=False)
    assert run.summary["status"] == "completed" and calls == ["enable"]


EFFORTS = """
import json
from rlaccel import compile_cache
compile_cache.enable()
import jax, jax.numpy as jnp, numpy as np

x = jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)
jax.block_until_ready(x)
out = {"options": [], "entries": [], "y": []}
for level in ("default", "fast", "default", "fast"):
    with compile_cache.effort(level):
        out["options"].append(compile_cache.compiler_options())
        compiled = compile_cache.jit(lambda x: jnp.tanh(x @ x.T).sum(0)).lower(x).compile()
    out["y"].append(np.asarray(compiled(x)).tolist())
    out["entries"].append(len(list(compile_cache.cache_dir().iterdir())))
print(json.dumps(out))
"""


def test_fast_effort_compiles_its_own_executable(tmp_path):
    """``RLACCEL_XLA_EFFORT=fast`` reaches XLA: JAX's persistent cache (which keys on the
    compile options) keeps a second executable for it, each effort then loads its own, and
    they compute the same values (to float rounding)."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in (*JAX_VARS, compile_cache.EFFORT_ENV)}
    env |= {compile_cache.ENV: str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    out = subprocess.run([sys.executable, "-c", EFFORTS], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["options"] == [None, compile_cache.FAST_OPTIONS, None, compile_cache.FAST_OPTIONS]
    default, fast, again, fast_again = got["entries"]  # files in the cache after each compile
    assert fast > default and again == fast_again == fast, got["entries"]  # new for fast; then both loaded
    np.testing.assert_allclose(got["y"][1], got["y"][0], rtol=1e-5)


def test_fast_options_this_xla_does_not_know_are_dropped(monkeypatch):
    """An option XLA rejects (a newer XLA drops some: JAX 0.12's has no
    ``xla_cpu_use_fusion_emitters``) is left out instead of failing every fast compile."""
    import jax.numpy as jnp

    known = compile_cache._known_options(tuple(compile_cache.FAST_OPTIONS.items()))
    assert known and "xla_backend_optimization_level" in known
    monkeypatch.setattr(compile_cache, "FAST_OPTIONS", {**compile_cache.FAST_OPTIONS, "xla_no_such_option_here": True})
    with compile_cache.effort("fast"):
        assert compile_cache.compiler_options() == known
        assert float(compile_cache.jit(lambda x: x * 2)(jnp.float32(3))) == 6.0
