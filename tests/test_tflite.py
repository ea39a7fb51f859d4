"""The ``.tflite`` export against runtimes nobody here wrote: TFLite Micro, LiteRT, Arm Vela.

Three random int8 models (``int8_models.random_model``), shaped like the policies the issue
names: a Gaussian PPO head with an observation normaliser (3-64-64-1 tanh), a discrete PPO
head (4-64-64-2 tanh) and a DQN Q-head (4-128-128-2 relu). 10,000 observations each, spread
past the calibration range so QUANTIZE saturates at both ends and every input level occurs.

* TFLite Micro's interpreter must compute :func:`rlaccel.int8model.head` bit for bit (float
  and int8-io files), and a file one scale step off must not (the check can fail).
* LiteRT's kernel sets differ from TFLite Micro by design (``../shared/REFERENCE.md``): the
  fraction of bit-identical heads is reported per kernel set, the action agreement is required.
* Vela must place every FULLY_CONNECTED and TANH on the NPU (int8-io: every operator).
"""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from int8_models import random_model
from tflite_micro.python.tflite_micro import runtime as tflm

from rlaccel import intmath
from rlaccel.deploy.artifact import PolicyError
from rlaccel.deploy.tflite_model import tflite_bytes
from rlaccel.deploy.vela import vela_estimate
from rlaccel.int8model import head, int8_hidden, preprocess

N_OBS = 10_000
CASES = {  # name: (dims, activation, with normaliser)
    "ppo_gaussian_norm": ([3, 64, 64, 1], "tanh", True),
    "ppo_discrete": ([4, 64, 64, 2], "tanh", False),
    "dqn_relu": ([4, 128, 128, 2], "relu", False),
}
ACCELERATORS = ["ethos-u55-128", "ethos-u65-256"]


def _case(name: str) -> dict:
    """Model, normaliser and observations of case ``name`` (``u`` in ``[-1.4, 1.4]``, calibrated for ``[-1, 1]``)."""
    dims, activation, norm = CASES[name]
    model, _ = random_model(dims, "tflite", activation, seed=3)
    rng = np.random.default_rng(7)
    gain = rng.uniform(0.5, 2.0, dims[0]).astype(np.float32)
    model = model._replace(gain=gain)
    norm_args: dict = {"mean": None, "inv_std": None, "clip": None}
    if norm:  # clip at 2: ~18 % of the normalised values are clipped; gain 0.7 puts u in [-1.4, 1.4]
        norm_args = {"mean": rng.normal(0, 3, dims[0]).astype(np.float32), "inv_std": rng.uniform(0.2, 5, dims[0]).astype(np.float32), "clip": 2.0}
        model = model._replace(gain=np.full(dims[0], 0.7, np.float32))
        obs = norm_args["mean"] + rng.normal(0, 1.5, (N_OBS, dims[0])).astype(np.float32) / norm_args["inv_std"]
    else:
        obs = rng.uniform(-1.4, 1.4, (N_OBS, dims[0])).astype(np.float32) / gain
    obs = obs.astype(np.float32)
    u = preprocess(obs, model.gain, **norm_args)
    return {"model": model, "activation": activation, "norm": norm_args, "obs": obs, "u": u, "ref": head(model, u, "tflite", activation)}


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> dict:
    return _case(request.param) | {"name": request.param}


def _tflm(fb: bytes, x: np.ndarray) -> np.ndarray:
    """TFLite Micro's interpreter on one batch ``x [N, in]`` -> output ``[N, out]``."""
    interpreter = tflm.Interpreter.from_bytes(fb, arena_size=16 << 20)
    interpreter.set_input(x, 0)
    interpreter.invoke()
    return interpreter.get_output(0)


