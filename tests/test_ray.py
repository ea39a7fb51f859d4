"""Host actors as Ray actor processes (``actors.backend: ray``), on a real local Ray.

One cluster for the whole module (``two_nodes``): a head and a second node started with
``ray start --block`` on this machine, with token authentication, no dashboard, the second
node offering a custom resource the actors are pinned to. Every test that needs a cluster
joins it through ``actors.address``, except the SIGTERM test, whose run starts (and must stop)
its own local cluster, the default.

* bad input: unknown backend, a cluster address without a token, an unreachable address:
  one line naming the key, exit 2, nothing written;
* two nodes: PPO learns gym:CartPole-v1 (>= 475) with the actor on the second node, while
  the test kills the actor process with SIGKILL: restarted, counted, no update lost;
* an env that raises: exit 1 naming env and actor (today's contract), or with
  ``restart_on_env_error`` a fresh env and the run finishes;
* SIGTERM: exit 143 with a checkpoint, and no Ray or rlaccel process left behind;
* a client without the token (or with a wrong one) is refused by the cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import run_main, set_args

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "ppo_gym_cartpole_ray.yaml")
RAY = str(Path(sys.executable).with_name("ray"))
NODE_RESOURCE = "rlaccel_test_node"
RAY_PROCESS = ("raylet", "gcs_server", "ray::", "rlaccel train")


def ray_processes() -> dict[int, str]:
    """Live (not zombie) processes of Ray or rlaccel: pid -> command line."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return {int(r[0]): r[2] for r in rows if len(r) == 3 and not r[1].startswith("Z") and any(p in r[2] for p in RAY_PROCESS)}


