"""``rlaccel bench qat``: DQN's int8 actors with post-training quantisation against
quantisation-aware training (``dqn.qat``), over many seeds of one config.

    rlaccel bench qat                                        # configs/dqn_cartpole.yaml, 16 seeds
    rlaccel bench qat --config dqn_acrobot.yaml --seeds 8

Each arm (``dqn.qat`` false, then true) trains ``--seeds`` seeds vmapped in one compiled
program, in chunks of the config's ``eval.freq`` env steps, and after each chunk evaluates as
``rlaccel train`` does (``eval.episodes`` deterministic episodes of the int8 policy and of its
fp32 source per seed, ``rlaccel.eval_episodes``); ``tests/test_learning_dqn.py`` trains and
judges its 6 seeds with the same :func:`train_seeds`. Per arm: how many seeds' best int8
evaluation reached ``--target``, the mean of the last 5 evaluations (int8, fp32), the last
evaluation per seed, wall time and peak RSS. The arms run one after the other in one process
(peak RSS is the process's, both arms'). Prints a table and writes
``benchmarks/dqn_qat_cpu.json`` and its Markdown beside it.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import ROOT, finish, peak_rss_mib

DESCRIPTION = "DQN's int8 actors: post-training quantisation against quantisation-aware training (dqn.qat), many seeds vmapped."
DEFAULT_OUT = ROOT / "benchmarks" / "dqn_qat_cpu.json"
LATE = 5  # evaluations averaged at the end of training


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rlaccel bench qat``."""
    p.add_argument("--config", default="dqn_cartpole.yaml", help="a DQN config in configs/ with eval.freq > 0 (default %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=16, help="seeds per arm, vmapped (default %(default)s)")
    p.add_argument("--target", type=float, default=475.0, help="a seed counts when its best int8 evaluation reaches this (default %(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path (default benchmarks/dqn_qat_cpu.json)")


def train_seeds(config: Any, seeds: int) -> tuple[Any, Any, list[dict[str, np.ndarray]]]:
    """``config`` (a DQN ``rlaccel.config.Config``, int8 actors, ``eval.freq`` a multiple of an
    update's env steps) trained for ``seeds`` seeds vmapped, evaluated after every
    ``eval.freq`` env steps: ``(states [seeds], runner, history)``, ``history[i][precision]``
    the mean evaluation return ``[seeds]`` after chunk ``i``."""
    import jax

    from rlaccel import agent as agent_lib
    from rlaccel import envs, eval_episodes
    from rlaccel.sources.fused import FusedSource

    env = envs.make(config.env, auto_reset=True)
    spec = agent_lib.make(config, env)  # the registry's DQN: int8 actors calibrate
    agent, n = spec.agent, spec.num_updates
    runner = FusedSource(agent, env, spec.num_envs, spec.num_steps, precision="int8")
    chunk = config.eval.freq // runner.steps_per_update
    if chunk <= 0 or n % chunk:
        raise ValueError(f"eval.freq: {config.eval.freq} must be > 0 and divide the run into chunks of whole updates ({runner.steps_per_update} env steps each)")
    states = jax.jit(jax.vmap(runner.init))(jax.random.split(jax.random.PRNGKey(config.seed), seeds))
    train = jax.jit(jax.vmap(functools.partial(runner.train_chunk, num_updates=chunk)), donate_argnums=0)
    eval_env = envs.make(config.env)  # no auto-reset: one episode per eval env, to its time limit
    program = eval_episodes.make_program(agent, eval_env, episodes=config.eval.episodes, max_steps=eval_env.max_episode_steps, deterministic=config.eval.deterministic)
    program = jax.jit(jax.vmap(program, in_axes=(0, None)))
    history = []
    for update in range(chunk, n + 1, chunk):
        states, _ = train(states)
        results = program(states.agent, eval_episodes.eval_key(config.seed, update))
        history.append({p: np.asarray(r.returns).mean(axis=-1) for p, r in results.items()})
    return states, runner, history


def summarize(history: list[dict[str, np.ndarray]], target: float) -> dict[str, Any]:
    """One arm's figures from :func:`train_seeds`' history (module docstring)."""
    evals = {p: np.asarray([h[p] for h in history]).T for p in ("int8", "fp32")}  # [seeds, evaluations]
    best = evals["int8"].max(axis=1)
    return {
        "seeds_reaching_target": int(np.sum(best >= target)),
        "late_int8": float(evals["int8"][:, -LATE:].mean()),
        "late_fp32": float(evals["fp32"][:, -LATE:].mean()),
        "best_int8": best.round(1).tolist(),
        "last_int8": evals["int8"][:, -1].round(1).tolist(),
        "last_fp32": evals["fp32"][:, -1].round(1).tolist(),
    }


def run(args: argparse.Namespace) -> int:
    """Both arms, the table, the JSON; exit code 2 for a config that cannot run."""
    from rlaccel import config as config_lib
    from rlaccel.bench.table import describe, machine
    from rlaccel.config import ConfigError

    path = ROOT / "configs" / args.config
    try:
        base = config_lib.load(path)
        if base.algo != "dqn":
            raise ConfigError(f"--config: {args.config} trains {base.algo}, not dqn")
        if base.placement.actor.precision != "int8":
            raise ConfigError(f"--config: {args.config} acts in fp32 (placement.actor.precision); quantisation-aware training needs int8 actors")
        configs = {qat: config_lib.load(path, [f"dqn.qat={qat}"]) for qat in ("false", "true")}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arms: dict[str, dict[str, Any]] = {}
    for qat, config in configs.items():
        start = time.perf_counter()
        try:
            _, _, history = train_seeds(config, args.seeds)
        except ValueError as e:  # eval.freq
            print(f"error: {e}", file=sys.stderr)
            return 2
        arms[f"qat={qat}"] = {**summarize(history, args.target), "wall_s": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}
        print(f"dqn.qat={qat}: done in {arms[f'qat={qat}']['wall_s']:.0f} s", flush=True)
    m = machine()
    lines = [f"# DQN int8 actors, post-training against quantisation-aware (`configs/{args.config}`, {args.seeds} seeds vmapped)", "", f"{describe(m)}; {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
    lines += [f"| dqn.qat | best int8 eval >= {args.target:g} | int8, last {LATE} evals' mean | fp32 source, same | wall s | peak RSS MiB |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {k[4:]} | {a['seeds_reaching_target']} of {args.seeds} | {a['late_int8']:.1f} | {a['late_fp32']:.1f} | {a['wall_s']:.0f} | {a['peak_rss_mib']:.0f} |" for k, a in arms.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    payload = {"benchmark": "dqn_qat", "config": args.config, "seeds": args.seeds, "target": args.target, "late_evaluations": LATE, "machine": m, "date": datetime.datetime.now().isoformat(timespec="seconds"), "arms": arms}
    code = finish(out, payload, [])
    out.with_suffix(".md").write_text(text)
    return code
