"""Failing envs for tests/test_host_actors.py and tests/test_ray.py; Ray actor processes import them by name (``gym:ray_envs:<id>``):
the test cluster's nodes have ``tests/`` on their ``PYTHONPATH``."""

import gymnasium
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

FAIL_AT_STEP = 40


class FailingCartPole(CartPoleEnv):
    """gymnasium's CartPole, whose ``step`` raises on its 40th call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def step(self, action):
        self.calls += 1
        if self.calls >= FAIL_AT_STEP:
            raise RuntimeError("simulator exploded")
        return super().step(action)


if "RayFailingCartPole-v0" not in gymnasium.registry:
    gymnasium.register("RayFailingCartPole-v0", entry_point=FailingCartPole, max_episode_steps=500)
