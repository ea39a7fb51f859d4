"""The policy artifact: one file, checksummed, readable with numpy alone.

Layout of ``policy.rlpolicy``::

    {"magic": "rlaccel-policy", "format_version": 1, "payload_bytes": N, "payload_sha256": "..."}\\n
    <payload: an uncompressed .npz archive of N bytes>

The JSON header line is read first: a file whose ``format_version`` is newer than this
rlaccel's is refused before anything else is parsed, then the payload's length (truncation)
and sha256 (any edited byte) are checked. The payload is ``numpy.savez`` output (read with
``allow_pickle=False``, so loading a file never runs code) holding ``meta.json`` (UTF-8
JSON bytes, as a ``uint8`` array) and the arrays below, so the checksum covers the metadata too.

``meta.json``: ``algo`` (``ppo`` | ``dqn``), ``env``, ``observation_space`` /
``action_space`` (``{"type": "Box", "shape", "low", "high"}`` or ``{"type": "Discrete",
"n"}``), ``policy`` (``hidden``, ``activation``, ``out_dim``, ``head``: ``logits`` |
``gaussian_mean`` | ``q_centered``: Q - mean over actions), ``normalization`` (``norm_obs``, ``clip_obs``, ``eps``),
``config`` (the run's full config), ``source`` (run directory, checkpoint, update,
env steps), ``rlaccel_version``, ``created``.

Arrays (``L`` dense layers, ``i = 0 .. L-1``; shapes ``[in, out]``):

=========================  ===========  ===================================================
``fp32.w{i}``, ``fp32.b{i}``  float32   the learner's fp32 policy
``obs.mean``                  float32   observation normaliser: ``clip((obs - mean) * inv_std, +-clip_obs)``
``obs.inv_std``               float32   ``1 / sqrt(var + eps)``, the actors' own value (``ActorParams``)
``obs.var``                   float32   ``1 / inv_std**2 - eps``, for older readers (unused)
``int8.<field>``               ...       the fields of ``rlaccel.int8model.Int8Model``:
                                        ``gain`` ``[in]``, ``in_scale``, ``in_zero``, and per
                                        layer ``w{i}`` (int8), ``b{i}`` (int32), ``w_scale{i}``,
                                        ``mult{i}``, ``shift{i}`` (``[out]``), ``out_scale{i}``,
                                        ``out_zero{i}``, ``act_min{i}``, ``act_max{i}`` (scalars)
``int8.thresholds{i}``        int32     ``[out, 255]`` each layer's output stage as a table
``log_std``                   float32   Gaussian policies only, ``[A]`` (gSDE: ``[latent, A or 1]``);
                                        not used: actions are the mean
=========================  ===========  ===================================================

``meta.json``'s ``policy.int8_profile`` names the integer arithmetic (``tflite`` | ``pow2``,
``rlaccel.intmath``). ``int8.thresholds{i}[j, k]`` is the smallest int32 accumulator of
channel ``j`` whose int8 output (requantise, zero point, clamp, TANH) is ``>= k - 127``,
computed at export time on the integer kernels (``rlaccel.quant_tables.tables``): the numpy runtime's
fast path. Format version 2 (version 1 held the float-rescaled scheme of rlaccel < 0.2).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.int8model import Int8Model
from rlaccel.intmath import PROFILES
from rlaccel.reference import LEVELS, Int8Tables

MAGIC = "rlaccel-policy"
FORMAT_VERSION = 2
_MAX_HEADER = 4096


class PolicyError(ValueError):
    """An artifact or an input the policy cannot use; the message says which and why."""


@dataclass
class Artifact:
    """What an exported policy holds: JSON-able ``meta`` and named numpy ``arrays``."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Dense layers ``L`` of the policy network."""
        return len(self.meta["policy"]["hidden"]) + 1

    @property
    def obs_dim(self) -> int:
        return int(self.meta["observation_space"]["shape"][0])

    @property
    def discrete(self) -> bool:
        return self.meta["action_space"]["type"] == "Discrete"


def to_bytes(artifact: Artifact) -> bytes:
    """The file's bytes: header line + npz payload."""
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps(artifact.meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, **{"meta.json": meta}, **artifact.arrays)
    payload = buf.getvalue()
    header = {"magic": MAGIC, "format_version": FORMAT_VERSION, "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    return json.dumps(header).encode() + b"\n" + payload


def write(path: str | Path, artifact: Artifact) -> Path:
    """Write ``artifact`` to ``path`` atomically (``rlaccel.fileio.atomic_write``)."""
    from rlaccel.fileio import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, to_bytes(artifact))


