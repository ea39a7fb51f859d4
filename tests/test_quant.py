"""Tests for ``rlaccel.quant`` (JAX, int32 only) against its numpy definition, ``rlaccel.intmath``
(TFLite Micro's integer arithmetic) and ``rlaccel.int8model.head``, and against hand-worked integers.

The end-to-end bit-exactness of ``quant.apply`` / ``int8model.head`` / ``reference.Int8Network``
on many inputs is in ``tests/test_reference.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaccel import compile_cache, int8model, intmath, quant, quant_scales
from rlaccel.quant import BIAS_LIMIT, MAX_FAN_IN
from rlaccel.reference import ACTIVATIONS as ACT

PROFILES = ("tflite", "pow2")


@functools.partial(jax.jit, static_argnums=(2, 3))
def _calibrated(layers, x, activation, profile):
    calib = quant.update(quant.init(x.shape[1], len(layers)), layers, x, activation)
    return quant.quantize(layers, calib, activation, profile)


_apply = jax.jit(quant.apply)
_quantize = jax.jit(quant.quantize, static_argnums=(2, 3))


def int8_forward(layers, x, activation, profile="tflite"):
    """Calibrate on ``x``, quantise, run the int8 path: ``(QuantParams, head float64 [N, out])``;
    also checks the JAX head against the numpy spec ``int8model.head`` bit for bit."""
    layers = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in layers]
    x = jnp.asarray(x, jnp.float32)
    qp = _calibrated(layers, x, activation, profile)
    out = np.asarray(_apply(qp, x))
    m = jax.device_get(qp.model)
    spec = int8model.head(m, int8model.preprocess(np.asarray(x), m.gain), profile, activation)
    np.testing.assert_array_equal(out, spec)
    return qp, out.astype(np.float64)


def fp32_forward(layers, x, activation):
    """The float network in numpy (float64): ``(last hidden activation, head)``."""
    h = np.asarray(x, np.float64)
    for w, b in layers[:-1]:
        h = ACT[activation](h @ np.asarray(w, np.float64) + np.asarray(b, np.float64))
    w, b = layers[-1]
    return h, h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)


def random_mlp(rng, dims):
    return [((rng.normal(size=(a, b)) * 1.4 / np.sqrt(a)).astype(np.float32), (0.1 * rng.normal(size=b)).astype(np.float32)) for a, b in zip(dims[:-1], dims[1:])]


# --------------------------------------------------------------------------------------------
# intmath: hand-worked values and the TANH tables.


def test_intmath_hand_worked():
    srdhm = intmath.saturating_rounding_doubling_high_mul
    # round(a * b / 2**31), the nudge 2**30 for a nonnegative product, 1 - 2**30 for a negative one
    # then C's truncating division: every half rounds up (-1.5 -> -1), INT32_MIN^2 saturates.
    assert srdhm(2**30, 2**30) == 2**29  # 0.5 * 0.5 in Q0.31
    assert srdhm(3, 2**30) == 2 and srdhm(-3, 2**30) == -1  # 1.5 -> 2, -1.5 -> -1
    assert srdhm(1, 2**30) == 1 and srdhm(-1, 2**30) == 0  # +0.5 -> 1, -0.5 -> 0
    assert srdhm(-(2**31), -(2**31)) == 2**31 - 1
    rdp = intmath.rounding_divide_by_pot
    np.testing.assert_array_equal(rdp([5, -5, 7, 6, -6, -1, 1], [1, 1, 2, 2, 2, 1, 1]), [3, -3, 2, 2, -2, -1, 1])
    # QuantizeMultiplier: 0.75 = 0.75 * 2**0; 3 = 0.75 * 2**2; 2**-32 = 0.5 * 2**-31 is kept, 2**-33 flushed.
    m, s = intmath.quantize_multiplier(np.array([0.75, 3.0, 2.0**-32, 2.0**-33, 0.0]))
    np.testing.assert_array_equal(m, [3 * 2**29, 3 * 2**29, 2**30, 0, 0])
    np.testing.assert_array_equal(s, [0, 2, -31, 0, 0])
    # 100 * 0.75 = 75; 5 * 3 = 15 (left shift 2, then * 0.75); 10 * 0.75 / 4 = 1.875 -> 2
    np.testing.assert_array_equal(intmath.multiply_by_quantized_multiplier([100, 5, 10], 3 * 2**29, [0, 2, -2]), [75, 15, 2])
    # pow2: halves round up; left shifts are exact
    np.testing.assert_array_equal(intmath.shift_round([5, -5, -6, 3], [-1, -1, -2, 2]), [3, -2, -1, 12])
    assert intmath.round_half_away(np.float32(0.49999997)) == 0  # not (x + 0.5) floored: that gives 1
    assert intmath.round_half_away(-2.5) == -3 and intmath.round_half_away(2.5) == 3
    np.testing.assert_array_equal(intmath.quantize([0.004, -1e9, 1e9, -0.006], 0.01, -3), [-3, -128, 127, -4])


def test_tanh_tables_are_monotone_and_equal_to_float_tanh():
    """gemmlowp's tables equal float tanh rounded to 1/128, both ways a runtime rounds (TFLite's
    half away from zero, ONNX QuantizeLinear's half to even): what lets QDQ runtimes agree. At
    2**-8 and finer they would not (``tanh(2**-8) * 128 = 0.4999975``, gemmlowp gives 1)."""
    x = np.arange(-128, 128)
    assert intmath.TANH_TABLES.shape == (len(intmath.TANH_IN_SCALES), 256) and intmath.TANH_TABLES.dtype == np.int8
    for k, s in enumerate(intmath.TANH_IN_SCALES):
        t = intmath.TANH_TABLES[k].astype(np.int64)
        assert s == 2.0 ** -(5 + k) and intmath.tanh_index(s) == k
        assert np.all(np.diff(t) >= 0) and t[128] == 0
        f = np.tanh((x * s).astype(np.float32)) * np.float32(128)
        np.testing.assert_array_equal(t, np.clip(intmath.round_half_away(f), -128, 127))
        np.testing.assert_array_equal(t, np.clip(np.rint(f), -128, 127))
    assert intmath.tanh_table(2.0**-8)[129] == 1 and np.rint(np.tanh(np.float32(2.0**-8)) * 128) == 0
    with pytest.raises(ValueError, match="TANH_IN_SCALES"):
        intmath.tanh_index(0.01)


def test_the_training_actors_tanh_is_the_table_on_this_backend():
    """``quant._tanh`` (float32 ``tanh``, rounded) gives every entry of every TANH table, as
    compiled for the running backend; the nearest rounding tie is far beyond float32's error."""
    x = np.arange(-128, 128)
    scales = np.asarray(intmath.TANH_IN_SCALES, np.float32)
    got = jax.jit(jax.vmap(quant._tanh, in_axes=(None, 0)))(jnp.asarray(x, jnp.int32), jnp.asarray(scales))
    np.testing.assert_array_equal(np.asarray(got), intmath.TANH_TABLES.astype(np.int32))
    exact = np.tanh(x[None, :] * scales[:, None].astype(np.float64)) * 128
    assert np.min(np.abs(exact - np.floor(exact) - 0.5)) > 2e-3  # 2e-3 / 128 = 1.6e-5 of tanh: ~50x float32 tanh's error (3.2e-7)


