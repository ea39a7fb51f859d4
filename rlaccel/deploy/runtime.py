"""Policy runtimes: ``policy.act(obs) -> action`` without JAX (numpy, onnxruntime) or with it.

Every backend takes one observation ``[obs_dim]`` or a batch ``[B, obs_dim]`` and returns the
deterministic action: ``argmax`` of the logits / Q-values (an ``int``, or ``int64 [B]``), or
the Gaussian mean clipped to the action bounds (``float32 [A]`` or ``[B, A]``). The
observation normaliser, ``clip((obs - mean) * inv_std, -clip_obs, clip_obs)`` with the stored
``inv_std``, is applied inside.

**numpy-int8** is ``rlaccel.reference.Int8Network`` on the artifact's tables: exactly the
integers of the training actors' int8 path (``rlaccel.quant.apply`` under ``jax.jit`` on a
CPU), with float BLAS and a branch-free lookup for the hidden activations (the reference's
module docstring says why each step is exact). **numpy-fp32** is
``rlaccel.reference.Fp32Network``.

A numpy policy's batch-1 path reuses one set of buffers, so a policy object is not
thread-safe: give each thread its own (``load_policy`` is cheap).
"""

from __future__ import annotations

import json
from math import isfinite
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel import compile_cache
from rlaccel.deploy.artifact import Artifact, PolicyError, int8_tables, read
from rlaccel.reference import Fp32Network, Int8Network, Normalizer

BACKENDS = ("numpy-int8", "numpy-fp32", "c-int8", "onnx-int8", "onnx-fp32", "jax", "jax-int8", "jax-fp32")


