"""The README's ``make train`` where ``python3`` cannot make the environment: older than 3.11
(JAX, flax, brax and orbax-checkpoint need 3.11), the Makefile takes the first newer
``python3.1x`` on ``PATH`` or stops with one line before writing anything; a ``venv`` that
fails half-way (Debian without ``python3-venv``) is not left behind. Real ``make`` and
``/bin/sh``; the interpreters that fail are stand-in scripts (CI machines have no Python 3.10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make") or "make"


def _bin(tmp_path: Path) -> Path:
    """A folder to be the whole ``PATH``: the shell tools the recipes and stand-ins call, and no
    Python (the machine's own would be found otherwise)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "touch", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def _path_with(tmp_path: Path, newer: str | None) -> str:
    """A ``PATH`` of one folder: ``python3`` a Python 3.10 stand-in, and ``newer`` (e.g.
    ``python3.12``) this interpreter."""
    bin_dir = _bin(tmp_path)
    old = bin_dir / "python3"
    old.write_text('#!/bin/sh\n[ "$1" = "-V" ] && { echo "Python 3.10.13"; exit 0; }\nexit 1\n')  # any -c check fails, as 3.10's would
    old.chmod(0o755)
    if newer:
        (bin_dir / newer).symlink_to(sys.executable)
    return str(bin_dir)


def _make(tmp_path: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    # Under `make test PYTHON=...` the outer make hands its command-line variables down
    # (MAKEFLAGS): the make here must choose its interpreter itself.
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON")
    env = {**{k: v for k, v in os.environ.items() if k not in outer}, "PATH": path}
    return subprocess.run([MAKE, "-C", str(REPO), f"VENV={tmp_path / 'venv'}", *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_an_old_python3_gives_way_to_a_newer_python3_1x(tmp_path):
    out = _make(tmp_path, _path_with(tmp_path, "python3.12"), "-n", "train")
    assert out.returncode == 0, out.stderr
    assert f"python3.12 -m venv {tmp_path / 'venv'}" in out.stdout, out.stdout


def test_no_python_3_11_stops_with_one_line_and_writes_nothing(tmp_path):
    out = _make(tmp_path, _path_with(tmp_path, None), "train")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "needs Python 3.11 or newer" in errors[0] and "python3 is Python 3.10.13" in errors[0], out.stderr
    assert not (tmp_path / "venv").exists()


def test_a_venv_that_fails_half_way_is_removed(tmp_path):
    """Debian's python3 without ``python3-venv``: ``-m venv`` writes ``bin/python``, then
    fails in ensurepip. Left there, the next ``make train`` would take it for a made venv."""
    bin_dir = _bin(tmp_path)
    debian = bin_dir / "python3"
    debian.write_text(
        '#!/bin/sh\n'
        '[ "$1" = "-c" ] && exit 0\n'  # the version check passes: a 3.11
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin" && touch "$3/bin/python"\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        '  exit 1\n'
        'fi\n'
        'exit 1\n'
    )
    debian.chmod(0o755)
    out = _make(tmp_path, str(bin_dir), "train")
    assert out.returncode != 0 and "ensurepip is not available" in out.stderr, out.stderr
    assert not (tmp_path / "venv").exists()
