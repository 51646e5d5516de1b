"""Where an auto-quant run spends its time: named phases, and what trials cost.

``phase(name)`` times a stretch of the run (nested phases are charged to the innermost one,
so the phases add up to the wall time they cover); ``cost(kind)`` times one kind of work inside
trials: ``weight_quant`` (numpy quantize-dequantize), ``swap`` (weights into the in-process
model), ``convert`` (the converter writing a model), ``load`` (loading a model file),
``forward`` (running samples), ``compare`` (errors against the references). Costs nest like
phases: a model file written and loaded lazily inside a forward call is charged to ``swap`` and
``load``, not to ``forward``.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Dict, Iterator, List

COSTS = ("weight_quant", "swap", "convert", "load", "forward", "compare")


class Timings:
    def __init__(self) -> None:
        self.phases: Dict[str, float] = {}
        self.costs: Dict[str, float] = {k: 0.0 for k in COSTS}
        self.counts: Dict[str, int] = {k: 0 for k in COSTS}
        self._stack: List[List[float]] = []
        self._cost_stack: List[List[float]] = []
        self.workers: Dict[str, int] = {}  # --jobs: worker processes started, trials they measured
        # conversions started ahead of the final write ("started") and the ones it used ("used")
        self.converted_ahead: Dict[str, int] = {"started": 0, "used": 0}

    def phase(self, name: str) -> ContextManager[None]:
        return _exclusive(self._stack, lambda seconds: self.add_phase(name, seconds))

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(seconds, 0.0)

    def cost(self, kind: str) -> ContextManager[None]:
        return _exclusive(self._cost_stack, lambda seconds: self._add_cost(kind, seconds))

    def _add_cost(self, kind: str, seconds: float) -> None:
        self.costs[kind] = self.costs.get(kind, 0.0) + max(seconds, 0.0)
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self) -> Dict[str, float]:
        """The trial costs so far (to tell the search's share from later work)."""
        return dict(self.costs)

    def as_dict(self) -> dict:
        return {
            "phases_s": {k: round(v, 6) for k, v in self.phases.items()},
            "trial_costs_s": {k: round(v, 6) for k, v in self.costs.items()},
            "trial_cost_counts": dict(self.counts),
        }


@contextlib.contextmanager
def _exclusive(stack: List[List[float]], charge: Callable[[float], None]) -> Iterator[None]:
    """Time the block, minus what nested blocks on the same ``stack`` were charged."""
    frame = [time.monotonic(), 0.0]  # start, time charged to inner blocks
    stack.append(frame)
    try:
        yield
    finally:
        stack.pop()
        total = time.monotonic() - frame[0]
        charge(total - frame[1])
        if stack:
            stack[-1][1] += total