# --------------------------------------------------------------------------------------------
# quant's int32 kernels == intmath's int64 ones.


def _scales(rng, n, lo, hi):
    """``n`` random float32 scales with SCALE_BITS significant bits, exponents in ``[lo, hi)``."""
    mant = rng.integers(2 ** (intmath.SCALE_BITS - 1), 2**intmath.SCALE_BITS, n)
    return np.ldexp(mant.astype(np.float64), rng.integers(lo, hi, n) - intmath.SCALE_BITS).astype(np.float32)


def test_scale_rounding_on_the_bits_equals_frexp_and_ldexp():
    """``_round_scale`` / ``_pow2_up`` work on float32 bits; the spec (``intmath.round_scale``)
    and the smallest power of two above are ``frexp`` / ``ldexp``: equal bit for bit on 12
    decades of scales and at every power of two and its float32 neighbours."""
    rng = np.random.default_rng(0)
    pow2 = 2.0 ** np.arange(-40, 20, dtype=np.float32)
    s = np.concatenate([np.exp(rng.uniform(np.log(1e-12), np.log(1e6), 20_000)), pow2, np.nextafter(pow2, np.float32(0)), np.nextafter(pow2, np.float32(np.inf))]).astype(np.float32)
    rounded = np.asarray(jax.jit(quant_scales.round_scale)(s))
    np.testing.assert_array_equal(rounded.view(np.int32), intmath.round_scale(s).view(np.int32))
    m, e = np.frexp(s)
    up = np.ldexp(np.ones_like(m), np.where(m == 0.5, e - 1, e)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(quant_scales.pow2_up)(s)).view(np.int32), up.view(np.int32))


