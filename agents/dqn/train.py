"""DQN as the framework's pure functions: ``init``, ``actor_params``, ``act``, ``update``,
``calibrate``.

It shares everything else with PPO: envs, the rollout, the step sources (fused, split or host
actors), int8 acting (``rlaccel.quant``), logging, checkpoints and the CLI. One update:

``learner_update`` (add the rollout to the replay buffer; once more than ``learning_starts``
transitions were collected, ``gradient_steps`` of ``grad_step`` on one-step or n-step
transitions; target update every ``target_update_interval`` transitions; int8 calibration).

Acting is epsilon-greedy on the int8 Q-network by default; it is re-quantised before every
rollout, i.e. after every online update the actors could see.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from rlaccel.agents.dqn import losses
from rlaccel.agents.dqn import networks as nets_lib
from rlaccel.agents.dqn.config import DQNConfig

from rlaccel import distributed, qat, quant, replay
from rlaccel.agent import Agent, AgentSpec
from rlaccel.networks import MLP
from rlaccel.optim import flatten_if_small, tree_norm
from rlaccel.rollout import Transition

Array = jax.Array


@struct.dataclass
class DQNState:
    """The learner's state."""

    params: Any  # online Q-network
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayState
    calib: quant.Calibration  # activation ranges for int8 actors
    step: Array  # [] int32, learner updates done


class ActorParams(NamedTuple):
    """What an actor needs: the Q-network (fp32 flax params, int8 ``QuantParams``, or for numpy
    actors ``rlaccel.reference.Int8Tables``) and epsilon."""

    policy: Any
    epsilon: Array  # [] exploration rate for this rollout


class Replayed(NamedTuple):
    """One replay item (``[N, ...]`` in batches)."""

    obs: Array
    action: Array
    reward: Array
    next_obs: Array
    terminated: Array
    truncated: Array


def q_values(qnet: MLP, params: Any, obs: Array) -> Array:
    """fp32 ``[..., obs_dim] -> [..., A]``."""
    return qnet.apply({"params": params}, obs)


def actor_head(actor_params: ActorParams, obs: Array, *, qnet: MLP) -> Array:
    """The actor's Q-values for ``obs [B, obs_dim]``, in fp32 or int8 arithmetic."""
    if isinstance(actor_params.policy, quant.QuantParams):
        return quant.apply(actor_params.policy, obs)
    return q_values(qnet, actor_params.policy, obs)


def act(actor_params: ActorParams, obs: Array, noise: nets_lib.ExplorationNoise, *, head_fn: Callable) -> tuple[Array, tuple]:
    """Epsilon-greedy actions ``[B]``; DQN's learner needs nothing recorded at acting time."""
    return nets_lib.epsilon_greedy(head_fn(actor_params, obs), actor_params.epsilon, noise), ()


def centered(params: Any) -> Any:
    """The Q-network with its output centred over actions, ``Q(s, a) - mean_a Q(s, a)``, by
    subtracting the mean output column from the last layer (argmax-invariant, exactly in real
    arithmetic). What the actors act with: CartPole's Q-values all sit near ``1 / (1 - gamma)``
    = 100 while the gaps that decide actions are ~0.06, so an int8 head over the raw values
    (resolution ~0.4) picks actions at random; centred, its range is the gaps'."""
    return _centred(params)[0]


def _centred(params: Any) -> tuple[Any, Array]:
    """:func:`centered`'s network and the mean column it subtracted from the head's kernel ``[h, 1]``."""
    last = f"Dense_{len(params) - 1}"
    kernel, bias = params[last]["kernel"], params[last]["bias"]
    mean_column = jnp.mean(kernel, axis=-1, keepdims=True)
    return {**params, last: {"kernel": kernel - mean_column, "bias": bias - jnp.mean(bias, axis=-1, keepdims=True)}}, mean_column


def calibrate_int8(state: DQNState, obs: Array, *, cfg: DQNConfig) -> DQNState:
    """``Agent.calibrate``: int8 activation ranges re-measured on ``obs [N, obs_dim]`` (DQN's
    actors see raw observations) for the online Q-network of ``state``."""
    calib = quant.update(state.calib, quant.dense_layers(centered(state.params)), obs, cfg.policy_kwargs.activation)
    return state.replace(calib=calib)


