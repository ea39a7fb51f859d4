"""Host actors as Ray actor processes (``actors.backend: ray``): the cluster. The actor
process and the learner's side of the pool are in ``ray_pool.py``. No JAX here; ``ray`` is
imported on use.

* :func:`check` (run by ``rlaccel.api.validate``, before anything is written): ray installed;
  with ``actors.address`` a token to present and a reachable address, else one line naming
  the key (``ConfigError``, exit 2).
* :class:`Cluster`: ``ray.init`` for the run. Without ``actors.address`` it starts a local
  cluster with Ray's token authentication (``RAY_AUTH_MODE=token`` and a fresh random
  ``RAY_AUTH_TOKEN`` for this run: a client without it is refused) and no dashboard, and stops
  it in :meth:`Cluster.close`; with an address it joins that cluster and only disconnects.
* ``ray_pool.RemoteActor`` / ``ray_pool.ActorPool``: the actor processes and the learner's
  handle on them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.schema import ConfigError

__all__ = ["Cluster", "check", "import_ray"]

TOKEN_ENV, TOKEN_PATH_ENV, MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"


def import_ray() -> Any:
    """``ray``, or a ``ConfigError`` naming ``actors.backend`` when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("actors.backend: ray is not installed; pip install 'rlaccel[ray]' (or use backend: thread)") from None
    return ray


def has_token() -> bool:
    """A Ray auth token this process can present: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token`` (Ray's own lookup order)."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return True
    path = os.environ.get(TOKEN_PATH_ENV) or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file() and Path(path).read_text().strip() != ""


def resolve_address(address: str) -> str:
    """``host:port`` for ``actors.address`` (``auto``: ``RAY_ADDRESS``, else the cluster that
    ``ray start --head`` recorded on this machine)."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS")
    if not found:
        import_ray()
        from ray._private.utils import read_ray_address

        found = read_ray_address()
    if not found:
        raise ConfigError("actors.address: auto found no Ray cluster (RAY_ADDRESS is unset and no `ray start --head` ran on this machine)")
    return found


def check(actors: Any) -> None:
    """What a Ray run needs before anything is written (``actors`` is ``Config.actors``).

    Raises:
      ConfigError: ray missing (``actors.backend``), no token, an address that is malformed
        or that nothing answers on within 3 s (``actors.address``).
    """
    if actors.backend != "ray":
        return
    import_ray()
    if actors.address is None:
        return
    if not has_token():
        raise ConfigError(
            f"actors.address: joining the Ray cluster at {actors.address} needs its auth token: set {TOKEN_ENV} "
            f"(or {TOKEN_PATH_ENV}, or ~/.ray/auth_token) as on its nodes; see docs/cluster.md"
        )
    address = resolve_address(actors.address)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"actors.address: expected 'auto' or host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3.0).close()
    except OSError as e:
        raise ConfigError(f"actors.address: cannot reach a Ray cluster at {address} ({e.strerror or e})") from None


class Cluster:
    """Ray for one run: a local cluster started here (token auth, no dashboard), or a running
    one joined at ``actors.address``.

    Args:
      actors: ``Config.actors``.
      num_actors: actor processes the run starts (sizes the local cluster so they all fit).
    """

    def __init__(self, actors: Any, num_actors: int):
        ray = import_ray()
        self.ray, self.local = ray, actors.address is None
        self._env: dict[str, str | None] = {}
        if self.local:
            cpus = max(os.cpu_count() or 1, int(np.ceil(actors.num_cpus * num_actors)))
            resources = {k: v * num_actors for k, v in actors.resources.items()}
            self._setenv({MODE_ENV: "token", TOKEN_ENV: secrets.token_hex(32), TOKEN_PATH_ENV: None, "RAY_USAGE_STATS_ENABLED": "0"})
            kwargs = dict(num_cpus=cpus, resources=resources, include_dashboard=False, _node_ip_address="127.0.0.1")
        else:
            self._setenv({MODE_ENV: "token"})
            kwargs = dict(address=resolve_address(actors.address))
        _reload_auth_config()
        handler = signal.getsignal(signal.SIGTERM)
        try:
            with warnings.catch_warnings():  # Ray forks and execs its processes at once: JAX's fork warning does not apply
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                ray.init(**kwargs, log_to_driver=False, logging_level="warning", configure_logging=False)
        except Exception:
            self._restore_env()
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)  # ray.init installs its own; the run's flag handles SIGTERM
        self.address = ray.get_runtime_context().gcs_address

    def describe(self) -> str:
        return "local Ray cluster (token auth)" if self.local else f"Ray cluster at {self.address}"

    def close(self) -> None:
        """Disconnect; a local cluster's processes (GCS, raylet, agents, workers) are stopped."""
        raylets = []
        if self.local:
            node = getattr(self.ray._private.worker, "_global_node", None)
            raylets = [str(p.process.pid) for p in (node.all_processes.get("raylet", []) if node is not None else [])]
        try:
            self.ray.shutdown()
        finally:
            self._restore_env()
        _kill_orphans(raylets)

    def _setenv(self, values: dict[str, str | None]) -> None:
        for k, v in values.items():
            self._env.setdefault(k, os.environ.get(k))
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _restore_env(self) -> None:
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._env = {}
        _reload_auth_config()


def _kill_orphans(raylets: list[str], grace_s: float = 2.0) -> None:
    """Kill what outlived ``ray.shutdown``: processes started by one of our ``raylets`` (their
    environment names it in ``RAY_RAYLET_PID``: the dashboard and runtime-env agents, workers),
    which now and then stay behind on Linux. Nothing else is touched."""
    if not raylets or not Path("/proc").is_dir():
        return
    marks = [f"RAY_RAYLET_PID={pid}".encode() for pid in raylets]

    def ours() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                env = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
                if any(m in env for m in marks) and (entry / "stat").read_text().split(") ")[-1][:1] != "Z":
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    deadline = time.monotonic() + grace_s
    while (left := ours()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _reload_auth_config() -> None:
    """Make an already imported ray see the current ``RAY_AUTH_*`` variables (Ray caches its
    config and token at first use; ``ray.init`` itself re-reads them only when it generates one)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # another Ray version: it reads the environment itself
        pass
