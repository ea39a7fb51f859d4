"""Sweeps (``rlaccel.sweep``: grid, program, report, search; ``rlaccel sweep``).

The equivalence test is the contract of a sweep: a vmapped, sharded grid trains every
member exactly as ``make_train`` trains it alone with the same key.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from rlaccel import compile_cache
from rlaccel import config as config_lib
from rlaccel import sweep
from rlaccel.sweep import search
from rlaccel.sweep.program import run_group
from rlaccel.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
# 4 updates of 4 envs x 64 steps, one epoch of 4 minibatches, 2 updates per compiled chunk.
TINY = ["total_timesteps=1024", "ppo.n_steps=64", "ppo.batch_size=64", "ppo.n_epochs=1", "logging.log_interval=2"]


def _load_cli():
    """``rlaccel sweep ARGV`` in process, as ``cli.main(["sweep", *ARGV])``."""
    from rlaccel import cli

    return types.SimpleNamespace(main=lambda argv: cli.main(["sweep", *argv]))


def _tiny(cartpole_yaml: Path, *extra: str) -> list[str]:
    return ["--config", str(cartpole_yaml), *[a for o in TINY + list(extra) for a in ("--set", o)], "--no-progress"]


# ---------------------------------------------------------------------------------------------
# Pure pieces.


def test_parse_grid_values_are_yaml_lists():
    grid = sweep.parse_grid(["ppo.learning_rate=1e-4, lin_3e-4", "ppo.policy_kwargs.net_arch=[64,64],[32]"])
    assert grid == {"ppo.learning_rate": [1e-4, "lin_3e-4"], "ppo.policy_kwargs.net_arch": [[64, 64], [32]]}
    for bad, match in [("ppo.gamma", "expected key.sub="), ("seed=1,2", "use --seeds"), ("ppo.gamma=", "no values")]:
        with pytest.raises(ConfigError, match=match):
            sweep.parse_grid([bad])


def test_traced_and_static_keys(cartpole_yaml):
    base = config_lib.load(cartpole_yaml, TINY)
    settings = sweep.make_settings(base, sweep.parse_grid(["ppo.learning_rate=lin_1e-3,lin_3e-4", "ppo.n_epochs=1,2", "ppo.clip_range=0.1,0.2"]))
    traced, groups = sweep.group_settings(settings)
    assert traced == ("ppo.clip_range", "ppo.learning_rate")
    assert [len(g) for g in groups] == [4, 4]  # n_epochs changes a loop length: one compile each
    assert {s.config.ppo.n_epochs for s in groups[0]} == {1} and {s.config.ppo.n_epochs for s in groups[1]} == {2}
    # A schedule that differs (constant vs linear) is structure, not a value: separate compiles.
    mixed = sweep.make_settings(base, sweep.parse_grid(["ppo.learning_rate=1e-3,lin_1e-3"]))
    assert sweep.group_settings(mixed)[0] == ()
    copy = sweep.with_values(base, {"ppo.ent_coef": 0.5})
    assert copy.ppo.ent_coef == 0.5 and base.ppo.ent_coef == 0.01  # the validated config is untouched


# ---------------------------------------------------------------------------------------------
# The contract: vmap (and sharding) changes nothing but speed.


@pytest.mark.slow
def test_grid_matches_separate_runs_sharded(cartpole_yaml):
    """2 settings (learning rate lin_1e-3 with entropy coefficient 0, lin_3e-4 with 0.01: both
    traced) x 2 seeds, sharded over the two forced CPU devices, against 4 runs of the normal
    single-run path with the same keys.

    Episode returns must be identical. Losses and parameters may differ by float
    reassociation only: batched (vmapped) matmuls and reductions may sum in another order,
    and ``gamma * lambda``-style products of hyperparameters are rounded in float32 when
    traced but folded in float64 when they are Python constants. That is ~1e-7 relative
    per op; over 4 updates we allow rtol 1e-4 / atol 1e-5 (a wrong member, learning rate or
    entropy coefficient moves them by more, see the last assertions).
    """
    from rlaccel.sources.fused import make_train

    assert len(jax.devices()) == 2
    base = config_lib.load(cartpole_yaml, TINY)  # int8 actors, the default
    grid = sweep.make_settings(base, sweep.parse_grid(["ppo.learning_rate=lin_1e-3,lin_3e-4", "ppo.ent_coef=0,0.01"]))
    settings = [grid[0], grid[3]]  # the diagonal of the 2 x 2 grid: half the single-run compiles
    traced, groups = sweep.group_settings(settings)
    assert traced == ("ppo.ent_coef", "ppo.learning_rate") and len(groups) == 1
    seeds = [base.seed, base.seed + 1]
    result = run_group(groups[0], traced, seeds)
    assert result.devices == 2
    params = result.state.agent.params
    leaf = jax.tree.leaves(params)[0]
    assert len(leaf.sharding.device_set) == 2 and leaf.addressable_shards[0].data.shape[0] == 2  # 4 members, 2 per device

    names = ("rollout/ep_rew_mean", "train/loss", "train/learning_rate", "train/approx_kl", "train/entropy_loss")
    for i, setting in enumerate(settings):
        train = compile_cache.jit(make_train(setting.config))
        for j, seed in enumerate(seeds):
            member = i * len(seeds) + j
            state, metrics = train(jax.random.PRNGKey(seed))
            np.testing.assert_array_equal(result.metrics["rollout/ep_rew_mean"][member], np.asarray(metrics["rollout/ep_rew_mean"]))
            for name in names[1:]:
                np.testing.assert_allclose(result.metrics[name][member], np.asarray(metrics[name]), rtol=1e-4, atol=1e-5, err_msg=name)
            for swept, alone in zip(jax.tree.leaves(params), jax.tree.leaves(state.agent.params)):
                np.testing.assert_allclose(np.asarray(swept[member]), np.asarray(alone), rtol=1e-4, atol=1e-5)
    # The comparison can fail: settings really differ, and the schedule anneals.
    lr = result.metrics["train/learning_rate"]
    assert lr[0, 0] == pytest.approx(1e-3) and lr[2, 0] == pytest.approx(3e-4) and lr[0, -1] < lr[0, 0]
    assert not np.allclose(result.metrics["train/loss"][0], result.metrics["train/loss"][2], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(result.metrics["rollout/ep_rew_mean"][0], result.metrics["rollout/ep_rew_mean"][2])
    # Each member used its own entropy coefficient: the single runs above (same key, the
    # setting's own config) match it to 1e-4, and ent_coef 0.01 moves the loss by ~7e-3.


@pytest.mark.slow
def test_dqn_hyperparameters_are_traced(tmp_path):
    """DQN's epsilon, learning rate and learning_starts vmapped in one compile (its
    ``lax.cond`` runs under ``shard_map`` too), each member with its own values."""
    base = config_lib.load(
        REPO / "configs" / "dqn_cartpole.yaml",
        ["total_timesteps=600", "dqn.learning_starts=200", "dqn.buffer_size=600", "logging.log_interval=30", "placement.actor.precision=fp32"],
    )
    grid = sweep.parse_grid(["dqn.learning_rate=1e-3,1e-4", "dqn.exploration_final_eps=0.1,0.5", "dqn.learning_starts=200,400"])
    traced, groups = sweep.group_settings(sweep.make_settings(base, grid))
    assert traced == ("dqn.exploration_final_eps", "dqn.learning_rate", "dqn.learning_starts") and len(groups) == 1
    result = run_group(groups[0], traced, [0])
    eps, lr, loss = (result.metrics[k] for k in ("rollout/exploration_rate", "train/learning_rate", "train/loss"))
    for i, s in enumerate(groups[0]):
        assert lr[i, -1] == pytest.approx(s.config.dqn.learning_rate)
        assert eps[i, -1] == pytest.approx(s.config.dqn.exploration_final_eps, abs=1e-6)  # decayed over 300 of 600 steps
        first_learn = s.config.dqn.learning_starts // 10  # 10 transitions per update; learning once more than learning_starts (SB3)
        assert np.isnan(loss[i, first_learn - 1]) and np.isfinite(loss[i, first_learn])


# ---------------------------------------------------------------------------------------------
# The command line.


@pytest.mark.slow
def test_sweep_cli_writes_results(cartpole_yaml, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = _load_cli()
    out = tmp_path / "sw"
    rc = cli.main(_tiny(cartpole_yaml, "ppo.n_steps=32", "ppo.batch_size=32", "placement.actor.precision=fp32") + ["--seeds", "2", "--grid", "ppo.learning_rate=3e-3,1e-5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert gc.isenabled() and gc.get_freeze_count() == 0  # run_grid's start-up hold ended (rlaccel.gcpause)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("setting,ppo.learning_rate,seeds,final_return_mean,final_return_std,final_return_min") and len(rows) == 3
    report = json.loads((out / "results.json").read_text())
    assert [len(r["final_returns"]) for r in report["results"]] == [2, 2] and report["traced_keys"] == ["ppo.learning_rate"]
    for r in report["results"]:
        assert r["final_return_min"] <= r["final_return_mean"] <= r["final_return_max"] and r["steps_per_s"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TensorBoard: one run per setting, its scalars and the hparams plugin entry.
    runs = sorted(p.name for p in (out / "tb").iterdir())
    assert runs == [r["setting"] for r in report["results"]]
    acc = EventAccumulator(str(out / "tb" / runs[0])).Reload()
    assert len(acc.Scalars("rollout/ep_rew_mean")) == 8
    assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")
    # The best config loads as a train.py config and carries the best setting's value.
    best = max(report["results"], key=lambda r: r["final_return_mean"])
    loaded = config_lib.load(out / "best_config.yaml")
    assert loaded.ppo.learning_rate == best["ppo.learning_rate"] and loaded.total_timesteps == 1024
    assert cli.main(["--export-best", str(out), "--to", str(tmp_path / "b.yaml")]) == 0
    assert config_lib.load(tmp_path / "b.yaml") == loaded


def test_sweep_cli_takes_a_cpu_device_per_core(cartpole_yaml, tmp_path):
    """Without a device count in ``XLA_FLAGS``, ``rlaccel sweep`` on a CPU shards its members
    over one device per core they can use (``placement.split_cpu``): the CartPole config's one
    XLA thread would otherwise leave the other cores idle."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "rlaccel", "sweep", *_tiny(cartpole_yaml, "placement.actor.precision=fp32"), "--seeds", "2", "--grid", "ppo.ent_coef=0,0.01", "--out", str(tmp_path / "sw")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert (report["groups"], report["devices"]) == (1, min(len(os.sched_getaffinity(0)), 4))


