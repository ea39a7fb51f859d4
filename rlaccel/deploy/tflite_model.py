"""An :class:`~rlaccel.int8model.Int8Model` as a ``.tflite`` flatbuffer, written without TensorFlow.

The graph is :func:`rlaccel.int8model.head` op for op, so TensorFlow Lite Micro's reference
kernels compute the spec's integers bit for bit (``tests/test_tflite.py``)::

    obs float32 [B, in]
      -> SUB mean -> MUL inv_std -> MAXIMUM -clip -> MINIMUM clip      (only with a normaliser)
      -> MUL gain -> QUANTIZE (in_scale, in_zero)                      float preprocessing, CPU
      -> FULLY_CONNECTED int8 (+ TANH for tanh hidden layers) ...      the integer model, NPU
      -> DEQUANTIZE -> head float32 [B, out]

``int8_io=True`` drops the float stages: int8 in (QUANTIZE's output; the host does the
preprocessing and :func:`rlaccel.intmath.quantize`), int8 out (the last layer's integers; the
host dequantises with ``out_scale[-1]``, ``out_zero[-1]``): the variant Vela places 100 % on the NPU.

FULLY_CONNECTED: filter ``w_q.T`` int8 ``[out, in]`` with per-channel scales ``w_scale`` on
``quantized_dimension`` 0 (zero points 0), bias int32 at ``s_in * w_scale`` (zero point 0),
fused activation NONE, or RELU for relu hidden layers when TFLite's derived clamp
(``[max(-128, out_zero), 127]``) is the model's ``act_min``/``act_max`` (otherwise
:class:`PolicyError`). Every scale is written as the model's float32 value; they have at most
``intmath.SCALE_BITS`` significant bits, so the multiplier and shift that TFLite derives in its
``Prepare`` (``float(s_in) * s_w / s_out`` in double, ``QuantizeMultiplier``) are ``mult`` and
``shift``. TANH follows a hidden layer whose output has one of TANH's input quantisations
(``intmath.TANH_IN_SCALES``, zero point 0; TFLite Micro's ``Prepare`` derives the table the
spec tabulates from it) and writes the spec's fixed 1/128, zero point 0.

Only the ``tflite`` profile is exported. A ``pow2`` model's scales are expressible, but TFLite
Micro requantises with ``MultiplyByQuantizedMultiplier`` (a rounding doubling high
multiply, then a rounding divide that rounds halves away from zero), not the profile's single
``(x + 2**(r-1)) >> r``: ties on negative accumulators and the double rounding land one level
apart, so the file would not be the profile (measured with TFLite Micro on random 4-64-64-2 tanh,
4-128-128-2 relu and 3-64-64-1 tanh pow2 models, 10k inputs each: 70 %, 61 % and 69 % of heads
bit-identical, actions agree on 99.98 % and 99.86 % for the two discrete ones). ``tflite_bytes``
raises :class:`PolicyError` for it.

Schema: the ``tflite`` package on PyPI (flatc's Python output for TensorFlow's
``schema.fbs``, 150 kB of pure Python on ``flatbuffers`` and ``numpy``). It is imported when a
file is written. The schema modules shipped inside ``ai_edge_litert`` (60 MB with its
interpreter) and ``tflite_micro`` (a pre-release with native code) would make an interpreter a
dependency of writing a file; generated builders (rather than a hand-written encoder) keep the
layout that of ``schema.fbs``. Writing notes:
buffer 0 is the empty buffer of non-constant tensors; both ``deprecated_builtin_code`` and
``builtin_code`` are set; operator versions are those TensorFlow's ``op_version.cc`` assigns
for these types (QUANTIZE 1, FULLY_CONNECTED 4, TANH 2, DEQUANTIZE 2, float ops 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlaccel import intmath
from rlaccel.deploy.artifact import PolicyError
from rlaccel.int8model import Int8Model

__all__ = ["tflite_bytes"]

_FLOAT32, _INT32, _INT8 = 0, 2, 9  # tflite.TensorType
_VERSIONS = {"SUB": 1, "MUL": 1, "MAXIMUM": 1, "MINIMUM": 1, "QUANTIZE": 1, "FULLY_CONNECTED": 4, "TANH": 2, "DEQUANTIZE": 2}


class _Graph:
    """Tensors, constant buffers and operators of one subgraph, kept as Python values until :meth:`finish`."""

    def __init__(self) -> None:
        self.tensors: list[dict[str, Any]] = []
        self.buffers: list[bytes] = [b""]  # buffer 0: no data (activations, inputs, outputs)
        self.ops: list[tuple[str, list[int], list[int], str | None]] = []

    def tensor(self, name: str, shape: tuple[int, ...], dtype: int, data: np.ndarray | None = None, scale: Any = None, zero: Any = None) -> int:
        """Add a tensor (constant when ``data`` is given; quantised when ``scale`` is); return its index."""
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
            buffer = len(self.buffers) - 1
        quant = None
        if scale is not None:
            scale = np.atleast_1d(np.asarray(scale, np.float32))
            quant = (scale, np.broadcast_to(np.asarray(zero, np.int64), scale.shape).copy())
        self.tensors.append({"name": name, "shape": shape, "type": dtype, "buffer": buffer, "quant": quant})
        return len(self.tensors) - 1

    def op(self, code: str, inputs: list[int], output: int, activation: str | None = None) -> int:
        """Add operator ``code`` (``activation``: the fused activation of SUB / MUL / FULLY_CONNECTED)."""
        self.ops.append((code, inputs, [output], activation))
        return output

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        """Serialise the model (file identifier ``TFL3``, schema version 3)."""
        import flatbuffers
        import tflite

        b = flatbuffers.Builder(4096)

        def ivec(values: Any) -> int:
            return b.CreateNumpyVector(np.asarray(values, np.int32))

        def table_vec(offsets: list[int]) -> int:
            b.StartVector(4, len(offsets), 4)
            for off in reversed(offsets):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        buffers = []
        for data in self.buffers:
            vec = None
            if data:
                b.StartVector(1, len(data), 16)  # 16-byte aligned constants (TFLite's force_align)
                b.head -= len(data)
                b.Bytes[b.head : b.head + len(data)] = data
                vec = b.EndVector()
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
        tensors = []
        for t in self.tensors:
            quant = None
            if t["quant"] is not None:
                scale, zero = b.CreateNumpyVector(t["quant"][0]), b.CreateNumpyVector(t["quant"][1])
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scale)
                tflite.QuantizationParametersAddZeroPoint(b, zero)
                tflite.QuantizationParametersAddQuantizedDimension(b, 0)
                quant = tflite.QuantizationParametersEnd(b)
            name, shape = b.CreateString(t["name"]), ivec(t["shape"])
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            tflite.TensorAddType(b, t["type"])
            tflite.TensorAddBuffer(b, t["buffer"])
            tflite.TensorAddName(b, name)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            tensors.append(tflite.TensorEnd(b))
        codes = list(dict.fromkeys(code for code, *_ in self.ops))
        opcodes = []
        for code in codes:
            builtin = getattr(tflite.BuiltinOperator, code)
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
            tflite.OperatorCodeAddBuiltinCode(b, builtin)
            tflite.OperatorCodeAddVersion(b, _VERSIONS[code])
            opcodes.append(tflite.OperatorCodeEnd(b))
        ops = []
        for code, op_in, op_out, activation in self.ops:
            options, options_type = None, tflite.BuiltinOptions.NONE
            if activation is not None:
                fused = getattr(tflite.ActivationFunctionType, activation)
                if code == "FULLY_CONNECTED":
                    tflite.FullyConnectedOptionsStart(b)
                    tflite.FullyConnectedOptionsAddFusedActivationFunction(b, fused)
                    options, options_type = tflite.FullyConnectedOptionsEnd(b), tflite.BuiltinOptions.FullyConnectedOptions
                elif code == "SUB":
                    tflite.SubOptionsStart(b)
                    tflite.SubOptionsAddFusedActivationFunction(b, fused)
                    options, options_type = tflite.SubOptionsEnd(b), tflite.BuiltinOptions.SubOptions
                else:
                    tflite.MulOptionsStart(b)
                    tflite.MulOptionsAddFusedActivationFunction(b, fused)
                    options, options_type = tflite.MulOptionsEnd(b), tflite.BuiltinOptions.MulOptions
            vin, vout = ivec(op_in), ivec(op_out)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, codes.index(code))
            tflite.OperatorAddInputs(b, vin)
            tflite.OperatorAddOutputs(b, vout)
            if options is not None:
                tflite.OperatorAddBuiltinOptionsType(b, options_type)
                tflite.OperatorAddBuiltinOptions(b, options)
            ops.append(tflite.OperatorEnd(b))
        v_tensors, v_in, v_out, v_ops, name = table_vec(tensors), ivec(inputs), ivec(outputs), table_vec(ops), b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, v_tensors)
        tflite.SubGraphAddInputs(b, v_in)
        tflite.SubGraphAddOutputs(b, v_out)
        tflite.SubGraphAddOperators(b, v_ops)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)
        v_codes, v_sub, v_buf, desc = table_vec(opcodes), table_vec([subgraph]), table_vec(buffers), b.CreateString(description)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, v_codes)
        tflite.ModelAddSubgraphs(b, v_sub)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, v_buf)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _fused_activation(model: Int8Model, i: int, activation: str) -> str:
    """The FULLY_CONNECTED fused activation whose TFLite clamp is layer ``i``'s ``[act_min, act_max]``."""
    lo, hi, zero = int(model.act_min[i]), int(model.act_max[i]), int(model.out_zero[i])
    hidden = i < len(model.w_q) - 1
    if hidden and activation == "relu" and (lo, hi) == (max(intmath.INT8_MIN, zero), intmath.INT8_MAX):
        return "RELU"
    if (lo, hi) == (intmath.INT8_MIN, intmath.INT8_MAX) and not (hidden and activation == "relu" and zero > intmath.INT8_MIN):
        return "NONE"
    raise PolicyError(f"layer {i}: clamp [{lo}, {hi}] (output zero point {zero}, {activation}) is not a TFLite fused activation's")


