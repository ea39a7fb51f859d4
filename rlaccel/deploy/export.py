"""Export a run's policy: restore the newest checkpoint, quantise, tabulate, write one file.

This is the only part of ``rlaccel.deploy`` that imports JAX: the int8 policy is taken from
the agent exactly as the training actors get it (``agent.actor_params(state, "int8")``) and
turned into ``rlaccel.reference.Int8Tables`` by the training code's own ``quant_tables.tables``. Nothing here knows an
algorithm: ``rlaccel.registry`` gives the agent (through ``rlaccel.sources``) and the
algorithm's ``export`` spec (normaliser, head kind).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel import compile_cache
from rlaccel.deploy.artifact import Artifact, PolicyError, int8_arrays

FORMATS = ("rlpolicy", "onnx-int8", "onnx-fp32", "tflite", "tflite-int8io", "c")
OBS_VAR_EPS = 1e-8  # rlaccel.normalize.normalizer's eps: obs.var = 1 / inv_std**2 - eps, for older readers only
CALIBRATION_ROLLOUTS = 8  # rollouts of the fp32 policy that calibrate a run trained with fp32 actors


def _space(space: Any) -> dict[str, Any]:
    """A gymnasium space as JSON (Box bounds as lists; infinities are JSON ``Infinity``)."""
    if hasattr(space, "n"):
        return {"type": "Discrete", "n": int(space.n)}
    return {"type": "Box", "shape": list(space.shape), "low": np.asarray(space.low, float).tolist(), "high": np.asarray(space.high, float).tolist()}


def build_artifact(run_dir: str | Path, checkpoint_path: str | Path | None = None) -> Artifact:
    """Restore a run (``config.yaml`` + newest checkpoint) and turn its policy into an :class:`Artifact`.

    Raises:
      PolicyError: not a run directory, no checkpoint, a config that no longer loads, a
        damaged or incompatible checkpoint, a host-actor run without int8 calibration.
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

    from rlaccel import checkpoint, quant_tables, registry, sources
    from rlaccel.reference import dense_layers

    ckpt = Path(checkpoint_path) if checkpoint_path else checkpoint.latest(run_dir / "checkpoints")
    if ckpt is None:
        raise PolicyError(f"{run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
    source = sources.make(config)  # the run's agent and env, and the TrainState template
    agent, env = source.agent, source.env
    template = jax.eval_shape(source.init, jax.random.PRNGKey(config.seed))  # shapes only: nothing to compile
    try:
        state, _ = checkpoint.restore(ckpt, template)
    except checkpoint.CheckpointError as e:
        raise PolicyError(str(e)) from None
    cpu = jax.devices("cpu")[0]
    agent_state = jax.device_put(state.agent, cpu)  # committed to the CPU: every jit below runs there
    if int(agent_state.calib.rollouts) == 0:  # trained with fp32 actors: calibrate on rollouts now
        if getattr(source, "act_phase", None) is None:
            raise PolicyError(f"{run_dir}: this host-actor run was trained with fp32 actors, so it has no int8 calibration; train with placement.actor.precision=int8")
        agent_state = _calibrate(source, state, agent_state, config.seed + 1)

    actor_params = compile_cache.jit(agent.actor_params, static_argnums=1)
    fp32 = jax.device_get(actor_params(agent_state, "fp32"))
    tables = jax.device_get(compile_cache.jit(quant_tables.tables)(actor_params(agent_state, "int8").policy))
    spec = registry.load(registry.get(config.algo).export)(config.agent, fp32, agent_state)
    layers = dense_layers(fp32.policy)
    arrays = int8_arrays(tables)
    for i, (w, b) in enumerate(layers):
        arrays[f"fp32.w{i}"], arrays[f"fp32.b{i}"] = np.asarray(w, np.float32), np.asarray(b, np.float32)

    norm: dict[str, Any] = {"norm_obs": spec.obs_mean is not None}
    if spec.obs_mean is not None:
        norm.update(clip_obs=float(spec.clip_obs), eps=OBS_VAR_EPS)
        inv_std = np.asarray(spec.obs_inv_std, np.float32)
        arrays["obs.mean"], arrays["obs.inv_std"] = np.asarray(spec.obs_mean, np.float32), inv_std
        arrays["obs.var"] = (1.0 / np.square(inv_std.astype(np.float64)) - OBS_VAR_EPS).astype(np.float32)
    if spec.log_std is not None:
        arrays["log_std"] = np.asarray(spec.log_std, np.float32)

    from importlib import metadata

    try:
        version = metadata.version("rlaccel")
    except metadata.PackageNotFoundError:
        version = "unknown"
    kwargs = config.agent.policy_kwargs
    meta = {
        "algo": config.algo,
        "env": config.env,
        "observation_space": _space(env.observation_space),
        "action_space": _space(env.action_space),
        "policy": {
            "hidden": list(kwargs.pi_arch),  # the policy tower (a pi/vf net_arch: its pi)
            "activation": kwargs.activation,
            "out_dim": int(layers[-1][0].shape[1]),
            "head": spec.head,
            "int8_profile": config.placement.actor.int8_profile,
        },
        "normalization": norm,
        "config": config.to_dict(),
        "source": {
            "run_dir": str(run_dir),
            "checkpoint": str(ckpt),
            "update": int(state.update),
            "env_steps": int(state.update) * source.steps_per_update,
            "calibrated_rollouts": int(agent_state.calib.rollouts),
        },
        "rlaccel_version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return Artifact(meta=meta, arrays=arrays)


def _calibrate(source: Any, state: Any, agent_state: Any, seed: int, rollouts: int = CALIBRATION_ROLLOUTS) -> Any:
    """Activation ranges for a run trained with fp32 actors: ``agent.calibrate`` on ``rollouts``
    rollouts of its fp32 policy (``source.act_phase``), from the checkpoint's env states."""
    import jax

    agent = source.agent
    params = compile_cache.jit(agent.actor_params, static_argnums=1)(agent_state, "fp32")
    rollout_fn, calibrate = compile_cache.jit(source.act_phase), compile_cache.jit(agent.calibrate)
    env_state, key = state.rollout, jax.random.PRNGKey(seed)
    for _ in range(rollouts):
        key, key_r = jax.random.split(key)
        env_state, traj, _ = rollout_fn(params, env_state, key_r)
        agent_state = calibrate(agent_state, jax.device_put(traj.obs.reshape(-1, traj.obs.shape[-1]), jax.devices("cpu")[0]))
    return agent_state


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str = "rlpolicy", checkpoint_path: str | Path | None = None) -> Path:
    """Write the run's policy as ``fmt``.

    Formats: ``rlpolicy`` (the artifact), ``onnx-int8`` (QDQ) / ``onnx-fp32``, ``tflite`` (int8
    flatbuffer with its float pre/post-processing, ``rlaccel.deploy.tflite_model``),
    ``tflite-int8io`` (int8 in / int8 out: the part an NPU runs whole), ``c`` (a directory with
    ``policy.h``, ``policy.c``, ``main.c``: ``rlaccel.deploy.c_model``).

    Returns:
      The path written (default ``RUN_DIR/policy.rlpolicy``, ``RUN_DIR/policy_<int8|fp32>.onnx``,
      ``RUN_DIR/policy_int8.tflite``, ``RUN_DIR/policy_int8io.tflite`` or ``RUN_DIR/policy_c/``).
    """
    from rlaccel.deploy import artifact as artifact_lib

    if fmt not in FORMATS:
        raise PolicyError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if out is None:
        default = {"rlpolicy": "policy.rlpolicy", "tflite": "policy_int8.tflite", "tflite-int8io": "policy_int8io.tflite", "c": "policy_c"}
        out = run_dir / default.get(fmt, f"policy_{fmt.split('-')[-1]}.onnx")
    art = build_artifact(run_dir, checkpoint_path)
    if fmt == "rlpolicy":
        return artifact_lib.write(out, art)
    if fmt.startswith("onnx-"):
        from rlaccel.deploy.onnx_model import save_model

        return save_model(art, fmt.split("-")[1], out)
    return write_integer_model(art, fmt, Path(out))


def write_integer_model(art: Artifact, fmt: str, out: Path) -> Path:
    """The artifact's int8 model as ``tflite`` / ``tflite-int8io`` bytes or ``c`` sources at ``out``."""
    from rlaccel.deploy.runtime import export_args

    model, profile, activation, mean, inv_std, clip = export_args(art)
    if fmt == "c":
        from rlaccel.deploy.c_model import write_c

        write_c(model, profile, activation, out, mean, inv_std, clip)
        return out
    from rlaccel.deploy.tflite_model import tflite_bytes
    from rlaccel.fileio import atomic_write

    data = tflite_bytes(model, profile, activation, mean, inv_std, clip, int8_io=fmt == "tflite-int8io")
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, data)
