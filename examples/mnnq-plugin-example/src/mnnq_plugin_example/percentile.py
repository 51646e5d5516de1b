"""percentile: activation scales from the 99.99th percentile of |x| (clips the rarest outliers).

A max-based scale spends the int8 range on a handful of outliers; clipping at a high percentile
keeps the resolution for the bulk of the values. The observer streams every calibration batch
into a fixed-size histogram of |x| (:class:`AbsHistogram`), so memory does not grow with the
number of batches. At the end, with ``t`` the percentile and ``C`` the clamp value (127):

* a tensor that was never negative (a ReLU output) uses the zero point: ``scale = t / (2C)``,
  ``zero_point = -C``, so ``q in [-C, C]`` covers ``[0, t]`` with twice the resolution;
* any other tensor: ``scale = t / C``, ``zero_point = 0``.

Use it with ``mnnq quantize`` by naming it in the calibration config:
``"feature_quantize_method": "percentile"``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from mnnq.plugin import FeatureMethod, Observer, hookimpl

PERCENTILE = 99.99
BINS = 4096


class AbsHistogram:
    """Histogram of ``|x|`` over ``[0, width * bins)`` with ``bins`` counts (float64 ``[bins]``).

    When a value exceeds the range, adjacent bins are merged in pairs (``width`` doubles) until
    it fits: memory is O(bins) however many values are streamed, and the histogram keeps at least
    ``bins / 2`` bins below the largest value. Zeros land in bin 0; NaN/Inf are ignored.
    """

    def __init__(self, bins: int = BINS):
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.width = 0.0
        self.max = 0.0

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def update(self, x: np.ndarray) -> None:
        """Add the values of ``x`` (any shape)."""
        a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        top = float(a.max())
        self.max = max(self.max, top)
        if self.width == 0.0:
            if top == 0.0:
                self.counts[0] += a.size
                return
            self.width = top / self.bins
        while top > self.width * self.bins:
            half = self.counts.reshape(self.bins // 2, 2).sum(axis=1)
            self.counts[:] = 0.0
            self.counts[: self.bins // 2] = half
            self.width *= 2.0
        idx = np.minimum((a / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the |x| seen, interpolated linearly inside its bin (error
        at most one bin width, ``<= 2 max / bins``); never above the largest value seen."""
        total = self.total
        if total == 0.0 or self.width == 0.0:
            return 0.0
        cdf = np.cumsum(self.counts)
        target = min(max(q, 0.0), 1.0) * total
        b = int(np.searchsorted(cdf, target, side="left"))
        b = min(b, self.bins - 1)
        before = float(cdf[b - 1]) if b > 0 else 0.0
        frac = (target - before) / self.counts[b] if self.counts[b] > 0 else 1.0
        return float(min((b + frac) * self.width, self.max))


class PercentileObserver(Observer):
    """Observer for one tensor: ``update(x)`` per calibration batch, ``finish(bits, clamp)`` ->
    ``(scale, zero_point)`` with ``real = scale * (q - zero_point)``."""

    def __init__(self, percentile: float = PERCENTILE, bins: int = BINS):
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.q = percentile / 100.0
        self.hist = AbsHistogram(bins)
        self.lowest = 0.0

    def update(self, x: np.ndarray) -> None:
        a = np.asarray(x, dtype=np.float64)
        finite = a[np.isfinite(a)]
        if finite.size:
            self.lowest = min(self.lowest, float(finite.min()))
        self.hist.update(a)

    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        t = self.hist.quantile(self.q)
        if not math.isfinite(t) or t <= 0.0:
            return 0.0, 0                      # an all-zero tensor: the host picks a safe scale
        if self.lowest >= 0.0:
            return t / (2.0 * clamp), -int(clamp)
        return t / clamp, 0


@hookimpl
def mnnq_feature_methods():
    yield FeatureMethod(
        name="percentile",
        summary=f"{PERCENTILE}th percentile of |x| (streamed {BINS}-bin histogram); "
                "zero point for non-negative tensors",
        make_observer=PercentileObserver,
    )