def tflite_bytes(
    model: Int8Model,
    profile: str,
    activation: str,
    mean: Any = None,
    inv_std: Any = None,
    clip: float | None = None,
    int8_io: bool = False,
    batch: int = 1,
) -> bytes:
    """The int8 policy head as a ``.tflite`` file (module docstring for the graph).

    Args:
      model: the integer model (``tflite`` profile).
      profile: ``tflite``; ``pow2`` raises :class:`PolicyError` (module docstring).
      activation: the hidden activation, ``tanh`` or ``relu``.
      mean, inv_std: float32 ``[in]`` observation normaliser, or ``None`` for none.
      clip: the normaliser's clip (required with ``mean``).
      int8_io: int8 input ``[batch, in]`` and int8 output ``[batch, out]``, no float stages.
      batch: the leading dimension of the input and output (1 for a deployed policy).

    Returns:
      The flatbuffer: input float32 ``[batch, in]`` (observations), output float32
      ``[batch, out]`` (:func:`rlaccel.int8model.head` of the preprocessed observations).
    """
    if profile != "tflite":
        raise PolicyError(
            f"int8 profile {profile!r} cannot be exported as .tflite: TFLite requantises with MultiplyByQuantizedMultiplier "
            "(double rounding), not the pow2 profile's rounding shift, so the file would not compute the profile's integers; "
            "train with placement.actor.int8_profile=tflite, or export --format c / onnx-int8"
        )
    if activation not in ("tanh", "relu"):
        raise PolicyError(f"activation {activation!r} has no int8 TFLite kernel here (tanh, relu)")
    if (mean is None) != (inv_std is None) or (mean is not None and clip is None):
        raise PolicyError("the observation normaliser needs mean, inv_std and clip together")
    n_in, L = int(np.asarray(model.w_q[0]).shape[0]), len(model.w_q)
    g = _Graph()
    in_scale, in_zero = np.float32(model.in_scale), int(model.in_zero)
    if int8_io:
        x = graph_in = g.tensor("obs_q", (batch, n_in), _INT8, scale=in_scale, zero=in_zero)
    else:
        x = graph_in = g.tensor("obs", (batch, n_in), _FLOAT32)
        steps = []
        if mean is not None:
            c = np.float32(clip)
            steps = [("SUB", "mean", mean), ("MUL", "inv_std", inv_std), ("MAXIMUM", "clip_low", np.full(n_in, -c)), ("MINIMUM", "clip_high", np.full(n_in, c))]
        for code, name, value in steps + [("MUL", "gain", model.gain)]:
            const = g.tensor(name, (n_in,), _FLOAT32, data=np.asarray(value, np.float32).reshape(n_in))
            fused = "NONE" if code in ("SUB", "MUL") else None
            x = g.op(code, [x, const], g.tensor(f"u_{name}", (batch, n_in), _FLOAT32), fused)
        x = g.op("QUANTIZE", [x], g.tensor("obs_q", (batch, n_in), _INT8, scale=in_scale, zero=in_zero))
    s_in = in_scale
    for i in range(L):
        w_q = np.asarray(model.w_q[i], np.int8)
        n_out = w_q.shape[1]
        w_scale = np.asarray(model.w_scale[i], np.float32).reshape(n_out)
        out_scale, out_zero = np.float32(model.out_scale[i]), int(model.out_zero[i])
        tanh = activation == "tanh" and i < L - 1
        if tanh and (float(out_scale) not in intmath.TANH_IN_SCALES or out_zero != 0):
            raise PolicyError(f"layer {i}: TANH's input must have a scale in intmath.TANH_IN_SCALES and zero point 0, not {out_scale}, {out_zero}")
        fused = _fused_activation(model, i, activation)
        weights = g.tensor(f"w{i}", (n_out, w_q.shape[0]), _INT8, data=np.ascontiguousarray(w_q.T), scale=w_scale, zero=0)
        bias = g.tensor(f"b{i}", (n_out,), _INT32, data=np.asarray(model.b_q[i], np.int32).reshape(n_out), scale=s_in * w_scale, zero=0)
        x = g.op("FULLY_CONNECTED", [x, weights, bias], g.tensor(f"fc{i}", (batch, n_out), _INT8, scale=out_scale, zero=out_zero), fused)
        s_in = out_scale
        if tanh:
            s_in = np.float32(intmath.TANH_OUT_SCALE)
            x = g.op("TANH", [x], g.tensor(f"tanh{i}", (batch, n_out), _INT8, scale=s_in, zero=0))
    if not int8_io:
        x = g.op("DEQUANTIZE", [x], g.tensor("head", (batch, n_out), _FLOAT32))
    return g.finish([graph_in], [x], f"rlaccel int8 policy head ({profile} profile, {activation})")
