"""Checkpoints: the whole training state, written with orbax-checkpoint, committed atomically.

Layout (``<run_dir>/checkpoints/checkpoint_<update>/``, orbax's step directories; details in
``rlaccel.checkpoint_format``): ``state/`` holds every array of the ``TrainState``
(parameters, optimiser state, normaliser statistics, env state, PRNG key, counters), so a
resumed run continues bitwise where the saved one stopped; ``meta/metadata`` is a JSON header
with the caller's meta (config, update, mode) and each array's path, dtype, shape and sha256.

* **Atomic**: orbax writes into a temp directory and commits by renaming it into place (files
  fsynced first, the directory after): a crash or ``kill -9`` mid-save leaves the previous
  checkpoints intact; the newest committed one is what ``--resume`` loads, and the next save
  removes the orphaned temp directory. Only the newest ``keep`` (``logging.keep_checkpoints``)
  are kept, the oldest deleted once the new one is committed.
* **Checked**: a damaged checkpoint (a flipped byte, a truncated or missing file) and an
  incompatible one (other array paths or shapes) are refused in one line naming the checkpoint
  and the file or array.
* **Asynchronous**: :class:`Saver` (the training loop's) returns once the arrays are on the
  host and commits in the background; :func:`save` waits.
* **Multi-host** (``jax.distributed``): every process creates the same :class:`Saver` and calls
  ``save`` / :func:`restore` with its part of the same state (orbax's barriers need all).
  Process 0 writes the header and the arrays each process holds whole; an array split over
  hosts is written shard by shard by its owners. The checkpoint directory must be on a
  filesystem every process sees. :func:`latest`, :func:`list_checkpoints` and :func:`read_meta`
  are plain file reads, the same in every process.
* **Light**: importing this module, listing checkpoints and reading meta import neither JAX
  nor orbax; a :class:`Saver` imports ``rlaccel.checkpoint_orbax`` in a thread when made, a
  restore when it runs.

Format-1 checkpoints (one msgpack file ``checkpoint_<update>.ckpt``, rlaccel before orbax) are
not read: :func:`restore` and ``--resume`` say so in one line naming the file.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

from rlaccel import checkpoint_format as fmt
from rlaccel.checkpoint_format import PAUSE_ENV, CheckpointError, DamagedCheckpointError

__all__ = [
    "PAUSE_ENV",
    "CheckpointError",
    "DamagedCheckpointError",
    "Saver",
    "latest",
    "list_checkpoints",
    "read_arrays",
    "read_meta",
    "restore",
    "save",
]


class Saver:
    """Writes one run's checkpoints into ``directory``, keeping the newest ``keep``.

    Asynchronous by default: :meth:`save` returns once the state is copied to the host and
    the write commits in the background while training goes on; the next :meth:`save`,
    :meth:`wait` and :meth:`close` wait for it. Use it as a context manager or call
    :meth:`close` (a checkpoint still in flight at a crash is simply not committed).

    Args:
      directory: the checkpoint folder (created if missing; temp directories a killed
        process left are removed on the first save).
      keep: how many checkpoints to keep (``logging.keep_checkpoints``).
      asynchronous: commit in the background (``False``: each :meth:`save` waits).
    """

    def __init__(self, directory: str | Path, keep: int = 3, *, asynchronous: bool = True) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.asynchronous = asynchronous
        self._manager: Any = None
        # orbax's import (~0.14 s) in a thread now, so the first save does not stop training
        # for it (the training loop makes its Saver as the first chunk starts).
        threading.Thread(target=importlib.import_module, args=("rlaccel.checkpoint_orbax",), name="rlaccel-orbax-import", daemon=True).start()

    def save(self, update: int, state: Any, meta: dict[str, Any]) -> Path:
        """Write ``state`` (any pytree of arrays) as the checkpoint of ``update``.

        Args:
          update: learner updates done; orders checkpoints.
          state: the pytree (jax or numpy arrays; sharded ``jax.Array`` welcome).
          meta: JSON-able facts stored in the header (config, env steps, ...).

        Returns:
          The path the checkpoint has once committed (after :meth:`wait` when asynchronous).
        """
        from rlaccel import checkpoint_orbax

        if self._manager is None:
            self._manager = checkpoint_orbax.make_manager(self.directory, self.keep, self.asynchronous)
        checkpoint_orbax.save(self._manager, update, state, meta)
        return self.directory / fmt.name(update)

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed and old ones deleted."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """:meth:`wait`, then release orbax's threads (a later :meth:`save` starts afresh)."""
        if self._manager is not None:
            manager, self._manager = self._manager, None
            manager.close()

    def __enter__(self) -> Saver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def save(directory: str | Path, update: int, state: Any, meta: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as ``checkpoint_<update>`` and keep only the ``keep`` newest; waits for the commit.

    Args:
      directory: the checkpoint folder (created if missing).
      update: learner updates done; orders checkpoints.
      state: any pytree of arrays.
      meta: JSON-able facts stored in the header (config, env steps, ...).
      keep: how many checkpoints to keep.

    Returns:
      The checkpoint's path (a directory).
    """
    with Saver(directory, keep, asynchronous=False) as saver:
        return saver.save(update, state, meta)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Committed checkpoints in ``directory``, oldest first (temp directories are ignored;
    format-1 files are listed too, so that :func:`restore` can name them)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(u, p.is_dir(), p) for p in directory.iterdir() if (u := fmt.update_of(p)) is not None]
    return [p for *_, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The header's ``meta`` (checksum-verified), without JAX or reading any array."""
    return fmt.read_header(path)["meta"]


def restore(path: str | Path, target: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``target`` (a freshly initialised state).

    Leaves of ``target`` that are ``jax.Array`` come back on the same sharding (each process
    reads its own shards); other leaves (numpy, ``jax.eval_shape`` output) as numpy arrays.
    Multi-host: every process calls it.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointError: missing, of another format, or saved from a config whose arrays have
        other shapes (e.g. a different ``net_arch``): the message names the first mismatch.
      DamagedCheckpointError: unreadable, truncated or corrupted (names the file or array).
    """
    from rlaccel import checkpoint_orbax

    return checkpoint_orbax.restore(Path(path), target)


def read_arrays(path: str | Path) -> dict[str, Any]:
    """Every array of a checkpoint as ``{"/agent/params/policy/Dense_0/kernel": numpy array}``,
    checksum-verified, without a template (inspection and tests)."""
    from rlaccel import checkpoint_orbax

    return checkpoint_orbax.read_arrays(Path(path))