def _litert(fb: bytes, x: np.ndarray, resolver: OpResolverType) -> np.ndarray:
    interpreter = Interpreter(model_content=fb, experimental_op_resolver_type=resolver, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _int8_layers(model, x_q: np.ndarray, activation: str) -> np.ndarray:
    """The spec's int8 values ``[N, out]`` of the last layer for QUANTIZE's output ``x_q [N, in]``."""
    for i in range(len(model.w_q)):
        x_q = int8_hidden(x_q, model, i, "tflite", activation)
    return x_q


def test_observations_exercise_every_input_level(case):
    x_q = intmath.quantize(case["u"], float(case["model"].in_scale), int(case["model"].in_zero))
    assert np.unique(x_q).size == 256  # both saturated ends included
    assert (x_q == -128).mean() > 0.005 and (x_q == 127).mean() > 0.005
    last = _int8_layers(case["model"], x_q, case["activation"])
    assert np.unique(last).size >= 100  # the head's int8 levels are spread too


def test_tflite_micro_bit_identical(case):
    fb = tflite_bytes(case["model"], "tflite", case["activation"], **case["norm"], batch=N_OBS)
    out = _tflm(fb, case["obs"])
    assert out.dtype == np.float32 and out.shape == case["ref"].shape
    np.testing.assert_array_equal(out, case["ref"])


def test_tflite_micro_batch_one_file(case):
    """The deployed form (batch 1), one observation per invoke, on the first 300 observations."""
    interpreter = tflm.Interpreter.from_bytes(tflite_bytes(case["model"], "tflite", case["activation"], **case["norm"]))
    for obs, ref in zip(case["obs"][:300], case["ref"][:300]):
        interpreter.set_input(obs[None], 0)
        interpreter.invoke()
        np.testing.assert_array_equal(interpreter.get_output(0)[0], ref)


def test_tflite_micro_int8_io_bit_identical(case):
    model, activation = case["model"], case["activation"]
    fb = tflite_bytes(model, "tflite", activation, **case["norm"], int8_io=True, batch=N_OBS)
    x_q = intmath.quantize(case["u"], float(model.in_scale), int(model.in_zero))
    interpreter = tflm.Interpreter.from_bytes(fb, arena_size=16 << 20)
    q_in = interpreter.get_input_details(0)["quantization_parameters"]
    assert np.float32(q_in["scales"][0]) == np.float32(model.in_scale) and q_in["zero_points"][0] == int(model.in_zero)
    interpreter.set_input(x_q.astype(np.int8), 0)
    interpreter.invoke()
    out = interpreter.get_output(0)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, _int8_layers(model, x_q, activation))


@pytest.mark.parametrize("tanh_scale", intmath.TANH_IN_SCALES)
def test_tflite_micro_tanh_at_every_input_scale(tanh_scale):
    """TFLite Micro's TANH at each calibrated input scale is the spec's table (random models only use 2**-5)."""
    c = _case("ppo_discrete")
    s_in, model = np.float64(c["model"].in_scale), c["model"]
    mult, shift = intmath.quantize_multiplier(s_in * model.w_scale[0].astype(np.float64) / tanh_scale)
    first = {"out_scale": np.float32(tanh_scale), "mult": mult.astype(np.int32), "shift": shift.astype(np.int32)}
    model = model._replace(**{k: (v,) + getattr(model, k)[1:] for k, v in first.items()})
    x_q = intmath.quantize(c["u"][:2000], float(model.in_scale), int(model.in_zero))
    acc = (x_q - int(model.in_zero)) @ model.w_q[0].astype(np.int64) + model.b_q[0]
    assert np.unique(np.clip(intmath.multiply_by_quantized_multiplier(acc, mult, shift), -128, 127)).size > 200  # TANH's inputs
    out = _tflm(tflite_bytes(model, "tflite", "tanh", batch=2000), c["obs"][:2000])
    np.testing.assert_array_equal(out, head(model, c["u"][:2000], "tflite", "tanh"))


def test_tflite_micro_relu_clamp_above_int8_min():
    """A ReLU layer whose zero point is above -128 (``random_model``'s are at -128): TFLite's RELU clamp is the spec's."""
    c = _case("dqn_relu")
    model = c["model"]._replace(out_zero=(np.int32(-90), np.int32(-60), c["model"].out_zero[2]), act_min=(np.int32(-90), np.int32(-60), c["model"].act_min[2]))
    ref = head(model, c["u"], "tflite", "relu")
    assert (_int8_layers(model._replace(w_q=model.w_q[:1]), intmath.quantize(c["u"], float(model.in_scale), int(model.in_zero)), "relu") == -90).mean() > 0.1
    np.testing.assert_array_equal(_tflm(tflite_bytes(model, "tflite", "relu", batch=N_OBS), c["obs"]), ref)


