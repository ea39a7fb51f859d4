"""Evaluation (``rlaccel.evaluate``, the loop's built-in hook; ``eval:`` in the config).

* A tiny real run with ``eval.freq`` = one chunk: ``eval/*`` read back with TensorBoard's own
  reader, ``summary.json``'s eval fields, ``best/`` holding the best int8 evaluation (restored
  and re-evaluated: the same figure), and ``--resume`` keeping that best.
* The compiled evaluation against a plain step-by-step loop over the same JAX env.
* Host mode (``gym:CartPole-v1``): the evaluation's return equals the exported ``numpy-int8``
  policy's on gymnasium's env from the same seeds (``rlaccel.deploy.evaluate``).
* ``eval.stop_at_return``: a threshold every evaluation reaches ends the run after the first,
  one none can reach never does.
* ``eval.background`` (``gym:`` episodes in a thread beside training): the same rows, steps,
  summary and ``best/`` as in turn; an evaluation in flight when the run stops is kept; a
  background ``stop_at_return`` stops at the next chunk end.
* The evaluation compiles beside the first chunks: a run stopped before its first evaluation
  returns only once that compile is done.
* Bad ``eval:`` input: one line, exit 2, nothing written.

DQN CartPole's deterministic ``eval_return`` is checked in ``tests/test_learning.py`` on its
cached training.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from cli_helpers import run_main, set_args, tree
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaccel import agent as agent_lib
from rlaccel import checkpoint, compile_cache, envs, eval_episodes
from rlaccel import config as config_lib
from rlaccel.sources.fused import FusedSource

EVAL = ["eval.freq=512", "eval.episodes=4"]  # tiny runs do 256 env steps per update, 2 per chunk
UNREACHABLE = "eval.stop_at_return=501"  # CartPole returns at most 500: the run must not stop
EVAL_TAGS = ("eval/mean_reward", "eval/std_reward", "eval/mean_ep_length", "eval/mean_reward_fp32", "eval/seconds")


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, cartpole_yaml, tiny_overrides):
    """The tiny PPO CartPole run (4 updates x 256 env steps, int8 actors) evaluating 4 episodes
    after every chunk of 512 env steps, with a ``stop_at_return`` no evaluation reaches."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    rc, _, err = run_main(["--config", str(cartpole_yaml), *set_args([*tiny_overrides, *EVAL, UNREACHABLE]), "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0, err
    return {"dir": run_dir, "summary": json.loads((run_dir / "summary.json").read_text()), "overrides": [*tiny_overrides, *EVAL]}


def test_eval_metrics_in_tensorboard_and_summary(eval_run):
    tags, summary = scalars(eval_run["dir"]), eval_run["summary"]
    for tag in EVAL_TAGS:
        assert [step for step, _ in tags.get(tag, [])] == [512, 1024], tag
    assert [step for step, _ in tags["eval/compile_s"]] == [512]
    last = {tag: values[-1][1] for tag, values in tags.items()}
    # CartPole pays 1 per step: return == length, within the time limit; int8 and fp32 both ran.
    for step, value in tags["eval/mean_reward"]:
        assert 1 <= value <= 500 and value == pytest.approx(dict(tags["eval/mean_ep_length"])[step])
    assert all(1 <= v <= 500 for _, v in tags["eval/mean_reward_fp32"])
    assert last["eval/std_reward"] >= 0 and last["eval/seconds"] > 0
    # summary.json: the last evaluation, the best, and the time spent, apart from training's.
    assert summary["eval_return"] == pytest.approx(last["eval/mean_reward"], rel=1e-6)
    assert summary["eval_return_std"] == pytest.approx(last["eval/std_reward"], rel=1e-6)
    assert summary["eval_return_fp32"] == pytest.approx(last["eval/mean_reward_fp32"], rel=1e-6)
    assert summary["eval_ep_len"] == pytest.approx(last["eval/mean_ep_length"], rel=1e-6)
    assert summary["eval_env_steps"] == 1024 and summary["evaluations"] == 2 and summary["eval_episodes"] == 4
    assert summary["eval_policy"] == "int8"
    assert summary["status"] == "completed" and summary["stopped_by"] is None and summary["updates"] == 4  # 501 was never reached
    assert summary["eval_best_return"] == pytest.approx(max(v for _, v in tags["eval/mean_reward"]), rel=1e-6)
    assert summary["eval_s"] == pytest.approx(sum(v for _, v in tags["eval/seconds"]), rel=1e-5)
    # The evaluation compiled beside the chunks: the loop's own time splits into training,
    # evaluating, waiting for that compile and compiling the chunk.
    assert summary["eval_compile_s"] > 0 and summary["eval_compile_wait_s"] >= 0
    assert summary["train_s"] + summary["eval_s"] + summary["eval_compile_wait_s"] + summary["compile_s"] <= summary["wall_s"]


