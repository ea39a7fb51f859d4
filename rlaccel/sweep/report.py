"""Sweep results: the table, learning curves, TensorBoard runs and the best config.

Outputs of a grid sweep (:func:`write_outputs`): ``results.csv`` and ``results.json`` (per
setting: mean / std / min / max final return over seeds, steps/s), ``curves.png`` (mean and
min-max spread per setting), ``tb/<setting>/`` (TensorBoard scalars, mean over seeds, and the
HPARAMS plugin) and ``best_config.yaml`` (ready for ``rlaccel train``).
"""

from __future__ import annotations

import copy
import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlaccel import config as config_lib
from rlaccel.config import Config, ConfigError
from rlaccel.fileio import atomic_write, write_json
from rlaccel.sweep.grid import short_name
from rlaccel.sweep.program import GroupResult



def summarize(result: GroupResult, group: int) -> list[dict[str, Any]]:
    """One row per setting: final return over seeds (mean of the last 100 episodes at the end,
    as ``summary.json``'s ``final_return``) and steps/s.

    ``steps_per_s`` is the setting's own env steps (all its seeds) over the group's training
    time: the settings of a group train simultaneously, so a group's aggregate speed is the
    sum of its rows.
    """
    finals = result.returns()[:, :, -1]
    per_setting_steps = len(result.seeds) * result.metrics["rollout/ep_rew_mean"].shape[1] * result.steps_per_update
    rows = []
    for i, s in enumerate(result.settings):
        f = finals[i]
        rows.append(
            {
                "setting": s.name,
                **{k: v for k, v in s.overrides.items()},
                "seeds": len(result.seeds),
                "final_return_mean": float(np.mean(f)),
                "final_return_std": float(np.std(f)),
                "final_return_min": float(np.min(f)),
                "final_return_max": float(np.max(f)),
                "steps_per_s": per_setting_steps / result.train_s,
                "group": group,
                "group_compile_s": result.compile_s,
                "final_returns": [float(x) for x in f],
            }
        )
    return rows


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The setting with the highest mean final return (ties: the higher minimum)."""
    finite = [r for r in rows if math.isfinite(r["final_return_mean"])]
    if not finite:
        raise ValueError("no setting finished an episode; there is no best setting")
    return max(finite, key=lambda r: (r["final_return_mean"], r["final_return_min"]))


def write_table(out_dir: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    """``results.csv`` (one line per setting) and ``results.json`` (the rows plus ``meta``)."""
    columns = [c for c in rows[0] if c != "final_returns"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    atomic_write(out_dir / "results.csv", text.getvalue())
    write_json(out_dir / "results.json", {**meta, "results": list(rows)})


def plot_curves(path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> None:
    """Learning curves: per setting the mean over seeds and the min-max band.

    Args:
      curves: ``(label, env_steps [U], returns [seeds, U])`` per setting (NaN before the
        first finished episode).
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for label, steps, returns in curves:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before the first episode
            mean, lo, hi = np.nanmean(returns, 0), np.nanmin(returns, 0), np.nanmax(returns, 0)
        (line,) = ax.plot(steps, mean, label=label, lw=1.4)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel("mean episode return (last 100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_tensorboard(run_dir: Path, steps: np.ndarray, metrics: Mapping[str, np.ndarray], hparams: Mapping[str, Any], final: Mapping[str, float]) -> None:
    """One TensorBoard run: each metric's mean over seeds per update, and the HPARAMS entry.

    The hparams summaries go into the same event file as the scalars (``add_hparams`` opens a
    second writer, whose file name collides with the first when both open in the same second,
    and one file then replaces the other).

    Args:
      steps: env steps per seed after each update, ``[U]``.
      metrics: name -> ``[seeds, U]``.
      hparams: the setting's swept values (and the seed count).
      final: its results (``final_return_mean`` ...), shown as HPARAMS metrics ``hparam/<name>``.
    """
    import warnings

    from rlaccel.logging import MetricLogger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN before the first episode ends
        means = {k: np.nanmean(v, axis=0) for k, v in metrics.items()}
    logger = MetricLogger(run_dir)  # non-finite values are skipped there
    try:
        for u, step in enumerate(steps):
            logger.log(int(step), {name: values[u] for name, values in means.items()})
        logger.hparams(hparams, {k: float(v) for k, v in final.items()}, step=int(steps[-1]) if len(steps) else 0)
    finally:
        logger.close()


def best_config_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The config (plain data) of the best setting in a ``results.json``, seed = the sweep's first."""
    best = best_row(results["results"])
    data = copy.deepcopy(results["configs"][best["setting"]])
    data.get("logging", {}).pop("run_dir", None)
    return data


def write_best_config(path: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """Write the best setting's config as YAML ready for ``rlaccel train``; returns the row."""
    data = best_config_data(results)
    config_lib.build(data)  # it must load back: a sweep result is only useful if it trains
    best = best_row(results["results"])
    header = (
        f"# best of sweep {results.get('out_dir', '')}: setting {best['setting']}, final return "
        f"mean {best['final_return_mean']:.1f} (min {best['final_return_min']:.1f}) over {best['seeds']} seeds\n"
    )
    atomic_write(path, header + yaml.safe_dump(data, sort_keys=False))
    return dict(best)


def load_results(sweep_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of a finished sweep.

    Raises:
      ConfigError: no readable results there.
    """
    import json

    path = Path(sweep_dir) / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: no readable sweep results ({e})") from None


def write_outputs(out_dir: Path, results: Sequence[GroupResult], traced: Sequence[str], base: Config, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Table, curves, TensorBoard runs and ``best_config.yaml`` of a finished grid sweep."""
    rows: list[dict[str, Any]] = []
    curves = []
    configs = {}
    for g, result in enumerate(results):
        group_rows = summarize(result, g)
        rows.extend(group_rows)
        returns = result.returns()
        n_updates = returns.shape[2]
        steps = (np.arange(n_updates) + 1) * result.steps_per_update
        for i, (s, row) in enumerate(zip(result.settings, group_rows)):
            label = ", ".join(f"{short_name(k)}={v}" for k, v in s.overrides.items()) or "base"
            curves.append((label, steps, returns[i]))
            configs[s.name] = s.config.to_dict()
            per_seed = {k: v.reshape(len(result.settings), len(result.seeds), -1)[i] for k, v in result.metrics.items()}
            hparams = {**{k: v for k, v in s.overrides.items()}, "seeds": len(result.seeds)}
            final = {k: row[k] for k in ("final_return_mean", "final_return_min", "final_return_std", "steps_per_s")}
            write_tensorboard(out_dir / "tb" / s.name, steps, per_seed, hparams, final)
    total_steps = sum(r.env_steps for r in results)
    total_train = sum(r.train_s for r in results)
    report = {
        **meta,
        "out_dir": str(out_dir),
        "traced_keys": list(traced),
        "groups": len(results),
        "compile_s": sum(r.compile_s for r in results),
        "train_s": total_train,
        "aggregate_steps_per_s": total_steps / total_train if total_train > 0 else float("nan"),
        "devices": results[0].devices if results else 0,
        "base_config": base.to_dict(),
        "configs": configs,
    }
    rows.sort(key=lambda r: r["setting"])  # grid order (groups may interleave it)
    write_table(out_dir, rows, report)
    plot_curves(out_dir / "curves.png", curves, f"{base.algo} {base.env}: {len(rows)} settings x {len(results[0].seeds)} seeds")
    full = {**report, "results": rows}
    try:
        report["best"] = write_best_config(out_dir / "best_config.yaml", full)
    except ValueError:
        report["best"] = None
    return {**report, "results": rows}
