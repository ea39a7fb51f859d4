"""The sections of a run's config besides the algorithm's: placement, actors, brax, logging, eval.

Frozen dataclasses read by ``rlaccel.config`` (which re-exports them); every check is a
one-line :class:`rlaccel.schema.ConfigError` naming the key. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional, Union

from rlaccel.schema import check

_check = check


@dataclasses.dataclass(frozen=True)
class LearnerPlacement:
    """Where the learner trains."""

    device: str = "auto"
    """``auto`` (first GPU, else CPU), ``cpu``, ``gpu`` or ``<platform>:<index>``."""
    devices: Union[int, Literal["all"]] = 1
    """Data parallelism: ``1`` (one device), ``N`` or ``all`` devices of ``device``'s platform in
    each process. Each device steps ``n_envs / devices`` of the envs with its own actors and
    takes the gradient of its share of every minibatch; gradients are averaged, parameters
    replicated (``rlaccel.sources.parallel``). A run of several processes
    (``rlaccel.distributed``) spans every process's devices."""
    dtype: Literal["float32"] = "float32"
    """Learner arithmetic; fp32 is the only supported choice."""
    towers: Literal["auto", "split", "together"] = "auto"
    """PPO with host actors (``gym:`` envs) on a CPU learner: ``split`` trains the policy tower
    on one CPU device and the value tower on a second (two cores at once, one collective per
    minibatch step for the global-norm clip; ``agents/ppo/towers.py``), ``together`` on one.
    ``auto`` splits where it was measured to pay: both towers the same shape, 256 wide or
    more (the RL Zoo's MuJoCo blocks), no gSDE, two cores; the process then starts JAX with
    two CPU devices. ``split`` where that cannot apply is an error."""

    def __post_init__(self) -> None:
        _check(self.devices == "all" or self.devices >= 1, "placement.learner.devices", f"must be >= 1 or all, got {self.devices!r}")


@dataclasses.dataclass(frozen=True)
class ActorPlacement:
    """Where and in which precision the actors act."""

    device: str = "learner"
    """``learner`` (same device, fused program), ``auto``, ``cpu``, ``gpu`` or ``<platform>:<index>``."""
    precision: Literal["int8", "fp32"] = "int8"
    """``int8``: the NPU-style integer path (see ``rlaccel.quant``); ``fp32``: the learner's params."""
    int8_profile: Literal["tflite", "pow2"] = "tflite"
    """The int8 arithmetic (``rlaccel.intmath``): ``tflite``, TFLite Micro's int8 kernels
    (per-channel weights, fixed-point multipliers; what TFLite Micro, Ethos-U and the C export
    run), or ``pow2``, power-of-two scales and shift-only requantisation (fixed-point NPUs such
    as Vitis AI's DPU)."""


@dataclasses.dataclass(frozen=True)
class PlacementConfig:
    """Placement of learner and actors (see ``rlaccel.placement``)."""

    learner: LearnerPlacement = LearnerPlacement()
    actor: ActorPlacement = ActorPlacement()
    pipeline: Union[Literal["auto"], bool] = "auto"
    """Actors on another device than the learner (JAX and brax envs): ``auto`` / ``true`` run
    rollout k+1 on the actor device while the learner runs update k, with the parameters of
    update k-1 (one update of policy lag, logged as ``actor/policy_lag``); ``false`` takes
    turns (no lag). ``true`` on a placement with one device is an error; ``auto`` is then off."""
    cpu_threads: Union[Literal["auto"], int, None] = "auto"
    """Threads of XLA's CPU thread pool, where every CPU program's kernels run (at least one per
    CPU device). ``null``: XLA's default, one per core. ``1`` suits small networks and classic
    control, whose updates are chains of microsecond kernels (``rlaccel.cpu_threads``).
    ``auto``: ``1`` for rlaccel's JAX-native classic-control envs and for ``gym:`` envs (the
    learner's SB3-sized minibatches; host actor threads or Ray processes need the other
    cores), XLA's default for ``brax:`` envs (thousands of envs, big networks). Set when
    rlaccel starts JAX; a process that used JAX before keeps its pool."""

    def __post_init__(self) -> None:
        ok = self.cpu_threads in (None, "auto") or (isinstance(self.cpu_threads, int) and self.cpu_threads >= 1)
        _check(ok, "placement.cpu_threads", f"must be >= 1, auto or null, got {self.cpu_threads!r}")