@pytest.mark.parametrize("xla_flags, devices_config, asked", [("", 1, 3), ("--xla_force_host_platform_device_count=1", 1, None), ("", 2, None)])
def test_split_cpu_leaves_a_count_that_is_set(monkeypatch, xla_flags, devices_config, asked):
    """``placement.split_cpu`` asks JAX for the devices only where nothing set a count (this
    process's backends run, so their check is stood in for)."""
    from jax._src import xla_bridge

    from rlaccel import placement

    calls = []
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    config = types.SimpleNamespace(jax_num_cpu_devices=devices_config, update=lambda name, value: calls.append((name, value)))
    monkeypatch.setattr(placement, "jax", types.SimpleNamespace(config=config))
    placement.split_cpu(3)
    assert calls == ([("jax_num_cpu_devices", asked)] if asked else [])


BAD_SPACES = {
    "unknown_dist": ("ppo.learning_rate: {loguniform: [1e-5, 1e-2]}", "unknown distribution 'loguniform'"),
    "bounds": ("ppo.learning_rate: {log_uniform: [0, 1e-2]}", "log_uniform needs low > 0"),
    "order": ("ppo.ent_coef: {uniform: [0.1, 0.0]}", "needs low < high"),
    "key": ("ppo.lr: {log_uniform: [1e-5, 1e-2]}", "unknown key 'ppo.lr'"),
    "range": ("ppo.gamma: {uniform: [0.9, 1.5]}", "ppo.gamma: must be in [0, 1]"),
    "shape": ("ppo.n_epochs: 3", "expected one distribution"),
}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "ppo.ent_coeff=0,0.01"], "unknown key 'ppo.ent_coeff'; did you mean 'ppo.ent_coef'?"),
        (["--grid", "ppo.lr=1e-4,3e-4"], "unknown key 'ppo.lr'; valid keys: adam_eps"),
        (["--grid", "ppo.gamma=0.9,2"], "ppo.gamma: must be in [0, 1]"),
        (["--grid", "ppo.batch_size=100"], "ppo.batch_size: must divide"),
        (["--grid", "ppo.gamma"], "expected key.sub=value1"),
        (["--seeds", "0"], "--seeds: expected an integer >= 1, got '0'"),
        (["--search", "optuna", "--trials", "2"], "--space FILE is required"),
        (["--search", "optuna", "--space", "configs/search_ppo_cartpole.yaml"], "--trials"),
        (["--search", "optuna", "--space", "configs/search_ppo_cartpole.yaml", "--trials", "2", "--storage", "redis://x"], "unsupported scheme 'redis'"),
        (["--trials", "3"], "--trials only applies with --search"),
        (["--devices", "3"], "--devices 3: JAX sees 2 device(s)"),
        *[(["--search", "optuna", "--trials", "2", "--space", f"SPACE:{k}"], m) for k, (_, m) in BAD_SPACES.items()],
    ],
)
def test_bad_input_exit_2_nothing_written(cartpole_yaml, tmp_path, capsys, args, message):
    cli = _load_cli()
    args = list(args)
    if any(a.startswith("SPACE:") for a in args):
        i = next(i for i, a in enumerate(args) if a.startswith("SPACE:"))
        space = tmp_path / "space.yaml"
        space.write_text(BAD_SPACES[args[i][6:]][0] + "\n")
        args[i] = str(space)
    out = tmp_path / "out"
    assert cli.main(_tiny(cartpole_yaml) + args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_export_best_of_missing_sweep(tmp_path, capsys):
    assert _load_cli().main(["--export-best", str(tmp_path)]) == 2
    assert "no readable sweep results" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Optuna: one study, two worker processes.


@pytest.mark.slow
def test_two_workers_share_one_study(cartpole_yaml, tmp_path):
    """Two processes on one journal file finish exactly N trials: each trial number once,
    every trial finished (none left RUNNING or WAITING), and the workers' own counts add up."""
    import optuna

    n = 5
    space = tmp_path / "space.yaml"
    space.write_text("ppo.learning_rate: {log_uniform: [1.0e-4, 3.0e-3]}\nppo.ent_coef: {uniform: [0.0, 0.02]}\n")
    journal = tmp_path / "study.journal"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "rlaccel", "sweep", *_tiny(cartpole_yaml, "placement.actor.precision=fp32"), "--search", "optuna", "--space", str(space), "--trials", str(n), "--seeds", "1", "--storage", str(journal), "--study", "two"]
    procs = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"w{i}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-2000:]
    ran = [int(stdout.split("this worker ran ")[1].split(" ")[0]) for stdout, _ in outputs]
    assert sum(ran) == n

    study = optuna.load_study(study_name="two", storage=search.make_storage(str(journal)))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert all(set(t.params) == {"ppo.learning_rate", "ppo.ent_coef"} for t in trials)
    assert all(len(t.intermediate_values) >= 1 for t in trials)  # the pruner was fed per-chunk returns
    per_worker = {}
    for t in trials:
        per_worker[t.user_attrs["worker"]] = per_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(per_worker.values()) == sorted(r for r in ran if r)  # who ran what, as each worker counted
    assert len({t.params["ppo.learning_rate"] for t in trials}) == n  # sampled, not n copies of one
    # Each worker wrote the study's table and a best config that trains.
    table = json.loads((tmp_path / "w0" / "trials.json").read_text())
    assert table["best_trial"] is not None
    config_lib.load(tmp_path / "w0" / "best_config.yaml")
    assert yaml.safe_load((tmp_path / "w0" / "best_config.yaml").read_text())["ppo"]["learning_rate"] == pytest.approx(table["best_params"]["ppo.learning_rate"])
