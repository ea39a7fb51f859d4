"""How evaluation episodes run: a compiled JAX program, or gymnasium envs with the numpy actors.

``rlaccel.evaluate`` (the loop's hook) decides when to evaluate and what to log; this module
plays the episodes, for every precision asked, from the same starting states:

* JAX envs (classic control, ``brax:``): :func:`make_program`, pure (jit it, vmap it over
  seeds): ``vmap(env.reset)`` of ``K`` keys, then :func:`run_episodes`, a ``lax.while_loop``
  stepping all ``K`` episodes until every one has ended or a fixed bound (the env's time
  limit). :class:`JaxEpisodes` compiles it once per run.
* ``gym:`` envs: :class:`HostEpisodes`, the algorithm's numpy actor (``rlaccel.registry``'s
  ``numpy_actor``, built from the parameters host actors get: int8 as ``rlaccel.quant_tables.tables``
  through the bit-exact numpy reference) on ``K`` gymnasium envs of its own (same id and
  keyword arguments, never the training actors'), reset with :func:`eval_seeds`.

Actions are greedy (:func:`policy_action`: argmax of ``agent.head``, or the Gaussian mean it
is) unless ``eval.deterministic: false``. Parameters carry the actors' observation normaliser
of that update, frozen. Randomness comes from the run's seed and the update number
(:func:`eval_key`, :func:`eval_seeds`), never from the training key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from rlaccel import compile_cache, placement, quant, quant_tables, registry
from rlaccel.agent import Agent

__all__ = ["EVAL_TAG", "Episodes", "HostEpisodes", "JaxEpisodes", "eval_key", "eval_seeds", "gym_episodes", "keyed", "make_program", "policy_action", "run_episodes"]

Array = jax.Array
EVAL_TAG = 0xE7A1
"""Folded into the run's seed for evaluation randomness, apart from training's."""
UNBOUNDED_ENV_STEPS = 10_000
"""Step bound of an evaluation episode on an env without a time limit (``eval.max_episode_steps`` overrides)."""


class Episodes(NamedTuple):
    """Finished evaluation episodes (JAX or numpy arrays)."""

    returns: Any  # [K] undiscounted return of each episode
    lengths: Any  # [K] int32 steps of each episode


class _Carry(NamedTuple):
    """The evaluation loop's carry."""

    t: Array  # [] int32 steps taken
    env_state: Any  # [K, ...]
    obs: Array  # [K, obs_dim]
    alive: Array  # [K] bool: the episode has not ended
    returns: Array  # [K] float32
    lengths: Array  # [K] int32


def policy_action(agent: Agent, actor_params: Any, obs: Array, key: Array, *, deterministic: bool) -> Array:
    """The evaluation action for ``obs [K, obs_dim]``: greedy (argmax of ``agent.head``, or the
    Gaussian mean it is) when ``deterministic``, else ``agent.act`` with fresh noise."""
    if deterministic:
        head = agent.head(actor_params, obs)
        return jnp.argmax(head, axis=-1).astype(jnp.int32) if agent.discrete else head
    return agent.act(actor_params, obs, agent.noise(key, obs.shape[0]))[0]


def run_episodes(
    env: Any, agent: Agent, actor_params: Any, start: tuple[Any, Array], key: Array, *, max_steps: int, deterministic: bool = True
) -> Episodes:
    """One episode per env from ``start``, stepped together until all ended or ``max_steps``.

    Args:
      env: a JAX env without auto-reset (``envs.make(id)``); its own time limit truncates.
      agent: the algorithm's pure functions.
      actor_params: ``agent.actor_params(state, precision)``.
      start: ``(env_state [K, ...], obs [K, obs_dim])``, e.g. ``vmap(env.reset)(keys)``.
      key: randomness of the env steps (and of the actions unless ``deterministic``).
      max_steps: the fixed step bound (an episode still running then ends there).
      deterministic: greedy actions (:func:`policy_action`).

    Returns:
      :class:`Episodes` ``[K]``: rewards and steps counted up to and including each episode's
      last step; the ``lax.while_loop`` stops as soon as every episode has ended.
    """
    env_state, obs = start
    num = obs.shape[0]
    box = isinstance(env.action_space, spaces.Box)

    def cond(c: _Carry) -> Array:
        return (c.t < max_steps) & jnp.any(c.alive)

    def body(c: _Carry) -> _Carry:
        key_act, key_env = jax.random.split(jax.random.fold_in(key, c.t))
        action = policy_action(agent, actor_params, c.obs, key_act, deterministic=deterministic)
        if box:
            action = jnp.clip(action, env.action_space.low, env.action_space.high)
        state, obs, reward, terminated, truncated, _ = jax.vmap(env.step)(jax.random.split(key_env, num), c.env_state, action)
        return _Carry(
            t=c.t + 1,
            env_state=state,
            obs=obs,
            alive=c.alive & ~(terminated | truncated),
            returns=c.returns + jnp.where(c.alive, reward, 0.0),
            lengths=c.lengths + c.alive.astype(jnp.int32),
        )

    init = _Carry(
        t=jnp.zeros((), jnp.int32),
        env_state=env_state,
        obs=obs,
        alive=jnp.ones((num,), bool),
        returns=jnp.zeros((num,), jnp.float32),
        lengths=jnp.zeros((num,), jnp.int32),
    )
    end = jax.lax.while_loop(cond, body, init)
    return Episodes(returns=end.returns, lengths=end.lengths)