def test_quantize_multiplier_matches_intmath():
    rng = np.random.default_rng(0)
    n = 120_000
    s_in, s_w, s_out = _scales(rng, n, -20, 4), _scales(rng, n, -30, 0), _scales(rng, n, -28, 0)
    s_out[:5000] = _scales(rng, 5000, 8, 30)  # ratios far below 2**-32: flushed to (0, 0)
    num = s_in * s_w
    assert np.array_equal(num.astype(np.float64), s_in.astype(np.float64) * s_w)  # exact in float32
    m, s = compile_cache.jit(quant.quantize_multiplier)(jnp.asarray(num), jnp.asarray(s_out))
    want_m, want_s = intmath.quantize_multiplier(num.astype(np.float64) / s_out.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(m, np.int64), want_m)
    np.testing.assert_array_equal(np.asarray(s, np.int64), want_s)
    ratio = num.astype(np.float64) / s_out
    assert np.sum(ratio >= 1) > 1000 and np.sum(want_m == 0) > 5000 and np.sum((ratio < 2.0**-30) & (want_m > 0)) > 100
    assert np.all((want_m == 0) | ((want_m >= 2**30) & (want_m < 2**31)))


def test_quantize_multiplier_rounding_edge():
    # A mantissa that rounds up to 2**31 becomes 2**30 with the shift one higher. Unreachable from
    # float32 scales: num / den is a ratio of integers a / d below 2**25, and a / d < 1 means
    # a / d <= 1 - 1 / d < 1 - 2**-25, so its 31-bit mantissa is at most 2**31 - 2**6: it is
    # tested on intmath alone (quant's branch for it cannot be driven from float32 inputs).
    m, s = intmath.quantize_multiplier(np.array([1 - 2.0**-32, 0.5 - 2.0**-33, 1 - 2.0**-31]))
    np.testing.assert_array_equal(m, [2**30, 2**30, 2**31 - 1])
    np.testing.assert_array_equal(s, [1, 0, 0])


def _accumulators(rng, n):
    big = 2**31 - 2**20
    acc = np.concatenate([rng.integers(-big, big + 1, n), rng.integers(-(2**16), 2**16, n), rng.integers(-300, 300, n), [big, -big, 0, 1, -1]])
    return acc.astype(np.int32)


def test_requantize_tflite_matches_intmath():
    rng = np.random.default_rng(1)
    acc = _accumulators(rng, 20_000)
    fn = compile_cache.jit(quant.requantize, static_argnums=3)
    for shift in range(-31, 3):
        mult = rng.integers(2**30, 2**31, acc.size)
        mult[:3] = [2**30, 2**31 - 1, 3 * 2**29]
        got = np.asarray(fn(jnp.asarray(acc), jnp.asarray(mult, jnp.int32), jnp.full(acc.shape, shift, jnp.int32), "tflite"), np.int64)
        np.testing.assert_array_equal(got, intmath.multiply_by_quantized_multiplier(acc, mult, shift), err_msg=f"shift {shift}")


