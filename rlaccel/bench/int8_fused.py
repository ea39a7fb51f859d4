"""``rlaccel bench int8``'s fused rows: a config's fused update (PPO's or DQN's), fp32 actors
against int8 actors, alternated in one process.

The main table's ``fused_fp32`` and ``fused_int8`` rows are whole runs, each in its own
process, one after the other; on a 2-core VM their per-round ratio moved from 0.81 to 1.03
between rounds of one invocation (AMD EPYC, 2026-12-04), so a 10 % budget sits inside the
machine's own noise. Here both programs are compiled first, then ``rounds`` chunks of
``updates`` updates run with fp32 actors and with int8 actors in turn, so both see the
same machine at the same minutes. A chunk is the fused source's whole update (re-quantise,
roll out, learn, and with int8 actors calibrate), as ``rlaccel train`` runs it; the figure is
the median time per update, and its ratio is the issue's "fused int8 against fused fp32".
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["SAMPLE_S", "fused_rows", "untimed_chunks"]

SAMPLE_S = 0.25  # seconds of updates per timed sample (whole chunks): a DQN chunk of 64 updates is ~20 ms


def _chunk(config_path: Path, precision: str, updates: int) -> tuple[Any, Any, str, int]:
    """``(compiled chunk of updates fused updates, its initial state, the network as
    obs-hidden-out, untimed chunks to run first)``: one, or for DQN as many as reach
    ``learning_starts`` (before it, an update only acts)."""
    import jax
    import jax.numpy as jnp

    from rlaccel import config as config_lib
    from rlaccel import sources
    from rlaccel.sources.fused import FusedSource

    config = config_lib.load(config_path, [f"placement.actor.precision={precision}"])
    source = sources.make(config)  # the source `rlaccel train` builds for it
    if not isinstance(source, FusedSource):
        raise ValueError(f"{config_path}: its placement is not fused (actors on the learner's device)")
    env = source.env
    state = jax.tree.map(jnp.copy, source.init(jax.random.PRNGKey(config.seed)))  # donated: one buffer per leaf (DQN's target starts as the online network's)
    program = jax.jit(functools.partial(source.train_chunk, num_updates=updates), donate_argnums=0)
    kwargs = getattr(config, config.algo).policy_kwargs
    hidden = getattr(kwargs, "pi_arch", None) or kwargs.net_arch  # PPO's policy tower, DQN's Q network
    out = env.num_actions if env.is_discrete else env.action_dim
    network = "-".join(str(n) for n in (env.obs_dim, *hidden, out))
    learning_starts = getattr(getattr(config, config.algo), "learning_starts", 0)
    return program.lower(state).compile(), state, network, untimed_chunks(learning_starts, source.steps_per_update, updates)


def untimed_chunks(learning_starts: int, steps_per_update: int, updates: int) -> int:
    """Chunks to run before timing: one (first-call costs), and for DQN enough to collect
    more than ``learning_starts`` transitions (SB3's rule; before it an update only acts)."""
    acting_only = learning_starts // steps_per_update  # updates before the one whose transitions pass learning_starts
    return 1 + -(-acting_only // updates)


def fused_rows(config_path: Path, rounds: int, updates: int = 64) -> list[dict]:
    """The config's fused update with fp32 and with int8 actors, ``rounds`` chunks of
    ``updates`` updates each, alternated: one row in ``rlaccel bench int8``'s schema (µs per
    update, median over rounds) plus each round's pair.

    Starts JAX's CPU backend with the config's ``placement.cpu_threads`` (call it in a fresh
    process, as ``rlaccel bench int8`` does).
    """
    import jax

    from rlaccel import config as config_lib
    from rlaccel import placement
    from rlaccel.bench.rows import peak_rss_mib

    base = config_lib.load(config_path)
    placement.start_backend(base.placement, base.env_kind)
    # precision -> [compiled chunk, its state (donated: replaced by each call's), network, untimed chunks]
    programs = {p: list(_chunk(config_path, p, updates)) for p in ("fp32", "int8")}
    for entry in programs.values():  # untimed chunks: first-call costs out of the figures, DQN learning
        for _ in range(entry[3]):
            entry[1], _ = jax.block_until_ready(entry[0](entry[1]))
    start = time.perf_counter()
    programs["fp32"][1], _ = jax.block_until_ready(programs["fp32"][0](programs["fp32"][1]))
    calls = max(1, round(SAMPLE_S / (time.perf_counter() - start)))  # chunks per timed sample
    per_update: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for precision, entry in programs.items():
            start = time.perf_counter()
            for _ in range(calls):
                entry[1], _ = entry[0](entry[1])
            jax.block_until_ready(entry[1])
            per_update[precision].append((time.perf_counter() - start) / (calls * updates) * 1e6)
    return [
        {
            "what": f"fused update ({Path(config_path).name}, {rounds} rounds alternated)",
            "updates_per_sample": calls * updates,
            "runtime": "XLA",
            "network": programs["fp32"][2],
            "batch": getattr(base, base.algo).n_envs,
            "fp32_us": statistics.median(per_update["fp32"]),
            "int8_us": statistics.median(per_update["int8"]),
            "rounds_us": {p: [round(t, 1) for t in ts] for p, ts in per_update.items()},
            "round_ratios": [round(f / i, 3) for f, i in zip(per_update["fp32"], per_update["int8"])],
            "peak_rss_mib": peak_rss_mib(),
        }
    ]