def actor_pids(node_id: str) -> list[int]:
    """Live ``RemoteActor`` processes of the node ``node_id`` (other Ray clusters on this
    machine, e.g. a benchmark's, are not touched)."""
    procs = ray_processes()
    raylets = [pid for pid, cmd in procs.items() if "raylet" in cmd and node_id in cmd]
    pids = []
    for pid, cmd in procs.items():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd.startswith("ray::RemoteActor") and any(f"RAY_RAYLET_PID={r}".encode() in env for r in raylets):
            pids.append(pid)
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gcs_nodes(address: str, token: str | None) -> list:
    """The cluster's alive nodes, asked of the GCS over gRPC as a Ray client asks it, presenting ``token``."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=10)
    return [n for n in reply.node_info_list if n.state == 0]  # ALIVE


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node on 127.0.0.1 (token auth, no dashboard); stopped, and checked
    gone from the process table, at the end of the module."""
    token, port = secrets.token_hex(32), free_port()
    temp = tempfile.mkdtemp(prefix="rlt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {
        **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0", "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}", *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    procs = [head]
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "the Ray head did not start"
                time.sleep(0.1)
        worker = subprocess.Popen([RAY, "start", f"--address={address}", "--num-cpus=2", f'--resources={{"{NODE_RESOURCE}": 4}}', *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(worker)
        while len(gcs_nodes(address, token)) < 2:
            assert worker.poll() is None and time.time() < deadline, "the second Ray node did not join"
            time.sleep(0.2)
        worker_node = [n.node_id.hex() for n in gcs_nodes(address, token) if NODE_RESOURCE in n.resources_total]
        # A real Ray client without the token, started now and judged at the end (it retries for ~20 s before giving up).
        no_token_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": temp}
        intruder = subprocess.Popen([sys.executable, "-c", f"import ray; ray.init(address='{address}'); print('CONNECTED')"], env=no_token_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield {"address": address, "token": token, "worker_node": worker_node[0], "temp": temp, "intruder": intruder}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        left = {pid: cmd for pid, cmd in ray_processes().items() if temp in cmd}
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module's runs, which share programs (the
    learner step of the same config), and for the SIGTERM run's subprocess: what the runs test is
    unchanged, they only skip recompiling. Restored at the end."""
    import jax
    from jax._src import compilation_cache

    path = str(tmp_path_factory.mktemp("jax_cache"))
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield path
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture
def joined(two_nodes, monkeypatch):
    """Overrides that join the module's cluster, the token in this process's environment."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", two_nodes["token"])
    return ["actors.backend=ray", f"actors.address={two_nodes['address']}", f"actors.resources={{{NODE_RESOURCE}: 1}}"]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no_token"))
    run_dir = tmp_path / "run"
    port = free_port()  # nothing listens there
    cases = [
        (["actors.backend=rays"], "actors.backend"),
        ([f"actors.address=127.0.0.1:{port}"], "actors.address"),  # no token
    ]
    for overrides, key in cases:
        rc, _, err = run_main(["--config", CONFIG, *set_args(overrides), "--run-dir", str(run_dir)])
        assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {key}"), err
        assert not run_dir.exists()
    assert "token" in err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 64)
    rc, _, err = run_main(["--config", CONFIG, *set_args([f"actors.address=127.0.0.1:{port}"]), "--run-dir", str(run_dir)])
    assert rc == 2 and err.count("\n") == 1 and "actors.address: cannot reach" in err, err
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_two_nodes_learn_cartpole_through_a_sigkill(two_nodes, joined, tmp_path):
    """Issue 16's must-reach: >= 475 on gym:CartPole-v1 with the actor on the second node; its
    process is killed with SIGKILL mid-run, restarted, counted; every update is done once."""
    import jax
    import jax.numpy as jnp

    import rlaccel
    from rlaccel import checkpoint, placement
    from rlaccel.sources.host import HostSource

    killed: list[int] = []

    def kill_the_actor() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            actors = actor_pids(two_nodes["worker_node"])
            if actors:
                time.sleep(3.0)  # a few updates in
                os.kill(actors[0], signal.SIGKILL)
                killed.append(actors[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_actor, daemon=True)
    killer.start()
    run = rlaccel.train(CONFIG, overrides=[*joined, "eval.freq=0"], run_dir=tmp_path / "run", progress=False)  # judged on the training return
    killer.join()
    s = run.summary
    assert killed and s["status"] == "completed" and s["env_steps"] >= 149_000
    assert s["final_return"] >= 475, s["final_return"]
    assert s["actor_restarts"] == 1 and s["actor/restarts"] is not None
    assert [n["node_id"] for n in s["actor_nodes"]] == [two_nodes["worker_node"]]  # pinned to the second node
    assert s["actor/broadcast_bytes"] > 0 and s["actor/broadcast_bytes_fp32"] > 0
    assert s["placement"].startswith("host actors on ray")
    # The learner's state is untouched by the kill: Adam counted every minibatch of every update once.
    config = rlaccel.api.load_config(CONFIG, joined)
    template = HostSource(config, placement.resolve(config.placement)).initial_state(jax.random.PRNGKey(0))
    final, _ = checkpoint.restore(checkpoint.latest(run.run_dir / "checkpoints"), template)
    per_update = config.ppo.n_epochs * (config.ppo.n_envs * config.ppo.n_steps // config.ppo.batch_size)
    counts = [int(x) for x in jax.tree.leaves(final.agent.opt_state) if jnp.ndim(x) == 0 and jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and set(counts) == {s["updates"] * per_update}
    assert not actor_pids(two_nodes["worker_node"])  # killed at the end


@pytest.mark.slow
def test_env_error_stops_the_run_or_restarts_the_env(two_nodes, joined, tmp_path):
    small = ["env=gym:ray_envs:RayFailingCartPole-v0", "ppo.n_envs=4", "ppo.n_steps=8", "ppo.batch_size=32", "ppo.n_epochs=1", "logging.log_interval=1"]
    small.append("eval.freq=0")  # the actors' env errors; an evaluation env that raises is tests/test_eval.py's
    small.append("total_timesteps=320")  # 10 updates; the env fails in the 5th batch
    rc, _, err = run_main(["--config", CONFIG, *set_args([*joined, *small]), "--run-dir", str(tmp_path / "a"), "--no-progress"])
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 1 and len(line) == 1, err
    assert "gym:ray_envs:RayFailingCartPole-v0" in line[0] and "actor 0" in line[0] and "simulator exploded" in line[0]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["updates"] >= 1 and summary["checkpoint"]
    # With restart_on_env_error the env starts afresh (it fails on its 40th step: every 5th batch).
    overrides = [*joined, *small, "actors.restart_on_env_error=true"]
    rc, _, err = run_main(["--config", CONFIG, *set_args(overrides), "--run-dir", str(tmp_path / "b"), "--no-progress"])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert rc == 0 and summary["status"] == "completed" and summary["actor_restarts"] == 2, (err, summary.get("actor_restarts"))


@pytest.mark.slow
def test_sigterm_stops_a_local_cluster_with_nothing_left(tmp_path, compile_cache):
    """The default, a local cluster rlaccel starts: SIGTERM -> 143, a checkpoint, and every
    process the run started (GCS, raylet, actor and idle workers) gone."""
    before = set(ray_processes())
    run_dir = tmp_path / "run"
    overrides = set_args(["logging.log_interval=1", "logging.checkpoint_interval=1"])  # the learning test's programs
    cmd = [sys.executable, "-m", "rlaccel", "train", "--config", CONFIG, *overrides, "--run-dir", str(run_dir), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": compile_cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        from rlaccel import checkpoint

        while checkpoint.latest(run_dir / "checkpoints") is None:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        started = set(ray_processes()) - before
        assert any("gcs_server" in c for p, c in ray_processes().items() if p in started)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM" and summary["checkpoint"]
    left = {p: c for p, c in ray_processes().items() if p in started}
    assert not left, f"left behind: {left}"


def test_a_client_without_the_token_is_refused(two_nodes):
    import grpc

    address, token = two_nodes["address"], two_nodes["token"]
    assert len(gcs_nodes(address, token)) == 2
    for wrong in (None, "0" * 64):
        with pytest.raises(grpc.RpcError) as e:
            gcs_nodes(address, wrong)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    out, err = two_nodes["intruder"].communicate(timeout=90)
    assert two_nodes["intruder"].returncode != 0 and "CONNECTED" not in out
    assert "auth" in err.lower(), err[-2000:]
