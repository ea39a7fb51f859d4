"""RL Zoo blocks (``rl-baselines3-zoo/hyperparams/<algo>.yml``) read with Stable-Baselines3's meaning.

A block pasted under an algorithm's section, or picked from a zoo file by
``rlaccel train --zoo ppo.yml --env Pendulum-v1``, is translated here into that section's
keys before the section is type-checked (``rlaccel.config.build``):

* ``policy: MlpPolicy`` marks the section as an SB3 / RL Zoo block: keys the block does not
  set take SB3's defaults (the algorithm's ``SB3_DEFAULTS``, e.g. PPO's ``n_steps: 2048``,
  ``batch_size: 64`` and the zoo's ``n_envs: 1``), not rlaccel's. ``CnnPolicy`` and
  ``MultiInputPolicy`` stop with one line.
* ``n_timesteps`` becomes the run's ``total_timesteps`` (:func:`lift_n_timesteps`). Both in one
  file with different values is an error; ``--set total_timesteps=N`` overrides it, as the
  zoo's own ``-n`` flag does.
* ``policy_kwargs`` and ``normalize`` strings (``"dict(net_arch=[256, 256])"``) are parsed
  without ``eval`` (:mod:`rlaccel.zoo_kwargs`). With ``normalize``, the zoo hands the block's
  ``gamma`` to ``VecNormalize``, here the reward scaling's ``gamma`` is the section's.
* zoo features rlaccel does not have (``frame_stack``, ``env_wrapper``, ``callback``, ...)
  stop with one line naming the key (:data:`UNSUPPORTED`).

The algorithm's own SB3 conversions (``lin_<x>`` schedules, DQN's ``train_freq: [n, "step"]``
and ``gradient_steps: -1``) live in its config class. No JAX here (env ids are resolved by
:func:`resolve_env`, which imports the env registry when asked).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any

from rlaccel import registry
from rlaccel.schema import ConfigError, check
from rlaccel.zoo_kwargs import parse_call_string

__all__ = ["EVAL_EPISODES", "EVAL_FREQ", "UNSUPPORTED", "block_from_file", "lift_n_timesteps", "prepare", "resolve_env", "translate"]

EVAL_FREQ = 25_000
"""``rl_zoo3/train.py``'s ``--eval-freq`` default (env steps over all envs): how often a zoo
run evaluates, what ``rlaccel train --zoo`` and ``rlaccel bench zoo`` do too."""
EVAL_EPISODES = 5
"""``rl_zoo3/train.py``'s ``--eval-episodes`` default."""

UNSUPPORTED: dict[str, str] = {
    "env_wrapper": "gymnasium env wrappers are not supported (rlaccel steps the env as registered)",
    "vec_env_wrapper": "vector-env wrappers are not supported",
    "frame_stack": "frame stacking is not supported",
    "callback": "SB3 callbacks are not supported",
    "monitor_kwargs": "Monitor options are not supported",
    "env_kwargs": "env constructor arguments are not supported in a zoo block",
    "replay_buffer_class": "custom replay buffers are not supported",
    "replay_buffer_kwargs": "custom replay buffers are not supported",
    "rollout_buffer_class": "custom rollout buffers are not supported",
    "rollout_buffer_kwargs": "custom rollout buffers are not supported",
    "noise_type": "action noise (off-policy continuous control) is not supported",
    "noise_std": "action noise (off-policy continuous control) is not supported",
    "target_kl": "early stopping of the epochs on the KL divergence is not supported",
    "use_sde_at_warmup": "gSDE during an off-policy warm-up is not supported",
}
"""RL Zoo / SB3 keys whose feature rlaccel does not have -> why (the one-line error)."""

_POLICIES = {
    "MlpPolicy": None,
    "CnnPolicy": "image observations (CnnPolicy) are not supported; rlaccel's networks are MLPs (MlpPolicy)",
    "MultiInputPolicy": "dict observations (MultiInputPolicy) are not supported; rlaccel's networks are MLPs (MlpPolicy)",
}


