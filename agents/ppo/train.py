"""PPO as the framework's pure functions: ``init``, ``actor_params``, ``act``, ``update``,
``calibrate`` (the actors' functions, ``ActorParams`` and ``act``, are ``acting.py``'s).

The learner step is built from named pieces, each a plain function with its static
arguments bound by ``functools.partial``:

``learner_update`` (one rollout: values, GAE) -> ``shuffle_minibatches`` (every epoch's
minibatches) -> a scan of ``minibatch_update`` (grad of ``ppo_loss``, clip, Adam). With int8 actors it
ends with ``calibrate_int8`` (``Agent.calibrate``), as export does for runs without int8 actors.

``build(config, env)`` is the registry's ``make``: where the functions run (one compiled
program, two devices, host threads) is a step source's business (``rlaccel.sources``); a whole
run as one pure function is ``rlaccel.sources.fused.make_train(config)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from gymnasium import spaces
from jax.sharding import NamedSharding, PartitionSpec
from rlaccel.agents.ppo import losses
from rlaccel.agents.ppo import networks as nets_lib
from rlaccel.agents.ppo import sde as sde_lib
from rlaccel.agents.ppo import towers as towers_lib
from rlaccel.agents.ppo.acting import ActorParams, act, act_sde, actor_features, actor_head, actor_normalizer, policy_head
from rlaccel.agents.ppo.config import PPOConfig

from rlaccel import distributed
from rlaccel import normalize as obs_norm_lib
from rlaccel import placement, quant
from rlaccel import returns as returns_lib
from rlaccel import shuffle
from rlaccel.agent import Agent, AgentSpec
from rlaccel.optim import flatten_if_small, tree_norm
from rlaccel.rollout import Transition
from rlaccel.schema import ConfigError

Array = jax.Array


@struct.dataclass
class PPOState:
    """The learner's state."""

    params: Any  # {"policy", "value"[, "log_std": [A], or gSDE's [latent_dim, A or 1]]}
    opt_state: Any
    obs_stats: obs_norm_lib.RunningStats
    return_stats: obs_norm_lib.RunningStats  # of the discounted return, [1], for reward scaling
    running_return: Array  # [n_envs] discounted return of each env's current episode
    calib: quant.Calibration  # activation ranges for the int8 actors
    step: Array  # [] int32, learner updates done


class Minibatch(NamedTuple):
    """Flattened rollout data, ``[N, ...]``."""

    obs: Array  # normalised
    action: Array
    behaviour_log_prob: Array
    value: Array
    advantage: Array
    ret: Array


