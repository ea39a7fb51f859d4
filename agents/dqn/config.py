"""DQN hyperparameters, named as in Stable-Baselines3 / RL Zoo so tuned values paste in."""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

from rlaccel.registry import traced_field
from rlaccel.schema import PolicyKwargs, parse_learning_rate
from rlaccel.schema import check as _check


@dataclasses.dataclass(frozen=True)
class QNetKwargs(PolicyKwargs):
    """Q-network shape; defaults are PureJaxRL's CartPole DQN (120-84 ReLU, default init)."""

    net_arch: tuple[int, ...] = (120, 84)
    activation_fn: str = "relu"
    ortho_init: bool = False


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Double DQN (van Hasselt et al. 2016, https://arxiv.org/abs/1509.06461) with a Huber loss.

    Step counts (``learning_starts``, ``target_update_interval``, the exploration schedule)
    are in environment transitions, as in SB3.
    """

    n_envs: int = 10
    """Parallel environments."""
    train_freq: int = 1
    """Vector-env steps between learner updates (one update consumes ``n_envs * train_freq`` transitions)."""
    gradient_steps: int = 1
    """Gradient steps per update."""
    buffer_size: int = 10_000
    """Replay capacity, in transitions."""
    learning_starts: int = traced_field(10_000)
    """Transitions collected before the first gradient step."""
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
    """Transitions between target-network updates (rounded to whole updates)."""
    exploration_fraction: float = 0.5
    """Fraction of ``total_timesteps`` over which epsilon decays."""
    exploration_initial_eps: float = traced_field(1.0)
    """Epsilon at the start."""
    exploration_final_eps: float = traced_field(0.05)
    """Epsilon after the decay."""
    max_grad_norm: float = traced_field(10.0)
    """Global gradient-norm clip (SB3's DQN default)."""
    n_step: int = 1
    """Transitions summed into each bootstrapped target (n-step returns; 1 = one-step DQN)."""
    double_q: bool = True
    """Double-DQN targets: the online network picks the next action, the target network values it."""
    loss: Literal["huber", "mse"] = "huber"
    """TD-error loss: ``huber`` (SB3, delta 1) or ``mse`` (CleanRL / PureJaxRL)."""
    adam_eps: float = traced_field(1e-8)
    """Adam epsilon."""
    policy_kwargs: QNetKwargs = QNetKwargs()
    """Q-network shape (``log_std_init`` is unused)."""

    def __post_init__(self) -> None:
        lr, schedule = parse_learning_rate(self.learning_rate, self.lr_schedule)
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "lr_schedule", schedule)
        for name in ("n_envs", "train_freq", "n_step", "gradient_steps", "buffer_size", "batch_size", "target_update_interval"):
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
        _check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        _check(self.adam_eps > 0, "adam_eps", "must be > 0")

    @property
    def rollout_size(self) -> int:
        """Transitions per update: ``n_envs * train_freq``."""
        return self.n_envs * self.train_freq

    @property
    def target_update_every(self) -> int:
        """Updates between target-network updates."""
        return max(1, self.target_update_interval // self.rollout_size)
