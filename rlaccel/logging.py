"""The one place metrics leave the program: TensorBoard, the progress bar and ``summary.json``.

Metric names are ``/``-namespaced and match Stable-Baselines3 where SB3 has a name
(``rollout/ep_rew_mean``, ``time/fps``, ``train/value_loss``, ...), so dashboards built for
SB3 runs read rlaccel runs too.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def summary_writer() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports torch at import time when it is installed (as it is beside SB3), only
    to accept torch tensors; that costs 2-6 s and ~300 MiB per run here, and rlaccel logs
    Python floats. ``sys.modules["torch"] = None`` makes that import fail for the moment of
    tensorboardX's import; a torch imported before (or after) is left as it is.
    """
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricLogger:
    """Writes scalars to TensorBoard event files in ``run_dir``.

    Non-finite values (e.g. ``rollout/ep_rew_mean`` before the first episode ends) are
    skipped rather than written, as SB3 does for empty episode buffers.

    ``purge_step`` (for a resumed run): TensorBoard hides every event an earlier writer left
    in ``run_dir`` at a step >= ``purge_step``, i.e. what an interrupted run logged after
    the checkpoint it resumes from.
    """

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._writer = None
        if tensorboard:
            self._writer = summary_writer()(logdir=str(self.run_dir), flush_secs=10, purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write ``metrics`` at x-axis ``step`` (env steps, as SB3).

        One event holds all of a step's scalars (what ``add_scalar`` writes, one value per tag,
        batched): 6 us a scalar against ``add_scalar``'s 46 here, which was ~1.5 s of a
        500k-step CartPole run that logs every update.
        """
        if self._writer is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=name, simple_value=v) for name, v in ((n, float(x)) for n, x in metrics.items()) if math.isfinite(v)]
        if values:
            self._writer.file_writer.add_summary(Summary(value=values), int(step))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int = 0) -> None:
        """Record hyperparameters with final metrics (TensorBoard's HPARAMS tab); the metrics
        are also written as scalars ``hparam/<name>`` at ``step``."""
        if self._writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        finite = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and math.isfinite(v)}
        # What SummaryWriter.add_hparams writes, but into this writer's own file: add_hparams
        # opens a second writer, whose file gets the same name (a timestamp in seconds) when
        # it opens within the second the run started, and overwrites the run's events.
        from tensorboardX.summary import hparams as hparams_summaries

        for summary in hparams_summaries(clean, finite):
            self._writer.file_writer.add_summary(summary)
        self.log(step, finite)

    def flush(self) -> None:
        """Hand buffered events to the OS (before each checkpoint, so a process killed later
        still leaves the curves up to the checkpoint a resumed run continues from)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def make_progress(console: Console | None = None, enabled: bool = True) -> Progress:
    """A rich progress bar showing env steps, steps/s and the mean episode return."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TextColumn("{task.fields[sps]:>8} steps/s"),
        TextColumn("return {task.fields[ret]:>7}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
