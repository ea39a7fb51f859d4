"""Tests for ``rlaccel.config``: YAML -> frozen dataclasses, and one-line errors naming the key."""

from __future__ import annotations

import dataclasses

import pytest
from rlaccel.agents.ppo.config import PolicyKwargs, PPOConfig

from rlaccel import config as config_lib
from rlaccel.config import Config, ConfigError


def error_of(overrides: list[str], path=None) -> str:
    """The message of the ConfigError that loading with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        config_lib.load(path, overrides)
    return str(info.value)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)


# --------------------------------------------------------------------------------------------
# The shipped config.


def test_cartpole_yaml_loads_with_its_values(cartpole_yaml):
    c = config_lib.load(cartpole_yaml)
    assert c.env == "CartPole-v1" and c.algo == "ppo" and c.total_timesteps == 500_000 and c.seed == 0
    assert c.agent is c.ppo
    assert (c.ppo.n_envs, c.ppo.n_steps, c.ppo.n_epochs, c.ppo.batch_size) == (4, 128, 4, 128)
    # "lin_2.5e-4" -> 2.5e-4 annealed linearly.
    assert c.ppo.learning_rate == pytest.approx(2.5e-4) and isinstance(c.ppo.learning_rate, float)
    assert c.ppo.lr_schedule == "linear"
    assert c.ppo.clip_range_vf == pytest.approx(0.2) and c.ppo.ent_coef == pytest.approx(0.01)
    assert c.ppo.policy_kwargs == PolicyKwargs(net_arch=(64, 64), activation_fn="tanh")
    assert c.ppo.rollout_size == 512 and c.ppo.num_minibatches == 4
    assert c.placement.learner.device == "auto" and c.placement.actor.device == "learner"
    assert c.placement.actor.precision == "int8" and c.placement.cpu_threads == 1
    assert c.logging.log_interval == 64 and c.logging.checkpoint_interval == 200
    assert c.logging.keep_checkpoints == 3  # not in the file: the dataclass default


def test_config_is_frozen(cartpole_yaml):
    c = config_lib.load(cartpole_yaml)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.ppo.gamma = 0.5  # type: ignore[misc]


def test_to_dict_round_trips(cartpole_yaml):
    c = config_lib.load(cartpole_yaml)
    d = c.to_dict()
    assert d["ppo"]["policy_kwargs"]["net_arch"] == [64, 64]  # lists, YAML/JSON-friendly
    assert d["ppo"]["learning_rate"] == pytest.approx(2.5e-4) and d["ppo"]["lr_schedule"] == "linear"
    assert config_lib.build(d) == c


def test_defaults_without_a_file():
    c = config_lib.load(None)
    assert c == Config() and c.ppo == PPOConfig()


# --------------------------------------------------------------------------------------------
# Errors: each is a ConfigError whose one-line message names the key.


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: CartPole-v1\nppo:\n  n_envs: [4, 8\n  n_steps: 128\n")
    msg = error_of([], bad)
    assert_one_line(msg)
    assert str(bad) in msg and "malformed YAML" in msg and "line " in msg


def test_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- env\n- CartPole-v1\n")
    msg = error_of([], bad)
    assert_one_line(msg)
    assert str(bad) in msg and "mapping" in msg


def test_missing_file(tmp_path):
    msg = error_of([], tmp_path / "nope.yaml")
    assert_one_line(msg)
    assert "nope.yaml" in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ppo.n_env=8", "unknown key 'ppo.n_env'; did you mean 'ppo.n_envs'?"),
        ("ppo.policy_kwargs.net_arc=[8]", "unknown key 'ppo.policy_kwargs.net_arc'; did you mean 'ppo.policy_kwargs.net_arch'?"),
        ("logging.keep_checkpoint=2", "unknown key 'logging.keep_checkpoint'; did you mean 'logging.keep_checkpoints'?"),
        ("sed=3", "unknown key 'sed'; did you mean 'seed'?"),
    ],
)
def test_unknown_key_suggests_the_closest(cartpole_yaml, override, expected):
    msg = error_of([override], cartpole_yaml)
    assert_one_line(msg)
    assert msg == expected


def test_unknown_key_without_close_match_lists_valid_keys(cartpole_yaml):
    msg = error_of(["ppo.zzzzzz=1"], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith("unknown key 'ppo.zzzzzz'; valid keys: ")
    assert "n_envs" in msg and "gae_lambda" in msg


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("ppo.n_steps=abc", "ppo.n_steps", "expected an integer, got str"),
        ("ppo.n_steps=64.5", "ppo.n_steps", "expected an integer, got float"),
        ("ppo.n_steps=true", "ppo.n_steps", "expected an integer, got bool"),
        ("ppo.gamma=high", "ppo.gamma", "expected a number, got str"),
        ("ppo.normalize_advantage=1", "ppo.normalize_advantage", "expected true or false, got int"),
        ("ppo.policy_kwargs.net_arch=64", "ppo.policy_kwargs.net_arch", "expected a list"),
        ("ppo.policy_kwargs.net_arch=[64, x]", "ppo.policy_kwargs.net_arch[1]", "expected an integer"),
        ("ppo.clip_range_vf=[0.2]", "ppo.clip_range_vf", "expected a number"),
        ("ppo.learning_rate=[1]", "ppo.learning_rate", "expected float | str"),
        ("placement=cpu", "placement", "expected a mapping, got str"),
        ("placement.actor.precision=int4", "placement.actor.precision", "expected one of 'int8', 'fp32'"),
        ("env=3", "env", "expected a string, got int"),
    ],
)
def test_wrong_type_names_the_key(cartpole_yaml, override, key, words):
    msg = error_of([override], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith(f"{key}: ") and words in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("ppo.gamma=1.5", "ppo.gamma"),
        ("ppo.gamma=-0.1", "ppo.gamma"),
        ("ppo.gamma=.nan", "ppo.gamma"),
        ("ppo.gae_lambda=2", "ppo.gae_lambda"),
        ("ppo.clip_range=0", "ppo.clip_range"),
        ("ppo.clip_range_vf=-0.2", "ppo.clip_range_vf"),
        ("ppo.n_envs=0", "ppo.n_envs"),
        ("ppo.learning_rate=-1.0e-3", "ppo.learning_rate"),
        ("ppo.learning_rate=lin_0", "ppo.learning_rate"),
        ("ppo.learning_rate=lin_abc", "ppo.learning_rate"),
        ("ppo.learning_rate=cos_1.0e-3", "ppo.learning_rate"),
        ("ppo.max_grad_norm=0", "ppo.max_grad_norm"),
        ("ppo.policy_kwargs.net_arch=[]", "ppo.policy_kwargs.net_arch"),
        ("ppo.policy_kwargs.net_arch=[64, 0]", "ppo.policy_kwargs.net_arch"),
        ("ppo.policy_kwargs.net_arch=[4097]", "ppo.policy_kwargs.net_arch"),
        ("ppo.policy_kwargs.activation_fn=sigmoid", "ppo.policy_kwargs.activation_fn"),
        ("logging.log_interval=0", "logging.log_interval"),
        ("logging.keep_checkpoints=0", "logging.keep_checkpoints"),
        ("logging.checkpoint_interval=-1", "logging.checkpoint_interval"),
        ("total_timesteps=0", "total_timesteps"),
    ],
)
def test_out_of_range_names_the_key(cartpole_yaml, override, key):
    msg = error_of([override], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith(f"{key}: "), msg


def test_gamma_out_of_range_message(cartpole_yaml):
    assert error_of(["ppo.gamma=1.5"], cartpole_yaml) == "ppo.gamma: must be in [0, 1]"


def test_widest_supported_layer_is_accepted():
    assert config_lib.load(None, ["ppo.policy_kwargs.net_arch=[4096]"]).ppo.policy_kwargs.net_arch == (4096,)


def test_batch_size_must_divide_the_rollout(cartpole_yaml):
    msg = error_of(["ppo.batch_size=100"], cartpole_yaml)
    assert msg == "ppo.batch_size: must divide n_envs * n_steps = 512, got 100"
    # 4 envs x 128 steps = 512 = 4 x 128 = 2 x 256 = 1 x 512: all fine.
    for ok in (128, 256, 512, 1):
        assert config_lib.load(cartpole_yaml, [f"ppo.batch_size={ok}"]).ppo.num_minibatches == 512 // ok
    # The product follows n_envs: 3 x 128 = 384 = 3 x 128, but not a multiple of 256.
    assert config_lib.load(cartpole_yaml, ["ppo.n_envs=3"]).ppo.num_minibatches == 3
    assert error_of(["ppo.n_envs=3", "ppo.batch_size=256"], cartpole_yaml).startswith("ppo.batch_size: must divide n_envs * n_steps = 384")


def test_total_timesteps_smaller_than_one_update(cartpole_yaml):
    msg = error_of(["total_timesteps=511"], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith("total_timesteps: must be at least one update") and "512" in msg
    assert config_lib.load(cartpole_yaml, ["total_timesteps=512"]).total_timesteps == 512


def test_unknown_section(cartpole_yaml):
    msg = error_of(["sac.gamma=0.9"], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith("unknown key 'sac'")


def test_section_of_another_algo(cartpole_yaml):
    msg = error_of(["dqn.gamma=0.9"], cartpole_yaml)
    assert_one_line(msg)
    assert msg == "dqn: section given but algo is 'ppo'"


def test_unknown_algo(cartpole_yaml):
    msg = error_of(["algo=sac"], None)
    assert_one_line(msg)
    assert msg.startswith("algo: ") and "'ppo'" in msg and "'dqn'" in msg and "'sac'" in msg
    # Switching algo with the file's ppo section still there names the section and the algo.
    msg = error_of(["algo=dqn"], cartpole_yaml)
    assert_one_line(msg)
    assert msg == "ppo: section given but algo is 'dqn'"


def test_override_into_a_non_section(cartpole_yaml):
    msg = error_of(["ppo.gamma.x=1"], cartpole_yaml)
    assert_one_line(msg)
    assert msg.startswith("ppo.gamma.x: 'ppo.gamma' is not a section")


def test_override_without_equals(cartpole_yaml):
    msg = error_of(["ppo.gamma"], cartpole_yaml)
    assert_one_line(msg)
    assert "ppo.gamma" in msg and "key.sub=value" in msg


def test_nested_error_messages_are_prefixed_once():
    # PPOConfig raises "gamma: ..."; from_dict adds "ppo."; nothing adds it twice.
    assert error_of(["ppo.gamma=2"]).count("ppo.") == 1
    assert error_of(["logging.log_interval=0"]).count("logging.") == 1


def test_every_error_is_a_value_error():
    # Callers that catch ValueError (argparse-style) catch config errors too.
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------------------
# Values: learning-rate strings, --set parsing, replace().


def test_lin_learning_rate_is_a_linear_schedule():
    from rlaccel.agents.ppo import train as ppo_train

    c = config_lib.load(None, ["ppo.learning_rate=lin_3e-4"])
    assert c.ppo.learning_rate == pytest.approx(3e-4) and c.ppo.lr_schedule == "linear"
    # The schedule optax builds anneals 3e-4 -> 0 over num_updates * n_epochs * num_minibatches
    # optimiser steps: 10 updates x 4 epochs x 4 minibatches = 160 steps.
    _, schedule = ppo_train.make_optimizer(c.ppo, num_updates=10)
    assert float(schedule(0)) == pytest.approx(3e-4)
    assert float(schedule(80)) == pytest.approx(1.5e-4)
    assert float(schedule(120)) == pytest.approx(0.75e-4)
    assert float(schedule(160)) == pytest.approx(0.0, abs=1e-12)
    # A plain number stays constant.
    c = config_lib.load(None, ["ppo.learning_rate=2.5e-4"])
    assert c.ppo.lr_schedule == "constant"
    _, schedule = ppo_train.make_optimizer(c.ppo, num_updates=10)
    assert float(schedule(0)) == float(schedule(159)) == pytest.approx(2.5e-4)


def test_set_values_are_parsed_as_yaml(cartpole_yaml):
    c = config_lib.load(
        cartpole_yaml,
        [
            "seed=7",
            "ppo.learning_rate=1.0e-3",
            "ppo.normalize_advantage=false",
            "ppo.clip_range_vf=null",
            "ppo.policy_kwargs.net_arch=[32, 16, 8]",
            "ppo.policy_kwargs.activation_fn=nn.ReLU",
            "ppo.n_steps=64.0",  # an integral float means an integer
            "logging.run_dir=runs/x",
            "placement.actor.device=cpu:1",
        ],
    )
    assert c.seed == 7
    assert c.ppo.learning_rate == pytest.approx(1e-3)
    # The file's "lin_2.5e-4" was replaced by a plain number: a constant rate, as RL Zoo reads it.
    assert c.ppo.lr_schedule == "constant"
    assert c.ppo.normalize_advantage is False and c.ppo.clip_range_vf is None
    assert c.ppo.policy_kwargs.net_arch == (32, 16, 8)
    assert c.ppo.policy_kwargs.activation == "relu"
    assert c.ppo.n_steps == 64 and isinstance(c.ppo.n_steps, int)
    assert c.logging.run_dir == "runs/x" and c.placement.actor.device == "cpu:1"


def test_later_override_wins_and_the_input_is_not_mutated():
    data = {"ppo": {"gamma": 0.9}}
    out = config_lib.apply_overrides(data, ["ppo.gamma=0.8", "ppo.gamma=0.7"])
    assert out == {"ppo": {"gamma": 0.7}} and data == {"ppo": {"gamma": 0.9}}


def test_set_scientific_notation_without_a_dot():
    # _parse_scalar's docstring: "``3e-4``, ``true``, ``[64, 64]`` work"; the CLI help's own
    # example is `--set ppo.learning_rate=1e-3`. RL Zoo files write 1e6 for timesteps too.
    c = config_lib.load(None, ["ppo.learning_rate=3e-4", "total_timesteps=1e6"])
    assert c.ppo.learning_rate == pytest.approx(3e-4)
    assert c.total_timesteps == 1_000_000


def test_yaml_file_scientific_notation_without_a_dot(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text("total_timesteps: 1e6\nppo:\n  learning_rate: 3e-4\n")
    c = config_lib.load(path)
    assert c.total_timesteps == 1_000_000 and c.ppo.learning_rate == pytest.approx(3e-4)


def test_replace(cartpole_yaml):
    c = config_lib.load(cartpole_yaml)
    d = config_lib.replace(c, **{"ppo.gamma": 0.9, "seed": 3, "ppo.policy_kwargs.net_arch": [8]})
    assert d.ppo.gamma == pytest.approx(0.9) and d.seed == 3 and d.ppo.policy_kwargs.net_arch == (8,)
    assert c.ppo.gamma == pytest.approx(0.99) and c.seed == 0  # the original is untouched
    # Everything else is carried over, including the linear schedule parsed from "lin_".
    assert dataclasses.replace(d, seed=0, agent=dataclasses.replace(d.ppo, gamma=c.ppo.gamma, policy_kwargs=c.ppo.policy_kwargs)) == c
    assert d.ppo.lr_schedule == "linear"


def test_replace_revalidates(cartpole_yaml):
    c = config_lib.load(cartpole_yaml)
    with pytest.raises(ConfigError, match=r"^ppo\.gamma: must be in \[0, 1\]$"):
        config_lib.replace(c, **{"ppo.gamma": 1.5})
    with pytest.raises(ConfigError, match=r"^unknown key 'ppo\.n_env'; did you mean 'ppo\.n_envs'\?$"):
        config_lib.replace(c, **{"ppo.n_env": 8})
    with pytest.raises(ConfigError, match=r"^total_timesteps: must be at least one update"):
        config_lib.replace(c, **{"ppo.n_steps": 2048, "total_timesteps": 4096})


# --------------------------------------------------------------------------------------------
# ppo.normalize: true/false or a section (SB3's VecNormalize options).


def test_normalize_section():
    c = config_lib.load(None, ["ppo.normalize={norm_obs: true, norm_reward: false, clip_obs: 5}"])
    assert c.ppo.normalization.norm_obs is True and c.ppo.normalization.norm_reward is False
    assert c.ppo.normalization.clip_obs == 5.0
    assert config_lib.load(None, ["ppo.normalize=true"]).ppo.normalization.norm_reward is True
    assert config_lib.load(None, []).ppo.normalization.norm_obs is False


@pytest.mark.parametrize("override, key", [("ppo.normalize.clip_obs=-1.0", "ppo.normalize.clip_obs"), ("ppo.normalize.clip_reward=0", "ppo.normalize.clip_reward")])
def test_normalize_clip_out_of_range(override, key):
    msg = error_of([override])
    assert msg.startswith(f"{key}: ")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ppo.normalize.norm_ob=true", "unknown key 'ppo.normalize.norm_ob'; did you mean 'ppo.normalize.norm_obs'?"),
        ("ppo.normalize.clip_obs=abc", "ppo.normalize.clip_obs: expected a number"),
    ],
)
def test_error_inside_the_normalize_section_names_the_key(override, expected):
    assert error_of([override]).startswith(expected)
