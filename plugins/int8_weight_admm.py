"""ADMM (weights): quantized.out's QuantizeWeightADMM per output channel.

``a_c = max|w_c| / (1.25 C)`` (the mean |w_c| when C <= 1), then up to 1000 rounds of
``q = clip(round(w / (a + 1e-9)), -C, C)``, ``a_c = sum(w q) / (sum(q^2) + 1e-9)``, stopping once
no channel's ``q`` changes (a fixed point, so the result equals MNN's 1000 rounds).

Only full INT8 can use these scales: for weight-only quantization the converter computes its
own max-abs scales (external scales are ignored), so ``quantize_dequantize`` is that symmetric
encoding, exactly as MAX_ABS (:mod:`mnnq.weightquant`).
"""
import numpy as np

from mnnq.plugin import WeightMethod, c_round, hookimpl, qdq_max_abs, underflows_max_abs

MAX_ROUNDS = 1000
EPS = 1e-9
INIT_DIVISOR = 1.25


def admm_scales(weight: np.ndarray, bits: int, clamp: int) -> np.ndarray:
    """``[out_channels]`` float32 ADMM scales for ``weight`` ``[out, ...]``."""
    w = np.asarray(weight, dtype=np.float64).reshape(np.shape(weight)[0], -1)
    absw = np.abs(w)
    if clamp > 1:
        alpha = absw.max(axis=1) / (clamp * INIT_DIVISOR)
    else:
        alpha = absw.mean(axis=1)
    last_q = None
    for _ in range(MAX_ROUNDS):
        q = np.clip(c_round(w / (alpha[:, None] + EPS)), -clamp, clamp)
        if last_q is not None and np.array_equal(q, last_q):
            break
        alpha = (w * q).sum(axis=1) / ((q * q).sum(axis=1) + EPS)
        last_q = q
    return alpha.astype(np.float32)


@hookimpl
def mnnq_weight_methods():
    yield WeightMethod(
        name="ADMM",
        summary="full INT8: per-channel ADMM scale fit (quantized.out's ADMM); weight-only: symmetric",
        asymmetric=False,
        hqq=False,
        quantize_dequantize=qdq_max_abs,
        underflows=underflows_max_abs,
        channel_scales=admm_scales,
    )
