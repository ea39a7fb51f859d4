"""Checkpoints: the whole training state in one file, written atomically.

File layout (``<run_dir>/checkpoints/checkpoint_<update>.ckpt``)::

    {"format": 1, "sha256": "...", "meta": {...}}\\n    <- one JSON header line
    <flax msgpack payload of the TrainState>

The payload is flax's msgpack serialisation of the full ``TrainState`` (parameters,
optimiser state, normaliser statistics, env state, PRNG key, counters), so a resumed run
continues exactly where the saved one stopped. Writes go to a temp file that is fsynced and
renamed into place, then the directory is fsynced (:func:`atomic_write`): a crash or
``kill -9`` mid-write leaves the previous checkpoints intact and the newest complete one is
what ``--resume`` loads; the next save removes the orphaned temp file. Only the newest
``keep`` (``logging.keep_checkpoints``) are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from rlaccel.fileio import atomic_write

FORMAT = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class DamagedCheckpointError(CheckpointError):
    """Unreadable, truncated or corrupted (checksum mismatch): an older checkpoint may still load."""


def save(directory: str | Path, update: int, state: Any, meta: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as ``checkpoint_<update>.ckpt`` and keep only the ``keep`` newest.

    Args:
      directory: the checkpoint folder (created if missing).
      update: learner updates done; orders checkpoints.
      state: any pytree of arrays (fetched to the host here).
      meta: JSON-able facts stored in the header (config, env steps, ...).
      keep: how many checkpoints to keep.

    Returns:
      The path written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = serialization.to_bytes(jax.device_get(state))
    header = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "meta": meta}
    path = directory / f"checkpoint_{update:09d}.ckpt"
    pause = os.environ.get(PAUSE_ENV)
    atomic_write(path, json.dumps(header).encode() + b"\n" + payload, pause_midway=pause is not None and pause.strip() == str(update))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in directory.glob(".checkpoint_*.ckpt.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return path


PAUSE_ENV = "RLACCEL_TEST_PAUSE_CHECKPOINT"
"""Test hook: set it to an update number and :func:`save` of that update stops halfway
through writing its temp file (flushed to disk), creates ``<temp file>.paused`` and sleeps,
so a test can ``kill -9`` the process mid-write. Never set it outside tests."""


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temp files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The header's ``meta`` without reading the payload into a state."""
    header, _ = _read(Path(path))
    return header["meta"]


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    line, sep, payload = raw.partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or "sha256" not in header:
        raise DamagedCheckpointError(f"{path}: not an rlaccel checkpoint (bad header)")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {header.get('format')!r}, this rlaccel reads {FORMAT}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise DamagedCheckpointError(f"{path}: checkpoint is corrupted (checksum mismatch)")
    return header, payload


def restore(path: str | Path, target: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``target`` (a freshly initialised state).

    Raises:
      CheckpointError: unreadable, corrupted, or saved from a config whose arrays have other
        shapes (e.g. a different ``net_arch``); the message names the first mismatch.
    """
    path = Path(path)
    header, payload = _read(path)
    try:
        saved = serialization.msgpack_restore(payload)
    except Exception as e:  # msgpack raises several types for damaged data
        raise DamagedCheckpointError(f"{path}: checkpoint payload is unreadable ({type(e).__name__})") from None
    expected = serialization.to_state_dict(jax.device_get(target))
    _check_compatible(path, saved, expected, "")
    return serialization.from_state_dict(target, saved), header["meta"]


def _check_compatible(path: Path, saved: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        if not isinstance(saved, dict) or set(saved) != set(expected):
            missing = sorted(set(expected) - set(saved)) if isinstance(saved, dict) else []
            extra = sorted(set(saved) - set(expected)) if isinstance(saved, dict) else []
            raise CheckpointError(
                f"{path}: incompatible with this config at '{where or '/'}' (missing {missing}, unexpected {extra})"
            )
        for k in expected:
            _check_compatible(path, saved[k], expected[k], f"{where}/{k}")
        return
    if expected is None:
        return
    shape_saved, shape_expected = np.shape(saved), np.shape(expected)
    if shape_saved != shape_expected:
        raise CheckpointError(
            f"{path}: incompatible with this config: '{where}' has shape {shape_saved} in the checkpoint, {shape_expected} here"
        )
