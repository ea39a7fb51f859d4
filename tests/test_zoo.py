"""RL Zoo hyperparameter blocks, verbatim (``tests/data/zoo/{ppo,dqn}.yml``, copied from
rl-baselines3-zoo), read with Stable-Baselines3's meaning: pasted under ``ppo:`` / ``dqn:`` and
through ``rlaccel train --zoo FILE --env ID --check``. The expected values come from the zoo
files themselves (read with PyYAML's safe loader and the zoo's own string evaluation, as the
zoo's ``ExperimentManager`` does) and from SB3's constructor defaults; no training here.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import pytest
import yaml
from cli_helpers import run_main, set_args, tree

from rlaccel import api
from rlaccel import config as config_lib
from rlaccel import zoo
from rlaccel.schema import ConfigError, NetArch, PolicyKwargs
from rlaccel.zoo_kwargs import parse_call_string

DATA = Path(__file__).resolve().parent / "data" / "zoo"
BLOCKS = [("ppo", env) for env in yaml.safe_load((DATA / "ppo.yml").read_text()) if env != "CarRacing-v3"]
BLOCKS += [("dqn", env) for env in yaml.safe_load((DATA / "dqn.yml").read_text())]

# SB3's constructor defaults (stable_baselines3/{ppo/ppo.py, dqn/dqn.py} __init__, commit
# e05d2dbe) and the zoo's (n_envs: 1, no normalisation): what a block's missing keys mean.
SB3_DEFAULTS = {
    "ppo": {
        "n_envs": 1, "learning_rate": 3e-4, "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "gamma": 0.99,
        "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": None, "normalize_advantage": True, "ent_coef": 0.0,
        "vf_coef": 0.5, "max_grad_norm": 0.5, "use_sde": False, "sde_sample_freq": -1, "normalize": False,
    },
    "dqn": {
        "n_envs": 1, "learning_rate": 1e-4, "buffer_size": 1_000_000, "learning_starts": 100, "batch_size": 32, "tau": 1.0,
        "gamma": 0.99, "train_freq": 4, "gradient_steps": 1, "n_step": 1, "target_update_interval": 10_000,
        "exploration_fraction": 0.1, "exploration_initial_eps": 1.0, "exploration_final_eps": 0.05, "max_grad_norm": 10.0,
        "double_q": False,  # SB3's DQN target is max_a Q_target(s', a)
    },
}
SB3_POLICY = {"ppo": {"net_arch": [64, 64], "activation_fn": "tanh", "ortho_init": True, "log_std_init": 0.0, "full_std": True},
              "dqn": {"net_arch": [64, 64], "activation_fn": "relu", "ortho_init": False}}


def zoo_eval(text: str):
    """The zoo's reading of a kwargs string (``eval`` with torch's ``nn``), as an oracle on test data only."""
    nn = types.SimpleNamespace(ReLU="relu", Tanh="tanh", ELU="elu")
    return eval(text, {"__builtins__": {}}, {"dict": dict, "nn": nn})  # noqa: S307 - fixed test data


def as_lists(x):
    """Tuples -> lists, recursively."""
    if isinstance(x, dict):
        return {k: as_lists(v) for k, v in x.items()}
    return [as_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def zoo_block(algo: str, env: str) -> dict:
    return yaml.safe_load((DATA / f"{algo}.yml").read_text())[env]


def raw_block(algo: str, env: str) -> str:
    """The block's lines exactly as the zoo file has them (for pasting)."""
    lines = (DATA / f"{algo}.yml").read_text().splitlines()
    start = lines.index(f"{env}:") + 1
    end = start
    while end < len(lines) and (lines[end].startswith(" ") or not lines[end]):
        end += 1
    return "\n".join(lines[start:end]).rstrip() + "\n"


def pasted(tmp_path: Path, algo: str, env: str, extra: str = "") -> Path:
    """A config file with the zoo block pasted under the algorithm's section."""
    path = tmp_path / f"{algo}_{env}.yaml"
    path.write_text(f"env: {zoo.resolve_env(env)[0]}\nalgo: {algo}\n{extra}{algo}:\n{raw_block(algo, env)}")
    return path