@pytest.mark.parametrize("shifts", [range(-40, 1), range(1, 3)], ids=["right", "left"])
def test_requantize_pow2_matches_intmath(shifts):
    rng = np.random.default_rng(2)
    acc = _accumulators(rng, 20_000)
    if shifts[0] > 0:  # a left shift of an int32 accumulator: exact only while it fits (see the report)
        acc = acc[np.abs(acc.astype(np.int64)) < 2**29 - 1]
    fn = compile_cache.jit(quant.requantize, static_argnums=3)
    for shift in shifts:
        got = np.asarray(fn(jnp.asarray(acc), jnp.zeros(acc.shape, jnp.int32), jnp.full(acc.shape, shift, jnp.int32), "pow2"), np.int64)
        np.testing.assert_array_equal(got, intmath.shift_round(acc, shift), err_msg=f"shift {shift}")


def test_requantize_pow2_left_shift_of_a_large_accumulator():
    """A left shift wraps the int32 accumulator in both (C's int32 arithmetic; was a JAX/spec mismatch)."""
    got = np.asarray(quant.requantize(jnp.int32([2**30, -(2**30) - 1]), jnp.int32([0, 0]), jnp.int32([1, 1]), "pow2"), np.int64)
    np.testing.assert_array_equal(got, intmath.shift_round(np.array([2**30, -(2**30) - 1]), 1))


# --------------------------------------------------------------------------------------------
# Hand-worked layers and networks.


def _model(w_q, b_q, shift, in_zero=0, lo=-128, hi=127):
    """A one-layer pow2 Int8Model with unit scales: output = clamp(shift_round(acc, shift))."""
    w_q = np.asarray(w_q, np.int8)
    n = w_q.shape[1]
    one = np.float32(1.0)
    return int8model.Int8Model(
        np.ones(w_q.shape[0], np.float32), one, np.int32(in_zero), (w_q,), (np.asarray(b_q, np.int32),), (np.ones(n, np.float32),),
        (np.zeros(n, np.int32),), (np.full(n, shift, np.int32),), (one,), (np.int32(0),), (np.int32(lo),), (np.int32(hi),),
    )  # fmt: skip


def test_dense_hand_worked():
    # w_q = [[1, -2, 3], [4, 5, -6]], x_q = [[10, -1], [-127, 127]], b_q = [100, -7, 0]:
    #   acc row 0 = [6, -25, 36] + b = [106, -32, 36];  row 1 = [381, 889, -1143] + b = [481, 882, -1143]
    # (889 and -1143 do not fit in int8: the accumulator is int32). Shift -4, halves up:
    #   106 / 16 = 6.625 -> 7, -2, 36 / 16 = 2.25 -> 2;  30.06 -> 30, 55.125 -> 55, -71.44 -> -71
    m = _model([[1, -2, 3], [4, 5, -6]], [100, -7, 0], -4)
    x_q = np.array([[10, -1], [-127, 127]])
    want = [[7, -2, 2], [30, 55, -71]]
    qp = quant.QuantParams(jax.tree.map(jnp.asarray, m), "relu", "pow2")
    np.testing.assert_array_equal(np.asarray(quant.dense(jnp.asarray(x_q, jnp.int32), qp, 0)), want)
    np.testing.assert_array_equal(int8model.int8_hidden(x_q, m, 0, "pow2", "relu"), want)
    # An input zero point of 5 subtracts 5 * column sums [5, 3, -3] * 5: acc row 0 = [81, -47, 51].
    m5 = m._replace(in_zero=np.int32(5))
    qp5 = quant.QuantParams(jax.tree.map(jnp.asarray, m5), "relu", "pow2")
    np.testing.assert_array_equal(np.asarray(quant.dense(jnp.asarray(x_q[:1], jnp.int32), qp5, 0)), [[5, -3, 3]])