def make_program(
    agent: Agent, env: Any, *, episodes: int, max_steps: int, precisions: tuple[str, ...] = ("int8", "fp32"), deterministic: bool = True
) -> Callable[[Any, Array], dict[str, Episodes]]:
    """``evaluate(agent_state, key) -> {precision: Episodes [episodes]}``: pure, jit / vmap it.

    Every precision's policy (``agent.actor_params(agent_state, precision)``) plays the same
    ``episodes`` starting states (``vmap(env.reset)`` of one key), so int8 and fp32 are compared
    on equal terms; one program, compiled once.
    """

    def evaluate(agent_state: Any, key: Array) -> dict[str, Episodes]:
        key_reset, key_run = jax.random.split(key)
        start = jax.vmap(env.reset)(jax.random.split(key_reset, episodes))
        out = {}
        for precision in precisions:
            params = agent.actor_params(agent_state, precision)
            out[precision] = run_episodes(env, agent, params, start, key_run, max_steps=max_steps, deterministic=deterministic)
        return out

    return evaluate


def eval_key(seed: int | Array, update: int | Array) -> Array:
    """The PRNG key of the evaluation after ``update``: from the run's seed, never training's key."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_TAG), update)


def keyed(program: Callable[[Any, Array], Any]) -> Callable[[Any, Array, Array], Any]:
    """``program(agent_state, key)`` as a run compiles it: ``(agent_state, seed, update)``, int32
    scalars, and :func:`eval_key` derived inside (outside, its ``fold_in`` compiled on the loop's
    thread at the first evaluation: ~0.4 s beside the evaluation's own compile)."""
    return lambda agent_state, seed, update: program(agent_state, eval_key(seed, update))


class JaxEpisodes:
    """Evaluation on a JAX env: :func:`make_program`, compiled ahead of time (:meth:`start`, or
    on first use)."""

    def __init__(self, config: Any, agent: Agent, precisions: tuple[str, ...]):
        from rlaccel import envs

        env = envs.make(config.env, auto_reset=False, **config.env_kwargs)
        bound = config.eval.max_episode_steps or getattr(env, "max_episode_steps", None) or UNBOUNDED_ENV_STEPS
        self.seed = np.int32(config.seed)
        program = make_program(agent, env, episodes=config.eval.episodes, max_steps=int(bound), precisions=precisions, deterministic=config.eval.deterministic)
        self.program = compile_cache.AheadProgram(compile_cache.jit(keyed(program)), "rlaccel-eval-compile")

    def start(self, agent_state: Any) -> None:
        """Compile the program beside the caller, for ``agent_state``'s shapes."""
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        self.program.start(agent_state, scalar, scalar)

    def __call__(self, agent_state: Any, update: int) -> dict[str, Episodes]:
        return jax.device_get(self.program(agent_state, self.seed, np.int32(update)))


def eval_seeds(seed: int, update: int, episodes: int) -> np.ndarray:
    """Reset seeds ``[episodes]`` of the evaluation after ``update``: ``base, base + 1, ...`` (as
    ``rlaccel.deploy.evaluate.episode_returns`` seeds episodes) with ``base`` drawn from the run's
    seed and the update, apart from the training actors' seeds."""
    base = int(np.random.SeedSequence([seed, update, EVAL_TAG]).generate_state(1)[0]) % 2**30
    return base + np.arange(episodes)


def gym_episodes(envs: list[Any], act: Callable[[np.ndarray], np.ndarray], seeds: np.ndarray, max_steps: int) -> Episodes:
    """One episode on each env, stepped together: ``act(obs [n, obs_dim]) -> actions [n, ...]``
    for the envs still running, until all ended or ``max_steps``.

    Args:
      envs: gymnasium envs (their own ``TimeLimit`` truncates).
      act: the policy (continuous actions already clipped).
      seeds: ``[len(envs)]`` reset seeds.
      max_steps: the step bound.

    Returns:
      :class:`Episodes` of numpy arrays ``[len(envs)]``.
    """
    n = len(envs)
    obs = np.stack([np.asarray(env.reset(seed=int(seed))[0], np.float32) for env, seed in zip(envs, seeds)])
    alive = np.ones(n, bool)
    returns, lengths = np.zeros(n, np.float64), np.zeros(n, np.int32)
    for _ in range(max_steps):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        actions = act(obs[idx])
        for k, i in enumerate(idx):
            o, reward, terminated, truncated, _ = envs[i].step(actions[k])
            obs[i] = o
            returns[i] += float(reward)
            lengths[i] += 1
            alive[i] = not (terminated or truncated)
    return Episodes(returns=returns, lengths=lengths)


class HostEpisodes:
    """``(agent_state, update) -> {precision: Episodes}`` for a ``gym:`` run.

    Args:
      config: the run's config (``env``, ``seed``, ``eval``, the algorithm's section).
      agent: the run's agent (``actor_params``, ``discrete``).
      precisions: ``("int8", "fp32")`` or ``("fp32",)``.

    Attributes:
      program: the parameter program (``agent_state -> {precision: actor params}``).
    """

    def __init__(self, config: Any, agent: Agent, precisions: tuple[str, ...]):
        from rlaccel import envs

        gym_env = envs.make(config.env)
        cfg = config.eval
        self.envs = [gymnasium.make(gym_env.gym_id, **gym_env.kwargs) for _ in range(cfg.episodes)]
        self.max_steps = int(cfg.max_episode_steps or gym_env.max_episode_steps or UNBOUNDED_ENV_STEPS)
        self.deterministic = cfg.deterministic
        self.discrete = agent.discrete
        space = gym_env.action_space
        self._bounds = (space.low, space.high) if isinstance(space, spaces.Box) else None
        self.seed = config.seed
        self.section = config.agent
        self.actor_cls = registry.load(registry.get(config.algo).numpy_actor)
        self.mujoco = gym_env.mujoco  # where eval.background is on by default (rlaccel.evaluate)
        runtime = placement.actor_runtime(config)  # int8 as the actors compute it: the C kernel or the numpy reference's tables
        runtime = "numpy" if runtime == "jax" else runtime  # (episodes here always run a numpy actor)
        self.program = compile_cache.AheadProgram(
            compile_cache.jit(lambda state: {p: quant_tables.for_runtime(agent.actor_params(state, p), runtime) for p in precisions}), "rlaccel-eval-compile"
        )

    def start(self, agent_state: Any) -> None:
        """Compile the parameter program beside the caller, for ``agent_state``'s shapes."""
        self.program.start(agent_state)

    def __call__(self, agent_state: Any, update: int) -> dict[str, Episodes]:
        return self.play(self.params(agent_state), update)

    def params(self, agent_state: Any) -> dict[str, Any]:
        """The actors' parameters of ``agent_state`` per precision, numpy leaves (JAX: the caller's thread)."""
        return quant.payloads(jax.device_get(self.program(agent_state)))

    def play(self, params: dict[str, Any], update: int) -> dict[str, Episodes]:
        """The episodes of :meth:`params`' result for the evaluation after ``update`` (numpy and
        gymnasium only: any thread, one at a time)."""
        seeds = eval_seeds(self.seed, update, len(self.envs))
        out = {}
        for precision, p in params.items():
            actor = self.actor_cls(p, update, self.section)
            rng = np.random.default_rng([self.seed, update, EVAL_TAG])  # sampling noise (eval.deterministic: false)
            out[precision] = gym_episodes(self.envs, self._act_fn(actor, rng), seeds, self.max_steps)
        return out

    def _act_fn(self, actor: Any, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
        """Greedy actions from the numpy actor's ``head`` (argmax, or the Gaussian mean), or its
        sampled ``act`` when ``eval.deterministic`` is false; continuous actions clipped."""

        def act(obs: np.ndarray) -> np.ndarray:
            if self.deterministic:
                head = actor.head(obs)
                action = np.argmax(head, axis=-1) if self.discrete else head
            else:
                action = actor.act(obs, actor.noise(rng, 1, obs.shape[0])[0])[0]
            return np.clip(action, *self._bounds) if self._bounds is not None else action

        return act