def assert_zoo_values(cfg: config_lib.Config, algo: str, block: dict) -> None:
    """Every key of ``block`` has its SB3 meaning in ``cfg``; every key it lacks, SB3's default."""
    sec = cfg.agent
    for key, value in block.items():
        if key == "n_timesteps":
            assert cfg.total_timesteps == int(value)
        elif key == "policy":
            assert value == "MlpPolicy"
        elif key in ("learning_rate", "clip_range"):
            schedule = getattr(sec, "lr_schedule" if key == "learning_rate" else "clip_range_schedule")
            linear = isinstance(value, str)
            assert getattr(sec, key) == (float(value.split("_")[1]) if linear else value), key
            assert schedule == ("linear" if linear else "constant"), key
        elif key == "normalize":
            kwargs = zoo_eval(value) if isinstance(value, str) else ({} if value else {"norm_obs": False, "norm_reward": False})
            assert sec.normalization.norm_obs == kwargs.get("norm_obs", True)
            assert sec.normalization.norm_reward == kwargs.get("norm_reward", True)
        elif key == "policy_kwargs":
            continue  # below, with the defaults
        elif key == "gradient_steps" and value == -1:
            assert sec.gradient_steps == sec.n_envs * sec.train_freq  # SB3: as many as transitions collected
        elif key == "batch_size" and algo == "ppo":
            assert sec.batch_size == min(value, sec.n_envs * sec.n_steps)  # SB3: one minibatch = whole rollout
        else:
            assert getattr(sec, key) == value, key
    for key, default in SB3_DEFAULTS[algo].items():
        if key not in block:
            assert getattr(sec, key) == default, key
    kwargs = {**SB3_POLICY[algo], **zoo_eval(block.get("policy_kwargs", "dict()"))}
    pk = sec.policy_kwargs
    arch = kwargs.pop("net_arch")
    assert (pk.pi_arch, pk.vf_arch) == ((tuple(arch["pi"]), tuple(arch["vf"])) if isinstance(arch, dict) else (tuple(arch),) * 2)
    assert pk.activation == kwargs.pop("activation_fn")
    for key, value in kwargs.items():
        assert getattr(pk, key) == value, key


@pytest.mark.parametrize("algo, env", BLOCKS)
def test_every_block_pasted_under_its_section_loads_with_the_zoo_values(tmp_path, algo, env):
    cfg = config_lib.load(pasted(tmp_path, algo, env))
    assert cfg.algo == algo
    assert_zoo_values(cfg, algo, zoo_block(algo, env))
    assert config_lib.build(cfg.to_dict()) == cfg  # what config.yaml holds reads back the same


@pytest.mark.parametrize("algo, env", BLOCKS)
def test_every_block_loads_from_the_zoo_file(algo, env):
    data, _ = zoo.block_from_file(config_lib.load_data(DATA / f"{algo}.yml"), f"{algo}.yml", env)
    cfg = config_lib.build(data)
    assert cfg.algo == algo and cfg.env == zoo.resolve_env(env)[0]
    assert_zoo_values(cfg, algo, zoo_block(algo, env))


def test_env_ids_map_to_what_rlaccel_runs():
    assert zoo.resolve_env("Pendulum-v1") == ("Pendulum-v1", None)  # JAX-native
    env, note = zoo.resolve_env("HalfCheetah-v4")
    assert env == "gym:HalfCheetah-v5" and "HalfCheetah-v4" in note and "\n" not in note
    assert zoo.resolve_env("Hopper-v3")[0] == "gym:Hopper-v5"
    with pytest.raises(ConfigError, match="HalfCheetahBulletEnv-v0"):
        zoo.resolve_env("HalfCheetahBulletEnv-v0")


# --------------------------------------------------------------------------------------------
# rlaccel train --zoo FILE --env ID --check, through the real command line.


