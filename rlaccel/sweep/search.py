"""Hyperparameter search with Optuna: TPE sampling, a median pruner fed per-chunk returns, and
one study shared by any number of processes or machines.

A search space is a YAML mapping of dotted config keys to one distribution each::

    ppo.learning_rate: {log_uniform: [1.0e-5, 1.0e-2]}
    ppo.ent_coef: {uniform: [0.0, 0.02]}
    ppo.n_epochs: {int: [2, 8]}
    ppo.clip_range: {choice: [0.1, 0.2, 0.3]}

Keys that a sweep can trace (an algorithm's ``rlaccel.registry.traced_field`` s) are arguments of one compiled program,
so every trial of a worker reuses a single compile; the others compile once per distinct
value.

**Exactly N trials across workers.** The process that creates the study enqueues ``N``
waiting trials (``Study.enqueue_trial`` with no fixed parameters, so TPE still samples
them) and then records the budget in a study attribute; other processes wait for it. A
worker only runs trials it *claims*: a WAITING -> RUNNING transition that the storage makes
atomically (the same compare-and-set ``Study.ask`` uses to pop queued trials, in journal and
RDB storages alike). ``Study.ask`` alone would create an extra trial whenever two workers
race for the last queued one; claiming never creates a trial, so N trials run, each once.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel import config as config_lib
from rlaccel.config import Config, ConfigError
from rlaccel.fileio import atomic_write, write_json
from rlaccel.sweep.grid import Setting, flatten, is_traceable

DISTRIBUTIONS = ("uniform", "log_uniform", "int", "log_int", "choice")
BUDGET_ATTR = "rlaccel_trials"  # study user attribute: the study's trial budget, set once queued
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # recorded on every trial this process runs


def load_space(path: str | Path, base: Config) -> dict[str, tuple[str, Any]]:
    """Read and validate a search-space YAML file.

    Every key must be a config key, every entry exactly one distribution with valid bounds,
    and the bounds (or every choice) must give a valid config.

    Returns:
      ``{dotted key: (kind, args)}`` in file order.

    Raises:
      ConfigError: one line naming the file and the key.
    """
    path = Path(path)
    data = config_lib.load_data(path)
    if not data:
        raise ConfigError(f"{path}: empty search space")
    space: dict[str, tuple[str, Any]] = {}
    for key, spec in data.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"{where}: expected one distribution, e.g. {{log_uniform: [1e-5, 1e-2]}}; got {spec!r}")
        ((kind, args),) = spec.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: unknown distribution {kind!r}; choose from {', '.join(DISTRIBUTIONS)}")
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(f"{where}: choice needs a non-empty list, got {args!r}")
            candidates = list(args)
        else:
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
                raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
            low, high = args
            if kind in ("int", "log_int") and not all(float(a).is_integer() for a in args):
                raise ConfigError(f"{where}: {kind} needs integer bounds, got {args!r}")
            if not low < high:
                raise ConfigError(f"{where}: needs low < high, got {args!r}")
            if kind.startswith("log") and low <= 0:
                raise ConfigError(f"{where}: {kind} needs low > 0, got {args!r}")
            if kind in ("int", "log_int"):
                args = [int(low), int(high)]
            candidates = list(args)
        for value in candidates:
            try:
                config_lib.replace(base, **{key: value})
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        space[key] = (kind, args)
    return space


def suggest(trial: Any, space: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """The trial's values for every key of ``space`` (Optuna's ``suggest_*``)."""
    out: dict[str, Any] = {}
    for key, (kind, args) in space.items():
        if kind == "choice":
            out[key] = trial.suggest_categorical(key, args)
        elif kind in ("int", "log_int"):
            out[key] = trial.suggest_int(key, args[0], args[1], log=kind == "log_int")
        else:
            out[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log_uniform")
    return out


def check_storage(storage: str) -> None:
    """A storage argument is an RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``) or a
    journal file path.

    Raises:
      ConfigError: another URL scheme, or a journal file whose directory does not exist.
    """
    if "://" in storage:
        scheme = storage.split("://", 1)[0].split("+", 1)[0]
        if scheme not in RDB_SCHEMES:
            raise ConfigError(f"--storage {storage}: unsupported scheme {scheme!r}; use {', '.join(s + '://' for s in RDB_SCHEMES)} or a journal file path")
        return
    parent = Path(storage).expanduser().parent
    if not parent.is_dir():
        raise ConfigError(f"--storage {storage}: directory {parent} does not exist")


def make_storage(storage: str) -> Any:
    """An Optuna storage: ``RDBStorage`` for URLs, ``JournalStorage`` on a file otherwise.

    The journal file can be shared by several processes (and machines on a file system with
    working locks); Optuna serialises its appends with a lock file.
    """
    import optuna

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(Path(storage).expanduser())))


def open_study(storage: Any, name: str, trials: int, sampler: Any, pruner: Any, wait_s: float = 120.0) -> Any:
    """Create the study with ``trials`` queued trials, or join it once its creator queued them.

    Raises:
      ConfigError: the study exists with another trial budget.
      TimeoutError: the creator never finished queueing.
    """
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        deadline = time.monotonic() + wait_s
        while BUDGET_ATTR not in study.user_attrs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {name!r}: its creator did not queue its trials within {wait_s:.0f} s") from None
            time.sleep(0.1)
        budget = study.user_attrs[BUDGET_ATTR]
        if budget != trials:
            raise ConfigError(f"--trials {trials}: study {name!r} was created with --trials {budget}; use that or a new --study name") from None
        return study
    for _ in range(trials):
        study.enqueue_trial({})
    study.set_user_attr(BUDGET_ATTR, trials)
    return study


def claim_trial(study: Any, storage: Any) -> Any | None:
    """Atomically take one WAITING trial of ``study`` (WAITING -> RUNNING); ``None`` when none is left."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class TrialRunner:
    """Runs trials of a search: builds each trial's config, reuses compiles across trials.

    Args:
      base: the base config (``--config`` and ``--set``).
      space: from :func:`load_space`.
      seeds: seeds per trial, vmapped (the objective is their mean final return).
      devices: see ``rlaccel.sweep.program.SweepProgram``.
    """

    def __init__(self, base: Config, space: Mapping[str, tuple[str, Any]], seeds: Sequence[int], devices: Sequence[Any] | None = None):
        self.base = base
        self.space = dict(space)
        self.seeds = list(seeds)
        self.devices = devices
        self.traced = tuple(k for k in space if is_traceable(k, [flatten(base.to_dict()).get(k)], base.algo) and _numeric_space(space[k]))
        self._programs: dict[tuple, Any] = {}  # one compile per distinct static values

    def run(self, trial: Any, out_dir: Path | None, on_chunk: Callable[[int, float], bool] | None = None) -> dict[str, Any]:
        """Train the trial's setting; ``on_chunk(updates done, mean return)`` may stop it (pruning)."""
        values = suggest(trial, self.space)
        config = config_lib.replace(self.base, **values)
        from rich.console import Console

        from rlaccel.sweep.program import SweepProgram, run_group
        from rlaccel.sweep.report import summarize, write_tensorboard

        setting = Setting(name=f"trial_{trial.number:04d}", overrides=values, config=config)
        updates = 0

        def chunk_cb(_steps: int, metrics: dict[str, np.ndarray], _train_s: float) -> bool:
            nonlocal updates
            updates += metrics["rollout/ep_rew_mean"].shape[1]
            ret = float(np.nanmean(metrics["rollout/ep_rew_mean"][:, -1])) if np.isfinite(metrics["rollout/ep_rew_mean"][:, -1]).any() else math.nan
            return True if on_chunk is None else on_chunk(updates, ret)

        static = tuple(repr(values[k]) for k in self.space if k not in self.traced)
        if static not in self._programs:
            self._programs[static] = SweepProgram(config, self.traced, self.devices)
        quiet = Console(quiet=True)  # the search's own progress bar reports trials
        result = run_group([setting], self.traced, self.seeds, program=self._programs[static], on_chunk=chunk_cb, console=quiet, progress=False)
        row = summarize(result, 0)[0]
        if out_dir is not None:
            steps = (np.arange(result.metrics["rollout/ep_rew_mean"].shape[1]) + 1) * result.steps_per_update
            final = {k: row[k] for k in ("final_return_mean", "final_return_min", "steps_per_s")}
            write_tensorboard(out_dir / "tb" / setting.name, steps, result.metrics, {**values, "seeds": len(self.seeds)}, final)
        return {**row, "updates": updates, "num_updates": _num_updates(config), "config": config.to_dict(), "compile_s": result.compile_s}


