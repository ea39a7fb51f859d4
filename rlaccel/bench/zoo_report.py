"""What ``rlaccel bench zoo`` shows: its table (terminal and Markdown) and its eval curves (PNG),
all drawn from the report alone (the JSON ``rlaccel.bench.zoo`` writes).

The curves: one panel per row.

Each panel: every seed's deterministic int8 evaluation against env steps (thin lines), their
mean where the seeds share evaluation steps (thick), the fp32 policy's mean (dashed), SB3's
evaluations on the rows it shares (``sb3_ppo_*``, dotted), and the zoo's ``benchmark.md``
figure as a horizontal line with its +- std band (matplotlib's Agg backend).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "print_table", "table_rows"]


def _mean_curve(curves: list[list[list[Any]]], column: int) -> tuple[list[float], list[float]]:
    """Steps every seed evaluated at, and the seeds' mean of ``column`` there (``None`` values skipped)."""
    if not curves:
        return [], []
    tables = [{c[0]: c[column] for c in curve if c[column] is not None} for curve in curves]
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    return steps, [sum(t[s] for t in tables) / len(tables) for s in steps]


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Draw ``report``'s eval curves into ``path`` (PNG); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    panels = [n for n, r in rows.items() if r["kind"] == "rlaccel"] or list(rows)
    sb3 = {r["of"]: r for r in rows.values() if r["kind"] == "sb3" and r.get("of")}
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        r = rows[name]
        curves = [s.get("curve") or [] for s in r["seeds"] if "error" not in s]
        for i, curve in enumerate(curves):
            if curve:
                ax.plot([c[0] for c in curve], [c[1] for c in curve], color="tab:blue", alpha=0.35, lw=1, marker="." if len(curve) < 3 else None, label="int8, each seed" if i == 0 else None)
        steps, mean = _mean_curve([c for c in curves if c], 1)
        if steps:
            ax.plot(steps, mean, color="tab:blue", lw=2.2, marker="o" if len(steps) < 3 else None, label="int8, mean of seeds")
        steps, mean = _mean_curve([c for c in curves if c], 3)
        if steps:
            ax.plot(steps, mean, color="tab:green", lw=1.4, ls="--", marker="x" if len(steps) < 3 else None, label="fp32, mean of seeds")
        other = sb3.get(name)
        if other is not None:
            with_curves = [s for s in other["seeds"] if s.get("curve")]
            for i, s in enumerate(with_curves):
                label = ("SB3 (same block)" if len(with_curves) == 1 else "SB3 (same block), each seed") if i == 0 else None
                ax.plot([c[0] for c in s["curve"]], [c[1] for c in s["curve"]], color="tab:orange", lw=1.4, ls=":", marker=".", label=label)
        zoo = r["zoo"]
        ax.axhline(zoo["mean"], color="black", lw=1.2, label=f"zoo {zoo['env']} ({zoo['n_timesteps']:,} steps)")
        if zoo["std"] > 0:
            ax.axhspan(zoo["mean"] - zoo["std"], zoo["mean"] + zoo["std"], color="black", alpha=0.08)
        ax.set_xlim(0, max([zoo["n_timesteps"] * report.get("budget_scale", 1.0), *(c[0] for curve in curves for c in curve)]) * 1.03)
        ax.set_title(f"{r['label']} ({r['env'] or '-'})", fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.set_ylabel("deterministic eval return", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{report.get('title', 'RL Zoo benchmark')}\n{report.get('machine_line', '')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pm(mean: float | None, std: float | None, spec: str = ",.1f") -> str:
    if mean is None:
        return "-"
    return format(mean, spec) + (f" +- {format(std, spec)}" if std is not None else "")


def table_rows(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the table (shared by the terminal and the Markdown copy)."""
    from rlaccel.bench.table import fmt

    columns = ["row", "env (zoo block)", "env steps", "seeds", "int8 eval, final", "best", "fp32 final", "zoo (benchmark.md)", "pass", "wall s / seed", "env steps/s", "vs SB3", "peak RSS MiB"]
    cells = []
    for name, r in results.items():
        zoo = r["zoo"]
        env = f"{r['env'] or '-'} ({r['zoo_block']})"
        if r["errors"] and not r["seeds_run"]:
            cells.append([name, env, "-", "0", f"error: {r['errors'][0][:70]}", *[""] * (len(columns) - 5)])
            continue
        passed = {True: "yes", False: "NO", None: "-"}[r["passed"]]
        seeds = f"{r['seeds_run']}" + (f" ({len(r['errors'])} failed)" if r["errors"] else "")
        ratio = ratios.get(name, {}).get("x")
        cells.append([
            name, env, fmt(r["env_steps"]), seeds, _pm(r["eval_mean"], r["eval_std"] if r["seeds_run"] > 1 else None), fmt(r["eval_best_mean"], ",.1f"),
            fmt(r["eval_fp32_mean"], ",.1f"), f"{_pm(zoo['mean'], zoo['std'])} ({zoo['env']}, {zoo['n_timesteps']:,})", passed, fmt(r["wall_s"], ",.0f"),
            fmt(r["sps"], ",.0f"), f"{ratio:.1f}x" if ratio else "-", fmt(r["peak_rss_mib"], ",.0f"),
        ])  # fmt: skip
    return columns, cells


def markdown(report: dict[str, Any]) -> str:
    """The table as Markdown, with the machine, the source of the zoo's figures and the verdict."""
    columns, cells = table_rows(report["rows"], report["sb3_ratio"])
    machines = sorted({r["source"]["machine"] for r in report["rows"].values() if r.get("source", {}).get("machine")})
    where = f"Rows from runs on {len(machines)} machines (each run's below)" if len(machines) > 1 else report["machine_line"]
    lines = [f"# {report['title']}", "", f"{where}; {report['date']}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    lines += ["", f"Zoo figures: {report['zoo_figures']} (one trained agent per row; std over its evaluation episodes).", ""]
    if report.get("merged_from"):
        by_source: dict[tuple[str, str, str, str], list[str]] = {}
        for name, r in report["rows"].items():
            cpu = (r["source"].get("machine") or "machine not recorded").split(", flags")[0]
            sets = "".join(f", `--set {o}`" for o in r["source"].get("overrides", []))
            by_source.setdefault((r["source"]["file"], r["source"]["date"], cpu, sets), []).append(name)
        lines += ["Rows merged from earlier runs (`--merge`; an SB3 ratio only within one run):", ""]
        lines += [f"- `{f}` ({d}, {cpu}{sets}): {', '.join(names)}" for (f, d, cpu, sets), names in by_source.items()] + [""]
    elif report.get("overrides"):
        lines += ["Every rlaccel run with " + ", ".join(f"`--set {o}`" for o in report["overrides"]) + ".", ""]
    return "\n".join(lines + [f"- {v}" for v in report["verdict"]]) + "\n"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns, cells = table_rows(report["rows"], report["sb3_ratio"])
    table = Table(title=report["title"], caption=report["machine_line"])
    for col in columns:
        table.add_column(col, justify="left" if col in ("row", "env (zoo block)") else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=max(Console().width, 200)).print(table)
    print(f"zoo figures: {report['zoo_figures']}")
    for line in report["verdict"]:
        print(line)
