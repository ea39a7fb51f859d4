"""The compiled program of a sweep group, and the step source that runs it through the loop.

:class:`SweepProgram` trains the members (settings x seeds) of one compile group in lockstep:
each member's fused chunk (``rlaccel.sources.fused.FusedSource``) is vmapped over members,
and on several devices the member axis is sharded (a 1-D mesh, ``jax.shard_map``) so each
device trains its own members with no communication. :class:`SweepSource` adapts it to the
step-source interface, so :func:`run_group` drives a group through ``rlaccel.loop.run``:
the same chunks, signals, checkpoints and ``summary.json`` as a single run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel import compile_cache
from rlaccel.config import Config
from rlaccel.sources.base import StepSource
from rlaccel.sweep.grid import Setting, flatten, with_values

AXIS = "sweep"  # name of the member axis of the device mesh


class SweepProgram:
    """Members (settings x seeds) of one compile group, trained in lockstep.

    Args:
      config: any setting of the group (the static fields are the group's; traced fields
        are replaced per member).
      traced_keys: dotted keys whose values are per-member arrays.
      devices: where members run, sharded along the mesh axis ``"sweep"``; default: every
        device of JAX's default backend.
    """

    def __init__(self, config: Config, traced_keys: Sequence[str], devices: Sequence[Any] | None = None):
        import jax

        from rlaccel import agent as agent_lib
        from rlaccel import envs

        self.config = config
        self.traced_keys = tuple(traced_keys)
        self.env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
        spec = agent_lib.make(config, self.env)
        self.num_updates = spec.num_updates
        self.steps_per_update = spec.steps_per_update
        self.devices = list(devices) if devices is not None else jax.devices()
        self.mesh = jax.sharding.Mesh(np.asarray(self.devices), (AXIS,))
        self.sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(AXIS))
        self._dtypes = {k: _dtype(flatten(config.to_dict())[k]) for k in self.traced_keys}
        self._chunks: dict[int, Any] = {}
        self._init: Callable | None = None
        self.compile_s = 0.0

    # -- one member (pure) ----------------------------------------------------------------

    def runner(self, hparams: Mapping[str, Any]) -> Any:
        """The fused source of one member whose traced hyperparameters are ``hparams``."""
        from rlaccel import agent as agent_lib
        from rlaccel.sources.fused import FusedSource

        config = with_values(self.config, hparams)
        spec = agent_lib.make(config, self.env)
        return FusedSource(spec.agent, self.env, spec.num_envs, spec.num_steps, precision=config.placement.actor.precision)

    def _member_init(self, key: Any, hparams: Mapping[str, Any]) -> Any:
        return self.runner(hparams).init(key)

    def _member_chunk(self, state: Any, hparams: Mapping[str, Any], num_updates: int) -> Any:
        return self.runner(hparams).train_chunk(state, num_updates)

    def _sharded(self, fn: Callable) -> Callable:
        """``fn`` vmapped over members, each device running its own slice of them."""
        import jax

        spec = jax.sharding.PartitionSpec(AXIS)
        # check_vma=False: members never communicate, and agent code such as DQN's
        # ``lax.cond(learn, wait)`` returns per-device constants from one branch, which the
        # varying-axis type check would reject although the program is correct.
        return jax.shard_map(jax.vmap(fn), mesh=self.mesh, in_specs=spec, out_specs=spec, check_vma=False)

    # -- members (batched, sharded) -------------------------------------------------------

    def pad(self, num_members: int) -> int:
        """Members actually run: ``num_members`` rounded up to a multiple of the devices."""
        d = len(self.devices)
        return -(-num_members // d) * d

    def place(self, keys: Any, hparams: Mapping[str, Sequence[float]]) -> tuple[Any, dict[str, Any]]:
        """Member keys ``[M, 2]`` and hyperparameters ``{key: [M]}``, padded (the last member is
        repeated; its copies are dropped by the caller) and sharded over the devices."""
        import jax
        import jax.numpy as jnp

        m = keys.shape[0]
        idx = np.minimum(np.arange(self.pad(m)), m - 1)
        keys = jax.device_put(jnp.asarray(keys)[idx], self.sharding)
        values = {k: jax.device_put(jnp.asarray(np.asarray(v)[idx], self._dtypes[k]), self.sharding) for k, v in hparams.items()}
        return keys, values

    def init(self, keys: Any, hparams: Mapping[str, Any]) -> Any:
        """Fresh ``TrainState`` per member (leading axis ``[M]``), sharded like ``keys``."""
        if self._init is None:
            self._init = compile_cache.jit(self._sharded(self._member_init))
        return self._init(keys, dict(hparams))

    def chunk_fn(self, state: Any, hparams: Mapping[str, Any], num_updates: int) -> Callable:
        """``(state [M], hparams) -> (state, metrics {name: [M, num_updates]})``, compiled once
        per chunk length; donates ``state``."""
        if num_updates not in self._chunks:
            start = time.perf_counter()
            fn = self._sharded(functools.partial(self._member_chunk, num_updates=num_updates))
            self._chunks[num_updates] = compile_cache.jit(fn, donate_argnums=0).lower(state, dict(hparams)).compile()
            self.compile_s += time.perf_counter() - start
        return self._chunks[num_updates]


def _dtype(value: Any) -> str:
    return "int32" if isinstance(value, int) and not isinstance(value, bool) else "float32"


def member_key(seed: int) -> Any:
    """The key of the member with this seed: ``PRNGKey(seed)``, what ``train.py --seed`` uses."""
    import jax

    return jax.random.PRNGKey(seed)


@dataclasses.dataclass
class GroupResult:
    """What one compile group produced; member ``i`` is ``(setting i // seeds, seed i % seeds)``."""

    settings: list[Setting]
    seeds: list[int]
    metrics: dict[str, np.ndarray]  # name -> [members, num_updates]
    steps_per_update: int  # env steps per update of one member
    compile_s: float
    train_s: float
    devices: int
    state: Any = None  # final TrainState, leading axis [padded members] (sharded); member i is [i]
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # the loop's summary of the group

    @property
    def env_steps(self) -> int:
        """Env steps of every member together."""
        n = next(iter(self.metrics.values())).shape[1]
        return len(self.settings) * len(self.seeds) * n * self.steps_per_update

    def returns(self) -> np.ndarray:
        """``rollout/ep_rew_mean`` as ``[settings, seeds, updates]``."""
        r = self.metrics["rollout/ep_rew_mean"]
        return r.reshape(len(self.settings), len(self.seeds), r.shape[1])


class SweepSource(StepSource):
    """One compile group as a step source: the loop's metrics are means over members; the
    per-member ones are kept in :attr:`history` (``[members, updates]`` once stacked).

    Args:
      program: the group's compiled program.
      settings: the group's settings (member ``i`` is ``(settings[i // seeds], seeds[i % seeds])``).
      seeds: PRNG seeds; member key ``PRNGKey(seed)``, what ``rlaccel train --seed`` uses.
    """

    guard_nonfinite = False  # a diverging member is a sweep result, not a fault
    checkpoint_meta = {"mode": "sweep"}

    def __init__(self, program: SweepProgram, settings: Sequence[Setting], seeds: Sequence[int]):
        self.program = program
        self.members = [(s, seed) for s in settings for seed in seeds]
        flats = [flatten(s.config.to_dict()) for s in settings]
        self.hparams = {k: [flats[list(settings).index(s)][k] for s, _ in self.members] for k in program.traced_keys}
        self.steps_per_update = len(self.members) * program.steps_per_update
        self.num_updates = program.num_updates
        self.history: list[dict[str, np.ndarray]] = []
        self.state: Any = None  # the latest state, leading axis [padded members] (sharded)
        self._values: Any = None

    def describe(self) -> str:
        return f"sweep: {len(self.members)} member(s) vmapped, sharded over {len(self.program.devices)} device(s)"

    def initial_state(self, key: Any) -> Any:
        keys = np.stack([np.asarray(member_key(seed)) for _, seed in self.members])
        keys, self._values = self.program.place(keys, self.hparams)
        return self.program.init(keys, self._values)

    def compile(self, state: Any, num_updates: int) -> None:
        self.program.chunk_fn(state, self._values, num_updates)

    def run_chunk(self, state: Any, num_updates: int) -> tuple[Any, dict[str, np.ndarray]]:
        from rlaccel import distributed

        state, metrics = self.program.chunk_fn(state, self._values, num_updates)(state, self._values)
        self.state = state
        # Several processes: members live on every process's devices; gathered to each one.
        per_member = {k: np.asarray(v)[: len(self.members)] for k, v in distributed.fetch(metrics).items()}
        self.history.append(per_member)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN before the first episode ends
            return state, {k: np.nanmean(v, axis=0) for k, v in per_member.items()}

    def final_stats(self, state: Any) -> dict[str, Any]:
        last = self.history[-1]["rollout/ep_rew_mean"][:, -1] if self.history else np.full(len(self.members), np.nan)
        return {"final_return": float(np.nanmean(last)) if np.isfinite(last).any() else float("nan"), "final_returns": [float(x) for x in last]}

    def summary_extra(self) -> dict[str, Any]:
        return {"members": len(self.members), "devices": len(self.program.devices)}


def run_group(
    settings: Sequence[Setting],
    traced_keys: Sequence[str],
    seeds: Sequence[int],
    *,
    devices: Sequence[Any] | None = None,
    on_chunk: Callable[[int, dict[str, np.ndarray], float], bool] | None = None,
    program: SweepProgram | None = None,
    run_dir: str | Path | None = None,
    console: Any = None,
    progress: bool | None = None,
    stop: Any = None,
) -> GroupResult:
    """Train every setting x seed of one compile group together, through ``rlaccel.loop.run``.

    Args:
      settings: settings that differ only in ``traced_keys``.
      traced_keys: their vmapped hyperparameters.
      seeds: PRNG seeds; member key ``PRNGKey(seed)``, as ``rlaccel train --seed``.
      devices: see :class:`SweepProgram`.
      on_chunk: called after each chunk with ``(env steps of all members in it, metrics
        {name: [members, n]}, training seconds so far)``; returning ``False`` stops training
        early (pruning).
      program: a compiled program to reuse (a search's trials share one per static setting).
      run_dir: the group's run directory (``config.yaml``, TensorBoard means over members,
        checkpoints, ``summary.json``); ``None`` writes nothing.
      console: where the progress bar and notices go (``None``: stderr).
      progress: show the loop's progress bar (``None``: as ``logging.progress`` says).
      stop: the caller's signal flag (``rlaccel.guards.StopFlag``), shared by every group.
    """
    from rlaccel import loop

    program = program or SweepProgram(settings[0].config, traced_keys, devices)
    compiled_before = program.compile_s
    source = SweepSource(program, settings, seeds)

    def hook(end: Any) -> None:
        if on_chunk is not None:
            n = source.history[-1]["rollout/ep_rew_mean"].shape[1]
            if on_chunk(len(source.members) * n * program.steps_per_update, source.history[-1], end.train_s) is False:
                end.stop = "pruned"

    summary = loop.run(settings[0].config, source, run_dir, console=console, hooks=[hook], stop=stop, progress=progress)
    stacked = {k: np.concatenate([r[k] for r in source.history], axis=1) for k in source.history[0]} if source.history else {}
    return GroupResult(
        settings=list(settings),
        seeds=list(seeds),
        metrics=stacked,
        steps_per_update=program.steps_per_update,
        compile_s=program.compile_s - compiled_before,
        train_s=summary["train_s"],
        devices=len(program.devices),
        state=source.state,
        summary=summary,
    )
