"""The contracts between mnnq and its plugins, as types.

A search strategy's ``run(ctx)`` gets an object that satisfies :class:`SearchContext`; a feature
method's ``make_observer()`` returns an :class:`ActivationObserver` (subclass :class:`Observer`
to get the optional ``end_batch``). Plugin authors import these from :mod:`mnnq.plugin`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import (TYPE_CHECKING, ContextManager, List, Mapping, Optional, Protocol, Sequence, Tuple,
                    runtime_checkable)

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mnnq.layers import Layer, LayerSetting

Settings = Mapping[str, "LayerSetting"]


class StopSearch(Exception):
    """Raised by a measurement when ``--time-budget`` is spent; a strategy lets it propagate
    and the engine keeps the best configuration so far."""


@dataclass
class Trial:
    """One measured configuration, as the report lists it."""

    index: int
    note: str
    error: float
    evaluator: str      # "fast" (in-process simulation) or "exact" (converted and run)
    memory_mode: str
    seconds: float
    accepted: bool = False
    quick: bool = False  # measured on a subset of the samples (screening, or stopped at a miss)
    stage: str = ""      # the strategy's stage it belongs to (see SearchContext.stage)


class SearchContext(Protocol):
    """What a search strategy may read and do. Everything is a method or a read-only attribute:
    a strategy changes the search only through ``accept``, ``remeasure`` and
    ``use_memory_mode``.

    Reading
        ``layers`` ``{name: Layer}``; ``candidates``: the names a strategy may change, smallest
        layer first (layers pinned float are not candidates); ``settings`` / ``setting(name)``:
        the current :class:`~mnnq.layers.LayerSetting` of every layer; ``target`` (the rate),
        ``metric`` (its name), ``meets(error)``; ``allow_low_bits`` / ``allow_blocks``
        (``--select_bits 0`` / ``--select_block 0`` ask for 8 bits / per channel only);
        ``error``: the measured error of ``settings`` (measured the first time it is read);
        ``measured_error``: ``error`` if measured, else None; ``trials``: every trial so far.
    The weights (numpy, no model run)
        ``weight_noise(name, setting)``: the squared quantization error of the layer's weights
        under ``setting`` (None when the weights are unknown); ``would_underflow(name, setting)``:
        MNN's encoder would zero the layer (such settings are kept float when measured);
        ``effective_block(name, block=None)``: the block the converter really applies (-1 = per
        channel); ``layer_bytes(name, setting)`` / ``size_bytes(settings=None)``: stored bytes.
    Measuring (each call is one or more recorded trials)
        ``measure(settings, note, quick=False)``, ``measure_many([(settings, note), ...], quick)``
        (in parallel with ``--jobs``), ``propose(changes, note)`` (current settings plus
        ``changes``), ``measure_until_miss(settings, note, quick=False)`` (stops at the first
        sample over the budget; ``quick``: among the quick samples), ``remeasure(note)``
        (measures ``settings`` and stores ``error``). ``quick`` screens on a few informative
        samples: measure again before keeping a decision.
    Changing
        ``accept(changes, error)`` keeps ``changes``; ``use_memory_mode(mode)`` switches the
        runtime memory mode the budget must hold in (one of ``memory_modes``; ``exact`` tells
        whether trials run the written model, the only measurement that tells modes apart).
    Reporting
        ``note(text)``: a line for the report; ``with ctx.stage("screening"):`` names the part of
        the strategy the time and trials inside belong to (the report's timing breakdown).
    """

    layers: Mapping[str, "Layer"]
    candidates: Sequence[str]
    target: float
    metric: str
    allow_low_bits: bool
    allow_blocks: bool

    @property
    def settings(self) -> Settings: ...
    @property
    def error(self) -> float: ...
    @property
    def measured_error(self) -> Optional[float]: ...
    @property
    def trials(self) -> Sequence[Trial]: ...
    @property
    def exact(self) -> bool: ...
    @property
    def memory_mode(self) -> str: ...
    @property
    def memory_modes(self) -> Tuple[str, ...]: ...

    def setting(self, name: str) -> "LayerSetting": ...
    def meets(self, error: float) -> bool: ...
    def weight_noise(self, name: str, setting: "LayerSetting") -> Optional[float]: ...
    def would_underflow(self, name: str, setting: "LayerSetting") -> bool: ...
    def effective_block(self, name: str, block: Optional[int] = None) -> int: ...
    def layer_bytes(self, name: str, setting: "LayerSetting") -> float: ...
    def size_bytes(self, settings: Optional[Settings] = None) -> float: ...
    def measure(self, settings: Settings, note: str, quick: bool = False) -> float: ...
    def measure_many(self, batch: Sequence[Tuple[Settings, str]], quick: bool = False) -> List[float]: ...
    def measure_until_miss(self, settings: Settings, note: str, quick: bool = False) -> float: ...
    def propose(self, changes: Settings, note: str) -> float: ...
    def remeasure(self, note: str) -> float: ...
    def accept(self, changes: Settings, error: float) -> None: ...
    def use_memory_mode(self, mode: str) -> None: ...
    def note(self, text: str) -> None: ...
    def stage(self, name: str) -> ContextManager[None]: ...


@runtime_checkable
class ActivationObserver(Protocol):
    """Statistics of one tensor over the calibration samples, for full INT8.

    ``update(x)`` gets the tensor for one sample (float32, NCHW for 4-D tensors); memory must
    not grow with the number of samples. ``end_batch()`` is called after every ``batch_size``
    samples (MNN's EMA steps its moving average once per batch). ``finish(bits, clamp)``
    returns ``(scale, zero_point)`` with ``real = scale * (q - zero_point)``, ``q`` in
    ``[-clamp, clamp]``; ``(0.0, 0)`` for an all-zero tensor (the host picks a safe scale).
    """

    def update(self, x: np.ndarray) -> None: ...
    def end_batch(self) -> None: ...
    def finish(self, bits: int, clamp: int) -> Tuple[float, int]: ...


class Observer(ABC):
    """Base class for activation observers: implement ``update`` and ``finish``; ``end_batch``
    does nothing unless overridden."""

    @abstractmethod
    def update(self, x: np.ndarray) -> None:
        """Add one sample's values of the tensor."""

    def end_batch(self) -> None:
        """A batch of ``batch_size`` samples ended (no-op by default)."""

    @abstractmethod
    def finish(self, bits: int, clamp: int) -> Tuple[float, int]:
        """``(scale, zero_point)`` for the values seen."""


__all__: List[str] = ["ActivationObserver", "Observer", "SearchContext", "StopSearch", "Trial", "Settings"]
