"""Runs over several processes (hosts): ``jax.distributed`` start-up, process roles, and the
few exchanges the loop makes between chunks.

A multi-process run is one data-parallel program (``rlaccel.sources.parallel``) over the
learner devices of every process: each process steps the envs of its own devices, and the
gradients of every minibatch are averaged over all devices (CPU hosts: gloo over TCP).

* Start-up (:func:`initialize`, before JAX touches a device): ``rlaccel train --coordinator
  HOST:PORT --num-processes N --process-id I`` on each host, or, with none of the three flags,
  ``jax.distributed``'s own detection when the process was launched as one task of several by
  SLURM (``srun``) or Open MPI (``mpirun``): :func:`cluster_launch`.
* Roles: process 0 (:func:`is_writer`) writes the run directory (``config.yaml``, TensorBoard
  events, checkpoints, ``summary.json``); every process computes, and every process's chunk
  time is exchanged after each chunk (:class:`ChunkExchange`) so process 0 logs each one's
  env steps/s.
  A signal to any process stops all of them after the same chunk.
* Failure: a process that dies breaks the next collective of the others (within one
  minibatch; a TCP reset, not a timeout). They stop with :class:`ProcessLost`: one line, exit
  code 1, no new checkpoint (the state of the dead process's envs is gone); the last
  checkpoint process 0 wrote stays usable. A process blocked outside a collective (on a
  checkpoint barrier) learns it from its lifeline (``rlaccel.lifeline``). A process that hangs
  instead of dying is declared dead by the coordination service after
  :data:`HEARTBEAT_TIMEOUT_S`, and JAX ends the others.

``import rlaccel.distributed`` imports JAX but starts no backend.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import jax
import numpy as np

from rlaccel import lifeline
from rlaccel.schema import ConfigError
from rlaccel.sources.base import SourceFault

__all__ = [
    "AXIS",
    "HEARTBEAT_TIMEOUT_S",
    "ChunkExchange",
    "ProcessLost",
    "abandon",
    "agree",
    "cluster_launch",
    "exit_lost",
    "fetch",
    "initialize",
    "is_lost_peer",
    "is_writer",
    "local_rows",
    "pmean",
    "process_count",
    "process_index",
]

AXIS = "data"
"""The device axis of data parallelism (the mesh axis; ``axis_name`` of an agent's ``update``)."""

HEARTBEAT_TIMEOUT_S = 60
"""Seconds without a heartbeat after which ``jax.distributed`` declares a process dead."""

INIT_TIMEOUT_S = 120
"""Seconds a process waits for all the others to join at start-up."""


class ProcessLost(SourceFault):
    """Another process of a multi-process run died (a collective failed); the run cannot go on."""


def cluster_launch() -> str | None:
    """``"slurm"`` or ``"ompi"`` when this process is one of several tasks of a SLURM step
    (``srun``) or an Open MPI launch (``mpirun``), whose environment ``jax.distributed`` reads
    by itself; ``None`` otherwise (one task, e.g. a batch script's shell: a single-process run)."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process run; call before anything asks JAX for a device.

    Args:
      coordinator: ``HOST:PORT`` of process 0 (it listens there).
      num_processes: processes in the run.
      process_id: this process, ``0 .. num_processes - 1``.

    With all three ``None``: under a multi-task SLURM or Open MPI launch (:func:`cluster_launch`)
    ``jax.distributed`` detects them itself; otherwise nothing happens (a single-process run).

    Returns:
      Whether a multi-process run was joined.

    Raises:
      ConfigError: flags given in part, out of range, or malformed (one line naming the flag).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ConfigError("--coordinator HOST:PORT, --num-processes N and --process-id I go together (or none of them: SLURM / Open MPI are detected)")
    if not any(given) and cluster_launch() is None:
        return False
    if all(given):
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator: expected HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator!r}")
        if num_processes < 1:
            raise ConfigError(f"--num-processes: must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id: must be in 0 .. {num_processes - 1} (--num-processes {num_processes}), got {process_id}")
    # CPU hosts exchange gradients with gloo over TCP (JAX's default; MPI is the other choice).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator, num_processes, process_id, initialization_timeout=INIT_TIMEOUT_S, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S
        )
    except RuntimeError as e:  # the backend already started, or called twice
        raise ConfigError(f"jax.distributed: {str(e).splitlines()[0]}") from None
    from jax._src import distributed as jax_distributed  # its client, as orbax uses it

    state = jax_distributed.global_state
    host = state.coordinator_address.rsplit(":", 1)[0].strip("[]")
    lifeline.start(state.client, host, state.process_id, state.num_processes, INIT_TIMEOUT_S)
    return True


def process_index() -> int:
    """This process's index (0 without ``jax.distributed``)."""
    return jax.process_index()


def process_count() -> int:
    """Processes in the run (1 without ``jax.distributed``)."""
    return jax.process_count()


def is_writer() -> bool:
    """Whether this process writes the run directory (process 0)."""
    return jax.process_index() == 0


def agree(ok: bool) -> bool:
    """Whether every process of the run is ``ok`` (each calls it once, e.g. after validating its
    arguments), so all of them start the run or all of them refuse it."""
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))


