"""The search state that strategies work on, and the view of it they are given.

:class:`Search` holds the settings, the trials and the budget; the engine wires it to an
:class:`Evaluation` (how a trial is measured: in-process simulation or convert-and-run) and a
:class:`~mnnq.autoquant.weights.WeightOracle` (numpy facts about each layer's weights).
Strategies never see it directly: :func:`strategy_view` gives them an object with exactly the
members of :class:`mnnq.contracts.SearchContext`, read-only.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from mnnq.autoquant.timing import Timings
from mnnq.contracts import SearchContext, Settings, StopSearch, Trial
from mnnq.layers import FLOAT_BITS, Layer, LayerSetting, effective_block, weight_bytes
from mnnq.measure import Measurement

__all__ = ["Evaluation", "Search", "StopSearch", "Trial", "strategy_view"]


@dataclass(frozen=True)
class Evaluation:
    """How trials are measured. ``measure(settings, memory_mode, quick)`` -> Measurement;
    ``until_miss(settings, memory_mode, metric, limit, quick)`` -> ``(Measurement, complete)``
    stops at the first sample over ``limit`` (``quick``: of the quick samples);
    ``many(list of settings, memory_mode, quick)`` measures independent trials in parallel
    (None: one by one). ``exact``: trials run the written model (it alone tells runtime memory
    modes apart; the simulation computes float activations).
    ``quick_key()`` names the samples a quick measurement runs on (the subset can grow);
    ``within_budget(settings)`` hears of each single whole-test-set trial that met the budget
    (the simulation starts converting them ahead of the final write)."""

    name: str
    exact: bool
    measure: Callable[[Settings, str, bool], Measurement]
    until_miss: Optional[Callable[[Settings, str, str, float, bool], Tuple[Measurement, bool]]] = None
    many: Optional[Callable[[List[Settings], str, bool], List[Measurement]]] = None
    quick_key: Callable[[], tuple] = lambda: ()  # which samples a quick measurement runs on now
    # told the settings of each single whole-set trial within the budget: the search may end on them
    within_budget: Callable[[Settings], None] = lambda settings: None


class Search:
    """Settings, budget and trials of one auto-quant search (the engine's side).

    ``settings`` maps every layer to its current setting; ``candidates`` are the layers a
    strategy may change, smallest first. ``error`` is the measured error of ``settings``; the
    starting settings are measured (as trial ``unmeasured_note``) only when first read.
    """

    def __init__(self, layers: Mapping[str, Layer], settings: Mapping[str, LayerSetting], candidates: Sequence[str],
                 target: float, metric: str, evaluation: Evaluation, oracle=None, *,
                 memory_modes: Tuple[str, ...] = ("low", "normal"), allow_low_bits: bool = True,
                 allow_blocks: bool = True, deadline: Optional[float] = None,
                 on_trial: Callable[[Trial], None] = lambda t: None, timings: Optional[Timings] = None,
                 unmeasured_note: str = "starting settings"):
        self.layers: Mapping[str, Layer] = MappingProxyType(dict(layers))
        self._settings: Dict[str, LayerSetting] = dict(settings)
        self.candidates: Tuple[str, ...] = tuple(candidates)
        self.target = float(target)
        self.metric = metric
        self.allow_low_bits = allow_low_bits
        self.allow_blocks = allow_blocks
        self._evaluation = evaluation
        self._oracle = oracle
        self._memory_modes = tuple(memory_modes)
        self._memory_mode = self._memory_modes[0]
        self._deadline = deadline
        self._on_trial = on_trial
        self._timings = timings or Timings()
        self._unmeasured_note = unmeasured_note
        self._trials: List[Trial] = []
        self._notes: List[str] = []
        self._error: Optional[float] = None
        self._stage = ""

    # -- engine side -------------------------------------------------------------------
    def switch_evaluation(self, evaluation: Evaluation, deadline: Optional[float] = None) -> None:
        """Measure from now on with ``evaluation`` (e.g. exact finishing), with a new deadline."""
        self._evaluation = evaluation
        self._deadline = deadline

    def set_error(self, error: float) -> None:
        """The engine measured ``settings`` itself (the written model)."""
        self._error = error

    @property
    def notes(self) -> List[str]:
        return list(self._notes)

    @property
    def evaluator_name(self) -> str:
        return self._evaluation.name

    def guarded(self, settings: Settings) -> Dict[str, LayerSetting]:
        """``settings`` with every layer whose scales would underflow MNN's encoder kept float."""
        out = dict(settings)
        for name, s in settings.items():
            if s.bits != FLOAT_BITS and self.would_underflow(name, s):
                out[name] = LayerSetting(FLOAT_BITS, s.block, "scale underflow")
        return out

    # -- reading -----------------------------------------------------------------------
    @property
    def settings(self) -> Mapping[str, LayerSetting]:
        return MappingProxyType(self._settings)

    @property
    def trials(self) -> Sequence[Trial]:
        return tuple(self._trials)

    @property
    def error(self) -> float:
        if self._error is None:
            self.remeasure(self._unmeasured_note)
        return self._error  # type: ignore[return-value]

    @property
    def measured_error(self) -> Optional[float]:
        return self._error

    @property
    def exact(self) -> bool:
        return self._evaluation.exact

    @property
    def memory_mode(self) -> str:
        return self._memory_mode

    @property
    def memory_modes(self) -> Tuple[str, ...]:
        return self._memory_modes

    def setting(self, name: str) -> LayerSetting:
        return self._settings[name]

    def meets(self, error: float) -> bool:
        return error <= self.target

    def weight_noise(self, name: str, setting: LayerSetting) -> Optional[float]:
        return self._oracle.weight_noise(name, setting) if self._oracle is not None else None

    def would_underflow(self, name: str, setting: LayerSetting) -> bool:
        return bool(self._oracle.underflows(name, setting)) if self._oracle is not None else False

    def effective_block(self, name: str, block: Optional[int] = None) -> int:
        return effective_block(self.layers[name], self._settings[name].block if block is None else block)

    def layer_bytes(self, name: str, setting: LayerSetting) -> float:
        return weight_bytes(self.layers[name], setting)

    def size_bytes(self, settings: Optional[Settings] = None) -> float:
        settings = settings or self._settings
        return sum(weight_bytes(self.layers[n], settings[n]) for n in self.layers)

    # -- measuring ---------------------------------------------------------------------
    def measure(self, settings: Settings, note: str, quick: bool = False) -> float:
        return self.measure_many([(settings, note)], quick=quick)[0]

    def measure_many(self, batch: Sequence[Tuple[Settings, str]], quick: bool = False) -> List[float]:
        self._check_deadline()
        started = time.monotonic()
        guarded = [self.guarded(s) for s, _ in batch]
        evaluation = self._evaluation
        if evaluation.many is not None and len(batch) > 1:
            results = evaluation.many(guarded, self._memory_mode, quick)
        else:
            results = [evaluation.measure(s, self._memory_mode, quick) for s in guarded]
        errors = self._record([note for _, note in batch], results, time.monotonic() - started, quick)
        if len(batch) == 1 and not quick:
            self._tell_within_budget(guarded[0], errors[0])
        return errors

    def measure_until_miss(self, settings: Settings, note: str, quick: bool = False) -> float:
        until_miss = self._evaluation.until_miss
        if until_miss is None:
            return self.measure(settings, note, quick)
        self._check_deadline()
        started = time.monotonic()
        guarded = self.guarded(settings)
        result, complete = until_miss(guarded, self._memory_mode, self.metric, self.target, quick)
        suffix = "" if complete else " (stopped at a miss)"
        error = self._record([note + suffix], [result], time.monotonic() - started, quick=quick or not complete)[0]
        if not quick and complete:
            self._tell_within_budget(guarded, error)
        return error

    def _tell_within_budget(self, guarded: Dict[str, LayerSetting], error: float) -> None:
        """A trial on the whole test set met the budget: the search may end on it. (Quick
        trials would start a conversion every few tens of milliseconds, each killing the one
        before and taking the second core from the search: on a YOLOv8n 24 started, 1 used.)"""
        if self.meets(error):
            self._evaluation.within_budget(guarded)

    def propose(self, changes: Settings, note: str) -> float:
        return self.measure({**self._settings, **changes}, note)

    def remeasure(self, note: str) -> float:
        self._error = self.measure(self._settings, note)
        return self._error

    # -- changing ----------------------------------------------------------------------
    def accept(self, changes: Settings, error: float) -> None:
        self._settings.update(changes)
        self._error = error
        for trial in reversed(self._trials):
            if trial.error == error:
                trial.accepted = True
                break

    def use_memory_mode(self, mode: str) -> None:
        if mode not in self._memory_modes:
            raise ValueError(f"memory mode {mode!r} is not allowed here; allowed: {', '.join(self._memory_modes)}")
        if mode != self._memory_mode:
            self._memory_mode = mode
            self._error = None

    def note(self, text: str) -> None:
        self._notes.append(text)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer = self._stage
        self._stage = name
        try:
            with self._timings.phase(name):
                yield
        finally:
            self._stage = outer

    # -- internals ---------------------------------------------------------------------
    def _check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise StopSearch()

    def _record(self, notes: Sequence[str], results: Sequence[Measurement], seconds: float,
                quick: bool) -> List[float]:
        # the in-process simulation always computes float activations (memory mode normal)
        mode = self._memory_mode if self._evaluation.exact else "normal"
        each = seconds / max(len(notes), 1)
        errors = []
        for note, result in zip(notes, results):
            error = result.error(self.metric)
            trial = Trial(len(self._trials) + 1, note, error, self._evaluation.name, mode, each, quick=quick,
                          stage=self._stage)
            self._trials.append(trial)
            self._on_trial(trial)
            errors.append(error)
        return errors


def _contract_members() -> frozenset:
    names = {n for n in vars(SearchContext) if not n.startswith("_")}
    names |= set(getattr(SearchContext, "__annotations__", {}))
    return frozenset(names)


CONTRACT = _contract_members()


class _StrategyView:
    """What a strategy is given: the members of :class:`mnnq.contracts.SearchContext` and
    nothing else, read-only (changes go through ``accept`` / ``use_memory_mode``)."""

    __slots__ = ("_search",)

    def __init__(self, search: Search):
        object.__setattr__(self, "_search", search)

    def __getattr__(self, name: str):
        if name in CONTRACT:
            return getattr(object.__getattribute__(self, "_search"), name)
        raise AttributeError(f"'{name}' is not part of the search context a strategy gets "
                             "(see mnnq.plugin.SearchContext)")

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot set '{name}': a strategy changes the search through "
                             "ctx.accept(...) and ctx.use_memory_mode(...)")

    def __dir__(self):
        return sorted(CONTRACT)


def strategy_view(search: Search) -> SearchContext:
    return _StrategyView(search)  # type: ignore[return-value]
