"""Run guards shared by every training loop: stop cleanly on signals, stop on non-finite values.

Both act between compiled chunks, never inside them:

* :func:`stop_on_signals` turns SIGINT / SIGTERM into a flag the loop reads after each chunk,
  so the chunk in flight finishes, a checkpoint and ``summary.json`` are written, and the
  process exits with :func:`exit_code` (130 for SIGINT, 143 for SIGTERM, as a shell reports a
  process killed by that signal). A second signal stops at once (``KeyboardInterrupt``).
* :func:`first_nonfinite` finds the first NaN / Inf in a chunk's stacked per-update metrics
  (loss, gradient norm, largest parameter), so the loop can stop before it checkpoints a
  poisoned state; :class:`NonFiniteError` carries the update and the metric.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "GUARDED_METRICS",
    "NonFiniteError",
    "StopFlag",
    "exit_code",
    "first_nonfinite",
    "stop_on_signals",
]

GUARDED_METRICS: tuple[str, ...] = ("train/loss", "train/grad_norm", "train/param_max_abs")
"""What agents report every update for the non-finite guard (PPO and DQN both do):
the loss, the global norm of the gradients before clipping (0 for an update that takes no
gradient step, e.g. DQN before ``learning_starts``) and the largest absolute parameter
(``rlaccel.optim.tree_norm(params, widths, ord="inf")``: NaN or Inf as soon as one parameter is)."""


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum``: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class StopFlag:
    """Set by the signal handlers of :func:`stop_on_signals`; read by the loop between chunks."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """``"SIGINT"`` / ``"SIGTERM"``, or ``""`` when no signal arrived."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """:func:`exit_code` of the signal received (0 when none)."""
        return exit_code(self.signum) if self.signum is not None else 0

    def request(self, signum: int) -> None:
        """Record ``signum`` as if it had been received (for loops stopped by other means)."""
        self.signum = int(signum)


@contextlib.contextmanager
def stop_on_signals(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Record SIGINT / SIGTERM in a :class:`StopFlag` instead of dying; restore the old handlers on exit.

    The first signal only sets the flag: the loop finishes its chunk, checkpoints and exits
    with ``flag.exit_code``. A second signal (an impatient Ctrl-C) raises
    ``KeyboardInterrupt`` at once, without a checkpoint. Outside the main thread Python
    cannot install handlers; the flag is then never set (signals act as they did before).

    Example::

        with guards.stop_on_signals() as stop:
            while not done and not stop.requested:
                state = run_chunk(state)
        if stop.requested:
            save(state); sys.exit(stop.exit_code)
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without a checkpoint")
        flag.request(signum)

    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, handler)
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class NonFiniteError(RuntimeError):
    """A NaN or Inf in a guarded metric; names the update (1-based, counted over the whole run) and the metric."""

    def __init__(self, update: int, metric: str, value: float):
        self.update, self.metric, self.value = update, metric, value
        super().__init__(f"non-finite {metric} = {value} at update {update}")


def first_nonfinite(metrics: Mapping[str, Any], names: Iterable[str] = GUARDED_METRICS) -> tuple[int, str] | None:
    """The first ``(row, name)`` whose value is NaN or Inf, or ``None`` when all are finite.

    Args:
      metrics: a chunk's metrics, each an array ``[n]`` (one value per update of the chunk),
        on the host or the device.
      names: which metrics to check, in the order a tie within one row is reported; names
        absent from ``metrics`` are skipped.

    Returns:
      ``(row, name)``: ``row`` indexes the chunk's updates (0-based), earliest first.

    A NaN ``train/loss`` in a row whose ``train/grad_norm`` is exactly 0 is not an error:
    that update took no gradient step and reports its loss as NaN (DQN before
    ``learning_starts``; the logger skips NaN values).
    """
    names = [n for n in names if n in metrics]
    if not names:
        return None
    columns = {n: np.asarray(metrics[n], dtype=np.float64).reshape(-1) for n in names}
    n_rows = max(len(c) for c in columns.values())
    no_step = columns["train/grad_norm"] == 0 if "train/grad_norm" in columns else np.zeros(n_rows, bool)
    for row in range(n_rows):
        for n in names:
            value = columns[n][row]
            if np.isfinite(value):
                continue
            if n == "train/loss" and np.isnan(value) and no_step[row]:
                continue
            return row, n
    return None
