"""The C export (``rlaccel.deploy.c_model``) and the ``c-int8`` runtime (``rlaccel.deploy.c_runtime``).

The oracle is gcc: the generated C, compiled with ``-O2 -std=c99 -Wall -Wextra -pedantic
-Werror``, must give heads bit-identical (float32 ``array_equal``) to the numpy specification
``rlaccel.int8model.head(model, preprocess(obs))`` on >= 10k observations per model, including
observations far outside the calibration range (QUANTIZE's clamps) and exact rounding ties. Its helpers are also compared one by one with ``rlaccel.intmath`` on edge values.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from int8_models import random_model

from rlaccel import intmath
from rlaccel.deploy.artifact import PolicyError
from rlaccel.deploy.c_model import write_c
from rlaccel.deploy.c_runtime import CHead, latency_ns
from rlaccel.int8model import head, preprocess

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")
STRICT = ["-O2", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]

# (profile, activation, dims, with an observation normaliser)
CASES = [
    ("tflite", "tanh", [3, 64, 64, 1], True),
    ("tflite", "tanh", [4, 64, 64, 2], False),
    ("tflite", "relu", [4, 128, 128, 2], False),
    ("pow2", "tanh", [4, 64, 64, 2], False),
    ("pow2", "relu", [5, 32, 32, 3], True),
]
IDS = [f"{p}-{a}-{'x'.join(map(str, d))}{'-norm' if n else ''}" for p, a, d, n in CASES]


class Case:
    """One model of :data:`CASES`, its normaliser, and >= 10k raw observations."""

    def __init__(self, profile: str, activation: str, dims: list[int], norm: bool, seed: int):
        rng = np.random.default_rng(seed)
        self.profile, self.activation = profile, activation
        lo, hi = rng.uniform(0.5, 2.0, 2)  # calibration ranges, so QUANTIZE's scales and zero points vary
        self.model, u = random_model(dims, profile, activation, seed, calib=rng.uniform(-lo, hi, (4096, dims[0])).astype(np.float32))
        if profile == "pow2" and activation == "tanh":  # two more TANH tables (the one used picks the table)
            self.model = self.model._replace(out_scale=(np.float32(2**-6), np.float32(2**-7), *self.model.out_scale[2:]))
        n = dims[0]
        if norm:  # normalised values reach +-100 against a clip of 6; u * gain reaches +-3 (calibrated: +-1)
            gain = rng.uniform(0.2, 0.5, n).astype(np.float32)
            self.model = self.model._replace(gain=gain)
            self.mean = rng.normal(0, 2, n).astype(np.float32)
            self.inv_std = rng.uniform(0.1, 10, n).astype(np.float32)
            self.clip = 6.0
        else:
            gain, self.mean, self.inv_std, self.clip = np.ones(n, np.float32), None, None, None
        # ties: u / in_scale = k + 0.5 exactly (scales have 12 significant bits), and their neighbours
        ties = ((np.arange(-300, 300) + 0.5) * self.model.in_scale).astype(np.float32)
        special = np.array([0.0, -0.0, 1e6, -1e6, 1e-30, -1e-30], np.float32)  # not NaN / inf: see quantize's C comment
        flat = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)), special])
        flat = np.resize(flat, (-(-len(flat) // n)) * n).reshape(-1, n)
        z = np.concatenate([u, 3 * u, 20 * u, rng.normal(0, 2, (2000, n)).astype(np.float32), flat]).astype(np.float32)
        z = z / gain  # before the gain: raw observations without a normaliser (gain 1: ties stay exact)
        self.obs = z if not norm else (self.mean + z / self.inv_std).astype(np.float32)

    def expected(self, obs: np.ndarray) -> np.ndarray:
        return head(self.model, preprocess(obs, self.model.gain, self.mean, self.inv_std, self.clip), self.profile, self.activation)

    def write(self, out_dir: Path) -> list[Path]:
        return write_c(self.model, self.profile, self.activation, out_dir, self.mean, self.inv_std, self.clip)

    def c_head(self) -> CHead:
        return CHead(self.model, self.profile, self.activation, self.mean, self.inv_std, self.clip)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLACCEL_CACHE", str(tmp_path_factory.getbasetemp() / "rlaccel_cache"))


@pytest.fixture(scope="module", params=range(len(CASES)), ids=IDS)
def case(request: pytest.FixtureRequest) -> Case:
    return Case(*CASES[request.param], seed=request.param)


def test_heads_are_bit_identical_to_the_spec(case: Case) -> None:
    obs = case.obs
    assert len(obs) >= 10_000
    x_q = intmath.quantize(preprocess(obs, case.model.gain, case.mean, case.inv_std, case.clip), float(case.model.in_scale), int(case.model.in_zero))
    assert x_q.min() == -128 and x_q.max() == 127  # QUANTIZE's clamps are hit
    expected = case.expected(obs)
    c = case.c_head()
    got = c.head(obs)
    assert got.dtype == np.float32 and got.shape == expected.shape
    bad = np.flatnonzero((got != expected).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {len(obs)} heads differ, first obs {obs[bad[0]]}: C {got[bad[0]]}, spec {expected[bad[0]]}"
    assert len(np.unique(expected[:, 0])) > 10  # not a constant head
    for i in range(0, len(obs), 97):  # the batch-1 path
        assert np.array_equal(c.head_one(obs[i]), expected[i])


def test_strict_compile_and_main_example(case: Case, tmp_path: Path) -> None:
    case.write(tmp_path)
    subprocess.run([GCC, *STRICT, "policy.c", "main.c", "-o", "policy"], cwd=tmp_path, check=True, capture_output=True)
    obs = case.obs[3] * np.float32(1.7)
    args = [repr(float(v)) for v in obs]  # a float32 printed as a double parses back to itself
    printed = subprocess.run(["./policy", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    from_stdin = subprocess.run(["./policy"], input=" ".join(args), cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert printed == from_stdin
    assert np.array_equal(np.array(printed.split(), np.float32), case.expected(obs[None])[0])


@pytest.mark.parametrize("flags", [["-O0", "-std=c99"], ["-O3", "-march=native", "-std=gnu99", "-ffp-contract=fast"]], ids=["O0", "O3-native-contract"])
def test_heads_do_not_depend_on_compiler_flags(flags: list[str], tmp_path: Path) -> None:
    """No float expression can be contracted into an FMA (gnu99's default is -ffp-contract=fast)."""
    case = Case(*CASES[0], seed=0)  # the float normaliser
    case.write(tmp_path)
    subprocess.run([GCC, *flags, "-shared", "-fPIC", "policy.c", "-o", "policy.so"], cwd=tmp_path, check=True)
    fn = ctypes.CDLL(str(tmp_path / "policy.so")).rlaccel_policy_head_batch
    got = np.empty((len(case.obs), 1), np.float32)
    fn(ctypes.c_void_p(case.obs.ctypes.data), ctypes.c_void_p(got.ctypes.data), ctypes.c_int(len(case.obs)))
    assert np.array_equal(got, case.expected(case.obs))


def test_no_libm_or_libc_symbols(case: Case, tmp_path: Path) -> None:
    case.write(tmp_path)
    for opt in ("-O0", "-O2", "-Os"):
        subprocess.run([GCC, opt, "-std=c99", "-c", "policy.c", "-o", "policy.o"], cwd=tmp_path, check=True)
        undefined = subprocess.run(["nm", "-u", "policy.o"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split()
        assert undefined == [], f"{opt}: policy.o needs {undefined}"  # no tanh, exp, round, lrint, memcpy...
    defined = subprocess.run(["nm", "-g", "--defined-only", "policy.o"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert {line.split()[-1] for line in defined.splitlines()} == {"rlaccel_policy_head", "rlaccel_policy_head_batch"}


def test_helpers_match_intmath(tmp_path: Path) -> None:
    """round_half_away, SRDHM, RoundingDivideByPOT and both requantisations, against ``intmath``."""
    rng = np.random.default_rng(7)
    helpers = {  # name: (argument type, result type, call)
        "round": ("float", "float", "round_half_away(x[i])"),
        "srdhm": ("int32_t", "int32_t", "srdhm(x[i], m[i])"),
        "rdbpot": ("int32_t", "int32_t", "rounding_divide_by_pot(x[i], s[i])"),
        "requantize": ("int32_t", "int32_t", "requantize(x[i], m[i], s[i])"),
    }
    edges = np.array([0, 1, -1, 2**31 - 1, -(2**31), -(2**31) + 1, 2**30, -(2**30), 12345, -12345], np.int64)
    a = np.concatenate([edges.repeat(len(edges)), rng.integers(-(2**31), 2**31, 20_000)]).astype(np.int32)
    b = np.concatenate([np.tile(edges, len(edges)), rng.integers(-(2**31), 2**31, 20_000)]).astype(np.int32)
    e = rng.integers(0, 32, len(a)).astype(np.int32)
    libs = {}
    for profile, names in (("tflite", helpers), ("pow2", ("round", "requantize"))):  # pow2 has no SRDHM
        d = tmp_path / profile
        Case(profile, "relu", [4, 8, 2], False, seed=0).write(d)
        (d / "t.c").write_text('#include "policy.c"\n' + "".join(
            f"void t_{n}(const {helpers[n][0]} *x, const int32_t *m, const int32_t *s, {helpers[n][1]} *y, int k)\n"
            f"{{ int i; (void)m; (void)s; for (i = 0; i < k; ++i) y[i] = {helpers[n][2]}; }}\n" for n in names))
        subprocess.run([GCC, *STRICT, "-shared", "-fPIC", "t.c", "-o", "t.so"], cwd=d, check=True)
        libs[profile] = ctypes.CDLL(str(d / "t.so"))

    def call(lib: ctypes.CDLL, name: str, x: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
        arrays = [x, m.astype(np.int32), s.astype(np.int32), np.empty_like(x)]  # alive during the call
        getattr(lib, name)(*(ctypes.c_void_p(v.ctypes.data) for v in arrays), ctypes.c_int(len(x)))
        return arrays[-1]

    # std::round on float32: ties, 0.49999997f, the 2^23 boundary, large and random values
    f = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 8388607.5, -8388607.5, 8388608.0, 4194303.5, 16777215.0, 1e10, -3e38], np.float32)
    f = np.concatenate([f, np.nextafter(f, np.float32(0)), (rng.normal(0, 300, 20_000)).astype(np.float32), (rng.integers(-600, 600, 5000) / 2).astype(np.float32)])
    zeros = np.zeros(len(f), np.int32)
    big = np.abs(f) >= 2**23  # integers already (beyond 2^63 intmath's int64 result overflows)
    want_round = np.where(big, f, intmath.round_half_away(np.where(big, 0, f)).astype(np.float32))
    for lib in libs.values():
        np.testing.assert_array_equal(call(lib, "t_round", f, zeros, zeros), want_round)
    tfl = libs["tflite"]
    np.testing.assert_array_equal(call(tfl, "t_srdhm", a, b, e), intmath.saturating_rounding_doubling_high_mul(a, b))
    np.testing.assert_array_equal(call(tfl, "t_rdbpot", a, b, e), intmath.rounding_divide_by_pot(a, e))
    mult, shift = intmath.quantize_multiplier(np.exp(rng.uniform(np.log(1e-9), np.log(1e4), len(a))))  # left shifts up to 14: acc << 14 wraps, as in TFLite)
    acc = (a // 128).astype(np.int32)
    np.testing.assert_array_equal(call(tfl, "t_requantize", acc, mult, shift), intmath.multiply_by_quantized_multiplier(acc, mult, shift))
    s2 = rng.integers(-40, 12, len(a))  # acc << 11 wraps
    want = np.clip(intmath.shift_round(acc, s2), -65536, 65536)  # the C saturates right shifts where int8 clamps anyway
    want = np.where(s2 >= 0, intmath.shift_round(acc, s2), want)  # left shifts wrap in int32
    np.testing.assert_array_equal(call(libs["pow2"], "t_requantize", acc, zeros[: len(acc)], s2), want)


def test_missing_compiler_is_a_policy_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = Case("tflite", "tanh", [4, 8, 2], False, seed=1)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(PolicyError, match="/nonexistent/cc"):
        c.c_head()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PolicyError, match="no C compiler.*cc"):
        c.c_head()


def test_compiled_once_then_cached(tmp_path: Path) -> None:
    c = Case("pow2", "tanh", [4, 16, 2], False, seed=2)
    first = c.c_head()
    mtime = first.library_path.stat().st_mtime_ns
    second = c.c_head()
    assert second.library_path == first.library_path and second.library_path.stat().st_mtime_ns == mtime
    assert first.library_path.parent.parent == Path(os.environ["RLACCEL_CACHE"]) / "c"
    other = Case("pow2", "tanh", [4, 16, 2], False, seed=3).c_head()
    assert other.library_path != first.library_path


def test_latency_helpers_report_numbers() -> None:
    c = Case("tflite", "tanh", [4, 64, 64, 2], False, seed=1)
    figures = latency_ns(c.c_head(), c.obs[:64], calls=200, warmup=20)
    assert set(figures) == {"p50", "p95", "p99", "mean", "bare"}
    assert all(np.isfinite(v) and v > 0 for v in figures.values())
    assert figures["p50"] <= figures["p99"]
