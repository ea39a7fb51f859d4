"""The agent interface: a set of pure functions, the same for every algorithm.

Where these functions execute (one fused program, two devices, host threads) is the
step source's business (``rlaccel.sources``); precision of acting is decided by
``actor_params`` (fp32 parameters or an int8 ``rlaccel.quant`` copy). Agent code never
knows about devices, logging or checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
AgentState = Any  # a pytree: params, optimiser state, normaliser, algorithm extras
ActorParams = Any  # what an actor needs to act: fp32 or int8 policy + normaliser
ActorExtras = Any  # what an actor records for the learner, e.g. the behaviour log-prob
Metrics = dict[str, Array]


class Agent(NamedTuple):
    """Pure functions of an algorithm (see ``docs/architecture.md``).

    Attributes:
      init: ``key -> AgentState``.
      actor_params: ``(AgentState, precision) -> ActorParams`` with ``precision`` ``"fp32"``
        or ``"int8"`` (static); called after every learner update: the "re-quantise and
        broadcast" step. ``ActorParams.policy`` is the fp32 flax params or a
        ``rlaccel.quant.QuantParams``.
      act: ``(ActorParams, obs [B, obs_dim], noise) -> (action [B] or [B, A], ActorExtras)``;
        deterministic given ``noise``.
      noise: ``(key, num_envs) -> noise`` for one step of ``act``, every leaf ``[num_envs, ...]``.
        Rollouts draw it for all their steps at once (``num_envs = T * B``, split into steps)
        before their scan, so no PRNG hash sits on the acting critical path.
      head: ``(ActorParams, obs [B, obs_dim]) -> [B, out]``, the policy's output before
        sampling (logits, Gaussian mean or Q-values); used to compare int8 with fp32.
      update: ``(AgentState, Transition [T, B], key) -> (AgentState, Metrics)``; the learner step.
      discrete: whether actions are integers (greedy action = argmax of ``head``).
      calibrate: ``(AgentState, raw obs [N, obs_dim]) -> AgentState``: int8 activation ranges
        re-measured on observations as the actors see them (``update`` calls it with int8
        actors; export calls it for a run trained with fp32 actors).
      rollout_noise: ``(key, num_steps, num_envs) -> noise [T, ...]``, or ``None``: a whole
        rollout's acting noise when its steps are not independent (gSDE's exploration
        matrices, kept for ``sde_sample_freq`` steps); ``rollout.acting_noise`` uses it,
        else ``noise`` for ``T * B`` actors. Step ``t``'s slice is shaped as ``noise``'s.
    """

    init: Callable[[Array], AgentState]
    actor_params: Callable[[AgentState, str], ActorParams]
    act: Callable[[ActorParams, Array, Any], tuple[Array, ActorExtras]]
    noise: Callable[[Array, int], Any]
    head: Callable[[ActorParams, Array], Array]
    update: Callable[[AgentState, Any, Array], tuple[AgentState, Metrics]]
    discrete: bool
    calibrate: Callable[[AgentState, Array], AgentState]
    rollout_noise: Callable[[Array, int, int], Any] | None = None


class AgentSpec(NamedTuple):
    """An agent and the rollout shape its learner consumes per update (what a registered
    algorithm's ``make`` returns)."""

    agent: Agent
    num_envs: int
    num_steps: int  # rollout length per update
    num_updates: int
    learner_sharding: Any = None  # where the learner's state lives if not on one device (PPO's towers split: both, replicated)

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps


def make(config: Any, env: Any) -> AgentSpec:
    """The registered algorithm ``config.algo``'s agent for ``env`` (imports its JAX code)."""
    from rlaccel import registry

    return registry.load(registry.get(config.algo).make)(config, env)