def test_evaluations_npz_is_sb3s_eval_log(eval_run):
    """``evaluations.npz`` as SB3's ``EvalCallback`` writes it (the RL Zoo's plots read it):
    per evaluation its step and every episode's return and length, the int8 policy's under
    SB3's keys and the fp32 source's beside them; the same figures as TensorBoard's rows."""
    tags = scalars(eval_run["dir"])
    with np.load(eval_run["dir"] / "evaluations.npz") as log:
        assert sorted(log.files) == ["ep_lengths", "ep_lengths_fp32", "results", "results_fp32", "timesteps"]
        assert log["timesteps"].tolist() == [512, 1024] and log["results"].shape == log["ep_lengths"].shape == (2, 4)
        for key, tag in (("results", "eval/mean_reward"), ("results_fp32", "eval/mean_reward_fp32")):
            np.testing.assert_allclose(log[key].mean(axis=1), [v for _, v in tags[tag]], rtol=1e-6)
        np.testing.assert_array_equal(log["results"], log["ep_lengths"])  # CartPole: 1 a step


def test_evaluations_npz_has_the_arrays_of_sb3s_own(eval_run, tmp_path):
    """The keys SB3's ``EvalCallback`` writes, with its dtypes and ranks (SB3 itself, where installed)."""
    pytest.importorskip("torch")
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback

    import gymnasium

    callback = EvalCallback(gymnasium.make("CartPole-v1"), n_eval_episodes=2, eval_freq=64, log_path=str(tmp_path), verbose=0)
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu").learn(128, callback=callback)
    with np.load(tmp_path / "evaluations.npz") as theirs, np.load(eval_run["dir"] / "evaluations.npz") as ours:
        for key in theirs.files:
            assert (ours[key].dtype, ours[key].ndim) == (theirs[key].dtype, theirs[key].ndim), key


def test_best_checkpoint_holds_the_best_int8_evaluation(eval_run):
    run_dir, summary = eval_run["dir"], eval_run["summary"]
    best = checkpoint.list_checkpoints(run_dir / "best")
    assert len(best) == 1 and str(best[0]) == summary["eval_best_checkpoint"]
    rewards = scalars(run_dir)["eval/mean_reward"]
    first_max = next(step for step, v in rewards if v == max(v for _, v in rewards))  # a tie keeps the earlier one
    meta = checkpoint.read_meta(best[0])
    assert meta["update"] * 256 == first_max == summary["eval_best_env_steps"] and meta["eval"]["env_steps"] == first_max
    # The checkpoint is the evaluated policy: restored and evaluated again, the same figures.
    config = config_lib.load(run_dir / "config.yaml")
    source = FusedSource(*_agent_and_env(config))
    state, _ = checkpoint.restore(best[0], source.initial_state(jax.random.PRNGKey(0)))
    program = eval_episodes.make_program(source.agent, envs.make(config.env), episodes=4, max_steps=500)
    again = compile_cache.jit(eval_episodes.keyed(program))(state.agent, np.int32(config.seed), np.int32(meta["update"]))  # as the run compiled it
    assert float(np.mean(again["int8"].returns)) == meta["eval"]["mean_reward"]
    assert float(np.mean(again["fp32"].returns)) == meta["eval"]["mean_reward_fp32"]


def test_stop_at_return_ends_the_run_at_the_first_evaluation_reaching_it(tmp_path, cartpole_yaml, tiny_overrides):
    # Every CartPole episode returns >= 1: the run stops after the first evaluation (512 env
    # steps, 2 of 4 updates). The eval_run fixture's 501, which none reaches, runs to the end.
    run_dir = tmp_path / "run"
    rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args([*tiny_overrides, *EVAL, "eval.stop_at_return=1"]), "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_by"] == "eval.stop_at_return" and "stopped (eval.stop_at_return)" in out
    assert summary["updates"] == 2 and summary["env_steps"] == 512 and [step for step, _ in scalars(run_dir)["eval/mean_reward"]] == [512]
    assert summary["eval_return"] >= 1 and checkpoint.read_meta(summary["checkpoint"])["update"] == 2


