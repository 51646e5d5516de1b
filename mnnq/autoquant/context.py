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
    measured error of ``settings`` under ``metric`` and ``memory_mode``.
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
    error: float = float("inf")
    trials: List[Trial] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

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

        ``quick`` screens on the first few samples only (for ranking candidates); a decision
        that is kept must be measured without it.
        """
        return self.measure_many([(settings, note)], quick=quick)[0]

    def measure_many(self, batch: Sequence[Tuple[Mapping[str, LayerSetting], str]], quick: bool = False) -> List[float]:
        """Evaluate independent trials, in parallel processes when the engine has them."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise StopSearch()
        started = time.monotonic()
        guarded = [self.guarded(s) for s, _ in batch]
        if self.evaluate_many is not None and len(batch) > 1 and self.evaluator_name == "fast":
            results = self.evaluate_many(guarded, self.memory_mode, quick)
        else:
            results = [self.evaluate(s, self.memory_mode, quick) for s in guarded]
        each = (time.monotonic() - started) / max(len(batch), 1)
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
