"""The fast numpy quantizers in :mod:`mnnq.weightquant` stay bit-exact.

``c_round`` is checked against two independent references (a float64 ``floor(|x| + 0.5)``
and a ``trunc``-based one) on inputs full of exact ties. The quantizers are checked, bit for
bit (dtype, shape and bytes), against the straightforward implementations they replaced
(copied below as references: one fresh array per float32 operation, ``np.nonzero`` and
``np.where``), on weights with ties after scaling, zero and tiny channels, large values and the
shrink-active HQQ path. The converter comparisons in ``test_weight_sim.py`` tie those
references to MNN itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from mnnq import weightquant as wq

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# references: the straightforward implementations (the module before its speed-up)

def ref_c_round(x):
    x = np.asarray(x)
    r = np.rint(x)
    d = x - r
    tie_towards_zero = (np.abs(d) == 0.5) & (np.sign(d) == np.sign(x))
    return r + np.where(tie_towards_zero, np.sign(x), 0).astype(r.dtype)


def ref_quantize_symmetric(weight, bits, block):
    w2, _ = wq._as_groups(weight, block)
    lo, hi = wq._levels(bits)
    scale = (np.max(np.abs(w2), axis=1) / F32(hi)).astype(F32)
    ok = scale > wq.ENCODER_ZERO_SCALE
    safe = np.where(ok, scale, F32(1.0))[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.clip(ref_c_round(w2 / safe), lo, hi)
    return np.where(ok[:, None], q, F32(0.0)).astype(np.int8), scale


def ref_quantize_asymmetric(weight, bits, block):
    w2, _ = wq._as_groups(weight, block)
    lo, hi = wq._levels(bits)
    mn, mx = np.min(w2, axis=1), np.max(w2, axis=1)
    scale = ((mx - mn) / F32(hi - lo)).astype(F32)
    ok = scale > wq.ENCODER_ZERO_SCALE
    safe = np.where(ok, scale, F32(1.0))[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.clip(ref_c_round((w2 - mn[:, None]) / safe) + F32(lo), lo, hi)
    return np.where(ok[:, None], q, F32(lo)).astype(np.int8), mn.astype(F32), scale


def ref_dequantize_asymmetric(q, mn, scale, bits):
    lo, _ = wq._levels(bits)
    scale = scale.astype(F32)[:, None]
    low = (mn.astype(F32)[:, None] - (F32(lo) * scale).astype(F32)).astype(F32)
    return ((q.astype(F32) * scale).astype(F32) + low).astype(F32)


def ref_quantize_hqq(weight, bits, block):
    w = np.ascontiguousarray(wq._as_groups(weight, block)[0].T)
    b = wq.clamp_bits(bits)
    qmax_u = F32((1 << b) - 1)
    mn = np.min(w, axis=0, keepdims=True)
    mx = np.max(w, axis=0, keepdims=True)
    scale = np.maximum((mx - mn) * (F32(1.0) / qmax_u), wq.HQQ_MIN_SCALE).astype(F32)
    s_rev = (F32(1.0) / scale).astype(F32)
    zero = (s_rev * (-mn)).astype(F32)
    wfs = (w * s_rev).astype(F32)
    s_inv = (F32(1.0) / s_rev).astype(F32)
    n = F32(w.shape[0])
    for _ in range(wq.HQQ_ITERS):
        q = np.clip(ref_c_round(wfs + zero), F32(0.0), qmax_u)
        err = w - (q - zero) * s_inv
        t = q - wfs
        active = np.abs(err) > F32(0.15)
        if active.any():
            rows, cols = np.nonzero(active)
            we = wq._shrink(err[rows, cols])
            t[rows, cols] = q[rows, cols] - (w[rows, cols] - we) * s_rev[0, cols]
        zero = (np.add.reduce(t, axis=0, dtype=F32, keepdims=True) / n).astype(F32)
    scale = (F32(1.0) / s_rev).astype(F32)
    low = (-(zero * scale)).astype(F32)
    lo, hi = wq._levels(b)
    qf = ((w - low) * s_rev + F32(lo)).astype(F32)
    q = np.clip(ref_c_round(qf), lo, hi).astype(np.int8)
    return np.ascontiguousarray(q.T), low[0], scale[0]


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# c_round

TIES_AND_EDGES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 0.49999997, -0.49999997,
                  1.4999999, -1.4999999, 0.0, -0.0, -0.4, 0.4, 4194303.5, -4194303.5,
                  8388607.5, -8388607.5, 8388609.0, 2.0 ** 24, 1e30, -1e30, 3.4e38, 1e-45]


def _tie_heavy(dtype, rng):
    halves = rng.integers(-5000, 5000, size=20000) + 0.5          # every value a tie
    quarters = rng.integers(-4000, 4000, size=20000) * 0.25       # a quarter of them ties
    noise = rng.standard_normal(20000) * 300
    few = noise.copy()
    few[::997] = rng.integers(-50, 50, size=few[::997].size) + 0.5  # a few ties only
    return np.concatenate([np.array(TIES_AND_EDGES), halves, quarters, noise, few]).astype(dtype)


def _trunc_reference(x64):
    """Half away from zero without any rounding in the reference itself: the fractional part
    ``x - trunc(x)`` is exact, and so is the comparison with 0.5."""
    t = np.trunc(x64)
    return np.where(np.abs(x64 - t) >= 0.5, t + np.sign(x64), t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_round_is_half_away_from_zero(dtype):
    x = _tie_heavy(dtype, np.random.default_rng(3))
    got = wq.c_round(x)
    assert got.dtype == dtype and got.shape == x.shape
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(got.astype(np.float64), _trunc_reference(x64))
    if dtype is np.float32:
        # float32 + 0.5 is exact in float64 below 2^29, so the textbook formula is a reference too
        small = np.abs(x64) < 2.0 ** 28
        naive = np.sign(x64) * np.floor(np.abs(x64) + 0.5)
        np.testing.assert_array_equal(got[small].astype(np.float64), naive[small])
    assert same_bits(got, ref_c_round(x))


def test_c_round_pins_the_edge_cases():
    x = np.array([0.5, -0.5, 2.5, -2.5, 0.49999997, -0.49999997, -0.0, -0.4, 1e30], F32)
    got = wq.c_round(x)
    np.testing.assert_array_equal(got, np.array([1, -1, 3, -3, 0, 0, 0, 0, 1e30], F32))
    # zero results are +0.0 (pinned: the HQQ loop's zero point depends on the sign of zeros)
    assert not np.signbit(got[4:8]).any()
    with np.errstate(invalid="ignore"):               # inf - rint(inf) is nan
        assert np.isposinf(wq.c_round(np.array([np.inf, 0.5], F32)))[0]
        assert np.isnan(wq.c_round(np.array([np.nan, 0.5], F32)))[0]


@pytest.mark.parametrize("make", [
    lambda a: a.T,
    lambda a: np.asfortranarray(a),
    lambda a: a[::2, 1::3],
    lambda a: a[::-1, ::-2],
], ids=["transposed", "fortran", "strided", "negative-strides"])
def test_c_round_non_contiguous_and_unmodified(make):
    rng = np.random.default_rng(11)
    base = (rng.standard_normal((90, 120)) * 40).astype(F32)
    base.flat[rng.choice(base.size, 9, replace=False)] = [0.5, -0.5, 2.5, -2.5, 6.5, -7.5,
                                                         -0.0, 10.5, -12.5]
    for a in (base, (rng.integers(-80, 80, size=(90, 120)) * 0.5).astype(F32)):
        x = make(a)
        before = x.copy()
        got = wq.c_round(x)
        assert np.array_equal(x, before) and got.dtype == F32
        assert same_bits(got, ref_c_round(x))
        assert same_bits(got, wq.c_round(np.ascontiguousarray(x)))


def test_c_round_scalars_keep_their_type():
    for v, want in [(np.float32(2.5), np.float32(3.0)), (np.float64(-3.5), np.float64(-4.0)),
                    (np.array(0.5, F32), np.float32(1.0)), (2.5, np.float64(3.0))]:
        got = wq.c_round(v)
        assert type(got) is type(want) and got == want
    assert int(wq.c_round(np.float64(-0.5))) == -1
    assert wq.c_round(np.zeros(0, F32)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# quantizers: bit for bit against the straightforward versions

def _weights():
    rng = np.random.default_rng(2024)
    out = {}
    for shape in [(32, 32, 3, 3), (64, 1, 3, 3), (96, 64), (16, 16, 1, 1), (24, 128, 1, 1)]:
        out[f"normal{shape}"] = (rng.standard_normal(shape) * 0.05).astype(F32)
    shape = (32, 32, 3, 3)
    out["large"] = (rng.standard_normal(shape) * 10).astype(F32)        # HQQ shrink active
    out["offset"] = (4 + rng.standard_normal(shape) * 0.1).astype(F32)
    w = (rng.standard_normal(shape) * 0.05).astype(F32)
    w[::4] = 0.0                                                        # all-zero channels
    w[1::4] = 1e-9                                                      # tiny channels
    out["zero_and_tiny"] = w
    out["halves"] = (rng.integers(-8, 8, size=shape) * 0.5).astype(F32)
    for bits in (2, 4, 8):
        # symmetric grid: absmax = hi * 0.25, values on 0.125 steps -> w / scale hits .5 ties
        hi = (1 << (bits - 1)) - 1
        w = (rng.integers(-2 * hi, 2 * hi + 1, size=(32, 64, 1, 1)) * 0.125).astype(F32)
        w[:, 0] = hi * 0.25
        out[f"sym_ties{bits}"] = w
        # asymmetric grid: min = -1, max = -1 + (2^b - 1) * 0.25, values on 0.125 steps
        n = (1 << bits) - 1
        w = (-1 + rng.integers(0, 2 * n + 1, size=(32, 64, 1, 1)) * 0.125).astype(F32)
        w[:, 0], w[:, 1] = -1, -1 + n * 0.25
        out[f"asym_ties{bits}"] = w
    return out


WEIGHTS = _weights()


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_quantizers_match_the_reference_bit_for_bit(name):
    w = WEIGHTS[name]
    before = w.copy()
    for bits in (2, 3, 4, 6, 8):
        for block in (-1, 16, 32, 64):
            q, scale = wq.quantize_symmetric(w, bits, block)
            rq, rscale = ref_quantize_symmetric(w, bits, block)
            assert same_bits(q, rq) and same_bits(scale, rscale), (bits, block)
            assert same_bits(wq.dequantize_symmetric(q, scale),
                             (rq.astype(F32) * rscale.astype(F32)[:, None]).astype(F32))

            got = wq.quantize_asymmetric(w, bits, block)
            want = ref_quantize_asymmetric(w, bits, block)
            assert all(same_bits(a, b) for a, b in zip(got, want)), (bits, block)
            assert same_bits(wq.dequantize_asymmetric(*got, bits),
                             ref_dequantize_asymmetric(*want, bits))

            got = wq.quantize_hqq(w, bits, block)
            want = ref_quantize_hqq(w, bits, block)
            assert all(same_bits(a, b) for a, b in zip(got, want)), (bits, block)
            assert same_bits(wq.qdq_hqq(w, bits, block),
                             ref_dequantize_asymmetric(*want, bits).reshape(w.shape))
    assert same_bits(w, before)


def test_hqq_small_groups_with_one_sided_shrink():
    """Rows of six large values: in some iterations only negative (or only positive) errors
    pass the shrink bound, which the fast path's max/min test must still catch."""
    for seed in range(40):
        w = (np.random.default_rng(seed).standard_normal((1, 6)) * 2).astype(F32)
        for bits in (2, 3):
            got, want = wq.quantize_hqq(w, bits, -1), ref_quantize_hqq(w, bits, -1)
            assert all(same_bits(a, b) for a, b in zip(got, want)), (seed, bits)


