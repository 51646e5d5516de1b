"""Typed records that plugins yield from mnnq's hooks.

Each record is a frozen dataclass with a unique ``name``, a one-line ``summary`` and the
callables that do the work. The host only ever calls those callables; it never reaches
into a plugin's module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mnnq.autoquant.context import SearchContext


@dataclass(frozen=True)
class WeightMethod:
    """A weight-only quantization method the MNN converter can write.

    ``quantize_dequantize(weight, bits, block)`` takes a float32 conv weight of shape
    ``[out_channels, in_channels_per_group, kh, kw]`` and returns an array of the same shape
    holding exactly the values the converter's encoded model dequantizes to, for ``bits``
    in 2..8 and ``block`` = input channels per block (``-1`` or a size the converter would
    not apply = one group per output channel).

    ``underflows(weight, bits, block)`` tells whether MNN's encoder would treat a scale of
    this layer as zero (scale <= 1e-6) and collapse the layer.

    ``asymmetric`` and ``hqq`` say how the converter must be asked for it: the value of
    ``asymmetric`` in the compression params file and whether ``--hqq`` is passed.

    ``estimate_with`` (optional) names a cheaper weight method whose quantization noise
    approximates this one's; searches use it to rank settings (never to measure them).

    ``channel_scales(weight, bits, clamp)`` (optional; methods that have it can be used for
    full INT8 by ``mnnq quantize``) returns float32 ``[out_channels]`` symmetric scales for
    ``q = clip(round(w / s), -clamp, clamp)`` with ``clamp`` the weight clamp value
    (``weight_clamp_value``, at most ``2**(bits-1) - 1``).
    """

    name: str
    summary: str
    asymmetric: bool
    hqq: bool
    quantize_dequantize: Callable[[np.ndarray, int, int], np.ndarray]
    underflows: Callable[[np.ndarray, int, int], bool]
    channel_scales: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None
    estimate_with: Optional[str] = None


@dataclass(frozen=True)
class FeatureMethod:
    """An activation (feature) calibration method for full INT8 quantization.

    ``make_observer()`` returns a fresh object with ``update(x: np.ndarray)`` called once per
    calibration batch for one tensor (streamed; memory must not grow with batches), and
    ``finish(bits: int, clamp: int) -> tuple[float, int]`` returning ``(scale, zero_point)``
    with ``real = scale * (q - zero_point)``. An observer may also have ``end_batch()``,
    called after every ``batch_size`` samples (EMA's moving average steps once per batch).
    """

    name: str
    summary: str
    make_observer: Callable[[], object]


@dataclass(frozen=True)
class SearchStrategy:
    """One step of the auto-quant search.

    ``run(ctx)`` measures per-layer settings through ``ctx.propose(changes, note)`` (which
    evaluates and records a trial), keeps the good ones with ``ctx.accept(changes, error)``,
    and leaves ``ctx.settings`` at the best configuration it found under the budget.
    ``order`` places it in the default pipeline (lower first); ``default`` says whether the
    default pipeline includes it.
    """

    name: str
    summary: str
    run: Callable[["SearchContext"], None]
    order: int = 100
    default: bool = False


@dataclass(frozen=True)
class Metric:
    """An error metric between a reference output and a measured output.

    ``per_output(reference, actual)`` gets two float64 arrays of one output tensor for one
    sample and returns the error (higher is worse), or ``None`` when this output must be
    skipped (as auto_quant.py skips outputs whose max |ref| <= 0.01). The error of a model
    on a test set is the maximum over outputs and samples. ``display`` turns an error into
    the text shown in reports.
    """

    name: str
    summary: str
    per_output: Callable[[np.ndarray, np.ndarray], Optional[float]]
    display: Callable[[float], str] = field(default=lambda v: f"{v:.6f}")
