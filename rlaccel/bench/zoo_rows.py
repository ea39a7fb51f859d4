"""The rows of ``rlaccel bench zoo``: which RL Zoo block each runs, the zoo's published figure
for it (``benchmark.md`` at :data:`ZOO_COMMIT`), and issue 14's must-reach figures.

* :class:`ZooRow`: rlaccel on one block of ``tests/data/zoo/<algo>.yml``, int8 actors.
* :class:`SB3Row`: Stable-Baselines3 on the block of an rlaccel row, either for the wall-clock
  ratio (``sb3_ppo_pendulum``, ``sb3_ppo_halfcheetah``) or ``judged`` on returns at the zoo's
  budget (does the block itself reach the one agent the zoo published, over seeds?).
"""

from __future__ import annotations

import dataclasses

from rlaccel.bench.rows import ROOT

__all__ = ["BENCHMARK_MD", "HALFCHEETAH_FLOOR", "MUST_PASS", "ROWS", "SB3_RATIO_FLOOR", "ZOO_COMMIT", "ZOO_DIR", "Published", "SB3Row", "ZooRow", "block_row"]

ZOO_DIR = ROOT / "tests" / "data" / "zoo"
ZOO_COMMIT = "22e3ff2450fd92033f7f032915e1f64894a09584"
BENCHMARK_MD = f"https://github.com/DLR-RM/rl-baselines3-zoo/blob/{ZOO_COMMIT}/benchmark.md"
MUST_PASS = 9  # issue 14: rows at or above the zoo's mean - 1 std, of 11
HALFCHEETAH_FLOOR = 4_500.0  # issue 14: PPO HalfCheetah at 1M env steps
SB3_RATIO_FLOOR = 5.0  # issue 14: rlaccel's wall clock vs SB3's on the shared rows


@dataclasses.dataclass(frozen=True)
class Published:
    """One row of the zoo's ``benchmark.md`` (deterministic evaluation of one trained agent)."""

    env: str  # benchmark.md's env id
    mean: float  # mean_reward
    std: float  # std_reward (over evaluation episodes)
    n_timesteps: int  # training budget
    eval_episodes: int  # episodes behind mean and std


@dataclasses.dataclass(frozen=True)
class ZooRow:
    """An rlaccel row: ``algo``'s zoo block for ``block`` (``tests/data/zoo/<algo>.yml``)."""

    algo: str
    block: str
    zoo: Published

    @property
    def label(self) -> str:
        return f"{self.algo.upper()} {self.block}"


@dataclasses.dataclass(frozen=True)
class SB3Row:
    """Stable-Baselines3 on the block of the rlaccel row ``of``: ``timesteps`` env steps
    (``None``: the block's ``n_timesteps``), ``--sb3-seeds`` seeds. ``judged``: its returns
    are held against the zoo's figure as an rlaccel row's are (else it is a timing row)."""

    of: str
    timesteps: int | None = None
    judged: bool = False


ROWS: dict[str, ZooRow | SB3Row] = {
    # benchmark.md at ZOO_COMMIT: mean_reward, std_reward, n_timesteps, eval_episodes
    "ppo_cartpole": ZooRow("ppo", "CartPole-v1", Published("CartPole-v1", 500.000, 0.000, 100_000, 300)),
    "ppo_acrobot": ZooRow("ppo", "Acrobot-v1", Published("Acrobot-v1", -73.506, 18.201, 1_000_000, 2013)),
    "ppo_mountaincar": ZooRow("ppo", "MountainCar-v0", Published("MountainCar-v0", -110.423, 19.473, 1_000_000, 1358)),
    "ppo_mountaincar_continuous": ZooRow("ppo", "MountainCarContinuous-v0", Published("MountainCarContinuous-v0", 88.343, 2.572, 20_000, 633)),
    "ppo_pendulum": ZooRow("ppo", "Pendulum-v1", Published("Pendulum-v1", -172.225, 104.159, 100_000, 750)),
    "ppo_halfcheetah": ZooRow("ppo", "HalfCheetah-v4", Published("HalfCheetah-v3", 5819.099, 663.530, 1_000_000, 150)),
    "ppo_hopper": ZooRow("ppo", "Hopper-v4", Published("Hopper-v3", 2410.435, 10.026, 1_000_000, 150)),
    "ppo_walker2d": ZooRow("ppo", "Walker2d-v4", Published("Walker2d-v3", 3478.798, 821.708, 1_000_000, 171)),
    "dqn_cartpole": ZooRow("dqn", "CartPole-v1", Published("CartPole-v1", 500.000, 0.000, 50_000, 300)),
    "dqn_acrobot": ZooRow("dqn", "Acrobot-v1", Published("Acrobot-v1", -76.639, 11.752, 100_000, 1932)),
    "dqn_mountaincar": ZooRow("dqn", "MountainCar-v0", Published("MountainCar-v0", -100.849, 9.925, 120_000, 1487)),
    "sb3_ppo_pendulum": SB3Row("ppo_pendulum", 100_000),
    "sb3_ppo_halfcheetah": SB3Row("ppo_halfcheetah", 200_000),
    # SB3 itself at the zoo's budget, on the blocks whose zoo figure rlaccel's seeds miss:
    # does the block reach its published agent's figure over seeds at all?
    "sb3_ppo_mountaincar_continuous": SB3Row("ppo_mountaincar_continuous", judged=True),
    "sb3_dqn_cartpole": SB3Row("dqn_cartpole", judged=True),
    "sb3_dqn_mountaincar": SB3Row("dqn_mountaincar", judged=True),
    "sb3_ppo_hopper": SB3Row("ppo_hopper", judged=True),
}


def block_row(name: str) -> ZooRow:
    """The rlaccel row whose zoo block row ``name`` runs (itself, or an SB3 row's ``of``)."""
    row = ROWS[name]
    return ROWS[row.of] if isinstance(row, SB3Row) else row
