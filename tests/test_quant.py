"""Tests for ``rlaccel.quant``: the int8 integer path against hand-worked integers, numpy int64
and the fp32 forward pass."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaccel import quant
from rlaccel.quant import BIAS_LIMIT, MAX_FAN_IN, QuantLayer
from rlaccel.reference import ACTIVATIONS as ACT
from rlaccel.reference import QMAX


def fp32_forward(layers, x, activation):
    """The float network in numpy (float64): ``(last hidden activation, logits)``."""
    h = np.asarray(x, np.float64)
    for w, b in layers[:-1]:
        h = ACT[activation](h @ np.asarray(w, np.float64) + np.asarray(b, np.float64))
    w, b = layers[-1]
    return h, h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)


def int8_forward(layers, x, activation):
    """Calibrate on ``x``, quantise, run the int8 path: what the actors do after an update."""
    layers = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in layers]
    qp, out = _int8_run(layers, jnp.asarray(x, jnp.float32), activation)
    return qp, np.asarray(out, np.float64)


@functools.partial(jax.jit, static_argnums=2)
def _int8_run(layers, x, activation):
    calib = quant.update(quant.init(x.shape[1], len(layers)), layers, x, activation)
    qp = quant.quantize(layers, calib, activation)
    return qp, quant.apply(qp, x)


def random_mlp(rng, dims):
    """Orthogonal-ish weights (columns of a random orthogonal matrix, scaled so the entries have
    variance 1 / fan_in), small random biases."""
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        n = max(fan_in, fan_out)
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        w = q[:fan_in, :fan_out] * np.sqrt(n / fan_in)
        layers.append((w.astype(np.float32), (0.1 * rng.normal(size=fan_out)).astype(np.float32)))
    return layers


# --------------------------------------------------------------------------------------------
# Hand-worked integers.


def test_int8_dense_hand_worked():
    # w_q [in=2, out=3], x_q [N=2, in=2], b_q [3]:
    #   w_q = [[1, -2,  3],      x_q = [[  10,  -1],      b_q = [100, -7, 0]
    #          [4,  5, -6]]             [-127, 127]]
    # row 0: [10*1 + -1*4, 10*-2 + -1*5, 10*3 + -1*-6] = [6, -25, 36]         + b = [106, -32, 36]
    # row 1: [-127 + 508, 254 + 635, -381 - 762]        = [381, 889, -1143]  + b = [481, 882, -1143]
    # (889 and -1143 do not fit in int8: the accumulator must be wider.)
    layer = QuantLayer(
        w_q=jnp.array([[1, -2, 3], [4, 5, -6]], jnp.int8),
        b_q=jnp.array([100, -7, 0], jnp.int32),
        out_scale=jnp.ones((3,), jnp.float32),
    )
    out = quant.int8_dense(jnp.array([[10, -1], [-127, 127]], jnp.int8), layer)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), [[106, -32, 36], [481, 882, -1143]])


def test_quantize_weight_hand_worked():
    # Per output column: s_w = max|w[:, j]| / 127.
    #   column 0: max 1.27 -> s = 0.01;          0.254 / 0.01 = 25.4 -> 25;   -1.27 -> -127
    #   column 1: max 0.25 -> s = 0.25 / 127;    -0.25 -> -127;   0.1 * 127 / 0.25 = 50.8 -> 51
    w = jnp.array([[0.254, -0.25], [-1.27, 0.1]], jnp.float32)
    w_q, scale = quant.quantize_weight(w)
    assert w_q.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(w_q), [[25, -127], [-127, 51]])
    np.testing.assert_allclose(np.asarray(scale), [0.01, 0.25 / 127], rtol=1e-6)


def test_quantize_input_rounds_and_saturates():
    # x * mult = [0.4, 0.6, -1.6, 200, -300] -> round -> [0, 1, -2, 127 (clip), -127 (clip)]
    x = jnp.array([0.2, 0.3, -0.8, 100.0, -150.0], jnp.float32)
    x_q = quant.quantize_input(x, jnp.full((5,), 2.0, jnp.float32))
    assert x_q.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(x_q), [0, 1, -2, 127, -127])


def test_apply_hand_worked_two_layer_relu():
    # in_dim 2, one hidden ReLU unit, one output. Calibration by hand:
    #   input absmax [2, 4] -> s_in = [2/127, 4/127], input_mult = [63.5, 31.75]
    #   layer 0 (w = [[1], [0.5]], b = [0]): equalised w * s_in = [[2/127], [2/127]] -> w_q = [[127], [127]],
    #     s_w = 2/127 / 127, out_scale = 1 * s_w
    #   hidden absmax 4 (from x = [2, 4]: 2 + 0.5 * 4 = 4) -> s_h = 4/127
    #   layer 1 (w = [[1]], b = [0]): w_q = [[127]], s_w = 1/127, out_scale = s_h / 127 = 4/127^2
    # x = [2, 4]: x_q = [127, 127]; acc0 = 127*127 + 127*127 = 32258;
    #   requantise: 32258 * (2/127^2) / (4/127) = 32258 / 254 = 127 -> h_q = 127
    #   acc1 = 127 * 127 = 16129 -> 16129 * 4 / 127^2 = 4.0 (exactly the fp32 answer 2 + 0.5 * 4)
    # x = [1, -2]: x_q = [round(63.5) = 64 (ties to even), round(-63.5) = -64];
    #   acc0 = 64*127 - 64*127 = 0 -> h_q = 0 -> logit 0 (fp32: relu(1 - 1) = 0)
    layers = [(jnp.array([[1.0], [0.5]]), jnp.zeros((1,))), (jnp.array([[1.0]]), jnp.zeros((1,)))]
    x = jnp.array([[2.0, 4.0], [1.0, -2.0]], jnp.float32)
    qp, out = int8_forward(layers, x, "relu")
    np.testing.assert_allclose(np.asarray(qp.input_mult), [63.5, 31.75], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(qp.layers[0].w_q), [[127], [127]])
    np.testing.assert_array_equal(np.asarray(qp.layers[1].w_q), [[127]])
    np.testing.assert_allclose(np.asarray(qp.act_scales), [4 / 127], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0], [4.0, 0.0], atol=1e-5)


# --------------------------------------------------------------------------------------------
# Against the fp32 forward pass.


@st.composite
def mlps(draw):
    depth = draw(st.integers(1, 3))
    dims = [draw(st.integers(1, PAD_IN))] + [draw(st.integers(4, PAD_WIDTH)) for _ in range(depth)] + [draw(st.integers(1, PAD_OUT))]
    activation = draw(st.sampled_from(["tanh", "relu"]))
    batch = draw(st.integers(1, PAD_BATCH))
    seed = draw(st.integers(0, 2**32 - 1))
    return dims, activation, batch, seed


# Compiling per drawn shape would cost ~0.7 s an example, so every drawn network is embedded in
# one of six fixed shapes (depth x activation) and the batch is tiled. Neither changes what the
# quantiser computes for the real channels: zero rows/columns get their own per-channel scale
# (1) and output exactly 0, act(0) = 0 leaves every per-tensor hidden max unchanged, and
# repeated rows leave every calibration max unchanged. test_padding_changes_nothing checks it.
PAD_IN, PAD_WIDTH, PAD_OUT, PAD_BATCH = 16, 128, 8, 64


def pad(layers, x):
    depth = len(layers) - 1
    dims = [PAD_IN] + [PAD_WIDTH] * depth + [PAD_OUT]
    padded = []
    for (w, b), fan_in, fan_out in zip(layers, dims[:-1], dims[1:]):
        w_p = np.zeros((fan_in, fan_out), np.float32)
        w_p[: w.shape[0], : w.shape[1]] = w
        b_p = np.zeros((fan_out,), np.float32)
        b_p[: b.shape[0]] = b
        padded.append((w_p, b_p))
    x_p = np.zeros((PAD_BATCH, PAD_IN), np.float32)
    x_p[:, : x.shape[1]] = np.resize(x, (PAD_BATCH, x.shape[1]))  # repeats the rows cyclically
    return padded, x_p


def int8_forward_padded(layers, x, activation):
    """:func:`int8_forward` through the fixed padded shapes; returns the real rows/columns."""
    padded, x_p = pad(layers, x)
    qp, out = _int8_run([(jnp.asarray(w), jnp.asarray(b)) for w, b in padded], jnp.asarray(x_p), activation)
    return qp, np.asarray(out, np.float64)[: x.shape[0], : layers[-1][0].shape[1]]


def test_padding_changes_nothing():
    rng = np.random.default_rng(5)
    layers = random_mlp(rng, [3, 20, 9, 5])
    x = (rng.normal(size=(7, 3)) * [0.5, 2.0, 4.0]).astype(np.float32)
    for activation in ("tanh", "relu"):
        _, plain = int8_forward(layers, x, activation)
        _, padded = int8_forward_padded(layers, x, activation)
        np.testing.assert_allclose(padded, plain, rtol=1e-6, atol=1e-7)


def safe_scale(absmax):
    """The documented scale rule: ``absmax / 127``, and 1 where the range is empty."""
    return np.where(absmax > 0, absmax / QMAX, 1.0)


def rounding_noise_std(layers, x, activation):
    """Predicted standard deviation of ``int8 logit - fp32 logit``, per logit ``[N, out]``, from
    the scheme in ``rlaccel.quant``'s docstring with every scale recomputed here from its
    definition (not read from the quantiser). Also returns those scales.

    Each rounding adds an error uniform on half a step either side (variance ``step^2 / 12``):
    inputs (step ``s_in`` per feature), weights (``s_w`` per output channel), biases (``s_x s_w``)
    and hidden activations (``s_h``). To first order, through ``z = x W + b``:
    ``Var dz = Var dx @ W^2 + x^2 @ Var dW + Var db``, and through the activation
    ``Var dh = act'(z)^2 Var dz + s_h^2 / 12`` (a ReLU unit that is off on both sides of the
    noise is exactly 0 in both paths). Measured over 400 random networks, the errors divided
    by this prediction had RMS 0.95 and never exceeded 4.3 in magnitude.
    """
    h = np.asarray(x, np.float64)
    absmax = np.abs(h).max(axis=0)
    s_in = safe_scale(absmax)
    var_h = np.where(absmax > 0, s_in**2 / 12, 0.0) * np.ones_like(h)
    hidden_scales, weight_scales = [], []
    for i, (w, b) in enumerate(layers):
        w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
        if i == 0:  # weights are quantised after folding in the input scale
            s_w = safe_scale(np.abs(w * s_in[:, None]).max(axis=0))
            var_w = (s_w**2 / 12)[None, :] / s_in[:, None] ** 2
            s_out = s_w
        else:
            s_w = safe_scale(np.abs(w).max(axis=0))
            var_w = np.broadcast_to(s_w**2 / 12, w.shape)
            s_out = hidden_scales[-1] * s_w
        weight_scales.append(s_w)
        z = h @ w + b
        var_z = var_h @ np.square(w) + np.square(h) @ var_w + s_out**2 / 12
        if i == len(layers) - 1:
            return np.sqrt(var_z), s_in, np.array(hidden_scales), weight_scales
        h = ACT[activation](z)
        hidden_scales.append(float(safe_scale(np.abs(h).max())))
        if activation == "tanh":
            var_h = var_z * np.square(1 - np.square(h)) + hidden_scales[-1] ** 2 / 12
        else:
            var_h = np.where(z > -4 * np.sqrt(var_z), var_z + hidden_scales[-1] ** 2 / 12, 0.0)
    raise AssertionError("unreachable")


@settings(deadline=None, max_examples=25)
@given(mlps())
@pytest.mark.slow
def test_int8_logits_match_fp32(case):
    """Random MLPs calibrated on their own inputs: int8 logits within 6 predicted standard
    deviations of int8 rounding noise, scales as documented, every weight within half a step.

    Why not ``||q - f|| / ||f|| <= 2 %`` per example: it is false for a correct int8 quantiser.
    Over 200 random draws of this distribution it had median 1.5 % but exceeded 2 % in one
    draw out of five (up to 8.6 %): weights alone (fp32 activations) gave median 1.0 %, and a
    random logit is often a near-cancelling sum, so the same absolute error is a large
    relative one. Even 2 % of ``|h| |W| + |b|`` fails (hypothesis found [1, 4, 1] ReLU, batch 1,
    seed 1: a weight of 0.003 in a column with max 0.99 rounds to 0), and the worst-case
    rounding bound is ~4x the logits themselves (vacuous). The noise prediction is tight
    (predicted std ~1.6 % of the logits' norm, median) and holds for every draw;
    ``test_int8_error_is_rounding_noise`` holds the 2 % relative error to the median.
    """
    dims, activation, batch, seed = case
    rng = np.random.default_rng(seed)
    layers = random_mlp(rng, dims)
    x = (rng.normal(size=(batch, dims[0])) * rng.uniform(0.1, 5.0, size=dims[0])).astype(np.float32)
    qp, q = int8_forward_padded(layers, x, activation)
    h, f = fp32_forward(layers, x, activation)
    assert q.shape == f.shape == (batch, dims[-1]) and np.all(np.isfinite(q))

    std, s_in, s_h, s_w = rounding_noise_std(layers, x, activation)
    w_out, b_out = layers[-1]
    size = np.abs(h) @ np.abs(w_out.astype(np.float64)) + np.abs(b_out.astype(np.float64))
    # (+ fp32 arithmetic in the quantiser's calibration and rescaling vs float64 here)
    np.testing.assert_array_less(np.abs(q - f), 6 * std + 1e-5 * size + 1e-6)

    # The quantiser's scales are the documented ones...
    np.testing.assert_allclose(np.asarray(qp.input_mult)[: dims[0]], 1.0 / s_in, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(qp.act_scales), s_h, rtol=1e-4)
    # ...and every int8 weight is its fp32 weight rounded to the nearest step of its column.
    for i, ((w, _), layer, (w_deq, _)) in enumerate(zip(layers, qp.layers, quant.dequantized_layers(qp))):
        assert layer.w_q.dtype == jnp.int8 and layer.b_q.dtype == jnp.int32
        assert int(jnp.max(jnp.abs(layer.w_q.astype(jnp.int32)))) <= QMAX
        w = w.astype(np.float64) * (s_in[:, None] if i == 0 else 1.0)  # first layer: equalised units
        w_deq = np.asarray(w_deq, np.float64)[: w.shape[0], : w.shape[1]]
        assert np.all(np.abs(w_deq - w) <= 0.5 * s_w[i][None, :] * (1 + 1e-4) + 1e-9)


def test_int8_error_is_rounding_noise():
    """Over 24 fixed random networks of the property test's distribution (batch 64):
    ``||q - f|| / ||f||`` has median <= 2 % (1.5 % measured) and 90th percentile <= 3.5 %, and
    the errors are as large as the rounding-noise prediction says (mean squared z-score ~1),
    so the quantiser adds no error beyond its rounding steps."""
    rng = np.random.default_rng(123)
    rel, z2 = [], []
    for k in range(24):
        depth = int(rng.integers(1, 4))
        dims = [int(rng.integers(1, 17))] + [int(rng.integers(4, 129)) for _ in range(depth)] + [int(rng.integers(1, 9))]
        activation = ("tanh", "relu")[k % 2]
        layers = random_mlp(rng, dims)
        x = (rng.normal(size=(64, dims[0])) * rng.uniform(0.1, 5.0, size=dims[0])).astype(np.float32)
        _, q = int8_forward_padded(layers, x, activation)
        _, f = fp32_forward(layers, x, activation)
        rel.append(np.linalg.norm(q - f) / np.linalg.norm(f))
        z2.append(np.mean(np.square((q - f) / rounding_noise_std(layers, x, activation)[0])))
    assert np.median(rel) <= 0.02, sorted(rel)
    assert np.percentile(rel, 90) <= 0.035, sorted(rel)
    assert 0.6 <= np.mean(z2) <= 1.4, sorted(z2)


def test_int8_logits_of_the_shipped_policy_within_two_percent():
    """The default PPO policy (2 x 64 tanh, SB3's orthogonal init) on CartPole-scale inputs:
    ``||q - f|| / ||f|| <= 2 %`` over the batch, the plain relative error."""
    from rlaccel.agents.ppo import networks
    from rlaccel.agents.ppo.config import PolicyKwargs
    from rlaccel.envs import make

    env = make("CartPole-v1")
    nets = networks.make_networks(env.observation_space, env.action_space, PolicyKwargs())
    params = jax.jit(networks.init_params, static_argnums=(0, 2, 3))(nets, jax.random.PRNGKey(0), 4, 0.0)
    layers = [(np.asarray(w), np.asarray(b)) for w, b in quant.dense_layers(params["policy"])]
    x = (np.random.default_rng(0).normal(size=(PAD_BATCH, 4)) * np.array([1.0, 1.5, 0.1, 1.5])).astype(np.float32)
    _, q = int8_forward_padded(layers, x, "tanh")
    _, f = fp32_forward(layers, x, "tanh")
    assert np.linalg.norm(q - f) / np.linalg.norm(f) <= 0.02
    # ...and the greedy actions almost all agree.
    assert np.mean(np.argmax(q, -1) == np.argmax(f, -1)) >= 0.95


# --------------------------------------------------------------------------------------------
# Degenerate ranges never divide by zero.


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_all_zero_output_channel(activation):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 5)).astype(np.float32)
    b0 = (0.1 * rng.normal(size=5)).astype(np.float32)
    w0[:, 2] = 0.0  # hidden unit 2 never fires...
    b0[2] = 0.0
    w1 = rng.normal(size=(5, 3)).astype(np.float32)
    b1 = (0.1 * rng.normal(size=3)).astype(np.float32)
    w1[:, 1] = 0.0  # ...and logit 1 is constantly 0
    b1[1] = 0.0
    w_q, scale = quant.quantize_weight(jnp.asarray(w1))
    assert float(scale[1]) == 1.0 and not np.any(np.asarray(w_q[:, 1]))
    x = rng.normal(size=(16, 3)).astype(np.float32)
    qp, q = int8_forward([(w0, b0), (w1, b1)], x, activation)
    assert float(qp.layers[0].out_scale[2]) == 1.0  # s_x = 1 (equalised input) times s_w = 1
    assert not np.any(np.asarray(qp.layers[0].w_q[:, 2])) and int(qp.layers[0].b_q[2]) == 0
    assert np.all(np.isfinite(q))
    assert np.all(q[:, 1] == 0.0)
    _, f = fp32_forward([(w0, b0), (w1, b1)], x, activation)
    np.testing.assert_allclose(q[:, [0, 2]], f[:, [0, 2]], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_all_zero_calibration_input(activation):
    # The first rollout could see a constant-zero feature (or all zeros): absmax 0 -> scale 1.
    rng = np.random.default_rng(2)
    layers = [
        (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), jnp.zeros((8,), jnp.float32)),
        (jnp.asarray(rng.normal(size=(8, 2)), jnp.float32), jnp.zeros((2,), jnp.float32)),
    ]
    zeros = jnp.zeros((10, 4), jnp.float32)
    calib = quant.update(quant.init(4, 2), layers, zeros, activation)
    np.testing.assert_array_equal(np.asarray(calib.input_absmax), np.zeros(4))
    np.testing.assert_array_equal(np.asarray(calib.hidden_absmax), [0.0])  # act(0 @ w + 0) = 0
    qp = quant.quantize(layers, calib, activation)
    for leaf in jax.tree.leaves(qp):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
    np.testing.assert_array_equal(np.asarray(qp.input_mult), np.ones(4))
    np.testing.assert_array_equal(np.asarray(qp.act_scales), [1.0])
    out = quant.apply(qp, zeros)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((10, 2)))
    # A later input is still finite (coarse, since nothing was seen to calibrate it).
    assert np.all(np.isfinite(np.asarray(quant.apply(qp, jnp.ones((1, 4))))))


def test_all_zero_layer():
    # A whole hidden layer of zeros: hidden absmax 0 -> activation scale 1, logits = output bias.
    layers = [
        (jnp.zeros((3, 4), jnp.float32), jnp.zeros((4,), jnp.float32)),
        (jnp.ones((4, 2), jnp.float32), jnp.array([0.5, -0.25], jnp.float32)),
    ]
    x = jnp.asarray(np.random.default_rng(3).normal(size=(5, 3)), jnp.float32)
    qp, q = int8_forward(layers, x, "tanh")
    np.testing.assert_array_equal(np.asarray(qp.act_scales), [1.0])
    # The bias is exact up to half its quantisation step s_x * s_w = 1 * (1 / 127):
    #   0.5 * 127 = 63.5 -> 64 -> 64 / 127 = 0.50394;   -0.25 * 127 = -31.75 -> -32 -> -0.25197
    np.testing.assert_allclose(q, np.tile([64 / 127, -32 / 127], (5, 1)), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The int32 accumulator cannot overflow.


@pytest.mark.parametrize("fan_in", [4096, MAX_FAN_IN])
def test_worst_case_accumulation_is_exact(fan_in):
    # fan_in 4096 is the widest layer the config allows; MAX_FAN_IN the widest quantize takes.
    # Worst case: every |x_q| = |w_q| = 127 with aligned signs, plus the largest bias:
    #   4096 * 127^2 + 2^30 = 66,064,384 + 1,073,741,824 = 1,139,806,208 < 2^31 - 1
    #   65536 * 127^2 + 2^30 = 1,057,030,144 + 1,073,741,824 = 2,130,771,968 < 2^31 - 1
    rng = np.random.default_rng(fan_in)
    signs = np.where(rng.random(fan_in) < 0.5, -1, 1)
    w = np.stack([np.full(fan_in, 127), -np.full(fan_in, 127), 127 * signs, 127 * signs], axis=1)  # [K, 4]
    b = np.array([BIAS_LIMIT, -BIAS_LIMIT, BIAS_LIMIT, -BIAS_LIMIT])
    x = np.stack([np.full(fan_in, 127), np.full(fan_in, -127), 127 * signs, -127 * signs])  # [4, K]
    layer = QuantLayer(w_q=jnp.asarray(w, jnp.int8), b_q=jnp.asarray(b, jnp.int32), out_scale=jnp.ones((4,), jnp.float32))
    got = quant.int8_dense(jnp.asarray(x, jnp.int8), layer)
    assert got.dtype == jnp.int32
    want = x.astype(np.int64) @ w.astype(np.int64) + b.astype(np.int64)
    peak = fan_in * 127 * 127 + BIAS_LIMIT
    assert np.abs(want).max() == peak < 2**31 - 1  # the case is the worst one, and it fits
    np.testing.assert_array_equal(np.asarray(got, np.int64), want)


def test_bias_is_clipped_to_the_limit():
    # A bias far larger than its scale: round(b / (s_x s_w)) would not fit; it is clipped.
    layers = [
        (jnp.full((2, 2), 1e-6, jnp.float32), jnp.array([1e6, -1e6], jnp.float32)),
        (jnp.ones((2, 1), jnp.float32), jnp.zeros((1,), jnp.float32)),
    ]
    calib = quant.update(quant.init(2, 2), layers, jnp.ones((4, 2), jnp.float32), "tanh")
    qp = quant.quantize(layers, calib, "tanh")
    np.testing.assert_array_equal(np.asarray(qp.layers[0].b_q), [BIAS_LIMIT, -BIAS_LIMIT])


def test_fan_in_above_the_bound_is_rejected():
    layers = [(jnp.zeros((MAX_FAN_IN + 1, 1), jnp.float32), jnp.zeros((1,), jnp.float32))] * 2
    with pytest.raises(ValueError, match="fan-in"):
        quant.quantize(layers, quant.init(MAX_FAN_IN + 1, 2), "tanh")


def test_quantize_and_apply_are_jittable():
    rng = np.random.default_rng(4)
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in random_mlp(rng, [4, 16, 16, 2])]
    x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)

    def run(layers, x):
        calib = quant.update(quant.init(4, 3), layers, x, "tanh")
        return quant.apply(quant.quantize(layers, calib, "tanh"), x)

    np.testing.assert_array_equal(np.asarray(jax.jit(run)(layers, x)), np.asarray(run(layers, x)))


def test_qmax_and_the_tables_types_are_defined_once():
    from rlaccel import reference
    from rlaccel.deploy import artifact

    assert quant.QMAX is reference.QMAX == 127 and quant.LEVELS is reference.LEVELS == artifact.LEVELS == 2 * QMAX
    assert quant.Int8Tables is reference.Int8Tables and quant.dense_layers is reference.dense_layers