def _is_whole(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def lift_n_timesteps(data: dict[str, Any], algo: Any) -> dict[str, Any]:
    """Move the section's ``n_timesteps`` (the zoo's run length) to ``total_timesteps``.

    Args:
      data: plain config data (not changed; a copy is returned when something moves).
      algo: the run's algorithm name (its section is ``data[algo]``).

    Raises:
      ConfigError: ``n_timesteps`` is not a whole number >= 1, or ``total_timesteps`` is also
        given with another value (keep one; ``--set total_timesteps=N`` after loading overrides).
    """
    section = data.get(algo) if isinstance(algo, str) else None
    if not isinstance(section, dict) or "n_timesteps" not in section:
        return data
    n = section["n_timesteps"]
    key = f"{algo}.n_timesteps"
    check(_is_whole(n) and n >= 1, key, f"expected a whole number of env steps >= 1, got {n!r}")
    total = data.get("total_timesteps")
    if total is not None and total != n:
        raise ConfigError(f"{key}: {int(n)} disagrees with total_timesteps: {total}; keep one (--set total_timesteps=N overrides the zoo's n_timesteps)")
    out = dict(data)
    out[algo] = {k: v for k, v in section.items() if k != "n_timesteps"}
    out["total_timesteps"] = int(n)
    return out


def _kwargs_string(value: Any, key: str) -> Any:
    """A zoo ``"dict(...)"`` string -> a mapping; other values unchanged."""
    if not isinstance(value, str):
        return value
    parsed = parse_call_string(value, key)
    check(isinstance(parsed, dict), key, f"expected dict(...) or {{...}}, got {type(parsed).__name__} ({value.strip()!r})")
    return parsed


def _merge_defaults(section: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Fill keys ``section`` lacks from ``defaults`` (mappings one level down too)."""
    for k, v in defaults.items():
        if k not in section:
            section[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(section[k], dict):
            section[k] = {**copy.deepcopy(v), **section[k]}


def translate(section: Any, config_cls: type, key: str) -> Any:
    """An algorithm section, possibly an RL Zoo block, in rlaccel's keys (plain data).

    Args:
      section: the section's plain data (not changed).
      config_cls: the algorithm's config class (its ``SB3_DEFAULTS`` / ``SB3_RENAMES``).
      key: the section's name, for error messages (``ppo``).

    Returns:
      the section without zoo-only keys, strings parsed, and, for a block with ``policy:``,
      SB3's defaults where it sets nothing.

    Raises:
      ConfigError: a zoo feature rlaccel lacks, a policy other than ``MlpPolicy``, a malformed
        or disallowed kwargs string (one line naming the key).
    """
    if not isinstance(section, dict):
        return section
    out = dict(section)
    for name in out:
        check(name not in UNSUPPORTED, f"{key}.{name}", UNSUPPORTED.get(name, ""))
    zoo_block = "policy" in out
    if zoo_block:
        policy = out.pop("policy")
        why = _POLICIES.get(policy, f"expected MlpPolicy, got {policy!r}") if isinstance(policy, str) else f"expected MlpPolicy, got {policy!r}"
        check(why is None, f"{key}.policy", why or "")
    if "optimize_memory_usage" in out:
        check(out.pop("optimize_memory_usage") is False, f"{key}.optimize_memory_usage", "SB3's memory-optimised replay buffer is not supported (false is the only value)")
    if "policy_kwargs" in out:
        out["policy_kwargs"] = _kwargs_string(out["policy_kwargs"], f"{key}.policy_kwargs")
    if "normalize" in out:
        norm = _kwargs_string(out["normalize"], f"{key}.normalize")
        if zoo_block and isinstance(norm, dict) and "gamma" in out:
            norm = {k: v for k, v in norm.items() if k != "gamma"}  # the zoo overwrites it with the block's gamma
        out["normalize"] = norm
    if not zoo_block:
        return out
    defaults = getattr(config_cls, "SB3_DEFAULTS", None)
    check(defaults is not None, f"{key}.policy", f"the {key} algorithm has no SB3 defaults, so an RL Zoo block cannot be read for it")
    for sb3, ours in getattr(config_cls, "SB3_RENAMES", {}).items():
        if sb3 in out:
            check(ours not in out, f"{key}.{sb3}", f"SB3's name for {key}.{ours}; give one of them")
            out[ours] = out.pop(sb3)
    _merge_defaults(out, defaults)
    return out


def prepare(data: dict[str, Any], algo: str, config_cls: type) -> dict[str, Any]:
    """Whole config data with its ``algo`` section translated (:func:`translate`), the section's
    ``n_timesteps`` lifted (:func:`lift_n_timesteps`), and, for a zoo block on a ``gym:`` env
    (host actors), SB3's way of collecting unless ``actors`` says otherwise: no policy lag
    (``actors.max_policy_lag: 0``: SB3 trains on a rollout of the policy it updates; free-running
    actors trail by ~2 updates, and PPO's clip then drops much of each update: HalfCheetah's
    block evaluated 310 against 1,056 after 50k steps), and for an odd ``n_envs`` one actor
    thread (the default two each step an equal share; the MuJoCo blocks have one env).

    Raises:
      ConfigError: as :func:`translate` and :func:`lift_n_timesteps`.
    """
    data = lift_n_timesteps(data, algo)
    section = data.get(algo)
    if not isinstance(section, dict):
        return data
    out = dict(data)
    out[algo] = translate(section, config_cls, algo)
    n_envs = out[algo].get("n_envs")
    actors = out.get("actors")
    if "policy" in section and str(out.get("env", "")).startswith("gym:") and (actors is None or isinstance(actors, dict)):
        actors = {"max_policy_lag": 0, **(actors or {})}
        if _is_whole(n_envs) and n_envs % 2:
            actors.setdefault("num_actors", 1)
        out["actors"] = actors
    return out


def _algo_of(block: dict[str, Any], stem: str) -> str:
    """The algorithm a zoo file is for: its name (``ppo.yml``), else the one algorithm whose
    section takes every key of the block."""
    names = [n for n in registry.names() if getattr(registry.get(n).config, "SB3_DEFAULTS", None) is not None]
    if stem in names:
        return stem
    zoo_keys = {"policy", "n_timesteps", "optimize_memory_usage"}
    fits = []
    for name in names:
        cls = registry.get(name).config
        known = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "SB3_RENAMES", {})) | zoo_keys
        if set(block) <= known:
            fits.append(name)
    if len(fits) != 1:
        raise ConfigError(f"{stem}: cannot tell the algorithm from the file name or the block ({', '.join(fits) or 'none'} fit); name the file <algo>.yml or --set algo=NAME")
    return fits[0]


def block_from_file(data: dict[str, Any], source: str, env_id: str, algo: str | None = None) -> tuple[dict[str, Any], str | None]:
    """Config data for ``env_id``'s block of a zoo hyperparameter file.

    Args:
      data: the file's plain data (``{env_id: block, ...}``).
      source: the file's name (``ppo.yml``); its stem names the algorithm unless ``algo`` does.
      env_id: the zoo's env id, e.g. ``Pendulum-v1`` or ``HalfCheetah-v4``.
      algo: the algorithm, if the caller knows it (``--set algo=NAME``).

    Returns:
      ``({"env": ..., "algo": ..., <algo>: block, "total_timesteps": ..., "eval": ...}, note)``,
      ``note`` the one line saying how the env id was mapped (``None`` if unchanged). ``eval``
      is the zoo's ``train.py`` default: :data:`EVAL_EPISODES` deterministic episodes every
      :data:`EVAL_FREQ` env steps (its ``EvalCallback``; ``--set eval.freq=0`` turns it off).

    Raises:
      ConfigError: no block for ``env_id``, a block that is not a mapping, an algorithm that
        cannot be told, or an env id rlaccel cannot run.
    """
    blocks = [k for k, v in data.items() if isinstance(v, dict)]
    if env_id not in data:
        close = difflib.get_close_matches(env_id, blocks, n=3, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"{source}: no block for env '{env_id}'{hint} ({len(blocks)} blocks in the file)")
    block = data[env_id]
    check(isinstance(block, dict), f"{source}: {env_id}", f"expected a mapping of hyperparameters, got {type(block).__name__}")
    stem = source.rsplit("/", 1)[-1].split(".", 1)[0]
    algo = algo or _algo_of(block, stem)
    env, note = resolve_env(env_id)
    data = {"env": env, "algo": algo, algo: dict(block), "eval": {"freq": EVAL_FREQ, "episodes": EVAL_EPISODES}}
    return lift_n_timesteps(data, algo), note


def resolve_env(zoo_id: str) -> tuple[str, str | None]:
    """The rlaccel env id that runs the zoo's ``zoo_id``, and a one-line note if it differs.

    The JAX-native env when rlaccel has one (``Pendulum-v1``), else ``gym:<id>``; an old
    gymnasium MuJoCo version (``HalfCheetah-v4``, ``-v3``) maps to the newest registered one
    (``gym:HalfCheetah-v5``), since older versions need retired bindings or are deprecated.

    Raises:
      ConfigError: neither rlaccel nor gymnasium knows the id.
    """
    from rlaccel import envs  # JAX: only when a zoo file is resolved

    if zoo_id in envs.REGISTRY:
        return zoo_id, None
    import gymnasium
    from gymnasium.envs.registration import find_highest_version, parse_env_id

    from rlaccel.envs.gym import is_mujoco

    spec = gymnasium.registry.get(zoo_id)
    if spec is None:
        close = difflib.get_close_matches(zoo_id, [*envs.registered_ids(), *gymnasium.registry], n=3, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"env: '{zoo_id}' is neither a JAX-native env of rlaccel nor registered in gymnasium{hint}")
    namespace, name, version = parse_env_id(zoo_id)
    newest = find_highest_version(namespace, name)
    if version is not None and newest is not None and newest > version:
        newest_id = f"{name}-v{newest}" if namespace is None else f"{namespace}/{name}-v{newest}"
        if is_mujoco(newest_id):  # (v2 / v3 entry points only raise: mujoco-py is retired)
            return f"gym:{newest_id}", f"env: the zoo's {zoo_id} runs as gym:{newest_id} (gymnasium's maintained MuJoCo version)"
    return f"gym:{zoo_id}", None
