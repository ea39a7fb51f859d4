"""Deployment: a portable policy file and runtimes that need no JAX.

``rlaccel export --run RUN_DIR`` writes ``RUN_DIR/policy.rlpolicy`` (format in
``rlaccel.deploy.artifact``); ``rlaccel.load_policy(path, backend=...)`` returns an object
with one method, ``act(obs) -> action``. Importing this package imports numpy only; the
onnx backends import onnxruntime, the jax backends and the exporter import JAX, each when used.
"""

from rlaccel.deploy.artifact import FORMAT_VERSION, Artifact, PolicyError, read, write
from rlaccel.deploy.runtime import (
    BACKENDS,
    NumpyFp32Policy,
    NumpyInt8Policy,
    OnnxPolicy,
    Policy,
    load_policy,
)

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "Artifact",
    "NumpyFp32Policy",
    "NumpyInt8Policy",
    "OnnxPolicy",
    "Policy",
    "PolicyError",
    "load_policy",
    "read",
    "write",
]