def test_a_run_ending_before_its_first_evaluation_waits_for_its_compile(tmp_path, cartpole_yaml, tiny_overrides, monkeypatch):
    # The evaluation compiles in a thread beside the first chunks (here made to take 2 s more):
    # a run stopped after one update (its first evaluation is due after two) returns only once
    # that compile is done, so no thread is left compiling while the process exits.
    import threading
    import time

    import rlaccel

    compile_program = compile_cache.AheadProgram._compile

    def slow(self, args):
        time.sleep(2.0)
        compile_program(self, args)

    monkeypatch.setattr(compile_cache.AheadProgram, "_compile", slow)
    run = rlaccel.train(str(cartpole_yaml), overrides=[*tiny_overrides, *EVAL], run_dir=tmp_path / "run", progress=False, stop_at=1)
    summary = run.summary
    assert summary["status"] == "stopped" and summary["updates"] == 1 and summary["evaluations"] == 0
    assert summary["eval_compile_s"] > 0 and summary["eval_compile_wait_s"] == 0  # compiled, never waited for
    assert not [t.name for t in threading.enumerate() if t.name == "rlaccel-eval-compile"]


def _agent_and_env(config):
    env = envs.make(config.env, auto_reset=True)
    spec = agent_lib.make(config, env)
    return spec.agent, env, spec.num_envs, spec.num_steps