def make_optimizer(cfg: PPOConfig, num_updates: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clip then Adam (:func:`make_adam`), with an optax learning-rate schedule; on
    one flat vector for networks narrower than 256 (``rlaccel.optim.flatten_if_small``)."""
    adam, lr = make_adam(cfg, num_updates)
    return flatten_if_small(optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adam), widths(cfg)), lr


def make_adam(cfg: PPOConfig, num_updates: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser's second half, Adam with its learning-rate schedule (``towers.py`` clips on its own)."""
    if cfg.lr_schedule == "linear":
        lr = optax.linear_schedule(cfg.learning_rate, 0.0, transition_steps=num_updates * cfg.n_epochs * cfg.num_minibatches)
    else:
        lr = optax.constant_schedule(cfg.learning_rate)
    return optax.adam(lr, eps=cfg.adam_eps), lr


def widths(cfg: PPOConfig) -> tuple[int, ...]:
    """The hidden layers of both towers (``rlaccel.optim``'s rule for one flat vector)."""
    return (*cfg.policy_kwargs.pi_arch, *cfg.policy_kwargs.vf_arch)


def value_fn(nets: nets_lib.PPONetworks, value_params: Any, obs: Array) -> Array:
    """``[..., obs_dim] -> [...]``."""
    return nets.value.apply({"params": value_params}, obs)[..., 0]


def normalize_obs(cfg: PPOConfig, stats: obs_norm_lib.RunningStats, obs: Array) -> Array:
    """Observations as the networks see them (identity unless ``normalize`` asks for it)."""
    norm = cfg.normalization
    return obs_norm_lib.normalize(stats, obs, clip=norm.clip_obs) if norm.norm_obs else obs


def action_distribution(nets: nets_lib.PPONetworks, params: Any, obs: Array, action: Array, activation: str) -> tuple[Array, Array]:
    """The learner's ``(log_prob [N], entropy [N])`` of ``action`` under ``params``'s policy at ``obs [N, obs_dim]``."""
    log_std = params.get("log_std")
    if nets.sde:
        latent, mean = nets_lib.policy_features(params["policy"], obs, activation)
        std = sde_lib.scale(latent, log_std, nets.action_dim)
        return sde_lib.log_prob(mean, std, action), sde_lib.entropy(std)
    head = policy_head(nets, params["policy"], obs)
    return nets_lib.log_prob(head, log_std, action), nets_lib.entropy(head, log_std)


def calibrate_int8(state: PPOState, obs: Array, *, cfg: PPOConfig) -> PPOState:
    """``Agent.calibrate``: int8 activation ranges re-measured on raw ``obs [N, obs_dim]``,
    normalised as the actors of ``state`` normalise them (its statistics, the actors' formula)."""
    seen = obs_norm_lib.apply(actor_normalizer(cfg, state.obs_stats), obs, cfg.normalization.clip_obs)
    calib = quant.update(state.calib, quant.dense_layers(state.params["policy"]), seen, cfg.policy_kwargs.activation)
    return state.replace(calib=calib)


def loss_fn(params: Any, mb: Minibatch, clip_range: Array, *, nets: nets_lib.PPONetworks, cfg: PPOConfig) -> tuple[Array, losses.LossInfo]:
    """PPO loss of one minibatch under ``params``, with this update's ratio clip."""
    new_log_prob, entropy = action_distribution(nets, params, mb.obs, mb.action, cfg.policy_kwargs.activation)
    new_values = value_fn(nets, params["value"], mb.obs)
    return losses.ppo_loss(
        new_log_prob,
        mb.behaviour_log_prob,
        entropy,
        new_values,
        mb.value,
        mb.advantage,
        mb.ret,
        clip_range=clip_range,
        clip_range_vf=cfg.clip_range_vf,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        normalize_advantage=cfg.normalize_advantage,
        value_loss_kind=cfg.value_loss,
    )


STEP_METRICS = (*losses.LossInfo._fields, "grad_norm")
"""What :func:`minibatch_update` returns for each step, in order."""


def minibatch_update(
    carry: tuple[Any, Any],
    mb: Minibatch,
    *,
    nets: nets_lib.PPONetworks,
    cfg: PPOConfig,
    optimizer: optax.GradientTransformation,
    clip_range: Any = None,
    axis_name: str | None = None,
) -> tuple[tuple[Any, Any], Array]:
    """One gradient step (a scan body over minibatches); returns ``[len(STEP_METRICS)]``: the
    ``LossInfo`` and the gradients' global norm before clipping, stacked (one row written per
    step, not six).

    ``clip_range`` is this update's ratio clip (``cfg.clip_range_at``; ``None``: ``cfg.clip_range``).

    With ``axis_name`` (data parallelism, ``rlaccel.sources.parallel``) every device holds the
    whole minibatch, takes the gradient of its share of the rows and the gradients are averaged
    over the devices: the minibatch keeps SB3's meaning. Advantages are normalised over the
    whole minibatch first, so the result is the one-device gradient up to float rounding.
    """
    params, opt_state = carry
    if axis_name is not None:
        if cfg.normalize_advantage:
            mb = mb._replace(advantage=(mb.advantage - mb.advantage.mean()) / (mb.advantage.std() + 1e-8))
            cfg = dataclasses.replace(cfg, normalize_advantage=False)
        mb = distributed.local_rows(mb, axis_name)
    clip = cfg.clip_range if clip_range is None else clip_range
    grads, info = jax.grad(loss_fn, has_aux=True)(params, mb, clip, nets=nets, cfg=cfg)
    if axis_name is not None:
        grads, info = distributed.pmean((grads, info), axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), jnp.stack([*info, tree_norm(grads, widths(cfg))])


def shuffle_minibatches(data: Minibatch, key: Array, cfg: PPOConfig) -> Minibatch:
    """Every epoch's shuffled minibatches at once: ``[N, ...] -> [n_epochs * n_minibatches, batch_size, ...]``.

    One batched permutation and one gather per field for the whole update, instead of one
    per epoch: on a CPU the per-op overhead of small gathers is what costs. The permutations
    are ``rlaccel.shuffle``'s one-operand sorts (an argsort of random keys cost 12 % of an
    8-seed update there).
    """
    perms = shuffle.permutations(key, (cfg.n_epochs, cfg.rollout_size))
    return jax.tree.map(lambda x: x[perms].reshape(cfg.n_epochs * cfg.num_minibatches, cfg.batch_size, *x.shape[1:]), data)


def explained_variance(pred: Array, target: Array) -> Array:
    """``1 - Var[target - pred] / Var[target]`` (SB3's ``train/explained_variance``)."""
    var = jnp.var(target)
    return jnp.where(var == 0, jnp.nan, 1.0 - jnp.var(target - pred) / var)


def learner_update(
    state: PPOState,
    traj: Transition,
    key: Array,
    *,
    nets: nets_lib.PPONetworks,
    cfg: PPOConfig,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    calibrate: bool,
    num_updates: int = 1,
    axis_name: str | None = None,
    towers: Any = None,
) -> tuple[PPOState, dict[str, Array]]:
    """GAE on the rollout, ``n_epochs`` of minibatch steps, then normalisers and calibration.

    Values are computed here, in two batched forwards over ``[T, B]``, instead of once per
    acting step: the actor only needs the policy, and a few large ops beat many small ones.
    The batch is normalised with the statistics the actor used; they are updated afterwards.
    Reward scaling (``normalize``) divides rewards by the running std of the discounted
    return, as SB3's ``VecNormalize``; it only concerns the learner.
    With int8 actors (``calibrate``), activation ranges are re-measured on this rollout's
    observations as the next actors will see them (new statistics, new parameters).
    With ``axis_name`` (the device axis of data parallelism), ``traj`` is the whole rollout on
    every device and only the minibatch gradients are split (:func:`minibatch_update`).
    The ratio clip follows ``clip_range_schedule`` over the run's ``num_updates`` (SB3's
    ``progress_remaining`` after this update's rollout; ``cfg.clip_range_at``).
    With ``towers`` (``towers.make_scan``) the minibatch steps train the policy and the value
    tower on two devices; the rest of the update runs replicated on both.
    """
    norm = cfg.normalization
    obs = normalize_obs(cfg, state.obs_stats, traj.obs)
    next_obs = normalize_obs(cfg, state.obs_stats, traj.next_obs)
    rewards, return_stats, running_return = traj.reward, state.return_stats, state.running_return
    if norm.norm_reward:
        done = jnp.logical_or(traj.terminated, traj.truncated)
        disc_returns, running_return = returns_lib.discounted_returns(running_return, rewards, done, cfg.gamma)
        return_stats = obs_norm_lib.update(return_stats, disc_returns[..., None])
        rewards = jnp.clip(rewards / jnp.sqrt(return_stats.var[0] + 1e-8), -norm.clip_reward, norm.clip_reward)
    values = value_fn(nets, state.params["value"], obs)
    next_values = value_fn(nets, state.params["value"], next_obs)
    advantages, returns = losses.compute_gae(rewards, values, next_values, traj.terminated, traj.truncated, cfg.gamma, cfg.gae_lambda)
    flat = lambda x: x.reshape(cfg.rollout_size, *x.shape[2:])
    data = Minibatch(
        obs=flat(obs),
        action=flat(traj.action),
        behaviour_log_prob=flat(traj.extras.log_prob),
        value=flat(values),
        advantage=flat(advantages),
        ret=flat(returns),
    )
    clip_range = cfg.clip_range_at(state.step, num_updates)
    minibatch_step = functools.partial(minibatch_update, nets=nets, cfg=cfg, optimizer=optimizer, clip_range=clip_range, axis_name=axis_name)
    minibatches = shuffle_minibatches(data, key, cfg)
    if towers is not None:
        (params, opt_state), rows = towers(state.params, state.opt_state, minibatches, clip_range)
    else:
        (params, opt_state), rows = jax.lax.scan(minibatch_step, (state.params, state.opt_state), minibatches)

    obs_stats = obs_norm_lib.update(state.obs_stats, traj.obs) if norm.norm_obs else state.obs_stats
    # train/grad_norm: for the driver's non-finite guard (rlaccel.guards.GUARDED_METRICS).
    metrics = {f"train/{name}": value for name, value in zip(STEP_METRICS, jnp.mean(rows, axis=0))}
    metrics["train/loss"] = metrics["train/policy_gradient_loss"] + cfg.vf_coef * metrics["train/value_loss"] + cfg.ent_coef * metrics["train/entropy_loss"]
    metrics["train/explained_variance"] = explained_variance(values, returns)
    metrics["train/param_max_abs"] = tree_norm(params, widths(cfg), ord="inf")
    metrics["train/learning_rate"] = lr_schedule(state.step * cfg.n_epochs * cfg.num_minibatches)
    metrics["train/clip_range"] = jnp.asarray(clip_range, jnp.float32)
    if "log_std" in params:
        metrics["train/std"] = jnp.mean(jnp.exp(params["log_std"]))
    new_state = PPOState(
        params=params,
        opt_state=opt_state,
        obs_stats=obs_stats,
        return_stats=return_stats,
        running_return=running_return,
        calib=state.calib,
        step=state.step + 1,
    )
    if calibrate:
        new_state = calibrate_int8(new_state, flat(traj.obs), cfg=cfg)
    return new_state, metrics


def make_agent(cfg: PPOConfig, env: Any, num_updates: int, calibrate: bool = True, profile: str = "tflite", tower_devices: tuple[Any, ...] = ()) -> Agent:
    """PPO's pure functions for ``env`` (its spaces decide discrete vs Gaussian).

    Args:
      cfg: the ``ppo:`` section.
      env: a JAX env (for its spaces).
      num_updates: total learner updates, for the learning-rate and clip-range schedules.
      calibrate: measure activation ranges for int8 actors after each update (skip it when
        every actor is fp32).
      profile: the int8 arithmetic (``placement.actor.int8_profile``, ``rlaccel.intmath``).
      tower_devices: two devices to train the policy and the value tower on (``towers.py``;
        ``placement.learner.towers``), or ``()``.
    """
    obs_dim = int(env.observation_space.shape[0])
    nets = nets_lib.make_networks(env.observation_space, env.action_space, cfg.policy_kwargs, use_sde=cfg.use_sde)
    optimizer, lr_schedule = make_optimizer(cfg, num_updates)
    activation = cfg.policy_kwargs.activation
    split = towers_lib.make_scan(nets, cfg, make_adam(cfg, num_updates)[0], towers_lib.mesh(tower_devices)) if tower_devices else None

    def init(key: Array) -> PPOState:
        params = nets_lib.init_params(nets, key, obs_dim, cfg.policy_kwargs.log_std_init)
        return PPOState(
            params=params,
            opt_state=optimizer.init(params),
            obs_stats=obs_norm_lib.init((obs_dim,)),
            return_stats=obs_norm_lib.init((1,)),
            running_return=jnp.zeros((cfg.n_envs,), jnp.float32),
            calib=quant.init(obs_dim, len(cfg.policy_kwargs.pi_arch) + 1),
            step=jnp.zeros((), jnp.int32),
        )

    def actor_params(state: PPOState, precision: str) -> ActorParams:
        policy = state.params["policy"]
        if precision == "int8":
            policy = quant.quantize(quant.dense_layers(policy), state.calib, activation, profile)
        return ActorParams(policy=policy, log_std=state.params.get("log_std"), obs_norm=actor_normalizer(cfg, state.obs_stats))

    head = functools.partial(actor_head, nets=nets, cfg=cfg)
    if nets.sde:
        dims = dict(latent_dim=nets.latent_dim, action_dim=nets.action_dim)
        acting = dict(
            act=functools.partial(act_sde, features_fn=functools.partial(actor_features, cfg=cfg)),
            noise=functools.partial(sde_lib.step_noise, **dims),
            rollout_noise=functools.partial(sde_lib.rollout_noise, sample_freq=cfg.sde_sample_freq, **dims),
        )
    else:
        acting = dict(act=functools.partial(act, head_fn=head), noise=functools.partial(nets_lib.noise, action_dim=nets.action_dim, discrete=nets.discrete))
    return Agent(
        init=init,
        actor_params=actor_params,
        **acting,
        head=head,
        update=functools.partial(
            learner_update, nets=nets, cfg=cfg, optimizer=optimizer, lr_schedule=lr_schedule, calibrate=calibrate, num_updates=num_updates, towers=split
        ),
        discrete=nets.discrete,
        calibrate=functools.partial(calibrate_int8, cfg=cfg),
    )


def build(config: Any, env: Any) -> AgentSpec:
    """The registry's ``make``: PPO for ``config`` (a whole ``rlaccel.config.Config``) and ``env``."""
    cfg: PPOConfig = config.agent
    if cfg.use_sde and not isinstance(env.action_space, spaces.Box):
        raise ConfigError(f"ppo.use_sde: gSDE needs continuous (Box) actions; {config.env} has {env.action_space}")
    n = num_updates(cfg, config.total_timesteps)
    actor = config.placement.actor
    devices = placement.tower_devices(config)
    agent = make_agent(cfg, env, n, calibrate=actor.precision == "int8", profile=actor.int8_profile, tower_devices=devices)
    where = NamedSharding(towers_lib.mesh(devices), PartitionSpec()) if devices else None
    return AgentSpec(agent, cfg.n_envs, cfg.n_steps, n, learner_sharding=where)


def num_updates(cfg: PPOConfig, total_timesteps: int) -> int:
    """Learner updates in a run: ``total_timesteps // (n_envs * n_steps)``."""
    return total_timesteps // cfg.rollout_size
