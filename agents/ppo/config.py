"""PPO hyperparameters, named as in Stable-Baselines3 / RL Zoo so tuned values paste in."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Optional, Union

from rlaccel.registry import traced_field
from rlaccel.schema import PolicyKwargs, parse_learning_rate, parse_schedule
from rlaccel.schema import check as _check


SPLIT_FROM = 256
"""Narrowest hidden layer whose towers split (``towers_blocker``): ``rlaccel.optim.FLATTEN_BELOW``,
below which the update runs on one flat vector that mixes both towers."""


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
    gamma: Optional[float] = None
    """Discount of the return whose running std scales rewards; null = the section's ``gamma``
    (what the RL Zoo passes to ``VecNormalize``). Another value is refused for now: the reward
    scaling reads the section's ``gamma``."""
    epsilon: float = 1e-8
    """Added to the running variances before the square root (SB3's ``VecNormalize`` default);
    the only value the normalisers use for now."""

    def __post_init__(self) -> None:
        _check(self.clip_obs > 0, "clip_obs", "must be > 0")
        _check(self.clip_reward > 0, "clip_reward", "must be > 0")
        _check(self.gamma is None or 0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1] or null")
        _check(self.epsilon == 1e-8, "epsilon", f"only SB3's default 1e-8 is supported, got {self.epsilon}")


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
    """Minibatch size (SB3's meaning); must divide ``n_envs * n_steps``. A larger one means the
    whole rollout in one minibatch (what SB3 does; it is then stored as ``n_envs * n_steps``)."""
    learning_rate: Union[float, str] = traced_field(2.5e-4)
    """Adam step size; RL Zoo's ``lin_2.5e-4`` means linearly annealed to 0."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """``linear`` anneals the learning rate to 0 over training (optax.linear_schedule)."""
    gamma: float = traced_field(0.99)
    """Discount factor."""
    gae_lambda: float = traced_field(0.95)
    """GAE lambda (https://arxiv.org/abs/1506.02438)."""
    clip_range: Union[float, str] = traced_field(0.2)
    """PPO ratio clip; RL Zoo's ``lin_0.2`` means linearly annealed to 0 (``clip_range_schedule``)."""
    clip_range_schedule: Literal["constant", "linear"] = "constant"
    """``linear``: SB3's ``clip_range`` schedule: the update after ``k`` rollouts of ``N`` clips at
    ``clip_range * (1 - k / N)`` (``progress_remaining``, evaluated once per update after its rollout)."""
    clip_range_vf: Optional[float] = traced_field(None)
    """Value clip around the rollout's values (PureJaxRL/CleanRL use 0.2); null = none, as SB3."""
    ent_coef: float = traced_field(0.0)
    """Entropy bonus coefficient."""
    vf_coef: float = traced_field(0.5)
    """Value loss coefficient (of ``value_loss``)."""
    value_loss: Literal["half_mse", "mse"] = "half_mse"
    """What ``vf_coef`` weighs: ``half_mse``, ``0.5 * mean((V - R)**2)`` (CleanRL, PureJaxRL), or
    ``mse``, ``mean((V - R)**2)``, SB3's ``F.mse_loss`` (an RL Zoo block's, ``SB3_DEFAULTS``)."""
    max_grad_norm: float = traced_field(0.5)
    """Global gradient-norm clip."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch."""
    normalize: Union[bool, NormalizeConfig] = False
    """``true`` = observations and rewards, as RL Zoo; or ``{norm_obs: .., norm_reward: ..}``."""
    adam_eps: float = traced_field(1e-5)
    """Adam epsilon (CleanRL/PureJaxRL use 1e-5; SB3 1e-8)."""
    use_sde: bool = False
    """Generalised State-Dependent Exploration (gSDE, Raffin et al. 2021,
    https://arxiv.org/abs/2005.05719) instead of independent Gaussian noise per step, SB3's
    meaning: the action noise is ``latent_pi @ exploration_matrix``, the matrix drawn from
    ``N(0, exp(log_std)^2)``. Continuous (Box) action spaces only."""
    sde_sample_freq: int = -1
    """gSDE: draw a new exploration matrix every this many env steps; ``-1`` only at the start
    of each rollout (SB3's meaning)."""
    policy_kwargs: PolicyKwargs = PolicyKwargs()

    SB3_DEFAULTS: ClassVar[dict[str, Any]] = {"n_envs": 1, "n_steps": 2048, "n_epochs": 10, "batch_size": 64, "learning_rate": 3e-4, "value_loss": "mse", "policy_kwargs": {"weight_init": "torch"}}
    """Where Stable-Baselines3's ``PPO`` defaults (and the RL Zoo's ``n_envs: 1``) differ from
    the fields': an RL Zoo block (a section with ``policy:``, see ``rlaccel.zoo``) starts from
    these (``policy_kwargs.weight_init: torch``: with ``ortho_init=False`` SB3 keeps PyTorch's default
    initialisation, whose random biases keep gSDE's latent features, hence its noise, away from
    zero at the normalised mean state; ``value_loss: mse``: SB3's value loss has no 1/2). The other defaults (``gamma``, ``gae_lambda``, ``clip_range``, ``ent_coef``,
    ``vf_coef``, ``max_grad_norm``, Adam's ``eps=1e-5``, ``policy_kwargs``) are SB3's already."""

    def __post_init__(self) -> None:
        lr, schedule = parse_learning_rate(self.learning_rate, self.lr_schedule)
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "lr_schedule", schedule)
        clip, clip_schedule = parse_schedule(self.clip_range, self.clip_range_schedule, "clip_range")
        object.__setattr__(self, "clip_range", clip)
        object.__setattr__(self, "clip_range_schedule", clip_schedule)
        _check(self.n_envs >= 1, "n_envs", "must be >= 1")
        _check(self.n_steps >= 1, "n_steps", "must be >= 1")
        _check(self.n_epochs >= 1, "n_epochs", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        object.__setattr__(self, "batch_size", min(self.batch_size, self.n_envs * self.n_steps))
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
        _check(
            not isinstance(self.normalize, NormalizeConfig) or self.normalize.gamma in (None, self.gamma),
            "normalize.gamma",
            f"a VecNormalize gamma other than the section's gamma ({self.gamma}) is not supported, got {getattr(self.normalize, 'gamma', None)}",
        )
        _check(self.sde_sample_freq == -1 or self.sde_sample_freq >= 1, "sde_sample_freq", f"must be -1 (once per rollout) or >= 1, got {self.sde_sample_freq}")

    def towers_blocker(self) -> str | None:
        """Why the policy and value towers cannot train on two devices (``towers.py``,
        ``placement.learner.towers``), or ``None``."""
        pi, vf = self.policy_kwargs.pi_arch, self.policy_kwargs.vf_arch
        if self.use_sde:
            return "gSDE's noise reads the policy's latent features; its towers train together"
        if pi != vf:
            return f"the towers differ (net_arch pi {list(pi)}, vf {list(vf)}); they split when they have the same shape"
        if max(pi) < SPLIT_FROM:
            return f"layers narrower than {SPLIT_FROM} ({list(pi)}) train together (their update runs on one flat vector)"
        return None

    @property
    def normalization(self) -> NormalizeConfig:
        """The normalisation settings (``normalize: true`` means both)."""
        if isinstance(self.normalize, NormalizeConfig):
            return self.normalize
        return NormalizeConfig(norm_obs=self.normalize, norm_reward=self.normalize)

    def clip_range_at(self, update: Any, num_updates: int) -> Any:
        """The ratio clip of update ``update`` (0-based, a Python or traced int) of ``num_updates``.

        Constant: ``clip_range``. Linear (SB3 / RL Zoo ``lin_<x>``): ``clip_range *
        progress_remaining`` with ``progress_remaining = 1 - (update + 1) / num_updates``, as
        SB3 computes it from the env steps done when ``train()`` starts (after the rollout).
        """
        if self.clip_range_schedule == "constant":
            return self.clip_range
        return self.clip_range * (1.0 - (update + 1) / num_updates)

    @property
    def rollout_size(self) -> int:
        """Samples per update: ``n_envs * n_steps``."""
        return self.n_envs * self.n_steps

    @property
    def num_minibatches(self) -> int:
        """Minibatches per epoch."""
        return self.rollout_size // self.batch_size
