"""Run configuration: YAML files loaded into frozen, typed dataclasses.

A config file has the top-level keys ``env``, ``algo``, ``total_timesteps``, ``seed``,
``placement``, ``logging`` and one section named after the algorithm (``ppo:``) whose keys
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
from typing import Any, Literal, Optional

import yaml

from rlaccel import registry
from rlaccel.schema import ConfigError, check
from rlaccel.typed import coerce, from_dict


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
class LearnerPlacement:
    """Where the learner trains."""

    device: str = "auto"
    """``auto`` (first GPU, else CPU), ``cpu``, ``gpu`` or ``<platform>:<index>``."""
    dtype: Literal["float32"] = "float32"
    """Learner arithmetic; fp32 is the only supported choice."""


@dataclasses.dataclass(frozen=True)
class ActorPlacement:
    """Where and in which precision the actors act."""

    device: str = "learner"
    """``learner`` (same device, fused program), ``auto``, ``cpu``, ``gpu`` or ``<platform>:<index>``."""
    precision: Literal["int8", "fp32"] = "int8"
    """``int8``: the NPU-style integer path (see ``rlaccel.quant``); ``fp32``: the learner's params."""
    int8_profile: Literal["tflite", "pow2"] = "tflite"
    """The int8 arithmetic (``rlaccel.intmath``): ``tflite``, TFLite Micro's int8 kernels
    (per-channel weights, fixed-point multipliers; what TFLite Micro, Ethos-U and the C export
    run), or ``pow2``, power-of-two scales and shift-only requantisation (fixed-point NPUs such
    as Vitis AI's DPU)."""


@dataclasses.dataclass(frozen=True)
class PlacementConfig:
    """Placement of learner and actors (see ``rlaccel.placement``)."""

    learner: LearnerPlacement = LearnerPlacement()
    actor: ActorPlacement = ActorPlacement()


@dataclasses.dataclass(frozen=True)
class ActorsConfig:
    """Host actor threads, the execution mode of ``gym:`` envs (see ``rlaccel.sources.host``)."""

    num_actors: int = 2
    """Actor threads; each steps a gymnasium vector env of ``n_envs / num_actors`` copies."""
    queue_size: int = 1
    """Trajectory batches each actor's queue holds; a full queue blocks the actor (bounds the policy lag)."""
    policy: Literal["numpy", "jax"] = "numpy"
    """Acting runtime: ``numpy`` on the actor thread (no device round trip), or ``jax``: the
    agent's compiled ``act`` on ``placement.actor.device``."""
    timeout_s: float = 60.0
    """Seconds without any trajectory batch, or for a thread to stop, before an env counts as stuck."""
    max_policy_lag: Optional[int] = None
    """Updates an actor's parameters may trail the update that consumes its batch (IMPALA's
    bound): an actor waits for the learner before a batch that would exceed it. ``0`` makes a
    run reproducible (acting and learning take turns); ``null``: free-running, the lag is
    whatever ``queue_size`` and the speeds allow."""
    backend: Literal["thread", "ray"] = "thread"
    """``thread``: actor threads in the learner's process; ``ray``: one Ray actor process per
    actor, on this machine or a cluster (``pip install 'rlaccel[ray]'``; docs/cluster.md)."""
    address: Optional[str] = None
    """Ray backend: ``null`` starts a local Ray cluster for the run (token auth, no dashboard)
    and stops it after; ``auto`` or ``host:port`` joins a running cluster (needs its token:
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``)."""
    num_cpus: float = 1.0
    """Ray backend: CPUs each actor process reserves."""
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Ray backend: custom resources each actor reserves, e.g. ``{actor_node: 1}`` to pin the
    actors to nodes started with ``ray start --resources='{"actor_node": 8}'``."""
    max_restarts: int = 3
    """Ray backend: actor restarts (a process that died, or with ``restart_on_env_error`` an
    env that raised) before the run stops with a fault."""
    restart_on_env_error: bool = False
    """Ray backend: an env that raises gets a fresh env (fresh episodes) instead of stopping the run."""

    def __post_init__(self) -> None:
        _check(self.backend != "ray" or self.policy == "numpy", "actors.policy", "the ray backend acts with the numpy actor; use policy: numpy")
        _check(self.address is None or (isinstance(self.address, str) and self.address.strip() != ""), "actors.address", "expected 'auto' or host:port")
        _check(self.address is None or self.backend == "ray", "actors.address", "needs actors.backend: ray")
        _check(self.num_cpus >= 0, "actors.num_cpus", "must be >= 0")
        _check(all(v >= 0 for v in self.resources.values()), "actors.resources", "amounts must be >= 0")
        _check(self.max_restarts >= 0, "actors.max_restarts", "must be >= 0")
        _check(self.num_actors >= 1, "actors.num_actors", "must be >= 1")
        _check(self.queue_size >= 1, "actors.queue_size", "must be >= 1")
        _check(self.timeout_s > 0, "actors.timeout_s", "must be > 0")
        _check(self.max_policy_lag is None or self.max_policy_lag >= 0, "actors.max_policy_lag", "must be >= 0 or null")


@dataclasses.dataclass(frozen=True)
class BraxConfig:
    """Options of ``brax:`` envs (see ``rlaccel.envs.brax``)."""

    backend: Literal["spring", "positional", "generalized", "mjx"] = "spring"
    """Physics pipeline (brax's ``backend``)."""
    episode_length: int = 1000
    """Time limit in steps (brax's training default); reaching it truncates the episode."""

    def __post_init__(self) -> None:
        _check(self.episode_length >= 1, "brax.episode_length", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where results go and how often."""

    run_dir: Optional[str] = None
    """Run directory; default ``runs/<algo>_<env>_s<seed>_<timestamp>``."""
    log_interval: int = 8
    """Updates per compiled chunk; metrics, progress and the NaN check happen between chunks."""
    checkpoint_interval: int = 100
    """Write a checkpoint every this many updates (rounded up to whole chunks); 0 = only at the end."""
    keep_checkpoints: int = 3
    """How many most recent checkpoints to keep."""
    probe_seconds: float = 2.0
    """Seconds between probes (decision latency, actor and learner speed), timed between chunks."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        _check(self.log_interval >= 1, "logging.log_interval", "must be >= 1")
        _check(self.checkpoint_interval >= 0, "logging.checkpoint_interval", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "logging.keep_checkpoints", "must be >= 1")
        _check(self.probe_seconds >= 0, "logging.probe_seconds", "must be >= 0")


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


def load_data(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into plain data.

    Raises:
      ConfigError: missing file, malformed YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
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
    return data


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
