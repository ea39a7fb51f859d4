"""The artifact's policy as ONNX: a QDQ int8 model and an fp32 model (opset 13).

int8 (the QDQ form NPU toolchains consume: onnxruntime's QNN provider, OpenVINO, RKNN)::

    obs [N, in] -> (Sub mean, Mul inv_std, Clip +-clip_obs: normaliser)
        -> Mul input_mult -> Clip +-127 -> QuantizeLinear(1) -> DequantizeLinear(1)
        -> for each layer: MatMul(DequantizeLinear(w_q int8, s_w per output channel, axis=1))
                           + DequantizeLinear(b_q int32, s_x * s_w, axis=0)
           hidden: Tanh|Relu|Elu -> QuantizeLinear(s_next) -> DequantizeLinear(s_next)
        -> head [N, out] -> action: ArgMax (int64 [N]) | Min(Max(head, low), high) (float32 [N, A])

The per-feature input scale is folded into the first layer's weights (as ``rlaccel.quant``
does), so the input is quantised with scale 1 after a per-feature ``Mul``; hidden scales are
the calibrated per-tensor activation scales. fp32 is the same graph without Q/DQ nodes.
ONNX quantises by dividing by the scale and rounds half to even; ``rlaccel.quant``
multiplies by the reciprocal, so a value within an ulp of a rounding boundary can land one
level apart: the onnx-int8 backend agrees with numpy-int8, not bit for bit
(``tests/test_deploy.py`` measures the action agreement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlaccel.deploy.artifact import FORMAT_VERSION, Artifact

if TYPE_CHECKING:  # onnx is imported when a model is built, not with this module
    import onnx

OPSET = 13
IR_VERSION = 8
ONNX_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "elu": "Elu"}  # ONNX op of each name in rlaccel.reference.ACTIVATIONS


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

    def qdq(x: str, scale: np.ndarray | float, name: str) -> str:
        s = const(f"{name}_scale", np.asarray(scale, np.float32))
        z = const(f"{name}_zp", np.zeros((), np.int8))
        return node("DequantizeLinear", [node("QuantizeLinear", [x, s, z], f"{name}_q"), s, z], f"{name}_dq")

    x = "obs"
    norm = meta["normalization"]
    if norm.get("norm_obs"):
        c = float(norm["clip_obs"])
        x = node("Sub", [x, const("obs_mean", arr["obs.mean"])], "obs_centered")
        x = node("Mul", [x, const("obs_inv_std", arr["obs.inv_std"])], "obs_scaled")
        x = node("Clip", [x, const("clip_lo", np.float32(-c)), const("clip_hi", np.float32(c))], "obs_norm")
    L = artifact.num_layers
    activation = ONNX_ACTIVATIONS[meta["policy"]["activation"]]
    if precision == "int8":
        x = node("Mul", [x, const("input_mult", arr["int8.input_mult"])], "input_scaled")
        x = node("Clip", [x, const("q_lo", np.float32(-127)), const("q_hi", np.float32(127))], "input_clipped")
        x = qdq(x, 1.0, "input")
    for i in range(L):
        if precision == "int8":
            s_x = np.float32(1.0) if i == 0 else arr["int8.act_scales"][i - 1]
            out_scale = arr[f"int8.out_scale{i}"]
            s_w = (out_scale / s_x).astype(np.float32)
            out = out_scale.shape[0]
            w = node(
                "DequantizeLinear",
                [const(f"w{i}_q", arr[f"int8.w{i}"]), const(f"w{i}_scale", s_w), const(f"w{i}_zp", np.zeros(out, np.int8))],
                f"w{i}",
                axis=1,
            )
            b = node(
                "DequantizeLinear",
                [const(f"b{i}_q", arr[f"int8.b{i}"]), const(f"b{i}_scale", out_scale), const(f"b{i}_zp", np.zeros(out, np.int32))],
                f"b{i}",
                axis=0,
            )
        else:
            w, b = const(f"w{i}", arr[f"fp32.w{i}"]), const(f"b{i}", arr[f"fp32.b{i}"])
        x = node("Add", [node("MatMul", [x, w], f"matmul{i}"), b], "head" if i == L - 1 else f"pre{i}")
        if i < L - 1:
            x = node(activation, [x], f"act{i}")
            if precision == "int8":
                x = qdq(x, arr["int8.act_scales"][i], f"h{i}")
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
