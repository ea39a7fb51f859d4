"""PPO hyperparameters, named as in Stable-Baselines3 / RL Zoo so tuned values paste in."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Union

from rlaccel.registry import traced_field
from rlaccel.schema import PolicyKwargs, parse_learning_rate
from rlaccel.schema import check as _check


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
    """Running normalisation (SB3's ``VecNormalize`` options)."""

    norm_obs: bool = True
    """Normalise observations by running mean/std; the statistics are agent state."""
    norm_reward: bool = True
    """Scale rewards by the running std of the discounted return (learner side only)."""
    clip_obs: float = 10.0
    """Clip normalised observations to +-clip_obs."""
    clip_reward: float = 10.0
    """Clip scaled rewards to +-clip_reward."""

    def __post_init__(self) -> None:
        _check(self.clip_obs > 0, "clip_obs", "must be > 0")
        _check(self.clip_reward > 0, "clip_reward", "must be > 0")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Proximal Policy Optimisation (Schulman et al. 2017, https://arxiv.org/abs/1707.06347)."""

    n_envs: int = 4
    """Parallel environments per actor."""
    n_steps: int = 128
    """Steps per environment per rollout; one update consumes ``n_envs * n_steps`` samples."""
    n_epochs: int = 4
    """Passes over each rollout."""
    batch_size: int = 128
    """Minibatch size (SB3's meaning); must divide ``n_envs * n_steps``."""
    learning_rate: Union[float, str] = traced_field(2.5e-4)
    """Adam step size; RL Zoo's ``lin_2.5e-4`` means linearly annealed to 0."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """``linear`` anneals the learning rate to 0 over training (optax.linear_schedule)."""
    gamma: float = traced_field(0.99)
    """Discount factor."""
    gae_lambda: float = traced_field(0.95)
    """GAE lambda (https://arxiv.org/abs/1506.02438)."""
    clip_range: float = traced_field(0.2)
    """PPO ratio clip."""
    clip_range_vf: Optional[float] = traced_field(None)
    """Value clip around the rollout's values (PureJaxRL/CleanRL use 0.2); null = none, as SB3."""
    ent_coef: float = traced_field(0.0)
    """Entropy bonus coefficient."""
    vf_coef: float = traced_field(0.5)
    """Value loss coefficient."""
    max_grad_norm: float = traced_field(0.5)
    """Global gradient-norm clip."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch."""
    normalize: Union[bool, NormalizeConfig] = False
    """``true`` = observations and rewards, as RL Zoo; or ``{norm_obs: .., norm_reward: ..}``."""
    adam_eps: float = traced_field(1e-5)
    """Adam epsilon (CleanRL/PureJaxRL use 1e-5; SB3 1e-8)."""
    policy_kwargs: PolicyKwargs = PolicyKwargs()

    def __post_init__(self) -> None:
        lr, schedule = parse_learning_rate(self.learning_rate, self.lr_schedule)
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "lr_schedule", schedule)
        _check(self.n_envs >= 1, "n_envs", "must be >= 1")
        _check(self.n_steps >= 1, "n_steps", "must be >= 1")
        _check(self.n_epochs >= 1, "n_epochs", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(
            (self.n_envs * self.n_steps) % self.batch_size == 0,
            "batch_size",
            f"must divide n_envs * n_steps = {self.n_envs * self.n_steps}, got {self.batch_size}",
        )
        _check(self.learning_rate > 0, "learning_rate", "must be > 0")
        _check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        _check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "must be in [0, 1]")
        _check(self.clip_range > 0, "clip_range", "must be > 0")
        _check(self.clip_range_vf is None or self.clip_range_vf > 0, "clip_range_vf", "must be > 0 or null")
        _check(self.ent_coef >= 0, "ent_coef", "must be >= 0")
        _check(self.vf_coef >= 0, "vf_coef", "must be >= 0")
        _check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        _check(self.adam_eps > 0, "adam_eps", "must be > 0")

    @property
    def normalization(self) -> NormalizeConfig:
        """The normalisation settings (``normalize: true`` means both)."""
        if isinstance(self.normalize, NormalizeConfig):
            return self.normalize
        return NormalizeConfig(norm_obs=self.normalize, norm_reward=self.normalize)

    @property
    def rollout_size(self) -> int:
        """Samples per update: ``n_envs * n_steps``."""
        return self.n_envs * self.n_steps

    @property
    def num_minibatches(self) -> int:
        """Minibatches per epoch."""
        return self.rollout_size // self.batch_size