def test_hqq_reference_exercises_ties_and_the_shrink():
    """Guard for the test above: its inputs do reach the rare paths (ties inside the HQQ loop,
    the active shrink), so a bug there could not pass unnoticed."""
    w = WEIGHTS["large"]
    wt = np.ascontiguousarray(wq._as_groups(w, -1)[0].T)
    err_scale = (wt.max(0) - wt.min(0)) / 15
    assert (err_scale > 0.3).all()                   # 4-bit errors reach the 0.15 shrink bound
    ties = WEIGHTS["asym_ties4"]
    q, mn, scale = ref_quantize_asymmetric(ties, 4, -1)
    w2 = wq._as_groups(ties, -1)[0]
    v = (w2 - mn[:, None]) / scale[:, None]
    assert np.count_nonzero(v - np.rint(v) == 0.5) > 100


def test_qdq_tables_use_the_fast_paths():
    w = WEIGHTS["normal(32, 32, 3, 3)"]
    for method, fn in wq.QDQ.items():
        out = fn(w, 4, 32)
        assert out.dtype == F32 and out.shape == w.shape and out.flags.c_contiguous
    want = ref_dequantize_asymmetric(*ref_quantize_asymmetric(w, 4, 32), 4).reshape(w.shape)
    assert same_bits(wq.QDQ["min_max"](w, 4, 32), want)
    assert same_bits(wq.qdq_hqq(w, 0, 32), w)
