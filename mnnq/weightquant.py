"""Weight-only quantize-dequantize in numpy, reproducing MNN's converter and runtime.

Every function here gives, in float32, the weights MNN 3.6.1's CPU runtime rebuilds from a model
the converter weight-quantized (``tools/converter/source/common/WeightQuantAndCoding.cpp``,
``source/core/IDSTEncoder.hpp``, ``tools/converter/source/common/HQQQuantizer.cpp`` and the
dequantization in ``source/core/ConvolutionCommon.cpp``):

* A layer's weight is seen as ``oc`` rows of ``kernelSize = count / oc`` values (the stored
  order). ``weight`` arguments are ``[oc, ic_per_group, kh, kw]`` arrays in that order (for a
  deconvolution: the stored ``[ic, oc/g, kh, kw]`` array re-viewed as ``[oc, kernelSize/kxky,
  kh, kw]``, see :func:`mnnq.mnn_backend.inventory.ConvOp.converter_shape`).
* A block of ``block`` input channels covers ``block * kh * kw`` consecutive values of a row;
  it applies only when ``ic_per_group % block == 0``, ``block >= 16`` and ``block % 16 == 0``,
  else the row is one group (:func:`mnnq.layers.converter_block`).
* Rounding is C's ``round`` (half away from zero), not numpy's half-to-even.
* Symmetric: ``scale = absmax / (2^(b-1) - 1)``, ``q = clamp(round(w / scale), -2^(b-1),
  2^(b-1) - 1)``; the runtime rebuilds ``q * scale``.
* Asymmetric: ``scale = (max - min) / (2^b - 1)``, ``q = clamp(round((w - min) / scale) - 2^(b-1),
  ...)``; the runtime folds the zero point: ``low = min - (-2^(b-1)) * scale`` then
  ``w = q * scale + low`` (float32, in that order).
* Encoder defect: when a block's ``scale <= 1e-6`` (float32 compare) the encoder writes
  ``q = 0`` (symmetric: the block becomes exactly 0) or ``q = -2^(b-1)`` (asymmetric: the block
  becomes its minimum). :func:`underflows` reports such layers.
* HQQ (``--hqq``, always asymmetric): per group of ``block`` elements, ``scale = max((max -
  min) / (2^b - 1), 1e-7)``, then 20 proximal iterations optimise the float zero point
  (lp-norm 0.7, beta 10, no kappa schedule, no early stop); integers and ``(min, scale)`` are
  stored as computed, so the 1e-6 encoder defect does not apply.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from mnnq.layers import converter_block

F32 = np.float32
ENCODER_ZERO_SCALE = F32(1e-6)     # IDSTEncoder: alpha <= 1e-6f is treated as zero
HQQ_MIN_SCALE = F32(1e-7)          # HQQQuantizer: Relu6(scale, 1e-7, FLT_MAX)
HQQ_ITERS = 20
HQQ_BETA = F32(10.0)
HQQ_LP_NORM = F32(0.7)
HQQ_SHRINK_FLOOR = F32(1e-8)       # _shrink: Relu6(|x|, 1e-8, FLT_MAX) before the power


# ---------------------------------------------------------------------------------------------
# helpers

def c_round(x: np.ndarray) -> np.ndarray:
    """C ``round``/``roundf``: half away from zero (numpy's ``rint`` rounds half to even).

    Exact, not an approximation: ``r = rint(x)`` already equals C's ``round`` everywhere except
    at exact ties (``x = k + 0.5``), where half-to-even may have gone towards zero. ``d = x - r``
    is computed exactly (``|d| <= 0.5`` and ``x``, ``r`` share an exponent range: Sterbenz), so
    ``|d| == 0.5`` finds exactly the ties; only there is ``sign(x)`` added when ``|r| < |x|``
    (``sign(d) == sign(x)``). ``x + 0.5`` followed by ``floor`` would not be exact (``0.49999997f
    + 0.5f`` rounds up to ``1.0f``). Ties are rare, so the common case costs ``rint``, one
    subtraction and two reductions (``min``/``max`` of ``d``). A negative zero result is returned
    as ``+0.0`` (the ``+ 0`` the tie correction used to add everywhere); ``float32`` in gives
    ``float32`` out, ``float64`` gives ``float64``; a 0-d input gives a numpy scalar.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        return c_round(x.reshape(1))[0]
    r = np.rint(x)
    _fix_ties(r, np.subtract(x, r))
    return r


def _fix_ties(r: np.ndarray, d: np.ndarray) -> None:
    """Turn ``r = rint(x)`` into ``c_round(x)`` in place, given ``d = x - r`` (which may share
    memory with ``x``: at a tie ``x == r + d`` exactly, so ``x`` itself is not needed).

    Same per-element arithmetic as the old one-pass form ``r + where(tie_towards_zero, sign(x),
    0)``: ties rounded towards zero get ``r + sign(x)``, every other element ``r + 0`` (which
    turns ``-0.0`` into ``+0.0``)."""
    if d.size and not (d.max() < 0.5 and d.min() > -0.5):  # some tie (or a nan from an inf)
        tie = np.abs(d) == 0.5
        if r.flags.c_contiguous:                   # flat indexes: far cheaper than nonzero()
            idx = np.flatnonzero(tie)
            rv, ds = r.reshape(-1), d.reshape(-1)[idx]
        else:
            idx = np.nonzero(tie)
            rv, ds = r, d[idx]
        rs = rv[idx]
        sx = np.sign(rs + ds)                      # sign(x): at a tie x == r + d exactly
        rv[idx] = rs + np.where(np.sign(ds) == sx, sx, 0).astype(r.dtype)
    np.add(r, r.dtype.type(0), out=r)


def clamp_bits(bits: int) -> int:
    """The converter clamps the requested bit width into 2..8."""
    return int(min(max(int(bits), 2), 8))


def weight_block(weight_shape: Tuple[int, ...], block: int) -> int:
    """:func:`mnnq.layers.converter_block` for a weight of ``weight_shape`` (``[oc,
    ic_per_group, kh, kw]``, the converter view): the input channels per block the converter
    uses, or ``-1`` (one group per output channel)."""
    if len(weight_shape) < 2:
        return -1
    return converter_block(int(weight_shape[1]), block)


def _as_groups(weight: np.ndarray, block: int) -> Tuple[np.ndarray, int]:
    """``weight`` as a float32 ``[groups, elements]`` matrix in stored order, and the block
    the converter applies (``-1`` = per output channel)."""
    w = np.ascontiguousarray(weight, dtype=F32)
    if w.ndim < 2:
        raise ValueError(f"weight must be [oc, ic_per_group, kh, kw], got shape {w.shape}")
    oc = w.shape[0]
    per_oc = w.size // max(oc, 1)
    eff = weight_block(w.shape, block)
    if eff > 0:
        kxky = per_oc // w.shape[1]
        return w.reshape(-1, eff * kxky), eff
    return w.reshape(oc, per_oc), -1


def _levels(bits: int) -> Tuple[int, int]:
    """(min_value, max_value) of the stored integers: -2^(b-1) .. 2^(b-1)-1."""
    b = clamp_bits(bits)
    return -(1 << (b - 1)), (1 << (b - 1)) - 1


# ---------------------------------------------------------------------------------------------
# symmetric (converter asymmetric=false)

def quantize_symmetric(weight: np.ndarray, bits: int, block: int) -> Tuple[np.ndarray, np.ndarray]:
    """Integers ``q`` (int8, ``[groups, elements]``) and scales (float32 ``[groups]``) exactly as
    the converter encodes them."""
    w2, _ = _as_groups(weight, block)
    lo, hi = _levels(bits)
    threshold = F32(hi)
    scale = (np.max(np.abs(w2), axis=1) / threshold).astype(F32)
    ok = scale > ENCODER_ZERO_SCALE
    safe = np.where(ok, scale, F32(1.0))[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.divide(w2, safe)
        q = np.rint(v)
        _fix_ties(q, np.subtract(v, q, out=v))
        np.clip(q, lo, hi, out=q)
    if not ok.all():
        q[~ok] = F32(0.0)
    return q.astype(np.int8), scale


def dequantize_symmetric(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # the int -> float32 cast happens inside the multiply (same values as q.astype(F32))
    return np.multiply(q, scale.astype(F32)[:, None], dtype=F32)


def qdq_max_abs(weight: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Symmetric abs-max quantize-dequantize (converter ``asymmetric: false``)."""
    w = np.asarray(weight)
    if int(bits) <= 0:
        return np.array(w, dtype=F32, copy=True)
    q, scale = quantize_symmetric(w, bits, block)
    return dequantize_symmetric(q, scale).reshape(w.shape)


def underflows_max_abs(weight: np.ndarray, bits: int, block: int) -> bool:
    """Whether some non-zero block has ``max|w| / (2^(b-1)-1) <= 1e-6``: the encoder then
    writes it as zeros."""
    if int(bits) <= 0:
        return False
    w2, _ = _as_groups(weight, block)
    _, hi = _levels(bits)
    absmax = np.max(np.abs(w2), axis=1)
    scale = (absmax / F32(hi)).astype(F32)
    # an all-zero block stays zero: only blocks with some weight collapse
    return bool(np.any((scale <= ENCODER_ZERO_SCALE) & (absmax > 0)))


def channel_scales_max_abs(weight: np.ndarray, bits: int, clamp: int) -> np.ndarray:
    """Per-output-channel symmetric scales for full INT8 (``quantized.out``'s MAX_ABS,
    ``tools/quantization/quantizeWeight.cpp``): ``max|w_c| / clamp`` (0 for an all-zero
    channel), with ``clamp`` capped at ``2^(bits-1) - 1``; ``q = clip(round(w / s), -clamp, clamp)``."""
    w = np.ascontiguousarray(weight, dtype=F32)
    c = F32(min(int(clamp), (1 << (clamp_bits(bits) - 1)) - 1))
    absmax = np.max(np.abs(w.reshape(w.shape[0], -1)), axis=1)
    return np.where(absmax == 0, F32(0.0), absmax / c).astype(F32)


# ---------------------------------------------------------------------------------------------
# asymmetric min-max (converter asymmetric=true, the converter's default)

def quantize_asymmetric(weight: np.ndarray, bits: int, block: int
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q int8 [groups, elements], min float32 [groups], scale float32 [groups])`` as encoded."""
    w2, _ = _as_groups(weight, block)
    lo, hi = _levels(bits)
    mn = np.min(w2, axis=1)
    mx = np.max(w2, axis=1)
    scale = ((mx - mn) / F32(hi - lo)).astype(F32)
    ok = scale > ENCODER_ZERO_SCALE
    safe = np.where(ok, scale, F32(1.0))[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.subtract(w2, mn[:, None])
        np.divide(v, safe, out=v)
        q = np.rint(v)
        _fix_ties(q, np.subtract(v, q, out=v))
        np.add(q, F32(lo), out=q)
        np.clip(q, lo, hi, out=q)
    if not ok.all():
        q[~ok] = F32(lo)
    return q.astype(np.int8), mn.astype(F32), scale


def dequantize_asymmetric(q: np.ndarray, mn: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """The runtime's rebuild: ``low = min - clampMin * scale``; ``w = q * scale + low``."""
    lo, _ = _levels(bits)
    scale = scale.astype(F32)[:, None]
    low = (mn.astype(F32)[:, None] - (F32(lo) * scale).astype(F32)).astype(F32)
    out = np.multiply(q, scale, dtype=F32)   # q.astype(F32) * scale, cast inside the multiply
    np.add(out, low, out=out)
    return out


def qdq_min_max(weight: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Asymmetric min-max quantize-dequantize (converter ``asymmetric: true``)."""
    return _qdq_asymmetric(quantize_asymmetric, weight, bits, block)


def _qdq_asymmetric(quantize, weight: np.ndarray, bits: int, block: int) -> np.ndarray:
    """``quantize`` (returning ``(q, min, scale)``) then the runtime's asymmetric rebuild, in
    ``weight``'s shape; ``bits <= 0`` is a float copy."""
    w = np.asarray(weight)
    if int(bits) <= 0:
        return np.array(w, dtype=F32, copy=True)
    q, mn, scale = quantize(w, bits, block)
    return dequantize_asymmetric(q, mn, scale, bits).reshape(w.shape)


def underflows_min_max(weight: np.ndarray, bits: int, block: int) -> bool:
    """Whether some non-constant block has ``(max - min) / (2^b - 1) <= 1e-6``: the encoder
    then writes every value of it as the block minimum."""
    if int(bits) <= 0:
        return False
    w2, _ = _as_groups(weight, block)
    lo, hi = _levels(bits)
    mx, mn = np.max(w2, axis=1), np.min(w2, axis=1)
    scale = ((mx - mn) / F32(hi - lo)).astype(F32)
    # a collapsed block becomes its minimum: harmless only when the block is constant
    return bool(np.any((scale <= ENCODER_ZERO_SCALE) & (mx > mn)))


# ---------------------------------------------------------------------------------------------
# HQQ (converter --hqq)

def _shrink(x: np.ndarray) -> np.ndarray:
    """``sign(x) * relu(|x| - (1/beta) * max(|x|, 1e-8)^(lp-1))``, float32 like MNN."""
    a = np.abs(x)
    inv_beta = F32(1.0) / HQQ_BETA
    power = F32(HQQ_LP_NORM - F32(1.0))
    o1 = np.power(np.maximum(a, HQQ_SHRINK_FLOOR), power, dtype=F32)
    o0 = np.maximum(a - inv_beta * o1, F32(0.0))
    return (o0 * np.sign(x)).astype(F32)


# |x| - 0.1 * |x|^-0.3 > 0 only for |x| > 0.1^(1/1.3) ~= 0.170: below this bound the shrink is
# exactly 0 (with a wide margin against float rounding), so only larger errors are computed.
_SHRINK_ACTIVE = F32(0.15)


def _hqq_zero(w: np.ndarray, s_rev: np.ndarray, zero: np.ndarray, qmax_u: np.float32) -> np.ndarray:
    """HQQ's legacy proximal step on the zero point ``[1, groups]`` of ``w`` ``[elements,
    groups]`` (scale fixed, ``s_rev`` = 1/scale), HQQ_ITERS times: the same float32 operations as
    MNN's graph, written into preallocated buffers."""
    wfs = (w * s_rev).astype(F32)
    s_inv = (F32(1.0) / s_rev).astype(F32)
    n = F32(w.shape[0])
    xb = np.empty_like(w)        # W*S + Z before rounding, then its residual x - rint(x)
    wq = np.empty_like(w)
    err = np.empty_like(w)
    t = np.empty_like(w)
    for _ in range(HQQ_ITERS):
        np.add(wfs, zero, out=xb)
        np.rint(xb, out=wq)
        _fix_ties(wq, np.subtract(xb, wq, out=xb))
        np.clip(wq, F32(0.0), qmax_u, out=wq)
        np.subtract(wq, zero, out=err)                 # err = w - (wq - zero) * s_inv
        np.multiply(err, s_inv, out=err)
        np.subtract(w, err, out=err)
        # WQ - (W - WE) * S with WE = 0, so (W - 0) * S == wfs exactly, except where the
        # shrink is active
        np.subtract(wq, wfs, out=t)
        # |err| > 0.15 somewhere? (max/min without a mask; a nan sends us to the exact test)
        if not (err.max() <= _SHRINK_ACTIVE and err.min() >= -_SHRINK_ACTIVE):
            active = np.abs(err) > _SHRINK_ACTIVE
            if active.any():
                # np.nonzero's (rows, cols) via flat indexes (same elements, same order; a
                # 2-d nonzero costs ~5 ms on 1M elements)
                flat = np.flatnonzero(active)
                cols = flat % w.shape[1]
                we = _shrink(err.reshape(-1)[flat])
                t.reshape(-1)[flat] = (wq.reshape(-1)[flat]
                                       - (w.reshape(-1)[flat] - we) * s_rev[0, cols])
        zero = (np.add.reduce(t, axis=0, dtype=F32, keepdims=True) / n).astype(F32)
    return zero


def quantize_hqq(weight: np.ndarray, bits: int, block: int
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q int8 [groups, elements], min float32 [groups], scale float32 [groups])`` as the
    converter's HQQQuantizer computes and stores them (group = one converter block).

    Same float32 operations as MNN's express graph: ``scale = max((max-min) * (1/qmax), 1e-7)``,
    ``S = 1/scale``, ``Z = S * -min``; 20 times ``WQ = clamp(round(W*S + Z), 0, qmax)``,
    ``WE = shrink(W - (WQ - Z) * (1/S))``, ``Z = mean(WQ - (W - WE) * S)`` (sequential sum / n);
    then ``scale = 1/S``, ``min = -(Z * scale)``, ``q = clamp(round((W - min) * S - 2^(b-1)))``.
    """
    w2, _ = _as_groups(weight, block)
    # work on [elements, groups]: per-group reductions along axis 0 are sequential float32
    # sums in numpy, like MNN's ReduceMean loop
    w = np.ascontiguousarray(w2.T)
    b = clamp_bits(bits)
    qmax_u = F32((1 << b) - 1)
    mn = np.min(w, axis=0, keepdims=True)
    mx = np.max(w, axis=0, keepdims=True)
    thresh = F32(1.0) / qmax_u
    scale = np.maximum((mx - mn) * thresh, HQQ_MIN_SCALE).astype(F32)
    s_rev = (F32(1.0) / scale).astype(F32)
    zero = (s_rev * (-mn)).astype(F32)
    zero = _hqq_zero(w, s_rev, zero, qmax_u)
    scale = (F32(1.0) / s_rev).astype(F32)
    low = (-(zero * scale)).astype(F32)
    lo, hi = _levels(b)
    qf = (w - low) * s_rev + F32(lo)
    wq = np.rint(qf)
    _fix_ties(wq, np.subtract(qf, wq, out=qf))
    np.clip(wq, lo, hi, out=wq)
    q = wq.astype(np.int8)
    return np.ascontiguousarray(q.T), low[0], scale[0]


def qdq_hqq(weight: np.ndarray, bits: int, block: int) -> np.ndarray:
    """HQQ quantize-dequantize (converter ``--hqq``, asymmetric)."""
    return _qdq_asymmetric(quantize_hqq, weight, bits, block)


def underflows_hqq(weight: np.ndarray, bits: int, block: int) -> bool:
    """HQQ stores its integers directly (no 1e-6 check) and floors the scale at 1e-7: no
    layer collapses."""
    return False


def underflows(weight: np.ndarray, bits: int, block: int, method: str = "max_abs") -> bool:
    """Whether the converter's encoder would zero out some block of this layer."""
    fn = {"max_abs": underflows_max_abs, "min_max": underflows_min_max, "hqq": underflows_hqq}[method]
    return fn(weight, bits, block)


QDQ = {"max_abs": qdq_max_abs, "min_max": qdq_min_max, "hqq": qdq_hqq}
