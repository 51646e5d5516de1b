"""Streaming activation statistics with bounded memory, for feature-method plugins.

:class:`AbsHistogram` keeps a fine histogram of ``|x|`` whose range grows by merging bins in
powers of two, so one pass over any number of calibration batches needs ``O(bins)`` memory
and the final histogram still has at least ``bins / 2`` bins below the true maximum.
``resample`` turns it into the fixed-range histogram that MNN's two-pass KL builds
(``bins`` equal bins over ``[0, max|x|]``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

FINE_BINS = 16384
ActParams = Tuple[float, int]   # an activation's (scale, zero point): real = scale * (q - zero point)


class AbsHistogram:
    """Histogram of ``|x|`` over ``[0, width * bins)``, streamed.

    ``counts[b]`` counts values in bin ``b`` and ``sums[b]`` adds up their ``|x|`` (exact first
    moments per bin; left at 0 with ``track_sums=False``, which halves the cost of ``update``).
    Values with ``|x| <= skip`` are left out of the bins (MNN's KL ignores ``|x| <= 1e-6``) but
    still count towards ``max``.
    """

    def __init__(self, bins: int = FINE_BINS, skip: float = 0.0, track_sums: bool = True):
        self.bins = int(bins)
        self.skip = float(skip)
        self.track_sums = bool(track_sums)
        self.counts = np.zeros(self.bins, dtype=np.float64)
        self.sums = np.zeros(self.bins, dtype=np.float64)
        self.width = 0.0
        self.max = 0.0

    def update(self, x: np.ndarray) -> None:
        """Add the values of ``x`` (any shape; float32 stays float32)."""
        a = np.abs(np.asarray(x)).ravel()
        if a.size == 0:
            return
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        top = float(a.max())
        if not math.isfinite(top):
            a = a[np.isfinite(a)]
            top = float(a.max()) if a.size else 0.0
        self.max = max(self.max, top)
        if top <= self.skip:
            return
        if self.width == 0.0:
            self.width = top / self.bins
        elif top >= self.width * self.bins:
            self._grow(2 ** math.ceil(math.log2(top / (self.width * self.bins)) + 1e-12))
        if self.skip >= self.width or self.track_sums:
            a = a[a > self.skip]
            skipped = 0
        else:                           # every skipped value is in bin 0: count them out afterwards
            skipped = int(np.count_nonzero(a <= self.skip))
        idx = (a * a.dtype.type(1.0 / self.width)).astype(np.intp)
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.counts[0] -= skipped
        if self.track_sums:
            self.sums += np.bincount(idx, weights=a, minlength=self.bins)

    def _grow(self, factor: int) -> None:
        factor = max(int(factor), 2)
        merged_counts = np.zeros_like(self.counts)
        merged_sums = np.zeros_like(self.sums)
        if factor >= self.bins:
            merged_counts[0], merged_sums[0] = self.counts.sum(), self.sums.sum()
        else:
            n = self.bins // factor
            merged_counts[:n] = self.counts.reshape(n, factor).sum(axis=1)
            merged_sums[:n] = self.sums.reshape(n, factor).sum(axis=1)
        self.counts, self.sums = merged_counts, merged_sums
        self.width *= factor

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def centers(self) -> np.ndarray:
        """Mean ``|x|`` of each bin (its midpoint when empty), shape ``[bins]``."""
        mid = (np.arange(self.bins) + 0.5) * self.width
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums / self.counts
        return np.where(self.counts > 0, mean, mid)

    def resample(self, n: int, upper: Optional[float] = None) -> np.ndarray:
        """Counts in ``n`` equal bins over ``[0, upper]`` (default ``max``), spreading each fine
        bin uniformly; counts above ``upper`` land in the last bin. Shape ``[n]``."""
        upper = self.max if upper is None else float(upper)
        if self.width == 0.0 or upper <= 0.0:
            return np.zeros(n, dtype=np.float64)
        edges = np.arange(self.bins + 1, dtype=np.float64) * self.width
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)])
        target = np.linspace(0.0, upper, n + 1)
        at = np.interp(target, edges, cdf)
        out = np.diff(at)
        out[-1] += cdf[-1] - at[-1]
        return np.maximum(out, 0.0)


def min_max(x: np.ndarray) -> Tuple[float, float]:
    """``(min, max)`` of the finite values of ``x`` (``(0, 0)`` when there are none)."""
    a = np.asarray(x)
    if a.dtype.kind != "f":      # the min and max of floats are exact in their own type: no copy
        a = a.astype(np.float64)
    if a.size == 0:
        return 0.0, 0.0
    lo, hi = float(a.min()), float(a.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    a = a[np.isfinite(a)]
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def range_params(lo: float, hi: float, clamp: int) -> Tuple[float, int]:
    """``(scale, zero point)`` spreading the codes ``-clamp..clamp`` over ``[lo, hi]`` (widened
    to include 0): ``real = scale * (q - zero point)``. A range symmetric about 0 gives zero point 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (hi - lo > 0.0 and math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 0
    if -lo == hi:
        return hi / clamp, 0
    scale = (hi - lo) / (2 * clamp)
    return scale, max(-clamp, min(clamp, int(round(-clamp - lo / scale))))


def clip_negative_tail(threshold: float, lowest: float, clamp: int) -> Tuple[float, int]:
    """Params for a symmetric clipping ``threshold`` ``T`` when the tensor never went below
    ``lowest``: ``[-T, T]`` if ``lowest <= -T``, else the zero point spends the codes below
    ``lowest`` on ``[lowest, T]`` (a ReLU output gets ``[0, T]``, a SiLU output ``[-0.28, T]``)."""
    if threshold <= 0.0:
        return 0.0, 0
    return range_params(max(lowest, -threshold), threshold, clamp)
