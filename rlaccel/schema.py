"""Pieces of the config schema shared by every algorithm section (no JAX here: numpy at most).

``rlaccel.config`` assembles the whole config; algorithm sections (``agents/*/config.py``)
build on these.
"""

from __future__ import annotations

import dataclasses

from rlaccel.reference import ACTIVATIONS as _ACTIVATION_FNS


class ConfigError(ValueError):
    """A configuration problem; the message is one line and names the offending key."""


def check(ok: bool, key: str, why: str) -> None:
    """Raise ``ConfigError("key: why")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {why}")


def parse_learning_rate(value: float | str, schedule: str) -> tuple[float, str]:
    """``2.5e-4`` -> ``(2.5e-4, schedule)``; RL Zoo's ``"lin_2.5e-4"`` -> ``(2.5e-4, "linear")``."""
    if not isinstance(value, str):
        return value, schedule
    try:
        if not value.startswith("lin_"):
            raise ValueError
        return float(value[4:]), "linear"
    except ValueError:
        check(False, "learning_rate", f"expected a number or 'lin_<number>', got {value!r}")
        raise  # unreachable: check raised


_TORCH_NAMES = {"tanh": "nn.Tanh", "relu": "nn.ReLU", "elu": "nn.ELU"}
ACTIVATION_ALIASES = {alias: name for name in _ACTIVATION_FNS for alias in (name, _TORCH_NAMES[name])}
"""Config spellings of the activations -> the name in the activation tables
(``rlaccel.reference.ACTIVATIONS``, ``rlaccel.networks.ACTIVATIONS``): the name itself, or RL Zoo's torch name."""


@dataclasses.dataclass(frozen=True)
class PolicyKwargs:
    """Network shape (SB3's ``policy_kwargs``)."""

    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes, used for both the policy and the value network (separate weights)."""
    activation_fn: str = "tanh"
    """``tanh`` / ``relu`` / ``elu`` (RL Zoo spellings ``nn.Tanh``, ``nn.ReLU``, ``nn.ELU`` work too)."""
    ortho_init: bool = True
    """Orthogonal initialisation (gains sqrt(2) hidden, 0.01 policy head, 1 value head), as SB3."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions)."""

    def __post_init__(self) -> None:
        check(len(self.net_arch) >= 1 and all(n >= 1 for n in self.net_arch), "net_arch", "needs at least one positive layer size")
        check(max(self.net_arch) <= 4096, "net_arch", "layers wider than 4096 are not supported (int8 accumulation bound)")
        check(self.activation_fn in ACTIVATION_ALIASES, "activation_fn", f"expected one of {', '.join(ACTIVATION_ALIASES)}, got {self.activation_fn!r}")

    @property
    def activation(self) -> str:
        """Canonical activation name (``tanh``, ``relu`` or ``elu``)."""
        return ACTIVATION_ALIASES[self.activation_fn]