def test_apply_hand_worked_two_layer_relu_pow2():
    # w0 = [[1], [0.5]], w1 = [[1]], zero biases; calibration on x = [[2, 4], [1, -2]]:
    #   absmax [2, 4] -> gain [1/2, 1/4]; QUANTIZE at 2**-7 (pow2: |u| <= 1), zero point 0
    #   layer 0: equalised w = [[2], [2]], s_w = pow2_up(2 / 127) = 2**-5 -> w_q = [[64], [64]];
    #     hidden max 4 -> s_h = pow2_up(4 / 127) = 2**-4; shift = log2(2**-7 * 2**-5 / 2**-4) = -8
    #   layer 1: s_w = pow2_up(1 / 127) = 2**-6 -> w_q = 64; head max 4 -> 2**-4; shift log2(2**-10 / 2**-4) = -6
    # x = [2, 4]: u = [1, 1] -> x_q = 128 -> 127 (clamp); acc0 = 2 * 127 * 64 = 16256 -> 16256 / 256 = 63.5 -> 64;
    #   acc1 = 64 * 64 = 4096 -> 64 -> head 64 * 2**-4 = 4.0 (the fp32 answer 2 + 0.5 * 4)
    # x = [1, -2]: u = [0.5, -0.5] -> x_q = [64, -64]; acc0 = 0 -> 0 -> head 0 (fp32: relu(0) = 0)
    layers = [(np.array([[1.0], [0.5]]), np.zeros(1)), (np.array([[1.0]]), np.zeros(1))]
    qp, out = int8_forward(layers, np.array([[2.0, 4.0], [1.0, -2.0]]), "relu", "pow2")
    m = jax.device_get(qp.model)
    np.testing.assert_array_equal(m.gain, [0.5, 0.25])
    assert float(m.in_scale) == 2**-7 and int(m.in_zero) == 0
    np.testing.assert_array_equal(m.w_q[0], [[64], [64]])
    np.testing.assert_array_equal(m.w_q[1], [[64]])
    np.testing.assert_array_equal([m.shift[0][0], m.shift[1][0]], [-8, -6])
    assert [float(s) for s in m.out_scale] == [2**-4, 2**-4] and int(m.act_min[0]) == 0
    np.testing.assert_array_equal(out[:, 0], [4.0, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_padding_changes_nothing(profile):
    """Zero input features, zero channels and repeated rows leave every real output bit-identical
    (all-zero channels get their own weight scale; act(0) = 0 leaves every range as it was)."""
    rng = np.random.default_rng(5)
    layers = random_mlp(rng, [3, 20, 9, 5])
    x = (rng.normal(size=(7, 3)) * [0.5, 2.0, 4.0]).astype(np.float32)
    dims = [8, 32, 16, 8]
    padded = []
    for (w, b), a, c in zip(layers, dims[:-1], dims[1:]):
        w_p, b_p = np.zeros((a, c), np.float32), np.zeros(c, np.float32)
        w_p[: w.shape[0], : w.shape[1]], b_p[: b.size] = w, b
        padded.append((w_p, b_p))
    x_p = np.zeros((32, 8), np.float32)
    x_p[:, :3] = np.resize(x, (32, 3))
    for activation in ("tanh", "relu"):
        _, plain = int8_forward(layers, x, activation, profile)
        _, pad = int8_forward(padded, x_p, activation, profile)
        np.testing.assert_array_equal(pad[:7, :5], plain)
        assert not np.any(pad[:, 5:])


@pytest.mark.slow
def test_int8_weights_are_the_fp32_weights_rounded():
    """Every int8 weight is its (equalised) fp32 weight rounded to the nearest step of its channel."""
    rng = np.random.default_rng(6)
    layers = random_mlp(rng, [5, 64, 64, 3])
    x = rng.normal(size=(256, 5)) * [0.1, 1, 3, 10, 0.5]
    for profile in PROFILES:
        qp, _ = int8_forward(layers, x, "tanh", profile)
        m = jax.device_get(qp.model)
        for i, (w, _) in enumerate(layers):
            w = w.astype(np.float64) / (m.gain[:, None] if i == 0 else 1.0)
            s = m.w_scale[i].astype(np.float64)
            assert np.all(np.abs(m.w_q[i] * s - w) <= 0.5 * s * (1 + 1e-6))
            assert np.abs(m.w_q[i].astype(np.int64)).max() <= 127
        rel = float(quant.weight_rel_error([(jnp.asarray(w), jnp.asarray(b)) for w, b in layers], qp))
        assert rel < (0.01 if profile == "tflite" else 0.02), (profile, rel)  # ~0.5 % / ~1 % measured


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_int8_logits_of_the_shipped_policy(profile):
    """The default PPO policy (2 x 64 tanh, orthogonal init) on CartPole-scale inputs: the plain
    relative error ``||q - f|| / ||f||`` and greedy-action agreement."""
    from rlaccel.agents.ppo import networks
    from rlaccel.agents.ppo.config import PolicyKwargs
    from rlaccel.envs import make

    env = make("CartPole-v1")
    nets = networks.make_networks(env.observation_space, env.action_space, PolicyKwargs())
    params = compile_cache.jit(networks.init_params, static_argnums=(0, 2, 3))(nets, jax.random.PRNGKey(0), 4, 0.0)
    layers = [(np.asarray(w), np.asarray(b)) for w, b in quant.dense_layers(params["policy"])]
    x = (np.random.default_rng(0).normal(size=(512, 4)) * np.array([1.0, 1.5, 0.1, 1.5])).astype(np.float32)
    _, q = int8_forward(layers, x, "tanh", profile)
    _, f = fp32_forward(layers, x, "tanh")
    rel = np.linalg.norm(q - f) / np.linalg.norm(f)
    assert rel <= (0.05 if profile == "tflite" else 0.08), rel  # measured 3.3 % / see report
    assert np.mean(np.argmax(q, -1) == np.argmax(f, -1)) >= 0.95


# --------------------------------------------------------------------------------------------
# Degenerate ranges never divide by zero.


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_all_zero_output_channel(activation, profile):
    rng = np.random.default_rng(1)
    w0, b0 = rng.normal(size=(3, 5)).astype(np.float32), (0.1 * rng.normal(size=5)).astype(np.float32)
    w0[:, 2], b0[2] = 0.0, 0.0  # hidden unit 2 never fires...
    w1, b1 = rng.normal(size=(5, 3)).astype(np.float32), (0.1 * rng.normal(size=3)).astype(np.float32)
    w1[:, 1], b1[1] = 0.0, 0.0  # ...and head 1 is constantly 0
    x = rng.normal(size=(64, 3)).astype(np.float32)
    qp, q = int8_forward([(w0, b0), (w1, b1)], x, activation, profile)
    m = jax.device_get(qp.model)
    if profile == "tflite":  # per channel: the zero channel gets scale 1, the others their own
        assert m.w_scale[0][2] == 1.0 and m.w_scale[1][1] == 1.0 and np.all(m.w_scale[1][[0, 2]] < 1)
    assert not np.any(m.w_q[0][:, 2]) and m.b_q[0][2] == 0 and not np.any(m.w_q[1][:, 1])
    assert np.all(np.isfinite(q)) and np.all(q[:, 1] == 0.0)
    _, f = fp32_forward([(w0, b0), (w1, b1)], x, activation)
    np.testing.assert_allclose(q[:, [0, 2]], f[:, [0, 2]], rtol=0.05, atol=0.06)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_all_zero_calibration_input(activation, profile):
    # The first rollout could see a constant-zero feature (here: all zeros).
    rng = np.random.default_rng(2)
    layers = [(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), jnp.zeros(8)), (jnp.asarray(rng.normal(size=(8, 2)), jnp.float32), jnp.zeros(2))]
    zeros = jnp.zeros((10, 4), jnp.float32)
    calib = quant.update(quant.init(4, 2), layers, zeros, activation)
    np.testing.assert_array_equal(np.asarray(calib.input_max), np.zeros(4))
    np.testing.assert_array_equal(np.asarray(calib.hidden_max), [0.0])  # act(0 @ w + 0) = 0
    qp = _quantize(layers, calib, activation, profile)
    for leaf in jax.tree.leaves(qp):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
    np.testing.assert_array_equal(np.asarray(_apply(qp, zeros)), np.zeros((10, 2)))
    ones = np.ones((10, 4), np.float32)  # a later input: finite, and the spec agrees
    got = np.asarray(_apply(qp, jnp.asarray(ones)))
    m = jax.device_get(qp.model)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, int8model.head(m, int8model.preprocess(ones, m.gain), profile, activation))


