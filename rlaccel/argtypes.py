"""argparse ``type=`` functions for counts, shared by ``rlaccel``'s subcommands (``rlaccel.cli``,
``rlaccel.bench``): a bad value is argparse's one-line error naming the option (exit 2)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "positive_ints"]


def positive_int(text: str) -> int:
    """A count (seeds, calls, episodes, steps): an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def positive_ints(text: str) -> list[int]:
    """Comma-separated counts (``"64,512"``): each an integer >= 1."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, comma-separated, got {text!r}")
    return [positive_int(t) for t in items]
