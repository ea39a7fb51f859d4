"""Run configuration: YAML files loaded into frozen, typed dataclasses.

A config file has the top-level keys ``env``, ``algo``, ``total_timesteps``, ``seed``,
``placement``, ``logging``, ``eval`` and one section named after the algorithm (``ppo:``) whose keys
are RL Zoo / Stable-Baselines3 hyperparameter names, so tuned hyperparameters paste in::

    env: CartPole-v1
    algo: ppo
    total_timesteps: 500000
    ppo:
      n_envs: 4
      n_steps: 128
      learning_rate: 2.5e-4

Every problem (malformed YAML, unknown key, wrong type, impossible value) raises
:class:`ConfigError` with a one-line message that names the key. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from rlaccel import registry, zoo
from rlaccel.schema import ConfigError, check
from rlaccel.sections import (
    ActorPlacement,
    ActorsConfig,
    BraxConfig,
    EvalConfig,
    LearnerPlacement,
    LoggingConfig,
    PlacementConfig,
)
from rlaccel.typed import coerce, from_dict

__all__ = [
    "ActorPlacement", "ActorsConfig", "BraxConfig", "Config", "ConfigError", "EvalConfig", "LearnerPlacement", "LoggingConfig",
    "PlacementConfig", "apply_overrides", "build", "load", "load_data", "replace", "set_path", "yaml_load",
]  # fmt: skip


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``3e-4`` and ``1e6`` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text (YAML 1.2 number rules)."""
    return yaml.load(text, Loader=_Loader)


_check = check