def _single_rounding(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier`` as TFLite builds it with ``TFLITE_SINGLE_ROUNDING``."""
    total = 31 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * np.asarray(multiplier, np.int64) + (np.int64(1) << (total - 1))) >> total


def test_tflite_micro_rounds_twice(monkeypatch):
    """The installed TFLite Micro requantises with double rounding (the default build), as the spec does."""
    c = _case("dqn_relu")
    out = _tflm(tflite_bytes(c["model"], "tflite", "relu", batch=N_OBS), c["obs"])
    monkeypatch.setattr(intmath, "multiply_by_quantized_multiplier", _single_rounding)
    single = head(c["model"], c["u"], "tflite", "relu")
    differ = ~np.all(single == c["ref"], axis=1)
    assert differ.mean() > 0.01  # the observations tell the two builds apart
    np.testing.assert_array_equal(out[differ], c["ref"][differ])


def test_one_scale_step_off_is_caught():
    """A file whose weight scales are one ``SCALE_BITS`` step off gives other heads (the test above can fail)."""
    c = _case("ppo_discrete")
    w_scale = tuple(s * np.float32(1 + 2.0**-intmath.SCALE_BITS) for s in c["model"].w_scale)
    out = _tflm(tflite_bytes(c["model"]._replace(w_scale=w_scale), "tflite", "tanh", batch=N_OBS), c["obs"])
    assert np.mean(np.any(out != c["ref"], axis=1)) > 0.01


@pytest.mark.parametrize("resolver", list(OpResolverType), ids=lambda r: r.name)
def test_litert_kernel_sets(case, resolver):
    """Per kernel set: bit-identical heads (reported) and actions (>= 99 % on discrete heads)."""
    fb = tflite_bytes(case["model"], "tflite", case["activation"], **case["norm"], batch=N_OBS)
    out, ref = _litert(fb, case["obs"], resolver), case["ref"]
    identical = np.mean(np.all(out == ref, axis=1))
    steps = np.abs(out - ref).max() / float(case["model"].out_scale[-1])
    agreement = np.mean(out.argmax(axis=1) == ref.argmax(axis=1))
    print(f"\nLiteRT {resolver.name} {case['name']}: {identical:.2%} bit-identical heads, {agreement:.2%} actions, max {steps:.0f} output steps apart")
    assert steps <= 4
    if ref.shape[1] > 1:
        assert agreement >= 0.99


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_vela_places_integer_layers_on_npu(case, accelerator):
    model, activation = case["model"], case["activation"]
    full = vela_estimate(tflite_bytes(model, "tflite", activation, **case["norm"]), accelerator)
    on_cpu = {op["op"] for op in full["ops"] if op["target"] != "NPU"}
    assert {"FullyConnected", "Tanh"}.isdisjoint(on_cpu) and on_cpu <= {"Sub", "Mul", "Maximum", "Minimum", "Quantize", "Dequantize"}
    assert len({op["name"] for op in full["ops"] if op["op"] == "FullyConnected"}) == len(model.w_q)  # Vela may split one into several
    npu = vela_estimate(tflite_bytes(model, "tflite", activation, **case["norm"], int8_io=True), accelerator)
    assert npu["ops"] and all(op["target"] == "NPU" for op in npu["ops"])
    macs = sum(int(np.asarray(w).size) for w in model.w_q)
    assert npu["macs"] == macs and npu["system_config"].startswith(accelerator[:9].replace("ethos-u", "Ethos_U"))
    assert npu["inference_time_s"] == pytest.approx(npu["cycles_per_inference"] / npu["clock_hz"], rel=1e-3)
    print(f"\nVela {accelerator} {case['name']}: {npu['inference_time_s'] * 1e6:.2f} us, {npu['cycles_per_inference']} cycles ({npu['cycles_npu']} NPU), {macs} MACs")


def test_refuses_what_tflite_cannot_compute():
    model, _ = random_model([4, 16, 2], "pow2", "tanh", seed=0)
    with pytest.raises(PolicyError, match="pow2"):
        tflite_bytes(model, "pow2", "tanh")
    relu, _ = random_model([4, 16, 2], "tflite", "relu", seed=0)
    with pytest.raises(PolicyError, match="clamp"):
        tflite_bytes(relu._replace(act_max=(np.int32(100),) + relu.act_max[1:]), "tflite", "relu")
    tanh, _ = random_model([4, 16, 2], "tflite", "tanh", seed=0)
    with pytest.raises(PolicyError, match="TANH"):
        tflite_bytes(tanh._replace(out_scale=(np.float32(2.0**-4),) + tanh.out_scale[1:]), "tflite", "tanh")
    with pytest.raises(PolicyError, match="normaliser"):
        tflite_bytes(tanh, "tflite", "tanh", mean=np.zeros(4, np.float32))
