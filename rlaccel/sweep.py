"""Sweeps: seeds x hyperparameter settings trained by one compiled program per shape.

A hyperparameter that changes no array shape (learning rate, clip range, entropy
coefficient, gamma, GAE lambda, epsilon values, ...) is not baked into the program as a
constant: it enters as a traced value, one per sweep *member* (a setting and a seed), so
``jax.vmap`` batches every member into the same compiled update. Shape-changing ones
(``n_envs``, ``net_arch``, ``n_epochs``, ...) split the grid into separate compiles.

How a value becomes traced without touching the agents: :func:`with_values` copies the
validated config and puts the tracer where the float was; the agent's pure functions are
then built *inside* the traced function (``agents.make``), so optax schedules, the loss and
GAE see an array instead of a Python number. Learning-rate schedules (``lin_2.5e-4``) keep
working: ``optax.linear_schedule`` takes a traced initial value.

On several devices the member axis is sharded across them: keys and hyperparameters are
placed with a :class:`jax.sharding.NamedSharding` over a 1-D mesh, and the vmapped update
runs under ``jax.shard_map`` so each device trains its own members with no communication.

Outputs of a grid sweep (:func:`write_outputs`): ``results.csv`` and ``results.json`` (per
setting: mean / std / min / max final return over seeds, steps/s), ``curves.png``
(learning curves, mean and min-max spread per setting), ``tb/<setting>/`` (TensorBoard
scalars, mean over seeds, and the HPARAMS plugin) and ``best_config.yaml`` (ready for
``scripts/train.py``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlaccel import config as config_lib
from rlaccel.config import Config, ConfigError

AXIS = "sweep"  # name of the member axis of the device mesh

# Fields of each algorithm section that may be traced: used only in arithmetic, never in a
# shape, a loop length or a Python branch. Everything else that differs between settings
# is a separate compile.
TRACEABLE: dict[str, tuple[str, ...]] = {
    "ppo": ("learning_rate", "gamma", "gae_lambda", "clip_range", "clip_range_vf", "ent_coef", "vf_coef", "max_grad_norm", "adam_eps"),
    "dqn": (
        "learning_rate",
        "gamma",
        "tau",
        "learning_starts",
        "exploration_initial_eps",
        "exploration_final_eps",
        "max_grad_norm",
        "adam_eps",
    ),
}


# --------------------------------------------------------------------------------------------
# Grid and settings (no JAX).


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["ppo.learning_rate=1e-4,3e-4", "ppo.ent_coef=0,0.01"]`` -> ``{key: [values]}``.

    Values are parsed as a YAML flow list, so ``1e-4``, ``lin_2.5e-4``, ``true`` and
    ``[64,64],[128,128]`` all work.

    Raises:
      ConfigError: no ``=``, a key given twice, ``seed`` (use ``--seeds``), no values.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected key.sub=value1,value2,...")
        key, text = (s.strip() for s in item.split("=", 1))
        if key == "seed":
            raise ConfigError("--grid seed: seeds are every setting's vmapped axis; use --seeds N")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice")
        try:
            values = config_lib.yaml_load(f"[{text}]")
        except yaml.YAMLError:
            raise ConfigError(f"--grid {key}: cannot parse the values {text!r}") from None
        if not values:
            raise ConfigError(f"--grid {key}: no values")
        grid[key] = values
    return grid


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the grid: its overrides and the validated config they give."""

    name: str  # short, file-system safe, unique within the sweep
    overrides: dict[str, Any]  # dotted key -> value, as given on the command line
    config: Config


def _short(key: str) -> str:
    return key.split(".")[-1]


def setting_name(index: int, overrides: Mapping[str, Any]) -> str:
    """``03_learning_rate=0.001_ent_coef=0``: index first, so directories sort as the table."""
    parts = [f"{_short(k)}={v}" for k, v in overrides.items()]
    text = re.sub(r"[^A-Za-z0-9_.=+-]", "", "_".join(parts))
    return f"{index:02d}_{text}" if text else f"{index:02d}"


