"""Lifelines: how the processes of a multi-process run notice at once that one of them died.

A collective notices a dead process (gloo sees the TCP connection reset), but only while one
runs: a process blocked elsewhere, e.g. on a checkpoint barrier of ``jax.distributed``'s
coordination service, would wait for the heartbeat timeout and then be aborted by JAX with a
stack trace. So every process other than 0 also holds one plain TCP connection to process 0
(its port published through ``jax.distributed``'s key-value store, as orbax does). The kernel
closes a killed process's connections, so the other end sees end-of-file at once; a process
that exits normally says goodbye first (``atexit``; ``os._exit`` skips it, as a death should).

A watcher thread per process reacts to an end-of-file without goodbye: it waits
:data:`GRACE_S` (the main thread usually notices through its next collective and stops with
``rlaccel.distributed.ProcessLost``, writing ``summary.json`` on process 0), then prints one
line and exits with code 1. Process 0 exiting closes the others' lifelines, so the news reaches
every process. No JAX here.
"""

from __future__ import annotations

import atexit
import os
import selectors
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["GRACE_S", "start", "watch_checkpoints"]

GRACE_S = 5.0
"""Seconds the main thread gets to stop by itself after a lifeline broke."""

_KEY = "rlaccel_lifeline_port"
_BYE = b"bye"
_checkpoints: list[Path | None] = [None]


def watch_checkpoints(directory: str | Path | None) -> None:
    """Where the run's checkpoints are, for the line printed when a lifeline breaks."""
    _checkpoints[0] = Path(directory) if directory is not None else None


def start(client: Any, coordinator_host: str, process_id: int, num_processes: int, timeout_s: float) -> None:
    """Connect this process's lifelines and start its watcher (after ``jax.distributed.initialize``).

    Args:
      client: ``jax.distributed``'s client (its key-value store publishes process 0's port).
      coordinator_host: the host of process 0 (the coordinator's address).
      process_id, num_processes: this process and the run's size.
      timeout_s: how long to wait for process 0's port.
    """
    if num_processes < 2:
        return
    if process_id == 0:
        server = socket.create_server(("", 0))
        client.key_value_set(_KEY, str(server.getsockname()[1]))
        threading.Thread(target=_serve, args=(server, num_processes, process_id), name="rlaccel-lifeline", daemon=True).start()
        return
    port = int(client.blocking_key_value_get(_KEY, int(timeout_s * 1000)))
    sock = socket.create_connection((coordinator_host, port), timeout=timeout_s)
    sock.sendall(process_id.to_bytes(4, "big"))
    sock.settimeout(None)
    atexit.register(_goodbye, [sock])
    threading.Thread(target=_watch, args=({0: sock}, process_id, num_processes), name="rlaccel-lifeline", daemon=True).start()


def _serve(server: socket.socket, num_processes: int, me: int) -> None:
    """Process 0: accept every other process's lifeline, then watch them."""
    peers: dict[int, socket.socket] = {}
    while len(peers) < num_processes - 1:
        conn, _ = server.accept()
        peers[int.from_bytes(_read_exactly(conn, 4), "big")] = conn
    server.close()
    atexit.register(_goodbye, list(peers.values()))
    _watch(peers, me, num_processes)


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("lifeline closed during its handshake")
        data += chunk
    return data


def _watch(peers: dict[int, socket.socket], me: int, num_processes: int) -> None:
    selector = selectors.DefaultSelector()
    for peer, sock in peers.items():
        selector.register(sock, selectors.EVENT_READ, peer)
    while peers:
        for key, _ in selector.select():
            try:
                data = key.fileobj.recv(16)
            except OSError:
                data = b""
            selector.unregister(key.fileobj)
            peers.pop(key.data)
            if not data.startswith(_BYE):
                _lost(key.data, me, num_processes)


def _lost(peer: int, me: int, num_processes: int) -> None:
    """A lifeline broke: give the main thread :data:`GRACE_S` to stop, then stop the process."""
    time.sleep(GRACE_S)
    from rlaccel import checkpoint

    latest = checkpoint.latest(_checkpoints[0]) if _checkpoints[0] is not None else None
    print(
        f"error: process {me} of {num_processes}: another process of the run is gone (process {peer}: its connection closed); "
        f"the run stopped; last checkpoint: {latest or 'none written'}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


def _goodbye(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.sendall(_BYE)
        except OSError:
            pass