def _num_updates(config: Config) -> int:
    return config.total_timesteps // config.agent.rollout_size


def _numeric_space(entry: tuple[str, Any]) -> bool:
    _, args = entry
    return all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)


def work(
    study: Any,
    storage: Any,
    runner: TrialRunner,
    out_dir: Path | None,
    progress: Callable[[int, float], None] | None = None,
) -> int:
    """Claim and run trials until none is waiting; returns how many this process ran.

    Each chunk's mean return is reported to the pruner (step = updates done); a pruned trial
    ends as PRUNED, a trial whose setting is invalid or produced no finite return as FAIL.
    """
    from optuna.trial import TrialState

    done = 0
    while (trial := claim_trial(study, storage)) is not None:
        trial.set_user_attr("worker", WORKER)

        def on_chunk(updates: int, ret: float, trial: Any = trial) -> bool:
            if math.isfinite(ret):
                trial.report(ret, updates)
                if trial.should_prune():
                    return False
            return True

        try:
            row = runner.run(trial, out_dir, on_chunk)
        except ConfigError as e:  # TPE proposed an invalid combination (e.g. a batch size that does not divide)
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=TrialState.FAIL)
            done += 1
            continue
        for k in ("final_return_min", "final_return_std", "steps_per_s", "updates", "compile_s"):
            trial.set_user_attr(k, row[k])
        value = row["final_return_mean"]
        if row["updates"] < row["num_updates"]:
            study.tell(trial, state=TrialState.PRUNED)
        elif math.isfinite(value):
            study.tell(trial, value)
        else:
            trial.set_user_attr("error", "no episode finished")
            study.tell(trial, state=TrialState.FAIL)
        done += 1
        if progress is not None:
            progress(trial.number, value)
    return done


