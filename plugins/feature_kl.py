"""KL: MNN's KL-divergence threshold search (tools/quantization/TensorStatistic.cpp).

MNN makes two passes (range, then a 2048-bin histogram of ``|x|`` over ``[0, max|x|]``, each
bin starting at 1e-7, ``|x| <= 1e-6`` skipped); this observer makes one, keeping a finer
histogram whose range grows (:class:`mnnq.quantize.stats.AbsHistogram`) and resampling it to
MNN's 2048 bins at the end. The threshold ``t`` minimises KL(P || Q) over 128..2047 bins merged
into 128 target bins; ``scale = (t + 0.5) / (2048 / max|x|) / clamp``, zero point 0. Tensors
with fewer than 100 spatial positions (``H * W < 100``, or not 4-D) use ``t = 2047`` (MNN's
THRESHOLD_MAX).

Beyond MNN: a tensor whose negative values never reached ``-T`` during calibration (a ReLU or
SiLU output) uses the zero point: the codes ``-C..C`` cover ``[max(min x, -T), T]`` instead of
``[-T, T]`` (a ReLU output: ``scale = T / (2C)``, zero point ``-C``), up to doubling its resolution.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from mnnq.plugin import AbsHistogram, FeatureMethod, Observer, clip_negative_tail, hookimpl, min_max

BINS = 2048
TARGET_BINS = 128
START_VALUE = 1e-7
SKIP_ABS = 1e-6
SMALL_SPATIAL = 100


def kl_threshold(distribution: np.ndarray, target: int = TARGET_BINS) -> int:
    """MNN's ``_computeThreshold`` for a normalised, strictly positive ``distribution`` of
    shape ``[B]``: the bin count ``i`` in ``target..B-1`` whose ``target``-bin quantisation has
    the smallest KL divergence (the first one on ties).

    For candidate ``i`` (target bin width ``w = i / target``), source bins lying wholly inside a
    target bin ``j`` expand to ``Q[j] / w``; a bin straddling the edge between ``j`` and
    ``j + 1`` gets the overlap-weighted sum of both. So ``KL = sum P log P - sum P log E`` needs
    only prefix sums and ``[candidates, target]`` arrays.
    """
    d = np.asarray(distribution, dtype=np.float64)
    nbins = d.size
    cs = np.concatenate([[0.0], np.cumsum(d)])
    plogp = np.concatenate([[0.0], np.cumsum(d * np.log(d))])
    cand = np.arange(target, nbins)                                   # [m]
    width = cand / target
    j = np.arange(target)
    start = j[None, :] * cand[:, None] / target                       # [m, T], exact in binary
    end = start + width[:, None]
    left = np.ceil(start).astype(np.int64)
    right = np.floor(end).astype(np.int64)
    straddle = right < end                                            # bin `right` crosses into j+1
    at_right = d[np.minimum(right, nbins - 1)]
    quant = cs[right] - cs[left]
    quant += np.where(left > start, (left - start) * d[np.maximum(left - 1, 0)], 0.0)
    quant += np.where(straddle, (end - right) * at_right, 0.0)
    spread = quant / width[:, None]
    tail = cs[-1] - cs[cand - 1]                                      # P[i-1] = sum(d[i-1:])
    # sum P log P
    kl = plogp[cand - 1] + tail * np.log(tail)
    # - sum over whole bins of P log E
    inner = cs[right] - cs[left]
    inner[:, -1] += tail - d[cand - 1]
    kl -= (inner * np.log(spread)).sum(axis=1)
    # - sum over straddling bins of P log E
    nxt = np.concatenate([spread[:, 1:], spread[:, -1:]], axis=1)
    mixed = spread * (end - right) + nxt * (right + 1 - end)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl -= np.where(straddle, at_right * np.log(np.where(straddle, mixed, 1.0)), 0.0).sum(axis=1)
    return int(cand[int(np.argmin(kl))])


class KLObserver(Observer):
    """Streams ``|x|`` into a growing histogram; ``finish`` runs MNN's threshold search."""

    def __init__(self):
        self.hist = AbsHistogram(skip=SKIP_ABS, track_sums=False)
        self.use_max = False
        self.lowest = 0.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[2] * x.shape[3] < SMALL_SPATIAL:
            self.use_max = True
        self.lowest = min(self.lowest, min_max(x)[0])
        self.hist.update(x)

    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        top = self.hist.max
        if top <= 1e-5:                      # MNN: an all-but-zero tensor gets scale 0
            return 0.0, 0
        interval = BINS / top
        if self.use_max:
            threshold = BINS - 1
        else:
            dist = self.hist.resample(BINS) + START_VALUE
            threshold = kl_threshold(dist / dist.sum())
        scale = float((threshold + 0.5) / interval / clamp)
        return clip_negative_tail(scale * clamp, self.lowest, clamp)


@hookimpl
def mnnq_feature_methods():
    yield FeatureMethod(
        name="KL",
        summary="MNN's KL-divergence threshold (2048 bins -> 128); zero point used when the negative tail is short",
        make_observer=KLObserver,
    )
