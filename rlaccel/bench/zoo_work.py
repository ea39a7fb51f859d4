"""The runs of ``rlaccel bench zoo``: one seed of one row per interpreter.

``rlaccel.bench.zoo.run_one`` starts :func:`worker_main` in a fresh interpreter with the run's
parameters as JSON; it writes the run's figures as JSON:

* :func:`work_rlaccel`: the zoo block (``rlaccel.zoo.block_from_file``, what
  ``rlaccel train --zoo FILE --env ID`` builds) through ``rlaccel.train`` with int8 actors and
  the zoo's evaluation settings; figures from ``summary.json``, the eval curve from the run's
  TensorBoard events (:func:`eval_curve`, TensorBoard's own ``EventAccumulator``).
* :func:`work_sb3`: Stable-Baselines3's PPO or DQN on the same block, built as the zoo's
  ``ExperimentManager`` builds it (:func:`sb3_hyperparams`: ``lin_X`` schedules, the
  ``normalize`` string with the block's ``gamma``, ``policy_kwargs`` parsed, ``n_envs``
  envs in a ``DummyVecEnv``) with the zoo's ``EvalCallback`` (``eval_freq // n_envs`` vector
  steps, deterministic, a ``VecNormalize`` eval env without reward normalisation and frozen
  statistics), plus one evaluation after the last update as rlaccel does; ``wall_s`` is
  ``learn()`` and that evaluation.

Libraries (JAX, torch, SB3) are imported inside the functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlaccel.bench.rows import peak_rss_mib
from rlaccel.clock import process_age_s

__all__ = ["eval_curve", "sb3_hyperparams", "work_rlaccel", "work_sb3", "worker_main"]

_SCHEDULED = ("learning_rate", "clip_range")  # where the zoo reads "lin_<x>" (rl_zoo3's _preprocess_schedules)


def eval_curve(run_dir: str | Path) -> list[list[float]]:
    """``[[env_steps, int8 mean, int8 std, fp32 mean], ...]`` from a run's TensorBoard events
    (``eval/mean_reward``, ``eval/std_reward``, ``eval/mean_reward_fp32``; ``None`` where a tag
    lacks the step); ``[]`` without evaluations."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    if "eval/mean_reward" not in tags:
        return []
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in ("eval/mean_reward", "eval/std_reward", "eval/mean_reward_fp32") if tag in tags}
    steps = sorted(series["eval/mean_reward"])
    return [[s, series["eval/mean_reward"][s], series.get("eval/std_reward", {}).get(s), series.get("eval/mean_reward_fp32", {}).get(s)] for s in steps]


def work_rlaccel(zoo_file: str, block: str, seed: int, budget_scale: float, eval_freq: int, eval_episodes: int, overrides: list[str], run_dir: str, **_: Any) -> dict[str, Any]:
    """One seed of a zoo block through ``rlaccel.train``: int8 actors, deterministic evaluation
    every ``eval_freq`` env steps of ``eval_episodes`` episodes, ``n_timesteps * budget_scale``
    env steps (at least one update); ``overrides`` (``--set``) last, so they win."""
    import rlaccel
    from rlaccel import api, zoo
    from rlaccel import config as config_lib

    data, note = zoo.block_from_file(config_lib.load_data(zoo_file), Path(zoo_file).name, block)
    settings = [f"seed={seed}", "placement.actor.precision=int8", f"eval.freq={eval_freq}", f"eval.episodes={eval_episodes}", "eval.deterministic=true", "logging.progress=false"]
    full = api.load_config(data, settings)  # the zoo's budget, for the scaled one
    steps = max(full.agent.rollout_size, round(full.total_timesteps * budget_scale))
    run = rlaccel.train(data, overrides=[*settings, f"total_timesteps={steps}", *overrides], run_dir=run_dir, progress=False)
    s = run.summary
    if s.get("status") != "completed":
        raise RuntimeError(f"run {run_dir} ended {s.get('status')}: {s.get('error')}")
    keys = ("env_steps", "wall_s", "sps", "compile_s", "time_to_result_s", "eval_return", "eval_return_std", "eval_return_fp32", "eval_best_return", "eval_best_env_steps", "evaluations", "eval_s", "eval_wait_s", "eval_compile_s", "probe_compile_s", "final_return", "time/actor_sps", "time/learner_sps")
    return {
        **{k: s.get(k) for k in keys},
        "env": s["config"]["env"],
        "env_note": note,
        "zoo_n_timesteps": full.total_timesteps,
        "placement": s.get("placement"),
        "curve": eval_curve(run_dir),
    }