def local_rows(tree: Any, axis_name: str) -> Any:
    """This device's contiguous share of the leading axis of every leaf, inside ``shard_map``
    over ``axis_name`` (``[N, ...] -> [N / devices, ...]``; device ``i`` gets rows
    ``i * N / devices ..``). ``N`` must be divisible by the number of devices."""
    size = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def share(x: jax.Array) -> jax.Array:
        n = x.shape[0] // size
        return jax.lax.dynamic_slice_in_dim(x, index * n, n)

    return jax.tree.map(share, tree)


def pmean(tree: Any, axis_name: str) -> Any:
    """``lax.pmean`` of a pytree of float32 arrays as one flat vector: one collective, where
    XLA's CPU (gloo) collectives would run one per leaf (a network round trip each across hosts)."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.pmean(flat, axis_name))


def fetch(tree: Any) -> Any:
    """Host (numpy) copies of global arrays, whole: ``jax.device_get`` where this process holds
    every shard; otherwise gathered from all processes (a collective: every process calls it)."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated for x in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


class ChunkExchange:
    """What the processes of a run agree on after every chunk (one small collective): each
    one's chunk time, logged by process 0 as ``time/fps_process<i>``, and the stop signals.

    A signal stops every process after the same chunk: a process acts on its own signal only
    once it has been exchanged (:meth:`stop_requested`), so no process leaves the loop while
    another starts a chunk. With one process nothing is exchanged and a signal acts at once.

    Args:
      steps_per_update: env steps of one update (all processes).
      checkpoint_dir: the run's checkpoints, named when a process is lost (``rlaccel.lifeline``).
    """

    def __init__(self, steps_per_update: int, checkpoint_dir: Any = None):
        lifeline.watch_checkpoints(checkpoint_dir)
        self.spu = steps_per_update
        self.count = jax.process_count()
        self.seconds = np.zeros(self.count)
        self.updates = 0
        self._agreed: int | None = None

    def stop_requested(self, stop: Any) -> bool:
        """Whether the loop stops now (``stop``: the run's ``rlaccel.guards.StopFlag``)."""
        return stop.requested if self.count == 1 else self._agreed is not None

    def __call__(self, seconds: float, updates: int, stop: Any) -> dict[str, float]:
        """Exchange this chunk's ``seconds`` (``updates`` updates) and ``stop``'s signal; a signal
        another process received is recorded in ``stop``. Returns the per-process speeds.

        Raises:
          ProcessLost: another process is gone.
        """
        if self.count == 1:
            return {}
        from jax.experimental import multihost_utils

        try:
            rows = np.asarray(multihost_utils.process_allgather(np.array([seconds, stop.signum or 0], np.float64)))
        except Exception as e:  # a lost process is the one failure expected here
            if is_lost_peer(e):
                raise lost(e, self.updates) from None
            raise
        self.seconds += rows[:, 0]
        self.updates += updates
        signals = [int(s) for s in rows[:, 1] if s]
        if signals:
            self._agreed = signals[0]
            if not stop.requested:
                stop.request(signals[0])
        return {f"time/fps_process{i}": updates * self.spu / s for i, s in enumerate(rows[:, 0]) if s > 0}

    def summary(self) -> dict[str, Any]:
        """``process_sps``: each process's env steps/s over the run's chunks (several processes)."""
        if self.count == 1:
            return {}
        return {"processes": self.count, "process_sps": [self.updates * self.spu / s if s > 0 else None for s in self.seconds]}


_LOST = ("gloo", "connection reset", "connection refused", "broken pipe", "unavailable", "heartbeat", "coordination service", "socket closed", "end of file")


def is_lost_peer(error: BaseException) -> bool:
    """Whether ``error`` (raised by a computation or an exchange of a multi-process run) means
    another process is gone."""
    text = str(error).lower()
    return jax.process_count() > 1 and any(word in text for word in _LOST)


def lost(error: BaseException, update: int | None = None) -> ProcessLost:
    """The :class:`ProcessLost` of a collective that failed with ``error`` (after ``update`` updates, if known)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    after = f"; the run stopped after update {update}" if update is not None and update >= 0 else "; the run stopped"
    return ProcessLost(f"process {jax.process_index()} of {jax.process_count()}: another process of the run is gone ({first[:160]}){after}")


def exit_lost(error: ProcessLost, checkpoint_dir: Any) -> NoReturn:
    """Report a lost process in one line and exit 1 at once: what a process other than 0 does
    (it writes nothing, and if process 0 died JAX's coordination client aborts it within a
    second, with a stack trace)."""
    from rlaccel import checkpoint

    latest = checkpoint.latest(checkpoint_dir) if checkpoint_dir is not None else None
    print(f"error: {error}; last checkpoint: {latest or 'none written'}", file=sys.stderr)
    abandon(1)


def abandon(code: int) -> NoReturn:
    """Exit at once with ``code`` after a :class:`ProcessLost`, skipping ``jax.distributed``'s
    shutdown (its barrier waits for the dead process, then aborts with a stack trace)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
