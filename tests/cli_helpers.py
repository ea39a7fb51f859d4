"""Helpers for tests that drive the command line in process (``from cli_helpers import ...``)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from rlaccel import cli


COMMANDS = ("train", "sweep", "export", "eval", "bench")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``rlaccel ARGV`` in process (``train`` when ``argv``
    names no subcommand), as ``cli.main`` runs it."""
    if not argv or argv[0] not in COMMANDS:
        argv = ["train", *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]``."""
    return [arg for item in overrides for arg in ("--set", item)]


def tree(path: Path) -> dict[Path, bytes | None]:
    """Every path under ``path`` with its bytes (to show that nothing changed)."""
    return {p.relative_to(path): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}