@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run."""

    env: str = "CartPole-v1"
    """Environment id: ``CartPole-v1`` (JAX-native), ``gym:<gymnasium id>`` (host actors, e.g.
    ``gym:HalfCheetah-v5``) or ``brax:<name>`` (e.g. ``brax:ant``)."""
    algo: str = "ppo"
    """Learning algorithm, a name in ``rlaccel.registry`` (``ppo``, ``dqn``, or a plug-in's);
    its section, a key of the same name, holds the hyperparameters."""
    total_timesteps: int = 500_000
    """Environment steps to train for (rounded down to whole updates)."""
    seed: int = 0
    """PRNG seed; everything random derives from it."""
    placement: PlacementConfig = PlacementConfig()
    logging: LoggingConfig = LoggingConfig()
    actors: ActorsConfig = ActorsConfig()
    """Host actor threads (only used by ``gym:`` envs)."""
    brax: BraxConfig = BraxConfig()
    """Brax options (only used by ``brax:`` envs)."""
    eval: EvalConfig = EvalConfig()
    """Periodic deterministic evaluation of the int8 and fp32 policies (off unless ``eval.freq`` > 0)."""
    agent: Any = None
    """The algorithm's section (the registered config class of ``algo``). In YAML it is the
    key named after the algorithm (``ppo:``); ``config.ppo`` reads it too."""

    def __post_init__(self) -> None:
        _check(self.total_timesteps >= 1, "total_timesteps", "must be >= 1")
        try:
            algo = registry.get(self.algo)
        except KeyError as e:
            raise ConfigError(f"algo: {e.args[0]}") from None
        if self.agent is None:
            object.__setattr__(self, "agent", algo.config())
        _check(isinstance(self.agent, algo.config), self.algo, f"expected a {algo.config.__name__}, got {type(self.agent).__name__}")
        per_update = self.agent.rollout_size
        _check(self.total_timesteps >= per_update, "total_timesteps", f"must be at least one update ({per_update} env steps for this {self.algo} section)")
        kwargs = getattr(self.agent, "policy_kwargs", None)
        if self.placement.actor.precision == "int8" and kwargs is not None:
            _check(
                kwargs.activation in ("tanh", "relu"),
                f"{self.algo}.policy_kwargs.activation_fn",
                f"int8 actors have integer kernels for tanh and relu only, got {kwargs.activation_fn!r} (or set placement.actor.precision: fp32)",
            )
        if getattr(self.agent, "qat", False):
            _check(self.placement.actor.precision == "int8", f"{self.algo}.qat", "quantisation-aware training needs int8 actors (placement.actor.precision: int8)")
        _check(
            not self.eval.background or self.env_kind == "gym",
            "eval.background",
            f"only gym: envs evaluate in a thread beside training ({self.env} evaluates in a compiled program on the training device; set null or false)",
        )
        if self.env_kind == "gym":
            _check(
                self.agent.n_envs % self.actors.num_actors == 0,
                "actors.num_actors",
                f"must divide {self.algo}.n_envs = {self.agent.n_envs} (each actor steps an equal share), got {self.actors.num_actors}",
            )

    @property
    def env_kind(self) -> str:
        """``gym`` (host actors), ``brax`` or ``jax``, from the env id's prefix."""
        prefix, sep, _ = self.env.partition(":")
        return prefix if sep and prefix in ("gym", "brax") else "jax"

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``rlaccel.envs.make`` for this env (the brax options)."""
        if self.env_kind == "brax":
            return {"backend": self.brax.backend, "max_episode_steps": self.brax.episode_length}
        return {}

    def __getattr__(self, name: str) -> Any:
        """``config.<algo>`` (e.g. ``config.ppo``) is the algorithm's section, as in the YAML."""
        if name != "algo" and name == self.__dict__.get("algo"):
            return self.__dict__["agent"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what ``config.yaml`` and ``summary.json`` hold); the section under
        the algorithm's name."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "agent"}
        out = _plain({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()})
        out[self.algo] = _plain(dataclasses.asdict(self.agent))
        return out


def _parse_scalar(text: str) -> Any:
    """A ``--set`` value is parsed as YAML, so ``3e-4``, ``true``, ``[64, 64]`` work."""
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``path="a.b"``, creating sections on the way.

    Raises:
      ConfigError: the path descends into something that is not a section.
    """
    keys = path.strip().split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: '{'.'.join(keys[: i + 1])}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to plain data; returns a copy.

    Raises:
      ConfigError: an override without ``=``, or one that descends into a non-mapping.
    """
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        path, text = item.split("=", 1)
        set_path(out, path, _parse_scalar(text))
    return out


def _plain(data: Any) -> Any:
    """Tuples -> lists, recursively (YAML/JSON-friendly)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def shipped_configs_dir() -> Path | None:
    """The configs installed with rlaccel: ``rlaccel/configs/`` in an installed package
    (``pyproject.toml`` packs the repository's ``configs/`` there), the ``configs/`` of the
    checkout an editable install runs from, else ``None``."""
    package = Path(__file__).resolve().parent
    if (package / "configs").is_dir():
        return package / "configs"
    checkout = package.parent
    return checkout / "configs" if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir() else None


def shipped_configs() -> list[str]:
    """The names of the shipped configs (:func:`shipped_configs_dir`)."""
    where = shipped_configs_dir()
    return sorted(f.name for f in where.glob("*.yaml")) if where else []


def load_data(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into plain data. A path that does not exist and reads
    ``NAME.yaml`` or ``configs/NAME.yaml`` is the shipped config of that name, if there is one
    (an installed rlaccel has no ``configs/`` folder beside the working directory).

    Raises:
      ConfigError: missing file, malformed YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        shipped = shipped_configs() if str(path.parent) in (".", "configs") else []
        if path.name not in shipped:
            hint = f"; shipped configs: {', '.join(shipped)}" if shipped else ""
            raise ConfigError(f"{path}: cannot read config ({e.strerror}){hint}") from None
        text = (shipped_configs_dir() / path.name).read_text()
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return zoo.lift_n_timesteps(data, data.get("algo", Config.algo))  # before --set overrides, which win


def build(data: dict[str, Any]) -> Config:
    """Plain data -> validated :class:`Config`; the algorithm's section is read with the
    config class its registry entry declares."""
    data = dict(data)
    algo = data.get("algo", "ppo")
    if not isinstance(algo, str):
        raise ConfigError(f"algo: expected a string, got {type(algo).__name__} ({algo!r})")
    try:
        spec = registry.get(algo)
    except KeyError as e:
        raise ConfigError(f"algo: {e.args[0]}") from None
    for name in registry.names():
        if name in data and name != algo:
            raise ConfigError(f"{name}: section given but algo is {algo!r}")
    if "agent" in data:
        raise ConfigError(f"unknown key 'agent'; the hyperparameters go in a section named after the algorithm ('{algo}:')")
    data = zoo.prepare(data, algo, spec.config)  # RL Zoo / SB3 blocks in rlaccel's keys
    section = data.pop(algo, None)
    if section is None:
        section = {}
    data["agent"] = coerce(section, spec.config, algo)
    return from_dict(Config, data)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config file, apply ``--set`` overrides, validate.

    Args:
      path: YAML file; ``None`` starts from the defaults.
      overrides: ``["ppo.learning_rate=1e-3", "seed=3", ...]``.
    """
    data = load_data(path) if path is not None else {}
    return build(apply_overrides(data, overrides or []))


def replace(config: Config, **changes: Any) -> Config:
    """Re-validated copy with changes; dotted names allowed: ``replace(c, **{"ppo.gamma": 0.9})``."""
    data = config.to_dict()
    for path, value in changes.items():
        set_path(data, path, value)
    return build(data)
