"""What a checkpoint directory looks like, read without JAX: names, the header, the errors.

Everything here is plain ``json`` / ``pathlib``, so listing checkpoints and reading their
meta (``rlaccel.checkpoint.latest``, ``read_meta``: the CLI's ``--resume`` checks) imports
neither JAX nor orbax. The orbax side (writing and restoring the arrays) is
``rlaccel.checkpoint_orbax``.

A checkpoint is the directory orbax's ``CheckpointManager`` commits by renaming its temp
directory into place::

    checkpoint_000000012/
      meta/metadata      <- the header: {"format": 2, "meta", "leaves", "sha256"} (JSON)
      state/             <- the TrainState's arrays (orbax PyTree, OCDBT + zarr)
      _CHECKPOINT_METADATA, commit_success.txt   (orbax's own)

``leaves`` maps every array's path (``/agent/params/policy/Dense_0/kernel``) to its dtype,
shape and the sha256 of its bytes; ``sha256`` covers ``meta`` and ``leaves``. So a flipped
bit anywhere is caught (orbax itself reads a flipped data byte back silently) and an
incompatible state is refused naming the array, both before anything is restored.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

FORMAT = 2
"""2: orbax directories (this module). 1: one msgpack file with a JSON header line
(``checkpoint_<update>.ckpt``, rlaccel before orbax), no longer read: see :func:`read_header`."""
HEADER = Path("meta") / "metadata"
"""Where the header lies inside a checkpoint (orbax ``JsonSave`` of item ``meta``)."""
STATE = "state"
"""The orbax item holding the arrays."""
PREFIX = "checkpoint"
DIGITS = 9
_NAME = re.compile(rf"^{PREFIX}_(\d{{{DIGITS},}})$")
_OLD_NAME = re.compile(rf"^{PREFIX}_(\d+)\.ckpt$")

PAUSE_ENV = "RLACCEL_TEST_PAUSE_CHECKPOINT"
"""Test hook: set it to an update number and the save of that update stops after every file
is written into orbax's temp directory and fsynced, but before the rename that commits it:
it creates ``<temp dir>/paused`` and sleeps, so a test can ``kill -9`` the process in the
middle of a save. Never set it outside tests."""
PAUSED = "paused"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class DamagedCheckpointError(CheckpointError):
    """Unreadable, truncated or corrupted (checksum mismatch): an older checkpoint may still load."""


def name(update: int) -> str:
    """The directory name of the checkpoint of ``update`` (orbax's ``step_prefix`` format)."""
    return f"{PREFIX}_{update:0{DIGITS}d}"


def update_of(path: Path) -> int | None:
    """The update a checkpoint's name says, or ``None`` (temp directories, other files): a
    committed directory, or a format-1 file (listed so that restoring it names the change)."""
    m = _NAME.match(path.name) if path.is_dir() else _OLD_NAME.match(path.name) if path.is_file() else None
    return int(m.group(1)) if m else None


def digest(body: dict[str, Any]) -> str:
    """The sha256 of ``body`` as canonical JSON (sorted keys): what the header's ``sha256`` is."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def make_header(meta: dict[str, Any], leaves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The header of a checkpoint: ``meta`` (JSON-able), per-array facts, and their checksum."""
    body = {"meta": meta, "leaves": leaves}
    return {"format": FORMAT, **body, "sha256": digest(body)}


def read_header(path: str | Path) -> dict[str, Any]:
    """The verified header of the checkpoint at ``path`` (no array is read).

    Raises:
      CheckpointError: missing, another format (a format-1 file names the change);
        :class:`DamagedCheckpointError` when the header is missing, not JSON or fails its
        checksum. Every message is one line that starts with ``path``.
    """
    path = Path(path)
    if path.is_file():
        raise _not_a_directory(path)
    if not path.exists():
        raise CheckpointError(f"{path}: cannot read checkpoint (no such directory)")
    file = path / HEADER
    try:
        header = json.loads(file.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({HEADER} is missing)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {HEADER} ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({HEADER} is not JSON)") from None
    if not isinstance(header, dict) or not {"format", "meta", "leaves", "sha256"} <= set(header):
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({HEADER} is not an rlaccel header)")
    if header["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {header['format']!r}, this rlaccel reads {FORMAT}")
    if digest({"meta": header["meta"], "leaves": header["leaves"]}) != header["sha256"]:
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({HEADER} fails its checksum)")
    return header


def _not_a_directory(path: Path) -> CheckpointError:
    """The error for a file where a checkpoint directory should be: a format-1 checkpoint
    (named as such, with what to do) or not a checkpoint at all."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
        old = json.loads(line)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and old.get("format") == 1 and "sha256" in old:
        return CheckpointError(
            f"{path}: a single-file checkpoint (format 1, rlaccel before orbax checkpoints); this rlaccel "
            f"reads checkpoint directories (format {FORMAT}): export or resume it with an earlier rlaccel"
        )
    return DamagedCheckpointError(f"{path}: not an rlaccel checkpoint (a file, not a checkpoint directory)")