def from_bytes(raw: bytes, name: str = "policy") -> Artifact:
    """Parse and verify an artifact. Raises :class:`PolicyError` naming ``name`` and the problem."""
    line, sep, payload = raw[:_MAX_HEADER].partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise PolicyError(f"{name}: not an rlaccel policy artifact (no '{MAGIC}' header line; export one with `rlaccel export`)")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PolicyError(f"{name}: bad format_version {version!r} in the header")
    if version < FORMAT_VERSION:
        raise PolicyError(f"{name}: policy format version {version} predates the integer int8 profiles; export the run again with this rlaccel")
    if version > FORMAT_VERSION:
        raise PolicyError(f"{name}: policy format version {version} is newer than this rlaccel reads ({FORMAT_VERSION}); upgrade rlaccel")
    payload = raw[len(line) + 1 :]
    expected = header.get("payload_bytes")
    if len(payload) != expected:
        what = "truncated" if isinstance(expected, int) and len(payload) < expected else "has extra bytes"
        raise PolicyError(f"{name}: file is {what} (payload {len(payload)} bytes, header says {expected})")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise PolicyError(f"{name}: file was modified or corrupted (payload sha256 does not match the header)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta.json").tobytes().decode())
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:  # what zipfile / numpy / json raise for damaged data
        raise PolicyError(f"{name}: payload is unreadable ({type(e).__name__}: {e})") from None
    artifact = Artifact(meta=meta, arrays=arrays)
    _validate(artifact, name)
    return artifact


def read(path: str | Path) -> Artifact:
    """Read and verify the artifact at ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy ({e.strerror})") from None
    return from_bytes(raw, str(path))


def _validate(a: Artifact, name: str) -> None:
    """Every key and shape the runtimes rely on, so they never fail deep inside numpy."""
    for key in ("algo", "observation_space", "action_space", "policy", "normalization"):
        if key not in a.meta:
            raise PolicyError(f"{name}: meta.json lacks '{key}'")
    try:
        obs_dim, L = a.obs_dim, a.num_layers
        out_dim = int(a.meta["policy"]["out_dim"])
    except (KeyError, TypeError, IndexError, ValueError):
        raise PolicyError(f"{name}: meta.json has a malformed observation space or policy") from None
    dims = [obs_dim, *(int(h) for h in a.meta["policy"]["hidden"]), out_dim]
    if a.meta["policy"].get("int8_profile") not in PROFILES:
        raise PolicyError(f"{name}: meta.json's policy.int8_profile must be one of {', '.join(PROFILES)}")
    need: dict[str, tuple[tuple[int, ...], str]] = {"int8.gain": ((obs_dim,), "float32"), "int8.in_scale": ((), "float32"), "int8.in_zero": ((), "int32")}
    for i in range(L):
        need[f"fp32.w{i}"] = ((dims[i], dims[i + 1]), "float32")
        need[f"fp32.b{i}"] = ((dims[i + 1],), "float32")
        need[f"int8.w{i}"] = ((dims[i], dims[i + 1]), "int8")
        need[f"int8.b{i}"] = ((dims[i + 1],), "int32")
        for k, dtype in (("w_scale", "float32"), ("mult", "int32"), ("shift", "int32")):
            need[f"int8.{k}{i}"] = ((dims[i + 1],), dtype)
        for k, dtype in (("out_scale", "float32"), ("out_zero", "int32"), ("act_min", "int32"), ("act_max", "int32")):
            need[f"int8.{k}{i}"] = ((), dtype)
        need[f"int8.thresholds{i}"] = ((dims[i + 1], LEVELS), "int32")
    if a.meta["normalization"].get("norm_obs"):
        for k in ("obs.mean", "obs.inv_std"):  # obs.var: written for older readers, read by none
            need[k] = ((obs_dim,), "float32")
    for key, (shape, dtype) in need.items():
        arr = a.arrays.get(key)
        if arr is None:
            raise PolicyError(f"{name}: array '{key}' is missing")
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise PolicyError(f"{name}: array '{key}' is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}")


_LAYER_FIELDS = ("w_q", "b_q", "w_scale", "mult", "shift", "out_scale", "out_zero", "act_min", "act_max")
_LAYER_KEYS = ("w", "b", "w_scale", "mult", "shift", "out_scale", "out_zero", "act_min", "act_max")
_DTYPES = {"w_q": np.int8, "b_q": np.int32, "mult": np.int32, "shift": np.int32, "out_zero": np.int32, "act_min": np.int32, "act_max": np.int32}


def int8_arrays(tables: Int8Tables) -> dict[str, np.ndarray]:
    """``Int8Tables`` (numpy leaves) -> the artifact's ``int8.*`` arrays."""
    m = tables.model
    out = {"int8.gain": np.asarray(m.gain, np.float32), "int8.in_scale": np.asarray(m.in_scale, np.float32), "int8.in_zero": np.asarray(m.in_zero, np.int32)}
    for field_name, key in zip(_LAYER_FIELDS, _LAYER_KEYS):
        for i, v in enumerate(getattr(m, field_name)):
            out[f"int8.{key}{i}"] = np.asarray(v, _DTYPES.get(field_name, np.float32))
    for i, t in enumerate(tables.thresholds):
        out[f"int8.thresholds{i}"] = np.asarray(t, np.int32)
    return out


def int8_tables(artifact: Artifact) -> Int8Tables:
    """The artifact's int8 policy as ``rlaccel.reference.Int8Tables`` (its arrays, not copied)."""
    arr, L = artifact.arrays, artifact.num_layers
    layers = {f: tuple(arr[f"int8.{k}{i}"] for i in range(L)) for f, k in zip(_LAYER_FIELDS, _LAYER_KEYS)}
    model = Int8Model(gain=arr["int8.gain"], in_scale=arr["int8.in_scale"], in_zero=arr["int8.in_zero"], **layers)
    return Int8Tables(model=model, thresholds=tuple(arr[f"int8.thresholds{i}"] for i in range(L)))
