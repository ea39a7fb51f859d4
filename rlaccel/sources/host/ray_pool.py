"""Host actors as Ray actor processes: the actor process and the learner's side of the pool.

No JAX here: an actor process imports this module, numpy, gymnasium and the algorithm's numpy
actor only; ``ray`` is imported on use (the cluster itself: ``ray_cluster.py``).

* :class:`RemoteActor`: one actor process; ``collect`` steps its vector env ``T`` times
  (``stepping.EnvStepper``) with the numpy actor of the newest parameter version it was
  sent, and returns numpy :class:`~rlaccel.sources.host.stepping.Steps`.
* :class:`ActorPool`: the learner's side. ``publish`` puts the host parameters into Ray's
  object store once per update (``ray.put``) and sends each actor the reference, which it
  resolves between batches when the version changed. An int8 policy travels as its
  ``Int8Model`` only (:class:`Int8Payload`: int8 weights, int32 biases, per-channel scales); each
  actor tabulates it in numpy (:func:`unpack`, ``rlaccel.lookup.thresholds``). ``take(i)`` returns actor ``i``'s next
  batch and keeps ``actors.queue_size + 1`` collects in flight per actor (a finished batch
  waits in the object store, as in a thread's queue, while the next one is stepped). A process
  that dies is restarted by Ray (``max_restarts``) and counted once; an env that raises ends
  the run unless ``actors.restart_on_env_error``; both restarts count in ``restarts``.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable

import numpy as np

from rlaccel import registry
from rlaccel.int8model import Int8Payload
from rlaccel.lookup import thresholds
from rlaccel.reference import Int8Tables
from rlaccel.schema import ConfigError
from rlaccel.sources.host.stepping import EnvStepper, Steps, gym_envs

__all__ = ["ActorPool", "Int8Payload", "ProcessDied", "RemoteActor", "unpack"]


def unpack(params: Any) -> Any:
    """The actor's side of the broadcast (``RaySource.host_params`` packs): every
    :class:`Int8Payload` tabulated in numpy (NamedTuples, dicts, lists and tuples walked
    without JAX)."""
    if isinstance(params, Int8Payload):
        return Int8Tables(params.model, thresholds(params.model, params.activation, params.profile))
    if isinstance(params, np.ndarray):
        return params
    if isinstance(params, dict):
        return {k: unpack(v) for k, v in params.items()}
    if isinstance(params, tuple) and hasattr(params, "_fields"):
        return type(params)(*(unpack(v) for v in params))
    if isinstance(params, (list, tuple)):
        return type(params)(unpack(v) for v in params)
    return params

POLL_S = 0.05  # how often a wait for a batch looks at the stop flag
START_RETRIES = 20  # ``where`` after an actor died while starting: 20 tries, 0.5 s apart


class ProcessDied(RuntimeError):
    """An actor process died (killed, segfault, out of memory) and no restart is left."""


class RemoteActor:
    """One Ray actor process: a vector env of ``num_envs`` copies and the algorithm's numpy actor.

    Args:
      index: actor number (seeds; names it in messages).
      gym_id, gym_kwargs: the gymnasium env (``rlaccel.envs.gym.GymEnv.gym_id`` / ``kwargs``).
      action_space, obs_dim: the single env's action space and observation size.
      num_envs, num_steps: ``b`` copies, ``T`` steps per batch.
      seed: base seed.
      algo, section: the registered algorithm and its config section (the numpy actor is
        ``registry.get(algo).numpy_actor(params, version, section)``, as in actor threads).
    """

    def __init__(self, index: int, gym_id: str, gym_kwargs: dict, action_space: Any, obs_dim: int, num_envs: int, num_steps: int, seed: int, algo: str, section: Any):
        self.index, self.env_args, self.num_steps, self.section = index, (gym_id, gym_kwargs, action_space, obs_dim, num_envs), num_steps, section
        self.actor_cls = registry.load(registry.get(algo).numpy_actor)
        self.seed = seed + 1000 * index
        self.rng = np.random.default_rng(self.seed)
        self.latest: tuple[Any, int] | None = None  # (ObjectRef of the host parameters, version)
        self.actor: Any = None
        self.stepper: EnvStepper | None = None
        self.fresh_envs = 0

    def set_params(self, holder: list, version: int) -> None:
        """Remember the newest parameters (``holder = [ObjectRef]``: resolved only when acted with)."""
        if self.latest is None or version > self.latest[1]:
            self.latest = (holder[0], version)

    def collect(self, holder: list, version: int) -> Steps:
        """One batch, acting with the newest version received (``holder``/``version``: the
        newest when this call was sent, in case an earlier ``set_params`` was lost to a restart)."""
        import ray

        self.set_params(holder, version)
        ref, newest = self.latest
        if self.actor is None or self.actor.version != newest:
            self.actor = self.actor_cls(unpack(ray.get(ref)), newest, self.section)
        if self.stepper is None:
            gym_id, kwargs, space, obs_dim, b = self.env_args
            seed = self.seed + 7919 * self.fresh_envs
            self.stepper = EnvStepper(gym_envs(gym_id, kwargs, b), space, obs_dim, seed)
        try:
            return self.stepper.collect(self.actor, self.rng, self.num_steps)
        except BaseException:
            self._drop_env()  # the next collect starts from a fresh env (restart_on_env_error)
            raise

    def where(self) -> dict[str, Any]:
        """The process and node this actor runs on."""
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}

    def _drop_env(self) -> None:
        stepper, self.stepper = self.stepper, None
        self.fresh_envs += 1
        if stepper is not None:
            try:
                stepper.close()
            except Exception:  # noqa: BLE001 - a broken env may fail to close too
                pass


class ActorPool:
    """The learner's handle on ``len(specs)`` :class:`RemoteActor` processes.

    Args:
      specs: the keyword arguments of each :class:`RemoteActor`.
      actors: ``Config.actors`` (``num_cpus``, ``resources``, ``queue_size``,
        ``max_policy_lag``, ``max_restarts``, ``restart_on_env_error``).
      faults: where a fault is recorded, ``(index, exception, traceback text)`` (what
        ``HostSource.fault`` reads).
    """

    def __init__(self, specs: list[dict[str, Any]], actors: Any, faults: list):
        import ray

        self.ray, self.cfg, self.faults = ray, actors, faults
        self.restarts = 0
        self._check_resources(len(specs))
        cls = ray.remote(RemoteActor).options(
            num_cpus=actors.num_cpus, resources=dict(actors.resources) or None, max_restarts=actors.max_restarts, max_task_retries=0
        )  # fmt: skip
        self.handles = [cls.remote(**spec) for spec in specs]
        self._pending: list[collections.deque] = [collections.deque() for _ in specs]
        self._sent = [0] * len(specs)  # collects sent per actor (batch numbers for max_policy_lag)
        self._down = [False] * len(specs)  # a death counted, no batch since: later failures are the same death
        self._ref: Any = None
        self.version = self.first = -1

    def _check_resources(self, n: int) -> None:
        total = self.ray.cluster_resources()
        want = {"CPU": self.cfg.num_cpus, **self.cfg.resources}
        for name, amount in want.items():
            if amount > 0 and total.get(name, 0) < amount:
                key = "actors.num_cpus" if name == "CPU" else "actors.resources"
                raise ConfigError(f"{key}: each actor needs {amount:g} {name}, the Ray cluster has {total.get(name, 0):g} in all")

    def where(self) -> list[dict[str, Any]]:
        """Process and node of every actor (blocks until they run). An actor that dies meanwhile
        is asked again once Ray has restarted it (``take`` counts the restart, from its lost
        collects); after ``START_RETRIES`` tries the error stands."""
        errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError)
        out = []
        for h in self.handles:
            for attempt in range(START_RETRIES):
                try:
                    out.append(self.ray.get(h.where.remote()))
                    break
                except errors:
                    if attempt == START_RETRIES - 1:
                        raise
                    time.sleep(0.5)
        return out

    def publish(self, params: Any, version: int) -> None:
        """Put ``params`` into the object store once and send every actor the reference;
        collects that ``actors.max_policy_lag`` held back are sent now."""
        self._ref = self.ray.put(params)
        self.version = version
        if self.first < 0:
            self.first = version
        for h in self.handles:
            h.set_params.remote([self._ref], version)
        for i in range(len(self.handles)):
            self._fill(i)

    def take(self, i: int, stopped: Callable[[], bool], timeout_s: float) -> Steps | None:
        """Actor ``i``'s next batch; ``None`` when ``stopped()`` or a fault (recorded) ends the run."""
        ray = self.ray
        last = time.perf_counter()
        while True:
            if stopped() or self.faults:
                return None
            ref = self._pending[i][0]
            ready, _ = ray.wait([ref], timeout=POLL_S)
            if not ready:
                if time.perf_counter() - last > timeout_s:
                    self.faults.append((None, TimeoutError(f"no trajectory batch for {timeout_s} s (actors.timeout_s): an env is stuck"), ""))
                    return None
                continue
            self._pending[i].popleft()
            try:
                steps = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the env (or the actor's code) raised
                if not self._restart(i, e.cause if e.cause is not None else e, refill=False):
                    return None
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:  # the process died
                if self._down[i]:  # calls sent while it restarts fail too: the same death, send again
                    self._sent[i] -= 1
                    if time.perf_counter() - last > timeout_s:
                        self.faults.append((i, ProcessDied(f"actor {i} did not come back within {timeout_s} s (actors.timeout_s)"), ""))
                        return None
                    time.sleep(POLL_S)
                    self._fill(i)
                    continue
                if not self._restart(i, ProcessDied(f"the actor process died ({type(e).__name__})"), refill=True):
                    return None
                self._down[i] = True
            else:
                self._down[i] = False
                self._fill(i)
                return steps
            last = time.perf_counter()
            self._fill(i)

    def ready_fraction(self, i: int) -> float:
        """Share of actor ``i``'s queue (``actors.queue_size``) holding finished batches."""
        refs = list(self._pending[i])
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        return min(len(ready), self.cfg.queue_size) / self.cfg.queue_size

    def close(self) -> None:
        """Kill every actor process (no restart)."""
        for h in self.handles:
            try:
                self.ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead, or the cluster is gone
                pass
        self.handles = []

    # -- helpers --------------------------------------------------------------------------

    def _restart(self, i: int, exc: BaseException, refill: bool) -> bool:
        """Count a restart of actor ``i`` if allowed (else record the fault); ``refill``: every
        collect in flight died with the process, send them again."""
        env_error = not isinstance(exc, ProcessDied)
        if (env_error and not self.cfg.restart_on_env_error) or self.restarts >= self.cfg.max_restarts:
            if not env_error:
                exc = ProcessDied(f"{exc} and actors.max_restarts = {self.cfg.max_restarts} restarts are used up")
            self.faults.append((i, exc, ""))
            return False
        self.restarts += 1
        self._sent[i] -= 1  # the lost batch is collected again (max_policy_lag counts batches received)
        if refill:  # every collect in flight died with the process
            self._sent[i] -= len(self._pending[i])
            self._pending[i].clear()
            self.handles[i].set_params.remote([self._ref], self.version)
        return True

    def _fill(self, i: int) -> None:
        """Keep ``queue_size + 1`` collects in flight, none ahead of ``max_policy_lag``."""
        lag = self.cfg.max_policy_lag
        while len(self._pending[i]) < self.cfg.queue_size + 1:
            if lag is not None and self.version < self.first + self._sent[i] - lag:
                return
            ref = self.handles[i].collect.remote([self._ref], self.version)
            self._pending[i].append(ref)
            self._sent[i] += 1
