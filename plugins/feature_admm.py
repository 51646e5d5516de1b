"""ADMM (features): MNN's alternating scale fit (TensorStatistic::computeScaleADMM).

``a0 = max|x| / (2.5 C)``, then 300 rounds of ``q = clip(round(x / a), -C, C)``,
``a = sum(q x) / sum(q^2)``; zero point 0. MNN runs it on every calibration sample at once
(memory grows with the sample count, and it crashes on image input); here ``x`` is streamed
into a fine histogram of ``|x|`` with per-bin sums (the fit is odd-symmetric, so ``|x|`` is
enough), and the rounds run on the bins. Stops early once ``q`` no longer changes.

Beyond MNN: a tensor that was never negative during calibration (a ReLU output) is fitted on
the asymmetric grid ``q in [0, 2C]`` with zero point ``-C`` (the same rounds with ``2C`` as
the bound), instead of wasting the negative half of the INT8 range.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from mnnq.plugin import AbsHistogram, FeatureMethod, Observer, c_round, hookimpl, min_max

STEPS = 300
INIT_DIVISOR = 2.5


def admm_scale(values: np.ndarray, counts: np.ndarray, sums: np.ndarray, top: float, clamp: int) -> float:
    """The ADMM scale for a weighted sample: ``values`` (``[n]``, >= 0) each standing for
    ``counts`` points whose ``|x|`` add up to ``sums``."""
    if top <= 0.0:
        return 0.0
    alpha = top / (clamp * INIT_DIVISOR)
    last_q = None
    for _ in range(STEPS):
        q = np.minimum(c_round(values / alpha), clamp)
        if last_q is not None and np.array_equal(q, last_q):
            break
        den = float((q * q * counts).sum())
        if den <= 0.0:
            break
        alpha = float((q * sums).sum()) / den
        last_q = q
    return alpha


class ADMMObserver(Observer):
    def __init__(self):
        self.hist = AbsHistogram()
        self.lowest = 0.0

    def update(self, x: np.ndarray) -> None:
        self.lowest = min(self.lowest, min_max(x)[0])
        self.hist.update(x)

    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        h = self.hist
        keep = h.counts > 0
        if self.lowest >= 0.0:
            return admm_scale(h.centers()[keep], h.counts[keep], h.sums[keep], h.max, 2 * clamp), -int(clamp)
        return admm_scale(h.centers()[keep], h.counts[keep], h.sums[keep], h.max, clamp), 0


@hookimpl
def mnnq_feature_methods():
    yield FeatureMethod(
        name="ADMM",
        summary="MNN's ADMM scale fit (300 rounds from max/(2.5 C)); zero point used for non-negative tensors",
        make_observer=ADMMObserver,
    )
