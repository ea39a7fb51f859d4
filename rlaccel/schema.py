"""Pieces of the config schema shared by every algorithm section (no JAX here: numpy at most).

``rlaccel.config`` assembles the whole config; algorithm sections (``agents/*/config.py``)
build on these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlaccel.reference import ACTIVATIONS as _ACTIVATION_FNS


class ConfigError(ValueError):
    """A configuration problem; the message is one line and names the offending key."""


def check(ok: bool, key: str, why: str) -> None:
    """Raise ``ConfigError("key: why")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {why}")


def parse_schedule(value: float | str, schedule: str, key: str) -> tuple[float, str]:
    """``0.2`` -> ``(0.2, schedule)``; RL Zoo's ``"lin_0.2"`` -> ``(0.2, "linear")`` (annealed
    linearly to 0 over training, the zoo's ``SimpleLinearSchedule``)."""
    if not isinstance(value, str):
        return value, schedule
    try:
        if not value.startswith("lin_"):
            raise ValueError
        return float(value[4:]), "linear"
    except ValueError:
        check(False, key, f"expected a number or 'lin_<number>', got {value!r}")
        raise  # unreachable: check raised


def parse_learning_rate(value: float | str, schedule: str) -> tuple[float, str]:
    """``2.5e-4`` -> ``(2.5e-4, schedule)``; RL Zoo's ``"lin_2.5e-4"`` -> ``(2.5e-4, "linear")``."""
    return parse_schedule(value, schedule, "learning_rate")


_TORCH_NAMES = {"tanh": "nn.Tanh", "relu": "nn.ReLU", "elu": "nn.ELU"}
ACTIVATION_ALIASES = {alias: name for name in _ACTIVATION_FNS for alias in (name, _TORCH_NAMES[name])}
"""Config spellings of the activations -> the name in the activation tables
(``rlaccel.reference.ACTIVATIONS``, ``rlaccel.networks.ACTIVATIONS``): the name itself, or RL Zoo's torch name."""


def _layer_sizes(value: Any, key: str) -> tuple[int, ...]:
    """A list of hidden layer sizes -> a tuple of ints, checked (``1e3`` from YAML counts as 1000)."""
    check(isinstance(value, (list, tuple)), key, f"expected a list of layer sizes or {{pi: [...], vf: [...]}}, got {type(value).__name__} ({value!r})")
    sizes = []
    for i, n in enumerate(value):
        whole = isinstance(n, float) and n.is_integer()
        check((isinstance(n, int) and not isinstance(n, bool)) or whole, f"{key}[{i}]", f"expected an integer, got {type(n).__name__} ({n!r})")
        sizes.append(int(n))
    check(len(sizes) >= 1 and all(n >= 1 for n in sizes), key, "needs at least one positive layer size")
    check(max(sizes) <= 4096, key, "layers wider than 4096 are not supported (int8 accumulation bound)")
    return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class NetArch:
    """Separate actor and critic hidden sizes: SB3's ``net_arch=dict(pi=[...], vf=[...])``
    (YAML ``{pi: [...], vf: [...]}``). Both keys are needed, each with at least one layer."""

    pi: tuple[int, ...] = ()
    """Hidden layer sizes of the policy network (the actor that runs in int8)."""
    vf: tuple[int, ...] = ()
    """Hidden layer sizes of the value network (learner only, fp32)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pi", _layer_sizes(self.pi, "pi"))
        object.__setattr__(self, "vf", _layer_sizes(self.vf, "vf"))

    @classmethod
    def parse(cls, value: dict[str, Any], key: str) -> NetArch:
        """``{pi: [...], vf: [...]}`` -> :class:`NetArch`; a ConfigError names ``key.<sub>``."""
        for name in value:
            check(name in ("pi", "vf"), f"{key}.{name}", "unknown key; net_arch as a mapping takes pi and vf")
        try:
            return cls(**value)
        except ConfigError as e:
            raise ConfigError(f"{key}.{e}") from None


@dataclasses.dataclass(frozen=True)
class PolicyKwargs:
    """Network shape (SB3's ``policy_kwargs``)."""

    net_arch: Any = (64, 64)
    """Hidden layer sizes: a list is used for both the policy and the value network (separate
    weights, as SB3's ``net_arch=[64, 64]``); ``{pi: [...], vf: [...]}`` gives each its own
    (SB3's ``dict(pi=[...], vf=[...])``); held as a tuple of ints or a :class:`NetArch`. Read it
    through :attr:`pi_arch` / :attr:`vf_arch`."""
    activation_fn: str = "tanh"
    """``tanh`` / ``relu`` / ``elu`` (RL Zoo spellings ``nn.Tanh``, ``nn.ReLU``, ``nn.ELU`` work too)."""
    ortho_init: bool = True
    """Orthogonal initialisation (gains sqrt(2) hidden, 0.01 policy head, 1 value head), as SB3."""
    weight_init: str = "flax"
    """Without ``ortho_init``: ``flax`` (``lecun_normal`` kernels, zero biases) or ``torch``
    (PyTorch's ``nn.Linear`` default, uniform kernels and biases: SB3's ``ortho_init=False``;
    what an RL Zoo block gets, ``SB3_DEFAULTS``)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions; with gSDE,
    of the exploration matrix's entries, as SB3)."""
    full_std: bool = True
    """gSDE only (``use_sde``), SB3's meaning: one standard deviation per (latent feature,
    action) pair (``True``), or one per latent feature shared by all actions (``False``)."""

    def __post_init__(self) -> None:
        arch = self.net_arch
        if isinstance(arch, dict):
            arch = NetArch.parse(arch, "net_arch")
        object.__setattr__(self, "net_arch", arch if isinstance(arch, NetArch) else _layer_sizes(arch, "net_arch"))
        check(self.activation_fn in ACTIVATION_ALIASES, "activation_fn", f"expected one of {', '.join(ACTIVATION_ALIASES)}, got {self.activation_fn!r}")
        check(self.weight_init in ("flax", "torch"), "weight_init", f"expected flax or torch, got {self.weight_init!r}")

    @property
    def pi_arch(self) -> tuple[int, ...]:
        """Hidden layer sizes of the policy (or Q) network."""
        return self.net_arch.pi if isinstance(self.net_arch, NetArch) else tuple(self.net_arch)

    @property
    def vf_arch(self) -> tuple[int, ...]:
        """Hidden layer sizes of the value network (the policy's, unless ``net_arch`` splits them)."""
        return self.net_arch.vf if isinstance(self.net_arch, NetArch) else tuple(self.net_arch)

    @property
    def activation(self) -> str:
        """Canonical activation name (``tanh``, ``relu`` or ``elu``)."""
        return ACTIVATION_ALIASES[self.activation_fn]
