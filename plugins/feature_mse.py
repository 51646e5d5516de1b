"""MSE: the clipping range with the smallest expected squared quantization error (mnnq's own).

The observer streams the positive values and the magnitudes of the negative values into two
histograms (:class:`mnnq.plugin.AbsHistogram`). ``finish`` scores every candidate range
``[-L, H]`` (``L``, ``H`` on a grid of fractions of the largest magnitude seen on each side) by

    E(L, H) = n_inside * s^2 / 12 + sum_{x > H} (x - H)^2 + sum_{x < -L} (-L - x)^2,
    s = (H + L) / (2 C),

the rounding noise of the values kept plus the clipping error of the others (prefix sums over
the bins make each candidate O(1)), and returns the zero-pointed params of the best range. A
tensor with a few large outliers gets a range that clips them instead of spending most codes on
them; a one-sided tensor (a ReLU or hard-swish output) gets its codes spread over its own side.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from mnnq.plugin import AbsHistogram, FeatureMethod, Observer, hookimpl, range_params

GRID = 256          # candidate clipping points per side
LOWEST_FRACTION = 0.01


def _side(hist: AbsHistogram, grid: int):
    """Candidate thresholds ``t`` (``[grid]``, ascending, the last the largest value) and the
    clipping error and number of values kept at each, for one side's histogram."""
    if hist.total == 0:
        return np.zeros(1), np.zeros(1), np.zeros(1)
    counts = hist.counts
    centers = hist.centers()
    n_above = np.cumsum(counts[::-1])[::-1]                       # values in bins >= b
    s1_above = np.cumsum((counts * centers)[::-1])[::-1]
    s2_above = np.cumsum((counts * centers * centers)[::-1])[::-1]
    t = hist.max * np.linspace(LOWEST_FRACTION, 1.0, grid)
    first = np.minimum((t / hist.width).astype(np.int64) + 1, hist.bins)   # first bin wholly above t
    pad = lambda a: np.concatenate([a, [0.0]])                    # noqa: E731  (bins.. -> 0)
    n, s1, s2 = pad(n_above)[first], pad(s1_above)[first], pad(s2_above)[first]
    clip_error = np.maximum(s2 - 2.0 * t * s1 + t * t * n, 0.0)
    return t, clip_error, hist.total - n


def best_range(pos: AbsHistogram, neg: AbsHistogram, clamp: int, grid: int = GRID) -> Tuple[float, float]:
    """``(lo, hi)`` minimising the expected squared error (module docstring)."""
    hi, err_hi, kept_hi = _side(pos, grid)
    lo, err_lo, kept_lo = _side(neg, grid)
    step = (hi[:, None] + lo[None, :]) / (2.0 * clamp)                        # [grid_hi, grid_lo]
    total = step * step / 12.0 * (kept_hi[:, None] + kept_lo[None, :]) + err_hi[:, None] + err_lo[None, :]
    i, j = np.unravel_index(int(np.argmin(total)), total.shape)
    return -float(lo[j]), float(hi[i])


class MSEObserver(Observer):
    def __init__(self):
        self.pos = AbsHistogram()
        self.neg = AbsHistogram()

    def update(self, x: np.ndarray) -> None:
        a = np.asarray(x, dtype=np.float32).ravel()
        self.pos.update(a[a > 0])
        self.neg.update(a[a < 0])

    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        if self.pos.max <= 0.0 and self.neg.max <= 0.0:
            return 0.0, 0
        return range_params(*best_range(self.pos, self.neg, clamp), clamp)


@hookimpl
def mnnq_feature_methods():
    yield FeatureMethod(
        name="MSE",
        summary="mnnq's range with the least expected squared error (rounding + clipping), zero point always used",
        make_observer=MSEObserver,
    )
