"""The artifact's policy as ONNX: a QDQ int8 model and an fp32 model (opset 13).

int8 (the QDQ form NPU toolchains consume: onnxruntime, OpenVINO, QNN, RKNN), op for op the
integer model of ``rlaccel.int8model``::

    obs [N, in] -> (Sub mean, Mul inv_std, Clip +-clip_obs: normaliser) -> Mul gain
        -> QuantizeLinear(in_scale, in_zero) -> DequantizeLinear
        -> for each layer: MatMul(DequantizeLinear(w_q int8, w_scale per output channel, axis=1))
                           + DequantizeLinear(b_q int32, s_in * w_scale, axis=0)
                           (-> Relu) -> QuantizeLinear(out_scale, out_zero) -> DequantizeLinear
           tanh hidden layers: -> Tanh -> QuantizeLinear(1/128, 0) -> DequantizeLinear
        -> head [N, out] -> action: ArgMax (int64 [N]) | Min(Max(head, low), high) (float32 [N, A])

The scales and zero points are the model's, so a QDQ runtime quantises the same tensors at the
same points. It is not bit-exact: ONNX requantises in float (``QuantizeLinear`` divides and
rounds half to even) where the profiles use a fixed-point multiplier or a shift, and ``Tanh``
is the runtime's float tanh where TFLite uses gemmlowp's table; ``tests/test_learning.py``
measures action agreement and returns on onnxruntime and OpenVINO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlaccel.deploy.artifact import FORMAT_VERSION, Artifact
from rlaccel.intmath import TANH_OUT_SCALE

if TYPE_CHECKING:  # onnx is imported when a model is built, not with this module
    import onnx

OPSET = 13
IR_VERSION = 8
ONNX_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "elu": "Elu"}  # fp32 models; int8 ones have tanh or relu  # ONNX op of each name in rlaccel.reference.ACTIVATIONS


def build_model(artifact: Artifact, precision: str) -> onnx.ModelProto:
    """``precision`` ``int8`` (QDQ) or ``fp32`` -> an ``onnx.ModelProto`` that passes ``onnx.checker``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    arr, meta = artifact.arrays, artifact.meta
    nodes: list = []
    inits: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def qdq(x: str, scale: np.ndarray | float, zero: np.ndarray | int, name: str) -> str:
        s = const(f"{name}_scale", np.asarray(scale, np.float32))
        z = const(f"{name}_zp", np.asarray(zero, np.int8))
        return node("DequantizeLinear", [node("QuantizeLinear", [x, s, z], f"{name}_q"), s, z], f"{name}_dq")

    x = "obs"
    norm = meta["normalization"]
    if norm.get("norm_obs"):
        c = float(norm["clip_obs"])
        x = node("Sub", [x, const("obs_mean", arr["obs.mean"])], "obs_centered")
        x = node("Mul", [x, const("obs_inv_std", arr["obs.inv_std"])], "obs_scaled")
        x = node("Clip", [x, const("clip_lo", np.float32(-c)), const("clip_hi", np.float32(c))], "obs_norm")
    L = artifact.num_layers
    act_name = meta["policy"]["activation"]
    if precision == "int8":
        x = node("Mul", [x, const("gain", arr["int8.gain"])], "input_equalised")
        x = qdq(x, arr["int8.in_scale"], arr["int8.in_zero"], "input")
    s_in = arr.get("int8.in_scale")
    for i in range(L):
        last = i == L - 1
        if precision == "int8":
            w_scale = arr[f"int8.w_scale{i}"]
            out = w_scale.shape[0]
            w = node(
                "DequantizeLinear",
                [const(f"w{i}_q", arr[f"int8.w{i}"]), const(f"w{i}_scale", w_scale), const(f"w{i}_zp", np.zeros(out, np.int8))],
                f"w{i}",
                axis=1,
            )
            b = node(
                "DequantizeLinear",
                [const(f"b{i}_q", arr[f"int8.b{i}"]), const(f"b{i}_scale", (np.float32(s_in) * w_scale).astype(np.float32)), const(f"b{i}_zp", np.zeros(out, np.int32))],
                f"b{i}",
                axis=0,
            )
        else:
            w, b = const(f"w{i}", arr[f"fp32.w{i}"]), const(f"b{i}", arr[f"fp32.b{i}"])
        x = node("Add", [node("MatMul", [x, w], f"matmul{i}"), b], "head" if last and precision == "fp32" else f"pre{i}")
        if precision == "int8":
            if act_name == "relu" and not last:
                x = node("Relu", [x], f"relu{i}")
            x = qdq(x, arr[f"int8.out_scale{i}"], arr[f"int8.out_zero{i}"], "head_q" if last else f"fc{i}")
            if last:
                x = node("Identity", [x], "head")
            elif act_name == "tanh":
                x = qdq(node("Tanh", [x], f"act{i}"), TANH_OUT_SCALE, 0, f"h{i}")
            s_in = np.float32(TANH_OUT_SCALE) if act_name == "tanh" else arr[f"int8.out_scale{i}"]
        elif not last:
            x = node(ONNX_ACTIVATIONS[act_name], [x], f"act{i}")
    obs_dim, out_dim = artifact.obs_dim, int(meta["policy"]["out_dim"])
    if artifact.discrete:
        node("ArgMax", ["head"], "action", axis=1, keepdims=0)
        action = helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"])
    else:
        space = meta["action_space"]
        lo = const("action_low", np.asarray(space["low"], np.float32).reshape(-1))
        hi = const("action_high", np.asarray(space["high"], np.float32).reshape(-1))
        node("Min", [node("Max", ["head", lo], "action_lower"), hi], "action")
        action = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", out_dim])
    graph = helper.make_graph(
        nodes,
        f"rlaccel_{meta['algo']}_{precision}",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [action, helper.make_tensor_value_info("head", TensorProto.FLOAT, ["batch", out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rlaccel")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"rlaccel_meta": json.dumps(meta, sort_keys=True), "rlaccel_format_version": str(FORMAT_VERSION), "rlaccel_precision": precision})
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(artifact: Artifact, precision: str, path: str | Path) -> Path:
    """Build, check and write the ONNX model (``metadata_props`` carry the artifact's meta)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(artifact, precision), str(path))
    return path