def sb3_hyperparams(block: dict[str, Any]) -> tuple[int, dict[str, Any] | None, dict[str, Any]]:
    """A zoo PPO block as the zoo's ``ExperimentManager`` hands it to SB3, torch-free.

    Args:
      block: the block as read from the YAML file (not changed).

    Returns:
      ``(n_envs, normalize_kwargs or None, model_kwargs)``: ``model_kwargs`` go to
      ``PPO(**model_kwargs)`` (``policy`` included) once :func:`torch_kwargs` has turned the
      ``policy_kwargs`` activation name into its torch class; ``lin_X`` values are
      ``progress_remaining * X`` callables; ``normalize_kwargs`` carry the block's ``gamma``.
    """
    from rlaccel.zoo_kwargs import parse_call_string

    kw = {k: v for k, v in block.items() if k not in ("n_timesteps", "n_envs", "normalize")}
    for key in _SCHEDULED:
        if isinstance(kw.get(key), str):
            kind, _, value = kw[key].partition("_")
            if kind != "lin":
                raise ValueError(f"{key}: the zoo's schedules are lin_<x>, got {kw[key]!r}")
            kw[key] = _linear(float(value))
    if isinstance(kw.get("policy_kwargs"), str):
        kw["policy_kwargs"] = parse_call_string(kw["policy_kwargs"], "policy_kwargs")
    norm = block.get("normalize", False)
    if isinstance(norm, str):
        norm = parse_call_string(norm, "normalize")
    normalize = None
    if norm:
        normalize = dict(norm) if isinstance(norm, dict) else {}
        if "gamma" in block:
            normalize["gamma"] = block["gamma"]  # the zoo uses the algorithm's discount for VecNormalize
    return int(block.get("n_envs", 1)), normalize, kw


def _linear(initial: float) -> Any:
    """SB3's linear schedule: ``progress_remaining * initial`` (rl_zoo3's ``SimpleLinearSchedule``)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def torch_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``policy_kwargs.activation_fn`` from ``"nn.ReLU"`` (as parsed) to ``torch.nn.ReLU``."""
    import torch

    pk = dict(model_kwargs.get("policy_kwargs") or {})
    if isinstance(pk.get("activation_fn"), str):
        pk["activation_fn"] = getattr(torch.nn, pk["activation_fn"].rsplit(".", 1)[-1])
    return {**model_kwargs, **({"policy_kwargs": pk} if pk else {})}


def work_sb3(zoo_file: str, block: str, seed: int, timesteps: int, eval_freq: int, eval_episodes: int, run_dir: str, threads: int = 1, algo: str = "ppo", **_: Any) -> dict[str, Any]:
    """Stable-Baselines3's ``algo`` (``ppo`` or ``dqn``) on the zoo block, ``timesteps`` env
    steps, the zoo's evaluation (its ``evaluations.npz`` in ``run_dir``), torch on ``threads``
    threads (``0``: torch's default)."""
    import numpy as np
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

    from rlaccel import config as config_lib
    from rlaccel import zoo

    if threads > 0:
        torch.set_num_threads(threads)
    raw = config_lib.load_data(zoo_file)[block]
    n_envs, normalize, kwargs = sb3_hyperparams(raw)
    env_id = zoo.resolve_env(block)[0].removeprefix("gym:")  # HalfCheetah-v4 -> HalfCheetah-v5, as the rlaccel row
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if normalize is not None:
        venv = VecNormalize(venv, **normalize)
        eval_env = VecNormalize(eval_env, **{**normalize, "norm_reward": False, "training": False})
    model = {"ppo": PPO, "dqn": DQN}[algo](env=venv, seed=seed, device="cpu", verbose=0, **torch_kwargs(kwargs))
    callback = EvalCallback(eval_env, n_eval_episodes=eval_episodes, eval_freq=max(eval_freq // n_envs, 1), deterministic=True, log_path=run_dir, verbose=0)
    start = time.perf_counter()
    model.learn(timesteps, callback=callback)
    sync_envs_normalization(venv, eval_env)
    returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True, return_episode_rewards=True)
    wall_s = time.perf_counter() - start
    curve = [[int(t), float(np.mean(r)), float(np.std(r)), None] for t, r in zip(callback.evaluations_timesteps, callback.evaluations_results)]
    curve.append([int(model.num_timesteps), float(np.mean(returns)), float(np.std(returns)), None])
    train_returns = [ep["r"] for ep in model.ep_info_buffer]
    return {
        "env": env_id,
        "env_note": None,
        "env_steps": int(model.num_timesteps),
        "wall_s": wall_s,
        "sps": model.num_timesteps / wall_s,
        "time_to_result_s": process_age_s(),
        "eval_return": float(np.mean(returns)),
        "eval_return_std": float(np.std(returns)),
        "eval_return_fp32": None,
        "eval_ep_len": float(np.mean(lengths)),
        "eval_best_return": max(c[1] for c in curve),
        "evaluations": len(curve),
        "final_return": float(np.mean(train_returns)) if train_returns else None,
        "torch_threads": torch.get_num_threads(),
        "sb3_n_envs": n_envs,
        "curve": curve,
    }


def worker_main(argv: list[str]) -> int:
    """``worker_main([params_json, result_path])``: one run, its JSON (with peak RSS) written."""
    params, result_path = json.loads(argv[0]), argv[1]
    work = work_sb3 if params["kind"] == "sb3" else work_rlaccel
    result = work(**params)
    result["seed"] = params["seed"]
    result["peak_rss_mib"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(result))
    return 0