def test_resume_keeps_the_best(eval_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(eval_run["dir"], run_dir)
    before = eval_run["summary"]
    rc, _, err = run_main(["--resume", str(run_dir), "--set", "total_timesteps=1536", "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluations"] == 1 and summary["eval_env_steps"] == 1536  # the final one; 512 and 1024 were done
    new = summary["eval_return"]
    assert summary["eval_best_return"] == pytest.approx(max(before["eval_best_return"], new), rel=1e-6)
    best = checkpoint.list_checkpoints(run_dir / "best")
    assert len(best) == 1 and checkpoint.read_meta(best[0])["update"] == (6 if new > before["eval_best_return"] else before["eval_best_env_steps"] // 256)
    assert [step for step, _ in scalars(run_dir)["eval/mean_reward"]] == [512, 1024, 1536]
    with np.load(run_dir / "evaluations.npz") as log:  # the interrupted run's evaluations kept, the new one added
        assert log["timesteps"].tolist() == [512, 1024, 1536] and log["results"].shape == (3, 4)


def test_compiled_episodes_match_a_step_by_step_loop():
    """``run_episodes`` (vmapped, ``lax.while_loop``, masked) against one env stepped at a time
    in Python from the same starting states, with a step bound that cuts some episodes short."""
    config = config_lib.load("configs/ppo_cartpole.yaml")
    agent, *_ = _agent_and_env(config)
    env = envs.make("CartPole-v1")
    agent_state = compile_cache.jit(agent.init)(jax.random.PRNGKey(3))
    params = agent.actor_params(agent_state, "fp32")  # (int8 compiles 4x longer; the mechanics are the same)
    start = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(4), 16))
    bound = 9  # the untrained policy's episodes last 8-10 steps
    got = compile_cache.jit(lambda p, s: eval_episodes.run_episodes(env, agent, p, s, jax.random.PRNGKey(5), max_steps=bound))(params, start)
    head, step = compile_cache.jit(agent.head), compile_cache.jit(env.step)
    returns, lengths = [], []
    for i in range(16):
        state, obs = jax.tree.map(lambda x, i=i: x[i], start)
        total, steps, done = 0.0, 0, False
        while not done and steps < bound:
            action = int(np.argmax(np.asarray(head(params, obs[None]))[0]))
            state, obs, reward, terminated, truncated, _ = step(jax.random.PRNGKey(0), state, action)
            total, steps, done = total + float(reward), steps + 1, bool(terminated or truncated)
        returns.append(total)
        lengths.append(steps)
    np.testing.assert_array_equal(np.asarray(got.lengths), lengths)
    np.testing.assert_array_equal(np.asarray(got.returns), returns)
    assert 0 < sum(n == bound for n in lengths) < 16, lengths  # the bound cut some episodes, not all


def test_an_evaluation_env_that_raises_stops_the_run_cleanly(tmp_path, monkeypatch):
    """An evaluation whose gymnasium env raises (its episodes replaced by one that raises as a
    crashing simulator would) is a fault like an actor's: one ``error:`` line naming the
    evaluation, exit 1, ``status: failed`` and a checkpoint of the trained state."""
    from rlaccel import eval_episodes

    def exploding(*args, **kwargs):
        raise RuntimeError("simulator exploded")

    monkeypatch.setattr(eval_episodes, "gym_episodes", exploding)
    run_dir = tmp_path / "run"
    overrides = ["total_timesteps=512", "ppo.n_epochs=1", "logging.log_interval=1", "logging.probe_seconds=0", "eval.freq=512", "eval.episodes=2"]
    rc, _, err = run_main(["--config", "configs/ppo_gym_cartpole.yaml", *set_args(overrides), "--run-dir", str(run_dir), "--no-progress"])
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "evaluation after update 1" in lines[0] and "simulator exploded" in lines[0], err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["updates"] == 1 and summary["checkpoint"]


def test_host_mode_eval_is_the_deployed_policy_on_gymnasium(tmp_path):
    """``gym:CartPole-v1`` (host actors): the evaluation's int8 return equals what the exported
    ``numpy-int8`` policy of the best checkpoint scores on gymnasium's env from the same seeds."""
    from rlaccel.deploy import load_policy
    from rlaccel.deploy.evaluate import episode_returns
    from rlaccel.deploy.export import export
    from rlaccel.eval_episodes import eval_seeds

    run_dir = tmp_path / "run"
    overrides = ["total_timesteps=1024", "ppo.n_epochs=1", "logging.log_interval=1", "logging.probe_seconds=0", "eval.freq=512", "eval.episodes=3"]
    rc, _, err = run_main(["--config", "configs/ppo_gym_cartpole.yaml", *set_args(overrides), "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["placement"].startswith("host actors") and summary["evaluations"] == 2 and summary["eval_env_steps"] == 1024
    tags = scalars(run_dir)
    for tag in EVAL_TAGS:
        assert [step for step, _ in tags.get(tag, [])] == [512, 1024], tag
    assert summary["eval_return"] == pytest.approx(summary["eval_ep_len"]) and 1 <= summary["eval_return"] <= 500
    best = checkpoint.latest(run_dir / "best")
    meta = checkpoint.read_meta(best)
    policy = load_policy(export(run_dir, tmp_path / "best.rlpolicy", checkpoint_path=best), "numpy-int8")
    seed0 = int(eval_seeds(0, meta["update"], 3)[0])
    assert episode_returns(policy, "CartPole-v1", 3, seed=seed0).mean() == meta["eval"]["mean_reward"]


def _gym_run(tmp_path, name: str, background: bool, *extra: str, stop_at: int | None = None) -> tuple[dict, dict]:
    """``gym:CartPole-v1`` (host actors, no policy lag: the same run whatever the timing), 4
    updates of 512 env steps, evaluating 3 episodes after each; its summary and eval rows."""
    import rlaccel

    overrides = ["total_timesteps=2048", "ppo.n_epochs=1", "logging.log_interval=1", "logging.probe_seconds=0", "actors.max_policy_lag=0", "eval.freq=512", "eval.episodes=3", f"eval.background={str(background).lower()}", *extra]
    run = rlaccel.train("configs/ppo_gym_cartpole.yaml", overrides=overrides, run_dir=tmp_path / name, progress=False, stop_at=stop_at)
    return run.summary, scalars(tmp_path / name)


def test_background_evaluation_gives_the_figures_of_an_evaluation_in_turn(tmp_path):
    """``eval.background`` (on for ``gym:`` envs) plays the episodes in a thread beside the next
    chunks: the same rows at the same steps, the same summary and the same ``best/`` as
    evaluating in turn; only the seconds differ."""
    fg, fg_tags = _gym_run(tmp_path, "in_turn", False)
    bg, bg_tags = _gym_run(tmp_path, "background", True)
    assert (fg["eval_background"], bg["eval_background"]) == (False, True)
    assert fg["evaluations"] == bg["evaluations"] == 4 and fg["final_return"] == bg["final_return"]
    for tag in EVAL_TAGS[:-1]:
        assert [s for s, _ in bg_tags[tag]] == [512, 1024, 1536, 2048], tag
        assert bg_tags[tag] == fg_tags[tag], tag
    for key in ("eval_return", "eval_return_std", "eval_return_fp32", "eval_ep_len", "eval_env_steps", "eval_best_return", "eval_best_env_steps"):
        assert bg[key] == fg[key], key
    assert checkpoint.read_meta(bg["eval_best_checkpoint"])["update"] == checkpoint.read_meta(fg["eval_best_checkpoint"])["update"]
    assert 0 <= bg["eval_wait_s"] and fg["eval_wait_s"] == fg["eval_s"]


@pytest.mark.parametrize("config, default", [("configs/ppo_halfcheetah.yaml", True), ("configs/ppo_gym_cartpole.yaml", False)])
def test_background_evaluation_is_on_by_default_for_mujoco_envs_only(config, default):
    """``eval.background: null``: a thread for gymnasium's MuJoCo envs (C steps, long learner
    phases), in turn for Python envs such as CartPole (whose steps need the actors' GIL);
    ``true`` / ``false`` decide either way."""
    from rlaccel import evaluate, sources

    for setting, expected in (("null", default), ("true", True), ("false", False)):
        cfg = config_lib.load(config, ["eval.freq=1000", f"eval.background={setting}"])
        evaluator = evaluate.for_run(cfg, sources.make(cfg), None, 0)
        assert evaluator.summary()["eval_background"] is expected, setting
        evaluator.close()


def test_background_evaluation_in_flight_when_the_run_stops_is_kept(tmp_path):
    """A run stopped after update 2 (``stop_at``) with the evaluation of update 2 still in
    flight: the loop waits for it, and its rows and summary figures are there."""
    summary, tags = _gym_run(tmp_path, "stopped", True, stop_at=2)
    assert summary["status"] == "stopped" and summary["updates"] == 2 and summary["evaluations"] == 2
    assert [s for s, _ in tags["eval/mean_reward"]] == [512, 1024] and summary["eval_env_steps"] == 1024


def test_background_evaluation_failing_as_the_run_stops_is_reported(tmp_path, monkeypatch):
    """The evaluation in flight when the run stops (``stop_at``) raises: the run still stops
    as asked, and the failure is in ``summary.json``'s ``eval_error``, not lost."""
    from rlaccel import eval_episodes

    def exploding(*args, **kwargs):
        raise RuntimeError("simulator exploded")

    monkeypatch.setattr(eval_episodes, "gym_episodes", exploding)
    summary, _ = _gym_run(tmp_path, "failing", True, stop_at=1)
    assert summary["status"] == "stopped" and summary["updates"] == 1 and summary["evaluations"] == 0
    assert summary["eval_error"] == "evaluation after update 1: RuntimeError: simulator exploded"


def test_background_stop_at_return_stops_at_the_next_chunk_end(tmp_path):
    """``stop_at_return`` on a background evaluation: the result of update 1 is taken at the
    chunk end of update 2, which ends the run without evaluating again; ``best/`` holds update 1."""
    summary, tags = _gym_run(tmp_path, "stop", True, "eval.stop_at_return=1")
    assert summary["status"] == "stopped" and summary["stopped_by"] == "eval.stop_at_return" and summary["updates"] == 2
    assert [s for s, _ in tags["eval/mean_reward"]] == [512] and summary["evaluations"] == 1
    assert checkpoint.read_meta(summary["eval_best_checkpoint"])["update"] == 1


BAD_EVAL = {
    "background_on_a_jax_env": ("eval.background=true", ["eval.background:", "only gym: envs"]),
    "negative_freq": ("eval.freq=-1", ["eval.freq:", "must be >= 0"]),
    "no_episodes": ("eval.episodes=0", ["eval.episodes:", "must be >= 1"]),
    "typo": ("eval.episode=5", ["unknown key 'eval.episode'", "did you mean 'eval.episodes'?"]),
    "wrong_type": ("eval.deterministic=sometimes", ["eval.deterministic:", "expected true or false"]),
    "bound": ("eval.max_episode_steps=0", ["eval.max_episode_steps:", "must be >= 1"]),
    "stop_not_finite": ("eval.stop_at_return=.inf", ["eval.stop_at_return:", "must be a finite return"]),
    "stop_without_eval": ("eval.stop_at_return=500,eval.freq=0", ["eval.stop_at_return:", "set eval.freq > 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_EVAL))
def test_bad_eval_config_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, cartpole_yaml, case):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    overrides, words = BAD_EVAL[case]
    rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args(overrides.split(",")), "--no-progress"])
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert tree(tmp_path) == before
