"""EMA: MNN's moving-average min/max calibration (NN::turnQuantize, MovingAverage).

Per batch: ``min = min(0, x.min())``, ``max = max(0, x.max())``; MNN turns them into an
asymmetric ``(scale, zero)`` and keeps the nudged range ``[(-C - z) s, (C - z) s]`` (C = 127),
blended into the running range with momentum 0.99 (the first batch sets it). At the end
``s = (max - min) / (2 C)``, ``z = round(-min / s - C)``.

A batch is everything ``update`` saw between two ``end_batch()`` calls (mnnq's engine calls it
every ``batch_size`` samples); like MNN, an incomplete last batch is dropped unless no batch
was completed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mnnq.plugin import FeatureMethod, Observer, c_round, hookimpl, min_max

MOMENTUM = 0.99
TRAIN_CLAMP = 127.0


def nudged_range(lo: float, hi: float, clamp: float = TRAIN_CLAMP) -> Tuple[float, float]:
    """MNN's ``computeScaleAndZeroPoint`` + nudge for one batch range."""
    lo, hi = min(0.0, lo), max(0.0, hi)
    if hi - lo <= 0.0:
        return 0.0, 0.0
    scale = (hi - lo) / (2.0 * clamp)
    zero = float(c_round(np.float64(-lo / scale - clamp)))
    return min(0.0, (-clamp - zero) * scale), max(0.0, (clamp - zero) * scale)


class EMAObserver(Observer):
    def __init__(self):
        self.running: Optional[Tuple[float, float]] = None
        self.pending: Optional[Tuple[float, float]] = None

    def update(self, x: np.ndarray) -> None:
        lo, hi = min_max(x)
        if self.pending is None:
            self.pending = (lo, hi)
        else:
            self.pending = (min(self.pending[0], lo), max(self.pending[1], hi))

    def end_batch(self) -> None:
        if self.pending is None:
            return
        new = nudged_range(*self.pending)
        self.pending = None
        if self.running is None:
            self.running = new
        else:
            self.running = tuple(MOMENTUM * r + (1.0 - MOMENTUM) * n for r, n in zip(self.running, new))

    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        if self.running is None:
            self.end_batch()
        if self.running is None:
            return 0.0, 0
        lo, hi = self.running
        if hi - lo <= 0.0:
            return 0.0, 0
        scale = (hi - lo) / (2.0 * clamp)
        zero = int(c_round(np.float64(-lo / scale - clamp)))
        return float(scale), int(np.clip(zero, -clamp, clamp))


@hookimpl
def mnnq_feature_methods():
    yield FeatureMethod(
        name="EMA",
        summary="MNN's moving-average (0.99) min/max per batch, asymmetric scale and zero point",
        make_observer=EMAObserver,
    )