@pytest.mark.parametrize("algo, env", [("ppo", "HalfCheetah-v4"), ("dqn", "Acrobot-v1"), ("ppo", "CartPole-v1")])
def test_cli_zoo_check_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, algo, env):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paste").mkdir()
    same_block_pasted = config_lib.load(pasted(tmp_path / "paste", algo, env))
    before = tree(tmp_path)
    rc, out, err = run_main(["train", "--zoo", str(DATA / f"{algo}.yml"), "--env", env, "--check"])
    assert rc == 0, err
    resolved = config_lib.build(yaml.safe_load(out))
    assert (resolved.eval.freq, resolved.eval.episodes) == (25_000, 5)  # rl_zoo3/train.py's EvalCallback defaults
    assert resolved.to_dict() == {**same_block_pasted.to_dict(), "eval": resolved.to_dict()["eval"]} and same_block_pasted.eval.freq == 0
    assert_zoo_values(resolved, algo, zoo_block(algo, env))
    mapped = zoo.resolve_env(env)
    assert resolved.env == mapped[0] and (mapped[1] is None or f"# {mapped[1]}\n" in out)
    # MuJoCo itself logs a model-compiler deprecation warning to ./MUJOCO_LOG.TXT when the env is probed.
    assert {p: b for p, b in tree(tmp_path).items() if p.name != "MUJOCO_LOG.TXT"} == before


def test_cli_zoo_overrides_apply_on_top(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--zoo", str(DATA / "ppo.yml"), "--env", "Pendulum-v1", "--check"]
    rc, out, err = run_main([*args, *set_args(["total_timesteps=8192", "ppo.n_epochs=3", "eval.freq=0"]), "--seed", "7"])
    assert rc == 0, err
    resolved = yaml.safe_load(out)
    block = zoo_block("ppo", "Pendulum-v1")
    assert resolved["total_timesteps"] == 8192 != block["n_timesteps"] and resolved["seed"] == 7
    assert resolved["eval"]["freq"] == 0 and resolved["eval"]["episodes"] == 5  # the zoo's evaluation, turned off
    assert resolved["ppo"]["n_epochs"] == 3 and resolved["ppo"]["n_steps"] == block["n_steps"]


def test_cli_pasted_mujoco_block_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["train", "--config", str(pasted(tmp_path, "ppo", "HalfCheetah-v4")), "--check"])
    assert rc == 0, err
    resolved = config_lib.build(yaml.safe_load(out))
    assert resolved.env == "gym:HalfCheetah-v5" and resolved.actors.num_actors == 1  # the block's one env, one actor
    assert resolved.actors.max_policy_lag == 0  # SB3 trains on the rollout of the policy it updates
    # Given ``actors`` keys win: a free-running zoo run is still one override away.
    rc, out, err = run_main(["train", "--config", str(pasted(tmp_path, "ppo", "HalfCheetah-v4")), "--check", "--set", "actors.max_policy_lag=null"])
    assert rc == 0, err
    assert config_lib.build(yaml.safe_load(out)).actors.max_policy_lag is None
    assert_zoo_values(resolved, "ppo", zoo_block("ppo", "HalfCheetah-v4"))


def edited(algo: str, env: str, old: str, new: str) -> str:
    text = raw_block(algo, env)
    assert old in text, old
    return f"{env}:\n" + text.replace(old, new, 1)