@pytest.mark.parametrize("profile", PROFILES)
def test_all_zero_layer(profile):
    # A whole hidden layer of zeros: every hidden output is 0 and the head is the output bias,
    # up to half its quantisation step s_h * s_w (tanh: s_h = 1/128; s_w from the ones: ~1/127).
    layers = [(np.zeros((3, 4), np.float32), np.zeros(4, np.float32)), (np.ones((4, 2), np.float32), np.array([0.5, -0.25], np.float32))]
    x = np.random.default_rng(3).normal(size=(5, 3))
    qp, q = int8_forward(layers, x, "tanh", profile)
    m = jax.device_get(qp.model)
    assert float(m.out_scale[0]) == intmath.TANH_IN_SCALES[-1]  # range 0: the finest TANH scale
    assert np.all(q == q[0]) and np.all(np.isfinite(q))
    np.testing.assert_allclose(q[0], [0.5, -0.25], atol=float(m.out_scale[1]))


# --------------------------------------------------------------------------------------------
# The int32 accumulator cannot overflow; the bounds are enforced.


@pytest.mark.parametrize("profile", PROFILES)
def test_worst_case_accumulation_is_exact(profile):
    # Worst case at MAX_FAN_IN: |x_q - z| = 255 (x_q = 127, z = -128) against |w_q| = 127 with
    # aligned signs, plus the largest bias: 32768 * 255 * 127 + 2**30 = 2,134,933,504 < 2**31 - 1.
    # The output 2**-25 * acc (tflite: mult 2**30, shift -24; pow2: shift -25) is ~ +-63.6, an
    # int32 wrap-around would flip its sign.
    k = MAX_FAN_IN
    signs = np.where(np.random.default_rng(k).random(k) < 0.5, -1, 1)
    w = np.stack([np.full(k, 127), -np.full(k, 127), 127 * signs, -127 * signs], axis=1)
    b = np.array([BIAS_LIMIT, -BIAS_LIMIT, BIAS_LIMIT, -BIAS_LIMIT])
    x = np.stack([np.full(k, 127), np.full(k, 127), np.where(signs > 0, 127, -128)])  # [3, K]
    m = _model(w, b, -25, in_zero=-128)
    if profile == "tflite":
        m = m._replace(mult=(np.full(4, 2**30, np.int32),), shift=(np.full(4, -24, np.int32),))
    acc = (x.astype(np.int64) + 128) @ w + b
    assert np.abs(acc).max() == k * 255 * 127 + BIAS_LIMIT < 2**31 - 1  # the worst case, and it fits
    qp = quant.QuantParams(jax.tree.map(jnp.asarray, m), "relu", profile)
    got = np.asarray(compile_cache.jit(quant.dense, static_argnums=2)(jnp.asarray(x, jnp.int32), qp, 0), np.int64)
    np.testing.assert_array_equal(got, int8model.int8_hidden(x, m, 0, profile, "relu"))
    np.testing.assert_array_equal(got, intmath.rounding_divide_by_pot(acc, 25) if profile == "tflite" else intmath.shift_round(acc, -25))
    assert got[0, 0] == 64 and got[0, 1] == -64


