"""Export a run's policy: restore the newest checkpoint, quantise, tabulate, write one file.

This is the only part of ``rlaccel.deploy`` that imports JAX: the int8 policy is taken from
the agent exactly as the training actors get it (``agent.actor_params(state, "int8")``) and
the hidden activations are tabulated with the training code's own ``quant.requantize``.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.deploy.artifact import LEVELS, Artifact, PolicyError

FORMATS = ("rlpolicy", "onnx-int8", "onnx-fp32")
QMAX = 127


def _space(space: Any) -> dict[str, Any]:
    """A gymnasium space as JSON (Box bounds as lists; infinities are JSON ``Infinity``)."""
    if hasattr(space, "n"):
        return {"type": "Discrete", "n": int(space.n)}
    return {"type": "Box", "shape": list(space.shape), "low": np.asarray(space.low, float).tolist(), "high": np.asarray(space.high, float).tolist()}


def activation_thresholds(w_q: np.ndarray, b_q: np.ndarray, out_scale: np.ndarray, s_next: np.ndarray, activation: str) -> np.ndarray:
    """Tabulate ``quant.requantize`` for one hidden layer: ``int64 [out, 254]``.

    Entry ``[j, k]`` is the smallest accumulator ``a`` in ``[-R_j, R_j + 1]`` (``R_j`` the
    largest reachable ``|acc|`` of channel ``j``; ``R_j + 1`` means "never") whose
    requantised value is ``>= k - 126``, found by bisection on JAX's CPU implementation
    (all of ``out_scale``, ``s_next`` passed as runtime arguments, as in the actors, so no
    constant folding changes the arithmetic).
    """
    import jax
    import jax.numpy as jnp

    from rlaccel import quant

    reach = QMAX * np.abs(w_q.astype(np.int64)).sum(axis=0) + np.abs(b_q.astype(np.int64))
    if reach.max() >= 2**31 - 1:
        raise PolicyError("accumulator range exceeds int32")
    fn = jax.jit(functools.partial(quant.requantize, activation=activation))
    target = (np.arange(LEVELS) - (QMAX - 1))[:, None]  # [254, 1] levels -126 .. 127
    lo = np.broadcast_to(-reach, (LEVELS, reach.size)).copy()
    hi = lo * 0 + reach + 1
    scale, s_next = jnp.asarray(out_scale, jnp.float32), jnp.asarray(s_next, jnp.float32)
    with jax.default_device(jax.devices("cpu")[0]):
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            q = np.asarray(fn(jnp.asarray(mid, jnp.int32), scale, s_next)).astype(np.int64)
            above = q >= target
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid + 1)
    return np.ascontiguousarray(lo.T).astype(np.int32)  # |values| <= R_j + 1 < 2**31


def build_artifact(run_dir: str | Path, checkpoint_path: str | Path | None = None) -> Artifact:
    """Restore a run (``config.yaml`` + newest checkpoint) and turn its policy into an :class:`Artifact`.

    Raises:
      PolicyError: not a run directory, no checkpoint, a config that no longer loads, a
        damaged or incompatible checkpoint.
    """
    from rlaccel import config as config_lib

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise PolicyError(f"{run_dir}: no config.yaml there (not a run directory)")
    try:
        config = config_lib.load(cfg_path)
    except config_lib.ConfigError as e:
        raise PolicyError(f"{cfg_path}: {e}") from None

    import jax

    from rlaccel import agents, checkpoint, envs, quant
    from rlaccel.runners import Runner

    ckpt = Path(checkpoint_path) if checkpoint_path else checkpoint.latest(run_dir / "checkpoints")
    if ckpt is None:
        raise PolicyError(f"{run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
    if config.env_kind == "gym":  # host-actor run (rlaccel.host): the same TrainState, without envs
        from rlaccel.host import HostRunner

        runner = HostRunner(config)
        env, spec = runner.env, runner.spec
    else:
        env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
        spec = agents.make(config, env)
        runner = Runner(spec.agent, env, spec.num_envs, spec.num_steps, precision="int8")
    template = jax.eval_shape(runner.init, jax.random.PRNGKey(config.seed))  # shapes only: nothing to compile
    try:
        state, ckpt_meta = checkpoint.restore(ckpt, template)
    except checkpoint.CheckpointError as e:
        raise PolicyError(str(e)) from None
    agent_state = state.agent
    algo_cfg = getattr(config, config.algo)
    activation = algo_cfg.policy_kwargs.activation
    if int(agent_state.calib.rollouts) == 0:  # trained with fp32 actors: calibrate on a rollout now
        if config.env_kind == "gym":
            raise PolicyError(f"{run_dir}: this host-actor run was trained with fp32 actors, so it has no int8 calibration; train with placement.actor.precision=int8")
        agent_state = _calibrate(runner, state, config, activation)

    fp32 = jax.device_get(spec.agent.actor_params(agent_state, "fp32"))
    qp = jax.device_get(jax.jit(spec.agent.actor_params, static_argnums=1)(agent_state, "int8"))
    layers = quant.dense_layers(fp32.policy)
    L = len(layers)
    arrays: dict[str, np.ndarray] = {"int8.input_mult": np.asarray(qp.policy.input_mult, np.float32), "int8.act_scales": np.asarray(qp.policy.act_scales, np.float32)}
    for i, ((w, b), ql) in enumerate(zip(layers, qp.policy.layers)):
        arrays[f"fp32.w{i}"], arrays[f"fp32.b{i}"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
        arrays[f"int8.w{i}"], arrays[f"int8.b{i}"] = np.asarray(ql.w_q, np.int8), np.asarray(ql.b_q, np.int32)
        arrays[f"int8.out_scale{i}"] = np.asarray(ql.out_scale, np.float32)
        if i < L - 1:
            arrays[f"int8.thresholds{i}"] = activation_thresholds(arrays[f"int8.w{i}"], arrays[f"int8.b{i}"], arrays[f"int8.out_scale{i}"], arrays["int8.act_scales"][i], activation)

    norm = {"norm_obs": False}
    head = "q_values"
    if config.algo == "ppo":
        nc = algo_cfg.normalization
        norm = {"norm_obs": bool(nc.norm_obs), "clip_obs": float(nc.clip_obs), "eps": 1e-8}
        head = "logits" if spec.agent.discrete else "gaussian_mean"
        if nc.norm_obs:
            stats = jax.device_get(agent_state.obs_stats)
            arrays["obs.mean"], arrays["obs.var"] = np.asarray(stats.mean, np.float32), np.asarray(stats.var, np.float32)
            # What XLA computes for normalize's `/ sqrt(var + eps)`: it rewrites it to `* rsqrt(...)`.
            with jax.default_device(jax.devices("cpu")[0]):  # the CPU actors' arithmetic, wherever export runs
                inv_std = jax.jit(lambda v: 1.0 / jax.numpy.sqrt(v + 1e-8))(arrays["obs.var"])
            arrays["obs.inv_std"] = np.asarray(inv_std, np.float32)
        if getattr(fp32, "log_std", None) is not None:
            arrays["log_std"] = np.asarray(fp32.log_std, np.float32)

    from importlib import metadata

    try:
        version = metadata.version("rlaccel")
    except metadata.PackageNotFoundError:
        version = "unknown"
    meta = {
        "algo": config.algo,
        "env": config.env,
        "observation_space": _space(env.observation_space),
        "action_space": _space(env.action_space),
        "policy": {"hidden": list(algo_cfg.policy_kwargs.net_arch), "activation": activation, "out_dim": int(layers[-1][0].shape[1]), "head": head},
        "normalization": norm,
        "config": config.to_dict(),
        "source": {
            "run_dir": str(run_dir),
            "checkpoint": str(ckpt),
            "update": int(state.update),
            "env_steps": int(state.update) * spec.steps_per_update,
            "calibrated_rollouts": int(agent_state.calib.rollouts),
        },
        "rlaccel_version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    del ckpt_meta
    return Artifact(meta=meta, arrays=arrays)


def _calibrate(runner: Any, state: Any, config: Any, activation: str, rollouts: int = 8) -> Any:
    """Activation ranges for a run trained with fp32 actors: ``rollouts`` rollouts of its fp32 policy."""
    import jax

    from rlaccel import quant

    agent = runner.agent
    params = agent.actor_params(state.agent, "fp32")
    norm_fn = (lambda x: x)
    if config.algo == "ppo":
        from rlaccel.agents.ppo.train import normalize_obs

        norm_fn = functools.partial(normalize_obs, config.ppo, params.obs_stats)
    rollout_fn = jax.jit(runner.act_phase)
    calib = state.agent.calib
    layers = quant.dense_layers(params.policy)
    env_state, key = state.rollout, jax.random.PRNGKey(config.seed + 1)
    for _ in range(rollouts):
        key, key_r = jax.random.split(key)
        env_state, traj, _ = rollout_fn(params, env_state, key_r)
        obs = norm_fn(traj.obs.reshape(-1, traj.obs.shape[-1]))
        calib = quant.update(calib, layers, obs, activation)
    return state.agent.replace(calib=calib)


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str = "rlpolicy", checkpoint_path: str | Path | None = None) -> Path:
    """Write the run's policy as ``fmt`` (``rlpolicy`` artifact, ``onnx-int8`` QDQ or ``onnx-fp32``).

    Returns:
      The path written (default ``RUN_DIR/policy.rlpolicy`` or ``RUN_DIR/policy_<int8|fp32>.onnx``).
    """
    from rlaccel.deploy import artifact as artifact_lib

    if fmt not in FORMATS:
        raise PolicyError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if out is None:
        out = run_dir / ("policy.rlpolicy" if fmt == "rlpolicy" else f"policy_{fmt.split('-')[1]}.onnx")
    art = build_artifact(run_dir, checkpoint_path)
    if fmt == "rlpolicy":
        return artifact_lib.write(out, art)
    from rlaccel.deploy.onnx_model import save_model

    return save_model(art, fmt.split("-")[1], out)
