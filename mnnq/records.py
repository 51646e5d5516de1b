"""Typed records that plugins yield from mnnq's hooks.

Each record is a frozen dataclass with a unique ``name``, a one-line ``summary`` and the
callables that do the work. The host only ever calls those callables; it never reaches
into a plugin's module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mnnq.contracts import ActivationObserver, SearchContext

# A search strategy's phase: "search" strategies find the settings; "finish" strategies run
# after them, and again on exact measurements when the written model misses the budget that
# the in-process simulation met.
SEARCH = "search"
FINISH = "finish"
PHASES = (SEARCH, FINISH)


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

    ``default``: auto-quant uses this method when ``--weight-method`` is not given and its
    ``hqq`` matches ``--hqq`` (one default per value of ``hqq``).

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
    default: bool = False


@dataclass(frozen=True)
class FeatureMethod:
    """An activation (feature) calibration method for full INT8 quantization.

    ``make_observer()`` returns a fresh :class:`~mnnq.contracts.ActivationObserver` for one
    tensor: ``update(x)`` once per calibration sample (streamed; memory must not grow with
    samples), ``end_batch()`` after every ``batch_size`` samples, and ``finish(bits, clamp)``
    returning ``(scale, zero_point)`` with ``real = scale * (q - zero_point)``. Subclass
    :class:`~mnnq.contracts.Observer` to inherit a no-op ``end_batch``.
    """

    name: str
    summary: str
    make_observer: Callable[[], "ActivationObserver"]


@dataclass(frozen=True)
class SearchStrategy:
    """One step of the auto-quant search.

    ``run(ctx)`` gets a :class:`~mnnq.contracts.SearchContext`: it measures per-layer settings
    (``ctx.propose(changes, note)`` evaluates and records a trial), keeps the good ones with
    ``ctx.accept(changes, error)`` and leaves ``ctx.settings`` at the best configuration it
    found under the budget.

    How it composes, as data (the engine names no strategy):

    * ``phase``: ``"search"`` strategies run first; ``"finish"`` strategies run after every
      search strategy, and run again on exact measurements (converted and run) when the
      written model misses a budget the in-process simulation met.
    * ``order``: position within its phase (lower first), in the default pipeline and presets.
    * ``default``: the pipeline run without ``--strategy`` includes it.
    * ``presets``: names of pipelines it belongs to (``--strategy auto_quant`` runs every
      strategy listing ``"auto_quant"``, by phase and order).
    * ``disabled_by``: auto-quant switches that skip it when turned off (``"select_bits"``
      for ``--select_bits 0``, ``"select_block"`` for ``--select_block 0``).
    """

    name: str
    summary: str
    run: Callable[["SearchContext"], None]
    order: int = 100
    default: bool = False
    phase: str = SEARCH
    presets: Tuple[str, ...] = ()
    disabled_by: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"search strategy {self.name!r}: phase must be one of {PHASES}, not {self.phase!r}")


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