def timeouts_as_terminations(items: Replayed, cfg: DQNConfig) -> Replayed:
    """``items`` with truncation counted as termination unless ``handle_timeout_termination``
    (SB3's default): PureJaxRL and CleanRL do not bootstrap a truncated episode."""
    if cfg.handle_timeout_termination:
        return items
    return items._replace(terminated=items.terminated | items.truncated)


def sample_batch(buffer: replay.ReplayState, key: Array, cfg: DQNConfig) -> tuple[Replayed, Array | float]:
    """A minibatch ``[batch_size]`` and its bootstrap discounts.

    With ``n_step > 1`` each item is an n-step transition: ``reward`` is the discounted sum
    of up to ``n_step`` rewards of one environment, ``next_obs`` / ``terminated`` are those
    of its last step, and the discount is ``gamma ** m`` (``losses.n_step_returns``).
    """
    if cfg.n_step == 1:
        return timeouts_as_terminations(replay.sample(buffer, key, cfg.batch_size), cfg), cfg.gamma
    runs = timeouts_as_terminations(replay.sample_sequences(buffer, key, cfg.batch_size, cfg.n_step, stride=cfg.n_envs), cfg)  # [N, n, ...]
    ret, discount, terminated, last = losses.n_step_returns(runs.reward, runs.terminated, runs.truncated, cfg.gamma)
    next_obs = jnp.take_along_axis(runs.next_obs, last[:, None, None], axis=1)[:, 0]
    batch = Replayed(obs=runs.obs[:, 0], action=runs.action[:, 0], reward=ret, next_obs=next_obs, terminated=terminated, truncated=runs.truncated[:, 0])
    return batch, discount


def as_int8_actors_see(params: Any, calib: quant.Calibration, profile: str) -> Any:
    """The Q-network with the kernels its int8 actors hold (``rlaccel.qat.fake_quant`` of
    :func:`centered`'s layers, the mean column added back to the head: the same Q-values up
    to the rounding); straight-through gradients to ``params``."""
    centred, mean_column = _centred(params)
    layers = qat.fake_quant(quant.dense_layers(centred), calib, profile)
    last = len(layers) - 1
    return {f"Dense_{i}": {"kernel": w + mean_column if i == last else w, "bias": params[f"Dense_{i}"]["bias"]} for i, (w, _) in enumerate(layers)}


def loss_fn(params: Any, target_params: Any, batch: Replayed, discount: Array | float, calib: quant.Calibration | None = None, *, qnet: MLP, cfg: DQNConfig, profile: str = "tflite") -> tuple[Array, Array]:
    """TD loss of ``Q(s, a)`` against (double-)DQN targets; returns ``(loss, mean Q(s, a))``.

    ``discount`` multiplies the bootstrap value: ``gamma``, or ``[N]`` after n-step returns.
    With ``calib`` (quantisation-aware training, ``cfg.qat``) the online network computes with
    its int8 actors' kernels (:func:`as_int8_actors_see`).
    """
    if calib is not None:
        params = as_int8_actors_see(params, calib, profile)
    q = q_values(qnet, params, batch.obs)
    q_taken = jnp.sum(q * jax.nn.one_hot(batch.action, q.shape[-1], dtype=q.dtype), axis=-1)
    next_q_target = q_values(qnet, target_params, batch.next_obs)
    next_q_online = q_values(qnet, params, batch.next_obs) if cfg.double_q else next_q_target
    target = jax.lax.stop_gradient(losses.q_targets(batch.reward, batch.terminated, next_q_online, next_q_target, discount, cfg.double_q))
    return losses.td_loss(q_taken - target, cfg.loss), jnp.mean(q_taken)


def grad_step(
    carry: tuple[Any, Any],
    key: Array,
    *,
    target_params: Any,
    buffer: replay.ReplayState,
    qnet: MLP,
    cfg: DQNConfig,
    optimizer: optax.GradientTransformation,
    axis_name: str | None = None,
    calib: quant.Calibration | None = None,
    profile: str = "tflite",
) -> tuple[tuple[Any, Any], tuple[Array, Array, Array]]:
    """Sample a minibatch from replay and take one gradient step (a scan body); returns
    ``(loss, mean Q, global norm of the gradients before clipping)``.

    With ``axis_name`` (data parallelism, ``rlaccel.sources.parallel``) every device samples the
    same minibatch from its identical replay, differentiates its share of the rows, and the
    gradients are averaged over the devices: the one-device step up to float rounding. With
    ``calib``, quantisation-aware (:func:`loss_fn`).
    """
    params, opt_state = carry
    batch, discount = sample_batch(buffer, key, cfg)
    if axis_name is not None:
        batch = distributed.local_rows(batch, axis_name)
        discount = distributed.local_rows(discount, axis_name) if jnp.ndim(discount) else discount
    (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target_params, batch, discount, calib, qnet=qnet, cfg=cfg, profile=profile)
    if axis_name is not None:
        loss, q_mean, grads = distributed.pmean((loss, q_mean, grads), axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, q_mean, tree_norm(grads, cfg.policy_kwargs.net_arch))


