"""DQN hyperparameters, named as in Stable-Baselines3 / RL Zoo so tuned values paste in."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Union

from rlaccel.registry import traced_field
from rlaccel.schema import NetArch, PolicyKwargs, parse_learning_rate
from rlaccel.schema import check as _check


def _train_freq_steps(value: Union[int, tuple[Union[int, str], ...]]) -> int:
    """``4`` or SB3's ``[4, "step"]`` -> ``4``; anything else is a ConfigError naming ``train_freq``."""
    if not isinstance(value, (tuple, list)):
        return value
    ok = len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool) and value[1] in ("step", "episode")
    _check(ok, "train_freq", f"expected an integer or [n, 'step'], got {list(value)!r}")
    _check(value[1] == "step", "train_freq", f"[n, 'episode'] (train every n episodes) is not supported; give vector-env steps, got {list(value)!r}")
    return value[0]


@dataclasses.dataclass(frozen=True)
class QNetKwargs(PolicyKwargs):
    """Q-network shape; defaults are PureJaxRL's CartPole DQN (120-84 ReLU, default init)."""

    net_arch: tuple[int, ...] = (120, 84)
    """Hidden layer sizes of the Q network (a list: SB3's DQN has no ``pi``/``vf`` split)."""
    activation_fn: str = "relu"
    ortho_init: bool = False

    def __post_init__(self) -> None:
        _check(not isinstance(self.net_arch, NetArch), "net_arch", "the Q network takes one list of layer sizes, not pi/vf")
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Double DQN (van Hasselt et al. 2016, https://arxiv.org/abs/1509.06461) with a Huber loss.

    Step counts (``learning_starts``, ``target_update_interval``, the exploration schedule)
    are in environment transitions, as in SB3; ``train_freq`` counts vector-env steps, as SB3's.
    """

    n_envs: int = 10
    """Parallel environments."""
    train_freq: Union[int, tuple[Union[int, str], ...]] = 1
    """Vector-env steps between learner updates (one update consumes ``n_envs * train_freq``
    transitions), SB3's meaning; SB3's ``[n, "step"]`` is read as ``n`` (``[n, "episode"]``,
    training every n episodes, is not supported)."""
    gradient_steps: int = 1
    """Gradient steps per update; ``-1`` (SB3): as many as transitions the update collected,
    i.e. ``n_envs * train_freq``."""
    buffer_size: int = 10_000
    """Replay capacity, in transitions."""
    learning_starts: int = traced_field(10_000)
    """Gradient steps start once more than this many transitions were collected (SB3's and
    PureJaxRL's ``num_timesteps > learning_starts``)."""
    batch_size: int = 128
    """Minibatch size sampled from the replay buffer."""
    learning_rate: Union[float, str] = traced_field(2.5e-4)
    """Adam step size; ``lin_<number>`` anneals it linearly to 0."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """``linear`` anneals the learning rate to 0 over training."""
    gamma: float = traced_field(0.99)
    """Discount factor."""
    tau: float = traced_field(1.0)
    """Target update coefficient: 1 = hard copy, < 1 = Polyak averaging."""
    target_update_interval: int = 500
    """Transitions between target-network updates, SB3's unit (SB3 copies every
    ``target_update_interval // n_envs`` vector steps; here after every
    ``max(1, target_update_interval // (n_envs * train_freq))`` updates, which is the same
    copy whenever the interval is shorter than an update)."""
    exploration_fraction: float = 0.5
    """Fraction of ``total_timesteps`` over which epsilon decays."""
    exploration_initial_eps: float = traced_field(1.0)
    """Epsilon at the start."""
    exploration_final_eps: float = traced_field(0.05)
    """Epsilon after the decay."""
    max_grad_norm: Union[float, None] = traced_field(10.0)
    """Global gradient-norm clip (SB3's DQN default); ``null``: no clipping (PureJaxRL, CleanRL)."""
    n_step: int = 1
    """Transitions summed into each bootstrapped target (n-step returns; 1 = one-step DQN)."""
    double_q: bool = True
    """Double-DQN targets: the online network picks the next action, the target network values it."""
    loss: Literal["huber", "mse"] = "huber"
    """TD-error loss: ``huber`` (SB3, delta 1) or ``mse``, the mean squared error (CleanRL /
    PureJaxRL)."""
    handle_timeout_termination: bool = True
    """Bootstrap from the true final observation of a truncated episode (SB3's replay buffer
    option of this name); ``false`` treats truncation as termination (PureJaxRL, CleanRL)."""
    adam_eps: float = traced_field(1e-8)
    """Adam epsilon."""
    qat: bool = False
    """Quantisation-aware training (``rlaccel.qat``) with int8 actors: the learner's online
    Q-network computes with the int8 kernels its actors get (the head centred over actions, as
    they get it), with straight-through gradients to the fp32 weights. No effect with fp32
    actors; off by default (post-training quantisation only). Measured (``docs/benchmarks.md``,
    "Quantisation-aware DQN"): on the RL Zoo's DQN CartPole block (256-256) it left 5 of 8
    seeds' int8 policies at 500 against 3 of 8 without; on ``configs/dqn_cartpole.yaml``
    (120-84) 16 seeds' last evaluations averaged 430 against 445 without."""
    policy_kwargs: QNetKwargs = QNetKwargs()
    """Q-network shape (``log_std_init`` and ``full_std`` are unused)."""

    SB3_DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_envs": 1,
        "train_freq": 4,
        "buffer_size": 1_000_000,
        "learning_starts": 100,
        "batch_size": 32,
        "learning_rate": 1e-4,
        "target_update_interval": 10_000,
        "exploration_fraction": 0.1,
        "double_q": False,
        "policy_kwargs": {"net_arch": [64, 64], "weight_init": "torch"},
    }
    """Where Stable-Baselines3's ``DQN`` defaults (and the RL Zoo's ``n_envs: 1``) differ from
    the fields': an RL Zoo block (a section with ``policy:``, see ``rlaccel.zoo``) starts from
    these. SB3's DQN is not double DQN (``double_q: false``); its Q network is 64-64 ReLU with PyTorch's
    default initialisation (``weight_init: torch``)."""
    SB3_RENAMES: ClassVar[dict[str, str]] = {"n_steps": "n_step"}
    """SB3 keys spelled differently here (SB3's DQN ``n_steps`` is the n-step return length)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_freq", _train_freq_steps(self.train_freq))
        if self.gradient_steps == -1:
            object.__setattr__(self, "gradient_steps", self.n_envs * self.train_freq)
        lr, schedule = parse_learning_rate(self.learning_rate, self.lr_schedule)
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "lr_schedule", schedule)
        _check(self.gradient_steps >= 1, "gradient_steps", f"must be >= 1 or -1 (as many as transitions collected), got {self.gradient_steps}")
        for name in ("n_envs", "train_freq", "n_step", "buffer_size", "batch_size", "target_update_interval"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        _check(self.buffer_size >= self.rollout_size, "buffer_size", f"must hold one update's transitions ({self.rollout_size})")
        span = self.n_envs * self.n_step
        _check(self.buffer_size >= span, "buffer_size", f"must hold n_step rows of n_envs transitions ({span})")
        _check(self.learning_rate > 0, "learning_rate", "must be > 0")
        _check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        _check(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        _check(0.0 <= self.exploration_fraction <= 1.0, "exploration_fraction", "must be in [0, 1]")
        _check(0.0 <= self.exploration_initial_eps <= 1.0, "exploration_initial_eps", "must be in [0, 1]")
        _check(0.0 <= self.exploration_final_eps <= 1.0, "exploration_final_eps", "must be in [0, 1]")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null (no clipping)")
        _check(self.adam_eps > 0, "adam_eps", "must be > 0")

    @property
    def rollout_size(self) -> int:
        """Transitions per update: ``n_envs * train_freq``."""
        return self.n_envs * self.train_freq

    @property
    def target_update_every(self) -> int:
        """Updates between target-network updates."""
        return max(1, self.target_update_interval // self.rollout_size)