BAD_ZOO = {
    "unknown_key": (("ppo", "CartPole-v1", "  n_epochs: 20\n", "  n_epochs: 20\n  n_stepz: 8\n"), "CartPole-v1", ["unknown key 'ppo.n_stepz'"]),
    "malformed_policy_kwargs": (("dqn", "CartPole-v1", "[256, 256])", "[256, 256)"), "CartPole-v1", ["dqn.policy_kwargs", "malformed"]),
    "disallowed_call": (("dqn", "CartPole-v1", '"dict(net_arch=[256, 256])"', "\"__import__('os').system('touch pwned')\""), "CartPole-v1", ["dqn.policy_kwargs", "is not allowed"]),
    "attribute_call": (("ppo", "HalfCheetah-v4", "nn.ReLU", "nn.ReLU.__subclasses__()"), "HalfCheetah-v4", ["ppo.policy_kwargs.activation_fn", "is not allowed"]),
    "cnn_policy": (("ppo", "Acrobot-v1", "'MlpPolicy'", "'CnnPolicy'"), "Acrobot-v1", ["ppo.policy", "CnnPolicy"]),
    "frame_stack": (("ppo", "Acrobot-v1", "  normalize: true\n", "  normalize: true\n  frame_stack: 4\n"), "Acrobot-v1", ["ppo.frame_stack", "not supported"]),
    "callback": (("ppo", "Acrobot-v1", "  normalize: true\n", "  normalize: true\n  callback: rl_zoo3.callbacks.ParallelTrainCallback\n"), "Acrobot-v1", ["ppo.callback"]),
    "episode_train_freq": (("dqn", "Acrobot-v1", "train_freq: 4", "train_freq: [1, 'episode']"), "Acrobot-v1", ["dqn.train_freq", "episode"]),
    "gelu": (("ppo", "HalfCheetah-v4", "nn.ReLU", "nn.GELU"), "HalfCheetah-v4", ["ppo.policy_kwargs.activation_fn", "nn.GELU"]),
    "dqn_pi_vf": (("dqn", "CartPole-v1", "net_arch=[256, 256]", "net_arch=dict(pi=[64], vf=[64])"), "CartPole-v1", ["dqn.policy_kwargs.net_arch"]),
    "bad_normalize": (("ppo", "Acrobot-v1", "normalize: true", "normalize: \"dict(norm_obs=True, norm_obs_keys=['a'])\""), "Acrobot-v1", ["ppo.normalize.norm_obs_keys"]),
    "unknown_env": (("ppo", "Pendulum-v1", "", ""), "HalfCheetahBulletEnv-v0", ["env:", "HalfCheetahBulletEnv-v0"]),
    "no_block": (("ppo", "Pendulum-v1", "", ""), "Pendulum-v0", ["no block for env 'Pendulum-v0'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ZOO))
def test_bad_zoo_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, case):
    (algo, env, old, new), target, words = BAD_ZOO[case]
    text = edited(algo, env, old, new)
    if case == "unknown_env":
        text = text.replace(f"{env}:", f"{target}:", 1)
    path = tmp_path / f"{algo}.yml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    rc, out, err = run_main(["train", "--zoo", str(path), "--env", target, "--no-progress"])
    assert rc == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""
    assert tree(tmp_path) == before  # no runs/, no 'pwned'


def test_refused_zoo_block_verbatim(tmp_path, monkeypatch):
    """CarRacing-v3, a real block with image observations and env wrappers."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["train", "--zoo", str(DATA / "ppo.yml"), "--env", "CarRacing-v3", "--check"])
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ppo.env_wrapper:") and out == ""


# --------------------------------------------------------------------------------------------
# n_timesteps and total_timesteps.


def test_n_timesteps_sets_total_timesteps_and_a_set_override_wins(tmp_path):
    path = pasted(tmp_path, "ppo", "Pendulum-v1")
    n = int(zoo_block("ppo", "Pendulum-v1")["n_timesteps"])
    assert config_lib.load(path).total_timesteps == n
    assert config_lib.load(path, ["total_timesteps=8192"]).total_timesteps == 8192


def test_n_timesteps_and_another_total_timesteps_in_one_file_is_an_error(tmp_path):
    n = int(zoo_block("ppo", "Pendulum-v1")["n_timesteps"])
    assert config_lib.load(pasted(tmp_path, "ppo", "Pendulum-v1", f"total_timesteps: {n}\n")).total_timesteps == n
    with pytest.raises(ConfigError, match=r"^ppo\.n_timesteps: 100000 disagrees with total_timesteps: 5000;"):
        config_lib.load(pasted(tmp_path, "ppo", "Pendulum-v1", "total_timesteps: 5000\n"))


# --------------------------------------------------------------------------------------------
# The kwargs-string parser and the fields the zoo blocks need.


@pytest.mark.parametrize(
    "text, value",
    [
        ("dict(log_std_init=-3.29, ortho_init=False)", {"log_std_init": -3.29, "ortho_init": False}),
        ("dict(net_arch=dict(pi=[256, 256], vf=[64]), activation_fn=th.nn.Tanh)", {"net_arch": {"pi": [256, 256], "vf": [64]}, "activation_fn": "nn.Tanh"}),
        ("{'norm_obs': False, 'norm_reward': True, 'clip_obs': +5, 'gamma': None}", {"norm_obs": False, "norm_reward": True, "clip_obs": 5, "gamma": None}),
        ("dict(\n   net_arch=(8,),\n   activation_fn=torch.nn.ELU,\n )", {"net_arch": [8], "activation_fn": "nn.ELU"}),
        ("dict()", {}),
    ],
)
def test_kwargs_strings_parse_to_data(text, value):
    assert parse_call_string(text, "k") == value
    as_python = text.replace("th.nn.", "nn.").replace("torch.nn.", "nn.").replace("nn.Tanh", "'nn.Tanh'").replace("nn.ELU", "'nn.ELU'")
    assert as_lists(zoo_eval(as_python)) == value  # the zoo's reading, tuples as lists


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "dict(a=open('f'))",
        "os.system",
        "dict(**x)",
        "dict([('a', 1)])",
        "lambda: 0",
        "dict(a=1 + 2)",
        "dict(a=[x for x in y])",
        "dict(a=-True)",
        "{1: 2}",
        "dict(a=nn.ReLU())",
        "dict(a=b)",
        "dict(a=().__class__)",
        "dict(a=nn.ReLU, b=getattr)",
    ],
)
def test_anything_but_literal_data_is_refused(text):
    with pytest.raises(ConfigError, match=r"^key(\.[ab])?: .* is not allowed in a zoo kwargs string"):
        parse_call_string(text, "key")


@pytest.mark.parametrize("text", ["dict(a=[1, 2)", "dict(a=1, a=2)", "dict(", "1 +", "[" * 200 + "]" * 200, "x" * 10_001])
def test_malformed_or_oversized_strings_are_one_line_errors(text):
    with pytest.raises(ConfigError, match=r"^key(\.a)?: ") as e:
        parse_call_string(text, "key")
    assert "\n" not in str(e.value)


def test_net_arch_pi_vf():
    pk = config_lib.load(None, ["ppo.policy_kwargs.net_arch={pi: [64, 64], vf: [256, 256]}"]).ppo.policy_kwargs
    assert (pk.pi_arch, pk.vf_arch) == ((64, 64), (256, 256)) and pk.net_arch == NetArch(pi=(64, 64), vf=(256, 256))
    assert (PolicyKwargs(net_arch=[32]).pi_arch, PolicyKwargs(net_arch=[32]).vf_arch) == ((32,), (32,))
    for override, words in [
        ("ppo.policy_kwargs.net_arch={pi: [64]}", "ppo.policy_kwargs.net_arch.vf: needs at least one"),
        ("ppo.policy_kwargs.net_arch={pi: [64], qf: [8]}", "ppo.policy_kwargs.net_arch.qf: unknown key"),
        ("ppo.policy_kwargs.net_arch={pi: [64, x], vf: [8]}", "ppo.policy_kwargs.net_arch.pi[1]: expected an integer"),
        ("ppo.policy_kwargs.net_arch={pi: [64], vf: [5000]}", "ppo.policy_kwargs.net_arch.vf: layers wider than 4096"),
    ]:
        with pytest.raises(ConfigError, match="^" + words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            config_lib.load(None, [override])
    with pytest.raises(ConfigError, match=r"^dqn\.policy_kwargs\.net_arch: "):
        config_lib.load(None, ["algo=dqn", "dqn.policy_kwargs.net_arch={pi: [64], vf: [64]}"])


def test_sde_fields_are_checked():
    c = config_lib.load(None, ["ppo.use_sde=true", "ppo.sde_sample_freq=4", "ppo.policy_kwargs.full_std=false"]).ppo
    assert c.use_sde and c.sde_sample_freq == 4 and not c.policy_kwargs.full_std
    for bad in (0, -2):
        with pytest.raises(ConfigError, match=r"^ppo\.sde_sample_freq: must be -1"):
            config_lib.load(None, [f"ppo.sde_sample_freq={bad}"])


def test_linear_clip_range_follows_sb3_progress_remaining():
    c = config_lib.load(None, ["ppo.clip_range=lin_0.2"]).ppo
    # SB3 evaluates the schedule in train(), after update k's rollout: 1 - (k + 1) / N remains.
    assert [c.clip_range_at(k, 4) for k in range(4)] == pytest.approx([0.15, 0.1, 0.05, 0.0])
    assert config_lib.load(None, ["ppo.clip_range=0.3"]).ppo.clip_range_at(3, 4) == 0.3
    with pytest.raises(ConfigError, match=r"^ppo\.clip_range: expected a number or 'lin_<number>'"):
        config_lib.load(None, ["ppo.clip_range=exp_0.2"])


def test_normalize_gamma_follows_the_zoo():
    # The zoo hands VecNormalize the block's gamma, whatever the normalize string says.
    block = "  policy: MlpPolicy\n  gamma: 0.9\n  normalize: \"dict(norm_reward=True, gamma=0.5)\"\n"
    cfg = config_lib.build(yaml.safe_load(f"ppo:\n{block}"))
    assert cfg.ppo.normalization.gamma is None and cfg.ppo.gamma == 0.9
    with pytest.raises(ConfigError, match=r"^ppo\.normalize\.gamma: "):
        config_lib.load(None, ["ppo.normalize={gamma: 0.5}"])


# ---------------------------------------------------------------------------------------------
# SB3's meanings an RL Zoo block relies on beyond its keys: PyTorch's init, the value loss.


def _zoo_cfg(file: str, env: str):
    data, _ = zoo.block_from_file(config_lib.load_data(f"tests/data/zoo/{file}"), file, env)
    return api.load_config(data, [])


def test_zoo_blocks_without_ortho_init_use_torch_default_init():
    """SB3's ortho_init=False keeps nn.Linear's default: U(+-1/sqrt(fan_in)) kernels AND biases."""
    from rlaccel.agents.ppo import networks as nets_lib

    cfg = _zoo_cfg("ppo.yml", "MountainCarContinuous-v0")
    assert cfg.agent.policy_kwargs.weight_init == "torch" and cfg.agent.policy_kwargs.ortho_init is False
    obs, act = gymnasium.spaces.Box(-1, 1, (2,)), gymnasium.spaces.Box(-1, 1, (1,))
    nets = nets_lib.make_networks(obs, act, cfg.agent.policy_kwargs, use_sde=True)
    params = nets_lib.init_params(nets, jax.random.PRNGKey(0), 2, -3.29)["policy"]
    for layer in params.values():
        fan_in = layer["kernel"].shape[0]
        bound = 1 / math.sqrt(fan_in)
        for x in (layer["kernel"], layer["bias"]):
            assert float(jnp.max(jnp.abs(x))) <= bound
            assert float(jnp.max(jnp.abs(x))) > 0  # not zeros
            if x.size >= 16:
                assert float(jnp.std(x)) > 0.8 * bound / math.sqrt(3)  # uniform's std
    # gSDE's latent features at the normalised mean state (obs = 0) are not zero: noise there.
    latent, _ = nets_lib.policy_features(params, jnp.zeros((1, 2)), "tanh")
    assert float(jnp.mean(jnp.abs(latent))) > 0.05


def test_rlaccel_native_sections_keep_flax_init_and_half_mse():
    cfg = api.load_config("configs/dqn_cartpole_purejaxrl.yaml", [])
    assert cfg.agent.policy_kwargs.weight_init == "flax"
    ppo = api.load_config("configs/ppo_cartpole.yaml", [])
    assert ppo.agent.policy_kwargs.weight_init == "flax" and ppo.agent.value_loss == "half_mse"
    assert _zoo_cfg("ppo.yml", "CartPole-v1").agent.value_loss == "mse"  # SB3's F.mse_loss, no 1/2