def learner_update(
    state: DQNState,
    traj: Transition,
    key: Array,
    *,
    qnet: MLP,
    cfg: DQNConfig,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    epsilon_schedule: optax.Schedule,
    calibrate: bool,
    axis_name: str | None = None,
    profile: str = "tflite",
) -> tuple[DQNState, dict[str, Array]]:
    """Store the rollout, learn from replay once more than ``learning_starts`` transitions were
    collected, move the target (``axis_name``: split each minibatch's gradient over the devices,
    :func:`grad_step`)."""
    flat = lambda x: x.reshape(cfg.rollout_size, *x.shape[2:])
    items = Replayed(obs=flat(traj.obs), action=flat(traj.action), reward=flat(traj.reward), next_obs=flat(traj.next_obs), terminated=flat(traj.terminated), truncated=flat(traj.truncated))
    buffer = replay.add(state.buffer, items)
    env_steps = (state.step + 1) * cfg.rollout_size

    def learn(carry: tuple[Any, Any]) -> tuple[tuple[Any, Any], Array, Array, Array]:
        calib = state.calib if cfg.qat and calibrate else None  # quantisation-aware: only with int8 actors
        step = functools.partial(grad_step, target_params=state.target_params, buffer=buffer, qnet=qnet, cfg=cfg, optimizer=optimizer, axis_name=axis_name, calib=calib, profile=profile)
        if cfg.gradient_steps == 1:  # the scan's one step without the loop (a while loop per update on CPU)
            carry, (loss, q_mean, grad_norm) = step(carry, key)
            return carry, loss, q_mean, grad_norm
        carry, (loss, q_mean, grad_norm) = jax.lax.scan(step, carry, jax.random.split(key, cfg.gradient_steps))
        return carry, jnp.mean(loss), jnp.mean(q_mean), jnp.mean(grad_norm)

    def wait(carry: tuple[Any, Any]) -> tuple[tuple[Any, Any], Array, Array, Array]:
        # No gradient step: loss and Q undefined (NaN, not logged), gradient norm 0.
        return carry, jnp.float32(jnp.nan), jnp.float32(jnp.nan), jnp.float32(0.0)

    # SB3 and PureJaxRL: learn once more than ``learning_starts`` transitions were collected.
    (params, opt_state), loss, q_mean, grad_norm = jax.lax.cond(env_steps > cfg.learning_starts, learn, wait, (state.params, state.opt_state))
    # A branch, not a select over every parameter: the target moves once per target_update_every updates.
    target_params = jax.lax.cond(
        (state.step + 1) % cfg.target_update_every == 0,
        lambda t, p: jax.tree.map(lambda t, p: cfg.tau * p + (1.0 - cfg.tau) * t, t, p),
        lambda t, p: t,
        state.target_params,
        params,
    )
    metrics = {
        "train/loss": loss,
        "train/q_mean": q_mean,
        "train/grad_norm": grad_norm,  # this and param_max_abs: for the driver's non-finite guard
        "train/param_max_abs": tree_norm(params, cfg.policy_kwargs.net_arch, ord="inf"),
        "train/learning_rate": lr_schedule(jnp.maximum(env_steps // cfg.rollout_size - cfg.learning_starts // cfg.rollout_size, 0) * cfg.gradient_steps),
        "rollout/exploration_rate": epsilon_schedule(state.step * cfg.rollout_size),
    }
    new_state = DQNState(params=params, target_params=target_params, opt_state=opt_state, buffer=buffer, calib=state.calib, step=state.step + 1)
    if calibrate:
        new_state = calibrate_int8(new_state, items.obs, cfg=cfg)
    return new_state, metrics


def make_optimizer(cfg: DQNConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    """Adam with ``cfg.adam_eps``, after a global-norm clip at ``cfg.max_grad_norm`` (SB3) or
    without one (``max_grad_norm: null``, PureJaxRL's plain ``optax.adam``); on one flat vector
    for networks narrower than 256 (``rlaccel.optim.flatten_if_small``)."""
    adam = optax.adam(lr, eps=cfg.adam_eps)
    tx = adam if cfg.max_grad_norm is None else optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adam)
    return flatten_if_small(tx, cfg.policy_kwargs.net_arch)


def make_agent(cfg: DQNConfig, env: Any, total_timesteps: int, num_updates: int, calibrate: bool = True, profile: str = "tflite") -> Agent:
    """DQN's pure functions for ``env``.

    Args:
      cfg: the ``dqn:`` section.
      env: a JAX env with a discrete action space.
      total_timesteps: for the exploration schedule.
      num_updates: for the learning-rate schedule.
      calibrate: measure activation ranges for int8 actors after each update.
      profile: the int8 arithmetic (``placement.actor.int8_profile``, ``rlaccel.intmath``).

    Raises:
      ValueError: a continuous action space.
    """
    if not getattr(env, "is_discrete", False):
        raise ValueError(f"DQN needs a discrete action space; {env.id} has {env.action_space}")
    obs_dim = int(env.observation_space.shape[0])
    num_actions = int(env.action_space.n)
    qnet = nets_lib.make_q_network(num_actions, cfg.policy_kwargs)
    total_grad_steps = max(1, num_updates * cfg.gradient_steps)
    lr = optax.linear_schedule(cfg.learning_rate, 0.0, total_grad_steps) if cfg.lr_schedule == "linear" else optax.constant_schedule(cfg.learning_rate)
    optimizer = make_optimizer(cfg, lr)
    epsilon = optax.linear_schedule(
        cfg.exploration_initial_eps, cfg.exploration_final_eps, max(1, int(cfg.exploration_fraction * total_timesteps))
    )
    activation = cfg.policy_kwargs.activation

    def init(key: Array) -> DQNState:
        params = qnet.init_params(key, obs_dim)
        example = Replayed(
            obs=jnp.zeros((obs_dim,), jnp.float32),
            action=jnp.zeros((), jnp.int32),
            reward=jnp.zeros((), jnp.float32),
            next_obs=jnp.zeros((obs_dim,), jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
        )
        return DQNState(
            params=params,
            target_params=params,
            opt_state=optimizer.init(params),
            buffer=replay.init(example, cfg.buffer_size),
            calib=quant.init(obs_dim, len(cfg.policy_kwargs.net_arch) + 1),
            step=jnp.zeros((), jnp.int32),
        )

    def actor_params(state: DQNState, precision: str) -> ActorParams:
        policy = centered(state.params)
        if precision == "int8":
            policy = quant.quantize(quant.dense_layers(policy), state.calib, activation, profile)
        return ActorParams(policy=policy, epsilon=epsilon(state.step * cfg.rollout_size))

    head = functools.partial(actor_head, qnet=qnet)
    return Agent(
        init=init,
        actor_params=actor_params,
        act=functools.partial(act, head_fn=head),
        noise=functools.partial(nets_lib.noise, num_actions=num_actions),
        head=head,
        update=functools.partial(
            learner_update, qnet=qnet, cfg=cfg, optimizer=optimizer, lr_schedule=lr, epsilon_schedule=epsilon, calibrate=calibrate, profile=profile
        ),
        discrete=True,
        calibrate=functools.partial(calibrate_int8, cfg=cfg),
    )


def build(config: Any, env: Any) -> AgentSpec:
    """The registry's ``make``: DQN for ``config`` (a whole ``rlaccel.config.Config``) and ``env``."""
    cfg: DQNConfig = config.agent
    n = num_updates(cfg, config.total_timesteps)
    actor = config.placement.actor
    agent = make_agent(cfg, env, config.total_timesteps, n, calibrate=actor.precision == "int8", profile=actor.int8_profile)
    return AgentSpec(agent, cfg.n_envs, cfg.train_freq, n)


def num_updates(cfg: DQNConfig, total_timesteps: int) -> int:
    """Learner updates in a run: ``total_timesteps // (n_envs * train_freq)``."""
    return total_timesteps // cfg.rollout_size
