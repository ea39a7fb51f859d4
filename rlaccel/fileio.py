"""Crash-safe file writes: the one ``atomic_write`` every writer in rlaccel uses.

``config.yaml``, ``summary.json``, sweep tables, best configs and policy artifacts all go
through :func:`atomic_write`, so a crash or ``kill -9`` at any moment leaves either the old
file or the new one, never half of one. (Checkpoints are directories that orbax commits the
same way, temp directory then rename: ``rlaccel.checkpoint``.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["atomic_write", "write_json"]


def atomic_write(path: str | Path, data: bytes | str, *, shared: bool = False) -> Path:
    """Write ``data`` to ``path`` so that a crash at any moment leaves the old file or the new one.

    The bytes go to a temp file in the same directory, which is fsynced, renamed over
    ``path`` (atomic on POSIX) and the directory fsynced, so the rename itself survives a
    power cut.

    Args:
      path: the destination.
      data: bytes, or text (written as UTF-8).
      shared: several processes may write ``path`` at once (search workers): each writes its
        own temp file, and the last rename wins.

    Returns:
      ``path``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.tmp" + (f".{os.getpid()}" if shared else ""))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync(path.parent)
    return path


def fsync(path: Path) -> None:
    """``fsync`` a file or a directory (its entries: a rename is durable); a path that cannot be
    opened is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Mapping[str, Any], *, shared: bool = False) -> Path:
    """Write ``data`` as indented JSON with :func:`atomic_write` (arrays as lists, paths as strings)."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", shared=shared)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
