"""The Python API: ``rlaccel.train(...)`` trains with logging and checkpoints, like ``rlaccel train``.

    import rlaccel

    run = rlaccel.train("configs/ppo_cartpole.yaml", overrides=["total_timesteps=100000"])
    run.summary["final_return"], run.run_dir
    policy = run.policy()          # the int8 policy as the actors ran it (numpy, no JAX)
    action = policy.act(obs)

Everything is validated before anything is written (``validate``): a bad config, env id,
device or run directory raises :class:`rlaccel.config.ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlaccel import config as config_lib
from rlaccel import gcpause, registry
from rlaccel.config import Config, ConfigError

__all__ = ["Run", "check_run_dir", "default_run_dir", "load_config", "run_checked", "train", "validate"]


@dataclasses.dataclass
class Run:
    """A finished (or stopped) run.

    Attributes:
      run_dir: its directory (``config.yaml``, TensorBoard events, ``checkpoints/``, ``summary.json``).
      summary: what ``summary.json`` holds (``status``, ``final_return``, ``sps``, probes, ...).
    """

    run_dir: Path
    summary: dict[str, Any]

    @classmethod
    def load(cls, run_dir: str | Path) -> "Run":
        """An earlier run, from its ``summary.json``."""
        run_dir = Path(run_dir)
        return cls(run_dir=run_dir, summary=json.loads((run_dir / "summary.json").read_text()))

    def policy(self, backend: str = "numpy-int8", **kwargs: Any) -> Any:
        """The run's deterministic policy, ``policy.act(obs) -> action``.

        Exports ``run_dir/policy.rlpolicy`` from the newest checkpoint the first time
        (``rlaccel export``), then loads it with ``rlaccel.deploy.load_policy``.

        Args:
          backend: ``numpy-int8`` (bit-exact with the training actors), ``numpy-fp32``,
            ``onnx-int8``, ``onnx-fp32``, ``jax-int8`` or ``jax-fp32``.
        """
        from rlaccel.deploy import load_policy

        path = self.run_dir / "policy.rlpolicy"
        if not path.is_file() or path.stat().st_mtime < (self.run_dir / "summary.json").stat().st_mtime:
            from rlaccel.deploy.export import export

            export(self.run_dir, path)
        return load_policy(path, backend, **kwargs)


def load_config(config: str | Path | Mapping[str, Any] | Config, overrides: Sequence[str] | None = None) -> Config:
    """A validated :class:`Config` from a YAML path, plain data or a ``Config``, with ``key=value`` overrides."""
    if isinstance(config, Config):
        data = config.to_dict()
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        data = config_lib.load_data(config)
    return config_lib.build(config_lib.apply_overrides(data, list(overrides or [])))


def validate(config: Config) -> None:
    """What a run needs beyond the config's own checks: the env id exists, the algorithm can
    act in its action space, the devices exist (imports the env's backend, not the agent).

    Raises:
      ConfigError: naming the key (``env``, ``algo``, ``placement...``).
    """
    from rlaccel import envs, placement

    placement.start(config)  # before an env (brax) or a device starts JAX
    try:
        env = envs.make(config.env, **config.env_kwargs)
    except envs.UnknownEnvError as e:
        raise ConfigError(f"env: {e}") from None
    if registry.get(config.algo).discrete_only and not env.is_discrete:
        raise ConfigError(f"algo: {config.algo} needs a discrete action space; {config.env} has continuous actions {env.action_space} (use ppo)")
    if getattr(config.agent, "use_sde", False) and env.is_discrete:
        raise ConfigError(f"{config.algo}.use_sde: gSDE needs continuous (Box) actions; {config.env} has {env.action_space}")
    where = placement.resolve(config.placement)
    if where.parallel:  # data parallel: JAX / brax envs, equal shares per device
        if config.env_kind == "gym":
            raise ConfigError(f"placement.learner.devices: data parallelism steps JAX and brax envs; {config.env} runs on host actors (use 1 device, one process)")
        from rlaccel.sources.parallel import check_shares

        check_shares(config.agent, config.algo, len(where.learners))
    if config.env_kind == "gym" and config.actors.backend == "ray":
        from rlaccel.sources.host import ray_cluster

        ray_cluster.check(config.actors)  # ray installed; a cluster address: token, reachable
    if config.env_kind == "gym":
        placement.actor_runtime(config)  # actors.policy c / auto: the C kernel compiled (cached) before anything is written


def default_run_dir(config: Config) -> Path:
    """``logging.run_dir``, else ``runs/<algo>_<env>_s<seed>_<time>``."""
    if config.logging.run_dir:
        return Path(config.logging.run_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.algo}_{config.env}_s{config.seed}_{stamp}"


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A new run needs an empty (or missing) directory; a resumed one a run directory with a checkpoint.

    Raises:
      ConfigError: naming the directory and what to pass instead.
    """
    if resume and overwrite:
        raise ConfigError(f"--resume {run_dir} and --overwrite contradict each other; pass one")
    if resume:
        from rlaccel import checkpoint

        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        if checkpoint.latest(run_dir / "checkpoints") is None:
            raise ConfigError(f"--resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
        return
    if _other_process():  # process 0 of a multi-process run checks and writes the directory
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {run_dir} exists; pass --resume {run_dir} to continue it or --overwrite to replace it")


@gcpause.held()  # start-up without the cyclic collector (rlaccel.gcpause)
def train(
    config: str | Path | Mapping[str, Any] | Config,
    overrides: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    console: Any = None,
) -> Run:
    """Train an agent with TensorBoard logging, checkpoints and ``summary.json``.

    Args:
      config: a YAML path, plain data (``{"env": ..., "ppo": {...}}``) or a :class:`Config`.
      overrides: ``["ppo.learning_rate=1e-3", "seed=3"]`` (values parsed as YAML).
      run_dir: the run directory (default: ``logging.run_dir`` or ``runs/<algo>_<env>_s<seed>_<time>``).
      progress: show the progress bar.
      resume: continue ``run_dir`` from its newest checkpoint (``config`` may be ``None``-like:
        pass ``run_dir / "config.yaml"``).
      overwrite: replace an existing ``run_dir``.
      stop_at: stop after this many updates (checkpointed; a later ``resume`` continues exactly).
      console: a ``rich.console.Console`` for progress and notices (default: stderr).

    Returns:
      The :class:`Run`; ``run.summary["status"]`` is ``completed`` or ``stopped`` (signal).

    Raises:
      ConfigError: bad config, env, device or run directory (nothing written).
      rlaccel.checkpoint.CheckpointError: ``resume`` without a usable checkpoint (nothing written).
      rlaccel.guards.NonFiniteError: the run diverged (the last good checkpoint is kept).
      rlaccel.sources.SourceFault: an actor's env raised (checkpointed, actors joined).
    """
    config = load_config(config, overrides)
    if not progress:
        config = config_lib.replace(config, **{"logging.progress": False})
    validate(config)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    return run_checked(config, run_dir, resume=resume, overwrite=overwrite, stop_at=stop_at, console=console)


def run_checked(
    config: Config, run_dir: Path, *, resume: bool = False, overwrite: bool = False, stop_at: int | None = None, console: Any = None
) -> Run:
    """Train a config that :func:`validate` and :func:`check_run_dir` already accepted (what
    :func:`train` and ``rlaccel train`` end with; nothing is checked twice)."""
    if overwrite and not resume and run_dir.exists() and not _other_process():
        shutil.rmtree(run_dir)

    from rlaccel import compile_cache, loop, sources

    compile_cache.enable()  # before the run's first compile
    summary = loop.run(config, sources.make(config, console), run_dir, resume=resume, console=console, stop_at=stop_at)
    return Run(run_dir=run_dir, summary=summary)


def _other_process() -> bool:
    """This process is one of a multi-process run's but not process 0 (``rlaccel.distributed``):
    it writes nothing."""
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_index() != 0
