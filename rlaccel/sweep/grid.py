"""Sweep grids (no JAX): settings, and which of their keys are traced or compiled apart.

A hyperparameter that changes no array shape (learning rate, clip range, entropy coefficient,
gamma, ...: the fields an algorithm marks with ``rlaccel.registry.traced_field``) is not baked
into the program as a constant: it enters as a traced value, one per sweep *member* (a setting
and a seed), so ``jax.vmap`` batches every member into the same compiled update.
Shape-changing ones (``n_envs``, ``net_arch``, ``n_epochs``, ...) split the grid into separate
compile groups. :func:`with_values` puts the tracer where the float was, so the agent built
inside the traced function sees an array (optax schedules take traced values too).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from rlaccel import config as config_lib
from rlaccel import registry
from rlaccel.config import Config, ConfigError



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


def short_name(key: str) -> str:
    """The last part of a dotted key: ``ppo.learning_rate`` -> ``learning_rate``."""
    return key.split(".")[-1]


def setting_name(index: int, overrides: Mapping[str, Any]) -> str:
    """``03_learning_rate=0.001_ent_coef=0``: index first, so directories sort as the table."""
    parts = [f"{short_name(k)}={v}" for k, v in overrides.items()]
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
    return section == algo and field in registry.traced_fields(registry.get(algo).config) and numeric


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
    object.__setattr__(out, "agent", section)
    return out