def make_settings(base: Config, grid: Mapping[str, Sequence[Any]]) -> list[Setting]:
    """The cartesian product of ``grid`` applied to ``base``; every setting is validated.

    Raises:
      ConfigError: an unknown key or an invalid value, naming the key (``--grid ...``).
    """
    settings = []
    for i, combo in enumerate(itertools.product(*grid.values())):
        overrides = dict(zip(grid.keys(), combo))
        try:
            config = config_lib.replace(base, **overrides)
        except ConfigError as e:
            raise ConfigError(f"--grid: {e}") from None
        settings.append(Setting(name=setting_name(i, overrides), overrides=overrides, config=config))
    return settings


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data -> ``{"ppo.learning_rate": ..., ...}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_traceable(key: str, values: Sequence[Any], algo: str) -> bool:
    """Whether ``key`` can be a traced, vmapped value given all the values it takes."""
    section, _, field = key.partition(".")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return section == algo and field in TRACEABLE.get(algo, ()) and numeric


def split_keys(configs: Sequence[Config]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Keys that differ between ``configs``: ``(traced, static)``.

    Traced keys are vmapped inside one compile; every distinct combination of static keys
    is its own compile.
    """
    flats = [flatten(c.to_dict()) for c in configs]
    keys = sorted(set().union(*flats))
    differing = [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats)]
    algo = configs[0].algo
    traced = tuple(k for k in differing if is_traceable(k, [f.get(k) for f in flats], algo))
    return traced, tuple(k for k in differing if k not in traced)


def group_settings(settings: Sequence[Setting]) -> tuple[tuple[str, ...], list[list[Setting]]]:
    """Split settings into compile groups; returns ``(traced keys, groups)``."""
    traced, static = split_keys([s.config for s in settings])
    groups: dict[tuple, list[Setting]] = {}
    for s in settings:
        flat = flatten(s.config.to_dict())
        groups.setdefault(tuple(repr(flat.get(k)) for k in static), []).append(s)
    return traced, list(groups.values())


def with_values(config: Config, values: Mapping[str, Any]) -> Config:
    """A copy of ``config`` whose algorithm-section fields ``values`` hold (traced) arrays.

    Validation already ran on the real config; the copy skips ``__post_init__`` (a tracer
    cannot be compared in Python) and is only used to build an agent inside a traced function.
    """
    section = copy.copy(config.agent)
    for key, value in values.items():
        algo, _, field = key.partition(".")
        if algo != config.algo or not hasattr(section, field):
            raise KeyError(f"{key} is not a field of the {config.algo} section")
        object.__setattr__(section, field, value)
    out = copy.copy(config)
    object.__setattr__(out, config.algo, section)
    return out


# --------------------------------------------------------------------------------------------
# The compiled program (JAX from here on; imported lazily so that validation stays fast).


class SweepProgram:
    """Members (settings x seeds) of one compile group, trained in lockstep.

    Args:
      config: any setting of the group (the static fields are the group's; traced fields
        are replaced per member).
      traced_keys: dotted keys whose values are per-member arrays.
      devices: where members run, sharded along the mesh axis ``"sweep"``; default: every
        device of JAX's default backend.
    """

    def __init__(self, config: Config, traced_keys: Sequence[str], devices: Sequence[Any] | None = None):
        import jax

        from rlaccel import agents, envs

        self.config = config
        self.traced_keys = tuple(traced_keys)
        self.env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
        spec = agents.make(config, self.env)
        self.num_updates = spec.num_updates
        self.steps_per_update = spec.steps_per_update
        self.devices = list(devices) if devices is not None else jax.devices()
        self.mesh = jax.sharding.Mesh(np.asarray(self.devices), (AXIS,))
        self.sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(AXIS))
        self._dtypes = {k: _dtype(flatten(config.to_dict())[k]) for k in self.traced_keys}
        self._chunks: dict[int, Any] = {}
        self._init: Callable | None = None
        self.compile_s = 0.0

    # -- one member (pure) ----------------------------------------------------------------

    def runner(self, hparams: Mapping[str, Any]) -> Any:
        """The FusedRunner of one member whose traced hyperparameters are ``hparams``."""
        from rlaccel import agents
        from rlaccel.runners import FusedRunner

        config = with_values(self.config, hparams)
        spec = agents.make(config, self.env)
        return FusedRunner(spec.agent, self.env, spec.num_envs, spec.num_steps, precision=config.placement.actor.precision)

    def _member_init(self, key: Any, hparams: Mapping[str, Any]) -> Any:
        return self.runner(hparams).init(key)

    def _member_chunk(self, state: Any, hparams: Mapping[str, Any], num_updates: int) -> Any:
        return self.runner(hparams).train_chunk(state, num_updates)

    def _sharded(self, fn: Callable) -> Callable:
        """``fn`` vmapped over members, each device running its own slice of them."""
        import jax

        spec = jax.sharding.PartitionSpec(AXIS)
        # check_vma=False: members never communicate, and agent code such as DQN's
        # ``lax.cond(learn, wait)`` returns per-device constants from one branch, which the
        # varying-axis type check would reject although the program is correct.
        return jax.shard_map(jax.vmap(fn), mesh=self.mesh, in_specs=spec, out_specs=spec, check_vma=False)

    # -- members (batched, sharded) -------------------------------------------------------

    def pad(self, num_members: int) -> int:
        """Members actually run: ``num_members`` rounded up to a multiple of the devices."""
        d = len(self.devices)
        return -(-num_members // d) * d

    def place(self, keys: Any, hparams: Mapping[str, Sequence[float]]) -> tuple[Any, dict[str, Any]]:
        """Member keys ``[M, 2]`` and hyperparameters ``{key: [M]}``, padded (the last member is
        repeated; its copies are dropped by the caller) and sharded over the devices."""
        import jax
        import jax.numpy as jnp

        m = keys.shape[0]
        idx = np.minimum(np.arange(self.pad(m)), m - 1)
        keys = jax.device_put(jnp.asarray(keys)[idx], self.sharding)
        values = {k: jax.device_put(jnp.asarray(np.asarray(v)[idx], self._dtypes[k]), self.sharding) for k, v in hparams.items()}
        return keys, values

    def init(self, keys: Any, hparams: Mapping[str, Any]) -> Any:
        """Fresh ``TrainState`` per member (leading axis ``[M]``), sharded like ``keys``."""
        import jax

        if self._init is None:
            self._init = jax.jit(self._sharded(self._member_init))
        return self._init(keys, dict(hparams))

    def chunk_fn(self, state: Any, hparams: Mapping[str, Any], num_updates: int) -> Callable:
        """``(state [M], hparams) -> (state, metrics {name: [M, num_updates]})``, compiled once
        per chunk length; donates ``state``."""
        import jax

        if num_updates not in self._chunks:
            start = time.perf_counter()
            fn = self._sharded(functools.partial(self._member_chunk, num_updates=num_updates))
            self._chunks[num_updates] = jax.jit(fn, donate_argnums=0).lower(state, dict(hparams)).compile()
            self.compile_s += time.perf_counter() - start
        return self._chunks[num_updates]


def _dtype(value: Any) -> str:
    return "int32" if isinstance(value, int) and not isinstance(value, bool) else "float32"


def member_key(seed: int) -> Any:
    """The key of the member with this seed: ``PRNGKey(seed)``, what ``train.py --seed`` uses."""
    import jax

    return jax.random.PRNGKey(seed)


@dataclasses.dataclass
class GroupResult:
    """What one compile group produced; member ``i`` is ``(setting i // seeds, seed i % seeds)``."""

    settings: list[Setting]
    seeds: list[int]
    metrics: dict[str, np.ndarray]  # name -> [members, num_updates]
    steps_per_update: int  # env steps per update of one member
    compile_s: float
    train_s: float
    devices: int
    state: Any = None  # final TrainState, leading axis [padded members] (sharded); member i is [i]

    @property
    def env_steps(self) -> int:
        """Env steps of every member together."""
        n = next(iter(self.metrics.values())).shape[1]
        return len(self.settings) * len(self.seeds) * n * self.steps_per_update

    def returns(self) -> np.ndarray:
        """``rollout/ep_rew_mean`` as ``[settings, seeds, updates]``."""
        r = self.metrics["rollout/ep_rew_mean"]
        return r.reshape(len(self.settings), len(self.seeds), r.shape[1])


def run_group(
    settings: Sequence[Setting],
    traced_keys: Sequence[str],
    seeds: Sequence[int],
    *,
    devices: Sequence[Any] | None = None,
    chunk: int | None = None,
    on_chunk: Callable[[int, dict[str, np.ndarray], float], bool] | None = None,
    program: SweepProgram | None = None,
) -> GroupResult:
    """Train every setting x seed of one compile group together.

    Args:
      settings: settings that differ only in ``traced_keys``.
      traced_keys: their vmapped hyperparameters.
      seeds: PRNG seeds; member key ``PRNGKey(seed)``, as ``train.py --seed``.
      devices: see :class:`SweepProgram`.
      chunk: updates per compiled call (default ``logging.log_interval``, as the driver).
      on_chunk: called after each chunk with ``(env steps of all members in it, metrics
        {name: [members, n]})``; returning ``False`` stops training early (pruning).
    """
    import jax

    from rlaccel.driver import chunk_length

    program = program or SweepProgram(settings[0].config, traced_keys, devices)
    compiled_before = program.compile_s
    members = [(s, seed) for s in settings for seed in seeds]
    flats = [flatten(s.config.to_dict()) for s in settings]
    hparams = {k: [flats[settings.index(s)][k] for s, _ in members] for k in program.traced_keys}
    keys = np.stack([np.asarray(member_key(seed)) for _, seed in members])
    keys, values = program.place(keys, hparams)
    state = program.init(keys, values)
    size = chunk_length(program.num_updates, chunk or settings[0].config.logging.log_interval)

    rows: list[dict[str, np.ndarray]] = []
    train_s, update = 0.0, 0
    while update < program.num_updates:
        n = min(size, program.num_updates - update)
        fn = program.chunk_fn(state, values, n)
        start = time.perf_counter()
        state, metrics = fn(state, values)
        metrics = {k: np.asarray(v)[: len(members)] for k, v in jax.device_get(metrics).items()}
        train_s += time.perf_counter() - start
        rows.append(metrics)
        update += n
        if on_chunk is not None and on_chunk(len(members) * n * program.steps_per_update, metrics, train_s) is False:
            break
    stacked = {k: np.concatenate([r[k] for r in rows], axis=1) for k in rows[0]}
    return GroupResult(
        settings=list(settings),
        seeds=list(seeds),
        metrics=stacked,
        steps_per_update=program.steps_per_update,
        compile_s=program.compile_s - compiled_before,
        train_s=train_s,
        devices=len(program.devices),
        state=state,
    )


# --------------------------------------------------------------------------------------------
# Results: table, curves, TensorBoard, best config.


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
    from rlaccel.logging import write_json

    columns = [c for c in rows[0] if c != "final_returns"]
    tmp = out_dir / ".results.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    tmp.replace(out_dir / "results.csv")
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

    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN before the first episode ends
        means = {k: np.nanmean(v, axis=0) for k, v in metrics.items()}
    clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
    results = {f"hparam/{k}": float(v) for k, v in final.items() if math.isfinite(float(v))}
    with SummaryWriter(logdir=str(run_dir)) as writer:
        for u, step in enumerate(steps):
            for name, values in means.items():
                if math.isfinite(float(values[u])):
                    writer.add_scalar(name, float(values[u]), global_step=int(step))
        for summary in hparams_summary(clean, results):
            writer.file_writer.add_summary(summary)
        for name, value in results.items():
            writer.add_scalar(name, value, global_step=int(steps[-1]) if len(steps) else 0)


def best_config_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The config (plain data) of the best setting in a ``results.json``, seed = the sweep's first."""
    best = best_row(results["results"])
    data = copy.deepcopy(results["configs"][best["setting"]])
    data.get("logging", {}).pop("run_dir", None)
    return data


def write_best_config(path: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """Write the best setting's config as YAML ready for ``scripts/train.py``; returns the row."""
    data = best_config_data(results)
    config_lib.build(data)  # it must load back: a sweep result is only useful if it trains
    best = best_row(results["results"])
    header = (
        f"# best of sweep {results.get('out_dir', '')}: setting {best['setting']}, final return "
        f"mean {best['final_return_mean']:.1f} (min {best['final_return_min']:.1f}) over {best['seeds']} seeds\n"
    )
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
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
            label = ", ".join(f"{_short(k)}={v}" for k, v in s.overrides.items()) or "base"
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
