"""The state a search strategy works on: layers, current settings, budget, trials."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mnnq.layers import FLOAT_BITS, Layer, LayerSetting, effective_block, weight_bytes
from mnnq.measure import Measurement


@dataclass
class Trial:
    index: int
    note: str
    error: float
    evaluator: str
    memory_mode: str
    seconds: float
    accepted: bool = False
    quick: bool = False


class StopSearch(Exception):
    """Raised inside a strategy when the time budget is spent; the engine keeps the best so far."""


@dataclass
class SearchContext:
    """What strategies read and change.

    ``settings`` maps every layer name to its current :class:`LayerSetting`; ``candidates``
    lists the layers a strategy may change, smallest first (layers pinned float, e.g.
    because their scales would underflow the encoder, are not candidates). ``error`` is the
    measured error of ``settings`` under ``metric`` and ``memory_mode``; the starting settings
    are measured (as trial ``unmeasured_note``) only when a strategy first reads it, so a
    strategy that measures its own proposals (sensitivity) does not pay for that run.
    """

    layers: Dict[str, Layer]
    settings: Dict[str, LayerSetting]
    candidates: List[str]
    target: float
    metric: str
    evaluate: Callable[..., Measurement]
    evaluator_name: str = "exact"
    memory_mode: str = "low"
    memory_modes_allowed: tuple = ("low", "normal")
    underflows: Callable[[str, LayerSetting], bool] = lambda name, s: False
    # squared quantization error of a layer's weights under a setting (None when unknown)
    weight_noise: Callable[[str, LayerSetting], Optional[float]] = lambda name, s: None
    on_trial: Callable[[Trial], None] = lambda t: None
    deadline: Optional[float] = None
    allow_low_bits: bool = True
    allow_blocks: bool = True
    # evaluate_many(list of settings, memory_mode, quick) -> list of Measurement; None = one by one
    evaluate_many: Optional[Callable[..., List[Measurement]]] = None
    # evaluate_until_miss(settings, memory_mode, metric, limit) -> (Measurement, complete): stops
    # running samples once ``metric`` is over ``limit``; None = measure_until_miss runs them all
    evaluate_until_miss: Optional[Callable[..., Tuple[Measurement, bool]]] = None
    unmeasured_note: str = "starting settings"
    trials: List[Trial] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    _error: Optional[float] = field(default=None, repr=False)

    @property
    def error(self) -> float:
        if self._error is None:
            self.remeasure(self.unmeasured_note)
        return self._error

    @error.setter
    def error(self, value: float) -> None:
        self._error = value

    @property
    def measured_error(self) -> Optional[float]:
        """``error`` if the current settings were measured, else None (reading ``error`` measures)."""
        return self._error

    # -- reading ---------------------------------------------------------------------
    def setting(self, name: str) -> LayerSetting:
        return self.settings[name]

    def meets(self, error: float) -> bool:
        return error <= self.target

    def size_bytes(self, settings: Optional[Mapping[str, LayerSetting]] = None) -> float:
        settings = settings or self.settings
        return sum(weight_bytes(self.layers[n], settings[n]) for n in self.layers)

    # -- proposing -------------------------------------------------------------------
    def guarded(self, settings: Mapping[str, LayerSetting]) -> Dict[str, LayerSetting]:
        """``settings`` with every layer whose scales would underflow MNN's encoder kept float."""
        out = dict(settings)
        for name, s in settings.items():
            if s.bits != FLOAT_BITS and self.underflows(name, s):
                out[name] = LayerSetting(FLOAT_BITS, s.block, "scale underflow")
        return out

    def measure(self, settings: Mapping[str, LayerSetting], note: str, quick: bool = False) -> float:
        """Evaluate ``settings`` (guarded) as one recorded trial and return its error.

        ``quick`` screens on a few samples only (for ranking candidates): the most informative
        ones the metric counts; a decision that is kept must be measured without it.
        """
        return self.measure_many([(settings, note)], quick=quick)[0]

    def measure_until_miss(self, settings: Mapping[str, LayerSetting], note: str) -> float:
        """Like :meth:`measure` for a keep-or-drop decision: the samples run one by one and the
        run stops as soon as the error is over the budget. The error returned is then a lower
        bound that already misses (the trial is recorded as ``quick``); within the budget, it is
        the whole test set's error."""
        if self.evaluate_until_miss is None:
            return self.measure(settings, note)
        self._check_deadline()
        started = time.monotonic()
        result, complete = self.evaluate_until_miss(self.guarded(settings), self.memory_mode, self.metric,
                                                    self.target)
        return self._record([(settings, note + ("" if complete else " (stopped at a miss)"))], [result],
                            time.monotonic() - started, quick=not complete)[0]

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise StopSearch()

    def _record(self, batch, results, each: float, quick: bool) -> List[float]:
        # The in-process simulation always computes float activations (memory mode normal).
        mode = self.memory_mode if self.evaluator_name == "exact" else "normal"
        errors = []
        for (_, note), result in zip(batch, results):
            error = result.error(self.metric)
            trial = Trial(len(self.trials) + 1, note, error, self.evaluator_name, mode, each, quick=quick)
            self.trials.append(trial)
            self.on_trial(trial)
            errors.append(error)
        return errors

    def measure_many(self, batch: Sequence[Tuple[Mapping[str, LayerSetting], str]], quick: bool = False) -> List[float]:
        """Evaluate independent trials, in parallel processes when the engine has them."""
        self._check_deadline()
        started = time.monotonic()
        guarded = [self.guarded(s) for s, _ in batch]
        if self.evaluate_many is not None and len(batch) > 1 and self.evaluator_name == "fast":
            results = self.evaluate_many(guarded, self.memory_mode, quick)
        else:
            results = [self.evaluate(s, self.memory_mode, quick) for s in guarded]
        return self._record(batch, results, (time.monotonic() - started) / max(len(batch), 1), quick)

    def propose(self, changes: Mapping[str, LayerSetting], note: str) -> float:
        """Measure the current settings with ``changes`` applied, without keeping them."""
        merged = dict(self.settings)
        merged.update(changes)
        return self.measure(merged, note)

    def accept(self, changes: Mapping[str, LayerSetting], error: float) -> None:
        """Keep ``changes``, whose measured error was ``error``."""
        self.settings.update(changes)
        self.error = error
        for trial in reversed(self.trials):
            if trial.error == error:
                trial.accepted = True
                break

    def remeasure(self, note: str) -> float:
        self.error = self.measure(self.settings, note)
        return self.error

    def note(self, text: str) -> None:
        self.notes.append(text)

    def effective_block(self, name: str) -> int:
        return effective_block(self.layers[name], self.settings[name].block)