class Policy:
    """A deterministic policy: ``act(obs) -> action``; subclasses implement :meth:`head`."""

    backend = ""

    def __init__(self, artifact: Artifact, name: str = "policy"):
        self.artifact = artifact
        self.meta = artifact.meta
        self.name = name
        self.obs_dim = artifact.obs_dim
        self._zeros = np.zeros(self.obs_dim, np.float32)
        self.discrete = artifact.discrete
        space = self.meta["action_space"]
        if self.discrete:
            self.num_actions = int(space["n"])
        else:
            self._low = np.asarray(space["low"], np.float32).reshape(-1)
            self._high = np.asarray(space["high"], np.float32).reshape(-1)

    def _batch(self, obs: Any) -> tuple[np.ndarray, bool]:
        """``obs`` as float32 ``[B, obs_dim]`` and whether it was a single observation."""
        try:
            x = np.asarray(obs, dtype=np.float32)
        except (TypeError, ValueError):
            raise PolicyError(f"{self.name}: observation is not numeric ({type(obs).__name__})") from None
        if x.ndim == 1 and x.shape[0] == self.obs_dim:
            x, single = x.reshape(1, -1), True
        elif x.ndim == 2 and x.shape[1] == self.obs_dim:
            single = False
        else:
            raise PolicyError(
                f"{self.name}: observation shape {tuple(x.shape)} does not match the policy's observation space "
                f"({self.obs_dim},) of {self.meta.get('env', '?')} (pass [{self.obs_dim}] or [batch, {self.obs_dim}])"
            )
        if not np.isfinite(x).all():
            raise self._non_finite()
        return x, single

    def _non_finite(self) -> PolicyError:
        return PolicyError(f"{self.name}: observation contains NaN or infinity")

    def head(self, x: np.ndarray) -> np.ndarray:
        """Raw policy output ``float32 [B, out]`` (logits, Gaussian mean or Q-values) for ``x [B, obs_dim]``."""
        raise NotImplementedError

    def act(self, obs: Any) -> Any:
        """Deterministic action for ``obs [obs_dim]`` (one) or ``[B, obs_dim]`` (a batch).

        Returns:
          Discrete: ``int`` (one) or ``int64 [B]``. Continuous: ``float32 [A]`` or ``[B, A]``,
          the mean clipped to the action space's bounds.

        Raises:
          PolicyError: the observation's shape does not match the observation space.
        """
        x, single = self._batch(obs)
        head = self.head(x)
        if self.discrete:
            a = head.argmax(axis=1)
            return int(a[0]) if single else a
        a = np.minimum(np.maximum(head, self._low), self._high)
        return a[0] if single else a

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """Raise :class:`PolicyError` unless gymnasium spaces match the ones the policy was trained on."""
        obs_shape = tuple(getattr(observation_space, "shape", ()) or ())
        if obs_shape != (self.obs_dim,):
            raise PolicyError(f"{self.name}: env observation space has shape {obs_shape}, the policy expects ({self.obs_dim},)")
        n = getattr(action_space, "n", None)
        if self.discrete:
            if n is None or int(n) != self.num_actions:
                raise PolicyError(f"{self.name}: env action space is {action_space}, the policy outputs Discrete({self.num_actions})")
        else:
            shape = tuple(getattr(action_space, "shape", ()) or ())
            if n is not None or shape != self._low.shape:
                raise PolicyError(f"{self.name}: env action space is {action_space}, the policy outputs Box{self._low.shape}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.meta.get('algo')} {self.meta.get('env')} backend={self.backend}>"


def export_args(artifact: Artifact) -> tuple[Any, str, str, Any, Any, float | None]:
    """``(Int8Model, profile, activation, mean, inv_std, clip)``: what the integer exports and
    ``c-int8`` take (``mean``, ``inv_std``, ``clip`` are ``None`` without a normaliser)."""
    norm, clip = normalizer(artifact)
    policy = artifact.meta["policy"]
    mean, inv_std, clip_or_none = (None, None, None) if norm is None else (norm.mean, norm.inv_std, clip)
    return int8_tables(artifact).model, policy["int8_profile"], policy["activation"], mean, inv_std, clip_or_none


def normalizer(artifact: Artifact) -> tuple[Normalizer | None, float]:
    """The artifact's observation normaliser and clip (``None``: observations used as they are)."""
    norm = artifact.meta["normalization"]
    if not norm.get("norm_obs"):
        return None, 10.0
    return Normalizer(artifact.arrays["obs.mean"], artifact.arrays["obs.inv_std"]), float(norm["clip_obs"])


class _NumpyPolicy(Policy):
    """What both numpy backends share: a ``rlaccel.reference`` network, and its batch-1 path for ``act``."""

    net: Int8Network | Fp32Network

    def _make_single(self) -> Any:
        """``x float32 [obs_dim] -> action`` on the network's batch-1 path (:attr:`_act_single`)."""
        forward = self.net.forward_one
        if self.discrete:
            return lambda x: int(forward(x).argmax())
        low, high, minimum, maximum = self._low, self._high, np.minimum, np.maximum
        return lambda x: minimum(maximum(forward(x), low), high)

    def head(self, x: np.ndarray) -> np.ndarray:
        """``float32 [B, out]`` for ``x float32 [B, obs_dim]`` (a fresh array)."""
        return self.net.forward(x)

    def act(self, obs: Any) -> Any:
        """See :meth:`Policy.act`; a float32 ``[obs_dim]`` array takes the batch-1 path (``_act_single``)."""
        if type(obs) is np.ndarray and obs.dtype == np.float32 and obs.shape == (self.obs_dim,):
            if not isfinite(obs.dot(self._zeros)):  # 0 * nan = 0 * inf = nan; ~0.3 µs
                raise self._non_finite()
            return self._act_single(obs)
        return super().act(obs)


class NumpyInt8Policy(_NumpyPolicy):
    """The int8 policy in numpy, bit-exact with ``rlaccel.quant.apply`` (``rlaccel.reference.Int8Network``)."""

    backend = "numpy-int8"

    def __init__(self, artifact: Artifact, name: str = "policy"):
        super().__init__(artifact, name)
        try:
            self.net = Int8Network(int8_tables(artifact), artifact.meta["policy"]["activation"], *normalizer(artifact))
        except ValueError as e:  # a threshold table that cannot be a step function
            raise PolicyError(f"{name}: {e}") from None
        self._act_single = self._make_single()


class NumpyFp32Policy(_NumpyPolicy):
    """The learner's fp32 policy in numpy (``np.tanh``; not bit-exact with XLA, ~1e-7 apart)."""

    backend = "numpy-fp32"

    def __init__(self, artifact: Artifact, name: str = "policy"):
        super().__init__(artifact, name)
        arr = artifact.arrays
        layers = [(arr[f"fp32.w{i}"], arr[f"fp32.b{i}"]) for i in range(artifact.num_layers)]
        self.net = Fp32Network(layers, artifact.meta["policy"]["activation"], *normalizer(artifact))
        self._act_single = self._make_single()


class CInt8Policy(Policy):
    """The int8 policy as its C export (``rlaccel export --format c``), compiled on load with the
    system C compiler and called through ctypes (``rlaccel.deploy.c_runtime.CHead``); bit-exact
    with numpy-int8."""

    backend = "c-int8"

    def __init__(self, artifact: Artifact, name: str = "policy"):
        super().__init__(artifact, name)
        from rlaccel.deploy.c_runtime import CHead

        self.c = CHead(*export_args(artifact))

    def head(self, x: np.ndarray) -> np.ndarray:
        return self.c.head(x)

    def act(self, obs: Any) -> Any:
        """See :meth:`Policy.act`; a float32 ``[obs_dim]`` array takes the C batch-1 path (``CHead.head_one``)."""
        if type(obs) is np.ndarray and obs.dtype == np.float32 and obs.shape == (self.obs_dim,):
            if not isfinite(obs.dot(self._zeros)):
                raise self._non_finite()
            c = self.c
            c._in[:] = obs  # the batch-1 path of CHead.head_one, reading its static output buffer in place
            c._one()
            return int(c._out.argmax()) if self.discrete else np.minimum(np.maximum(c._out, self._low), self._high)
        return super().act(obs)


def ort_options(threads: int = 1) -> Any:
    """onnxruntime session options for an int8 policy: sequential, ``threads`` intra-op threads,
    and ``session.x64quantprecision``: on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI)
    onnxruntime's fast U8S8 kernels add pairs of int8 products in 16 bits with saturation, and
    the integers stop being the policy's (measured on an AVX2 EPYC: 28 % of CartPole heads
    exact, against 98 % with the option); it selects the U8U8 kernels, which do not saturate.
    On VNNI CPUs it changes nothing."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


class OnnxPolicy(Policy):
    """The artifact's network as an ONNX model (``rlaccel.deploy.onnx_model``) on onnxruntime's CPU provider."""

    def __init__(self, artifact: Artifact, precision: str, name: str = "policy", model_bytes: bytes | None = None, threads: int = 1):
        super().__init__(artifact, name)
        import onnxruntime as ort

        from rlaccel.deploy.onnx_model import build_model

        self.backend = f"onnx-{precision}"
        if model_bytes is None:
            model_bytes = build_model(artifact, precision).SerializeToString()
        self.session = ort.InferenceSession(model_bytes, ort_options(threads), providers=["CPUExecutionProvider"])
        self._run = self.session.run

    def head(self, x: np.ndarray) -> np.ndarray:
        return self._run(["head"], {"obs": x})[0]

    def act(self, obs: Any) -> Any:
        x, single = self._batch(obs)
        a = self._run(["action"], {"obs": x})[0]
        if self.discrete:
            return int(a[0]) if single else a
        return a[0] if single else a


class JaxPolicy(Policy):
    """The artifact run by JAX: ``int8`` through ``rlaccel.quant.apply`` (the training actors'
    code), ``fp32`` through the same MLP as the learner; one ``jax.jit`` per batch shape."""

    def __init__(self, artifact: Artifact, precision: str, name: str = "policy"):
        super().__init__(artifact, name)
        import jax
        import jax.numpy as jnp

        from rlaccel import normalize, quant
        from rlaccel.networks import ACTIVATIONS

        self.backend = f"jax-{precision}"
        arr, L = artifact.arrays, artifact.num_layers
        activation = artifact.meta["policy"]["activation"]
        norm, clip_obs = normalizer(artifact)
        norm = None if norm is None else Normalizer(jnp.asarray(norm.mean), jnp.asarray(norm.inv_std))
        if precision == "int8":
            model = jax.tree.map(jnp.asarray, int8_tables(artifact).model)
            params: Any = quant.QuantParams(model=model, activation=activation, profile=artifact.meta["policy"]["int8_profile"])
            net = quant.apply
        else:
            params = [(jnp.asarray(arr[f"fp32.w{i}"]), jnp.asarray(arr[f"fp32.b{i}"])) for i in range(L)]
            act_fn = ACTIVATIONS[activation]

            def net(layers: Any, x: Any) -> Any:
                for w, b in layers[:-1]:
                    x = act_fn(x @ w + b)
                w, b = layers[-1]
                return x @ w + b

        def head(params: Any, norm: Any, x: Any) -> Any:
            return net(params, normalize.apply(norm, x, clip_obs))  # the actors' normaliser

        self._params, self._norm = params, norm
        self._head = compile_cache.jit(head)

    def head(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._head(self._params, self._norm, x))


def load_policy(path: str | Path, backend: str = "numpy-int8", **kwargs: Any) -> Policy:
    """Load an exported policy (``rlaccel export``) for one of the runtimes.

    Args:
      path: a ``.rlpolicy`` artifact, or an ``.onnx`` model written by ``rlaccel export
        --format onnx-int8|onnx-fp32`` (onnx backends only; it carries the metadata).
      backend: ``numpy-int8`` (bit-exact with the training actors; no JAX), ``numpy-fp32``,
        ``c-int8`` (the C export compiled on load, through ctypes; bit-exact too),
        ``onnx-int8`` (QDQ model), ``onnx-fp32``, ``jax`` (= ``jax-int8``, the actors'
        ``rlaccel.quant`` code) or ``jax-fp32``.
      **kwargs: ``threads`` for the onnx backends (onnxruntime intra-op threads, default 1).

    Raises:
      PolicyError: unknown backend, unreadable/edited/truncated/future-version artifact.
    """
    if backend not in BACKENDS:
        raise PolicyError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix == ".onnx":
        if not backend.startswith("onnx-"):
            raise PolicyError(f"{path}: an ONNX model runs on the onnx-int8 / onnx-fp32 backends, not {backend}")
        artifact, model_bytes = _read_onnx(path)
        return OnnxPolicy(artifact, backend.split("-")[1], str(path), model_bytes=model_bytes, **kwargs)
    artifact = read(path)
    if backend == "numpy-int8":
        return NumpyInt8Policy(artifact, str(path))
    if backend == "numpy-fp32":
        return NumpyFp32Policy(artifact, str(path))
    if backend == "c-int8":
        return CInt8Policy(artifact, str(path))
    if backend.startswith("onnx-"):
        return OnnxPolicy(artifact, backend.split("-")[1], str(path), **kwargs)
    return JaxPolicy(artifact, "fp32" if backend == "jax-fp32" else "int8", str(path))


def _read_onnx(path: Path) -> tuple[Artifact, bytes]:
    """An exported ONNX model and the rlaccel metadata it carries (``metadata_props``)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        raw = path.read_bytes()
        model = onnx.load_from_string(raw)
    except OSError as e:
        raise PolicyError(f"{path}: cannot read model ({e.strerror})") from None
    except (DecodeError, ValueError) as e:
        raise PolicyError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "rlaccel_meta" not in props:
        raise PolicyError(f"{path}: ONNX model has no rlaccel metadata (export it with `rlaccel export`)")
    return Artifact(meta=json.loads(props["rlaccel_meta"]), arrays={}), raw