def test_int8_dot_is_the_integer_dot_on_both_paths(monkeypatch):
    # Up to EXACT_F32_FAN_IN the products may be summed by an fp32 dot; every partial sum is an
    # integer below 2**24 there. One more input could reach an odd sum above 2**24, which float32
    # cannot hold: that fan-in must take the int32 dot. Largest sums (x = -128 against w = -127),
    # the last input -127 for an odd total, and random int8 values, against numpy's int64.
    monkeypatch.setattr(quant, "F32_DOT_MAX_MACS", 2**31)  # only the fan-in decides here
    dot = compile_cache.jit(quant.int8_dot)
    for k in (quant.EXACT_F32_FAN_IN, quant.EXACT_F32_FAN_IN + 1):
        x = np.full((3, k), -128)
        x[:, -1] = -127
        x[1] *= -1
        x[1] = np.minimum(x[1], 127)
        x[2] = np.random.default_rng(k).integers(-128, 128, k)
        w = np.full((k, 2), -127)
        w[:, 1] = np.random.default_rng(k + 1).integers(-127, 128, k)
        want = x.astype(np.int64) @ w
        got = np.asarray(dot(jnp.asarray(x, jnp.int32), jnp.asarray(w, jnp.int8)))
        np.testing.assert_array_equal(got, want)
        assert (np.abs(want[0, 0]) < 2**24) == (k == quant.EXACT_F32_FAN_IN)  # the bound is tight
    assert quant.EXACT_F32_FAN_IN * 128 * 127 < 2**24 <= (quant.EXACT_F32_FAN_IN + 1) * 128 * 127