def trials_table(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study: number, state, value, parameters and recorded attributes."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value if t.value is not None else float("nan"),
                **t.params,
                **{k: v for k, v in t.user_attrs.items()},
                "last_step": t.last_step,
            }
        )
    return rows


def write_outputs(out_dir: Path, study: Any, base: Config, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``trials.csv`` / ``trials.json`` (the whole study, as this worker sees it at its end) and
    ``best_config.yaml`` from the best completed trial."""
    import csv
    import io

    import yaml
    from optuna.trial import TrialState

    rows = trials_table(study)
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(out_dir / "trials.csv", text.getvalue(), shared=True)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = max(complete, key=lambda t: t.value) if complete else None
    report = {**meta, "study": study.study_name, "trials": rows, "best_trial": best.number if best else None}
    if best is not None:
        config = config_lib.replace(base, **best.params)
        data = config.to_dict()
        data.get("logging", {}).pop("run_dir", None)
        header = f"# best trial {best.number} of study {study.study_name!r}: mean final return {best.value:.1f}\n"
        atomic_write(out_dir / "best_config.yaml", header + yaml.safe_dump(data, sort_keys=False), shared=True)
        report["best_params"] = best.params
        report["best_value"] = best.value
    write_json(out_dir / "trials.json", report, shared=True)
    return report