@dataclasses.dataclass(frozen=True)
class ActorsConfig:
    """Host actor threads, the execution mode of ``gym:`` envs (see ``rlaccel.sources.host``)."""

    num_actors: int = 2
    """Actor threads; each steps a gymnasium vector env of ``n_envs / num_actors`` copies."""
    queue_size: int = 1
    """Trajectory batches each actor's queue holds; a full queue blocks the actor (bounds the policy lag)."""
    policy: Literal["auto", "numpy", "c", "jax"] = "auto"
    """Acting runtime: ``numpy`` on the actor thread (no device round trip); ``c``, the same
    with an int8 policy computed by the C export's integer kernels, compiled once on this host
    (needs a C compiler; ``rlaccel.deploy.c_kernel``, bit for bit the numpy reference); ``jax``:
    the agent's compiled ``act`` on ``placement.actor.device``. ``auto``: ``c`` for an int8
    policy on actor threads where a C compiler builds the kernel, else ``numpy``
    (``rlaccel.placement.actor_runtime``)."""
    timeout_s: float = 60.0
    """Seconds without any trajectory batch, or for a thread to stop, before an env counts as stuck."""
    max_policy_lag: Optional[int] = None
    """Updates an actor's parameters may trail the update that consumes its batch (IMPALA's
    bound): an actor waits for the learner before a batch that would exceed it. ``0`` makes a
    run reproducible (acting and learning take turns); ``null``: free-running, the lag is
    whatever ``queue_size`` and the speeds allow."""
    backend: Literal["thread", "ray"] = "thread"
    """``thread``: actor threads in the learner's process; ``ray``: one Ray actor process per
    actor, on this machine or a cluster (``pip install 'rlaccel[ray]'``; docs/cluster.md)."""
    address: Optional[str] = None
    """Ray backend: ``null`` starts a local Ray cluster for the run (token auth, no dashboard)
    and stops it after; ``auto`` or ``host:port`` joins a running cluster (needs its token:
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``)."""
    num_cpus: float = 1.0
    """Ray backend: CPUs each actor process reserves."""
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Ray backend: custom resources each actor reserves, e.g. ``{actor_node: 1}`` to pin the
    actors to nodes started with ``ray start --resources='{"actor_node": 8}'``."""
    max_restarts: int = 3
    """Ray backend: actor restarts (a process that died, or with ``restart_on_env_error`` an
    env that raised) before the run stops with a fault."""
    restart_on_env_error: bool = False
    """Ray backend: an env that raises gets a fresh env (fresh episodes) instead of stopping the run."""

    def __post_init__(self) -> None:
        _check(self.backend != "ray" or self.policy in ("auto", "numpy"), "actors.policy", "the ray backend acts with the numpy actor; use policy: numpy or auto")
        _check(self.address is None or (isinstance(self.address, str) and self.address.strip() != ""), "actors.address", "expected 'auto' or host:port")
        _check(self.address is None or self.backend == "ray", "actors.address", "needs actors.backend: ray")
        _check(self.num_cpus >= 0, "actors.num_cpus", "must be >= 0")
        _check(all(v >= 0 for v in self.resources.values()), "actors.resources", "amounts must be >= 0")
        _check(self.max_restarts >= 0, "actors.max_restarts", "must be >= 0")
        _check(self.num_actors >= 1, "actors.num_actors", "must be >= 1")
        _check(self.queue_size >= 1, "actors.queue_size", "must be >= 1")
        _check(self.timeout_s > 0, "actors.timeout_s", "must be > 0")
        _check(self.max_policy_lag is None or self.max_policy_lag >= 0, "actors.max_policy_lag", "must be >= 0 or null")


@dataclasses.dataclass(frozen=True)
class BraxConfig:
    """Options of ``brax:`` envs (see ``rlaccel.envs.brax``)."""

    backend: Literal["spring", "positional", "generalized", "mjx"] = "spring"
    """Physics pipeline (brax's ``backend``)."""
    episode_length: int = 1000
    """Time limit in steps (brax's training default); reaching it truncates the episode."""

    def __post_init__(self) -> None:
        _check(self.episode_length >= 1, "brax.episode_length", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where results go and how often."""

    run_dir: Optional[str] = None
    """Run directory; default ``runs/<algo>_<env>_s<seed>_<timestamp>``."""
    log_interval: int = 8
    """Updates per compiled chunk; metrics, progress and the NaN check happen between chunks."""
    log_every: Optional[int] = None
    """Write every this many updates' metrics to TensorBoard (a chunk's last update always);
    ``None``: about 1,000 points per run, what TensorBoard's reader keeps per tag by default.
    The NaN check sees every update either way."""
    checkpoint_interval: int = 100
    """Write a checkpoint every this many updates (rounded up to whole chunks); 0 = only at the end."""
    keep_checkpoints: int = 3
    """How many most recent checkpoints to keep."""
    probe_seconds: Optional[float] = 2.0
    """Seconds between probes (decision latency, actor and learner speed, int8 agreement), timed
    between chunks, and one at the end; ``null``: no probes (their pieces are never compiled)."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        _check(self.log_interval >= 1, "logging.log_interval", "must be >= 1")
        _check(self.log_every is None or self.log_every >= 1, "logging.log_every", "must be >= 1 or null")
        _check(self.checkpoint_interval >= 0, "logging.checkpoint_interval", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "logging.keep_checkpoints", "must be >= 1")
        _check(self.probe_seconds is None or self.probe_seconds >= 0, "logging.probe_seconds", "must be >= 0 or null")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation of the int8 actor policy and its fp32 source on separate envs, as SB3's
    ``EvalCallback`` / Brax's ``Evaluator`` (``rlaccel.evaluate``)."""

    freq: int = 0
    """Env steps over all envs between evaluations (as ``total_timesteps`` and the RL Zoo's
    ``--eval-freq``; SB3's ``eval_freq`` counts vector steps, ``n_envs`` env steps each): at the
    first chunk end at or after each multiple, and after the last update; 0 = off."""
    episodes: int = 10
    """Episodes per evaluation (SB3's ``n_eval_episodes``, Brax's ``num_eval_envs``), vmapped on JAX envs."""
    deterministic: bool = True
    """Greedy actions (argmax, Gaussian mean) as SB3's default; false: sampled (DQN: at the current epsilon)."""
    max_episode_steps: Optional[int] = None
    """Step bound of an episode; null = the env's time limit (10,000 steps where it has none)."""
    stop_at_return: Optional[float] = None
    """End the run once an evaluation's ``eval/mean_reward`` (the actors' policy) reaches this
    return, as SB3's ``StopTrainingOnRewardThreshold`` (status ``stopped``, exit code 0,
    checkpoint written); null = train the whole budget."""
    background: Optional[bool] = None
    """``gym:`` envs: play the episodes in a thread beside training (RLlib's
    ``evaluation_parallel_to_training``) instead of between chunks. The parameters of update
    ``u`` are copied when the evaluation is due; the episodes run while the next chunks train,
    and their rows are logged at ``u``'s step, the same figures as in turn. The last
    evaluation is waited for; ``stop_at_return`` and ``best/`` act on a result when it is in.
    null = on for gymnasium's MuJoCo envs, off for other ``gym:`` envs. The thread shares the
    GIL with the actor threads: it pays where the learner's phase is long and the env steps in
    C (the RL Zoo's HalfCheetah block: 1.06x sooner), not where the env's step is Python
    (``gym:CartPole-v1``: 4-20 % slower). JAX-native and brax envs evaluate in a compiled
    program on the training device, in turn (true is an error there)."""

    def __post_init__(self) -> None:
        _check(self.freq >= 0, "eval.freq", f"must be >= 0 env steps (0 = no evaluation), got {self.freq}")
        _check(self.episodes >= 1, "eval.episodes", f"must be >= 1, got {self.episodes}")
        _check(self.max_episode_steps is None or self.max_episode_steps >= 1, "eval.max_episode_steps", f"must be >= 1 or null, got {self.max_episode_steps}")
        _check(self.stop_at_return is None or math.isfinite(self.stop_at_return), "eval.stop_at_return", f"must be a finite return or null, got {self.stop_at_return}")
        _check(self.stop_at_return is None or self.freq > 0, "eval.stop_at_return", "needs evaluations: set eval.freq > 0")