@pytest.mark.parametrize("profile", PROFILES)
def test_bias_is_clipped_to_the_limit(profile):
    # A bias far larger than its scale: round(b / (s_in s_w)) would not fit in int32; it is clipped.
    layers = [(jnp.full((2, 2), 1e-6, jnp.float32), jnp.array([1e6, -1e6], jnp.float32)), (jnp.ones((2, 1), jnp.float32), jnp.zeros((1,), jnp.float32))]
    calib = quant.update(quant.init(2, 2), layers, jnp.ones((4, 2), jnp.float32), "tanh")
    qp = _quantize(layers, calib, "tanh", profile)
    np.testing.assert_array_equal(np.asarray(qp.model.b_q[0]), [BIAS_LIMIT, -BIAS_LIMIT])


def test_bad_arguments_are_rejected():
    layers = [(jnp.zeros((MAX_FAN_IN + 1, 1), jnp.float32), jnp.zeros((1,), jnp.float32))] * 2
    with pytest.raises(ValueError, match="fan-in"):
        quant.quantize(layers, quant.init(MAX_FAN_IN + 1, 2), "tanh")
    small = [(jnp.zeros((2, 1), jnp.float32), jnp.zeros((1,), jnp.float32))] * 2
    with pytest.raises(ValueError, match="tanh or relu"):
        quant.quantize(small, quant.init(2, 2), "elu")  # ELU has no integer kernel
    with pytest.raises(ValueError, match="profile"):
        quant.quantize(small, quant.init(2, 2), "tanh", "fp16")


@pytest.mark.slow
def test_quantize_and_apply_are_jittable():
    rng = np.random.default_rng(4)
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in random_mlp(rng, [4, 16, 16, 2])]
    x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    # (eager tflite quantize and tables dispatch thousands of small ops: ~20 s, so they are
    # checked jitted against the eager pow2 run's structure and against the spec elsewhere)
    def run(layers, x):
        calib = quant.update(quant.init(4, 3), layers, x, "tanh")
        qp = quant.quantize(layers, calib, "tanh", "pow2")
        return qp, quant.apply(qp, x)

    (qp_jit, got), (qp, want) = compile_cache.jit(run)(layers, x), run(layers, x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for a, b in zip(jax.tree.leaves(qp_jit), jax.tree.leaves(qp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_levels_and_the_tables_types_are_defined_once():
    from rlaccel import quant_tables, reference
    from rlaccel.deploy import artifact

    assert quant_tables.LEVELS is reference.LEVELS == artifact.LEVELS == 255
    assert quant_tables.Int8Tables is quant.Int8Tables is reference.Int8Tables and quant.dense_layers is reference.dense_layers
    assert quant.Int8Model is int8model.Int8Model and quant.PROFILES == intmath.PROFILES == PROFILES
