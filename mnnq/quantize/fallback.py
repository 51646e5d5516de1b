"""The ``--rate`` fallback: few layers kept float, found in a few seconds, when the all-INT8 model
misses the budget (or gives non-finite outputs).

1. **rank**: each layer is written as the only INT8 layer of the model and measured on the two
   samples the all-INT8 model does worst on; the layers whose INT8 alone costs most come first.
2. **scan**: keep the first 1, 2, 3, ... ranked layers float until the model holds. A candidate
   is measured worst sample first and stops at the first sample over the rate, so one that
   misses costs a conversion and a sample or two; the prefixes of 1, 2, 4, 8, ... layers are
   measured on every sample, so the trade-off curve has real points all along.
3. **refine**: each float layer, the least sensitive first, goes back to INT8 when the model
   still holds without it.

Every candidate is a real INT8 model written by the converter from the same calibration, the
same params and measured against the same float outputs; only the set of float layers changes.
The measured points (layers INT8 against the metric and the output cosine) make the trade-off
curve of the report.

Why not leave-one-out and bisection (measured on three real models at five rates,
benchmarks/README.md): the error of the worst sample is far from monotone in the float set (a
softmax on a borderline sample, a probability map that is all but zero), so bisection over a
ranking lands on whichever prefix happens to hold; an ascending scan finds the smallest, for
about the same cost once a miss costs a sample. "What keeping this layer float buys with every
other layer INT8" is the sum of many signed contributions on those samples and ranked worse than
"what this layer alone in INT8 costs" on two of the three models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from contextlib import closing
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from mnnq.quantize.evaluate import Evaluation

RANK_SAMPLES = 2          # samples each layer is ranked on: the all-INT8 model's worst

Stop = Optional[Tuple[str, float]]     # (metric, bound): end a measurement at the first sample over it
# measure(float layers, samples in order, stop) -> (evaluation, written model); measure_many
# does the same for several sets in turn (converting the next ones ahead).
Measure = Callable[[Sequence[str], Sequence[int], Stop], Tuple[Evaluation, Path]]
MeasureMany = Callable[[Sequence[Sequence[str]], Sequence[int], Stop], Iterator[Tuple[Evaluation, Path]]]
Tick = Callable[[str, int, int], None]   # (stage, done, total)


@dataclass(frozen=True)
class Point:
    """One measured candidate: ``float_layers`` kept float (beyond those always float)."""

    round: int
    stage: str                       # "all INT8", "scan", "refine"
    float_layers: Tuple[str, ...]
    evaluation: Evaluation = field(repr=False)
    holds: bool


@dataclass(frozen=True)
class Ranked:
    name: str
    error: float                     # the metric with only this layer INT8, on the ranking samples
    rank: int


@dataclass
class Budget:
    """What a candidate must meet: ``metric`` <= ``rate`` (``None``: finite outputs only)."""

    metric: str
    rate: Optional[float]

    def holds(self, ev: Evaluation) -> bool:
        if not ev.finite or not ev.complete:
            return False
        err = ev.errors.get(self.metric)
        return self.rate is None or err is None or err <= self.rate

    @property
    def stop_above(self) -> Tuple[str, float]:
        return self.metric, float("inf") if self.rate is None else self.rate


class FloatSearch:
    """The three stages of the module docstring over ``layers`` (the INT8 candidates, in file
    order), starting from ``first`` (every layer INT8, measured on every sample, written at
    ``first_path``). ``points`` collects every measured candidate; :meth:`run` returns the
    smallest set that holds, or else the best effort (the lowest error measured on every
    sample, fewest float layers), with its written model."""

    def __init__(self, layers: Sequence[str], budget: Budget, measure: Measure, measure_many: MeasureMany,
                 first: Point, first_path: Path, tick: Optional[Tick] = None):
        self.layers, self.budget = list(layers), budget
        self.measure, self.measure_many = measure, measure_many
        self.tick = tick or (lambda stage, done, total: None)
        self.points: List[Point] = [first]
        self.ranking: List[Ranked] = []
        self.order = first.evaluation.worst_first(budget.metric)     # samples, worst first
        self.ranking_samples = self.order[:RANK_SAMPLES]
        self.best: Optional[Tuple[Point, Path]] = None
        self.effort: Tuple[Point, Path] = (first, first_path)

    def run(self) -> Tuple[Point, Path]:
        self.rank()
        self.scan()
        if self.best is not None:
            self.refine()
        return self.best if self.best is not None else self.effort

    def rank(self) -> None:
        alone = [[n for n in self.layers if n != name] for name in self.layers]
        scored = []
        for i, (ev, path) in enumerate(self.measure_many(alone, self.ranking_samples, None)):
            path.unlink(missing_ok=True)
            scored.append((deciding_error(ev, self.budget.metric), i))
            self.tick("ranking layers (each alone in INT8)", i + 1, len(alone))
        scored.sort(key=lambda t: (-t[0], t[1]))
        self.ranking = [Ranked(self.layers[i], err, r + 1) for r, (err, i) in enumerate(scored)]

    def scan(self) -> None:
        """Prefixes of the ranking, ascending, until one holds (powers of two measured fully)."""
        names = [r.name for r in self.ranking]
        prefixes = [names[:k] for k in range(1, len(names) + 1)]
        with closing(self._scan_measurements(prefixes)) as measured:
            for k, (keep, (ev, path)) in enumerate(zip(prefixes, measured), 1):
                self.tick("keeping the top-ranked layers float", k, len(prefixes))
                if self._record("scan", keep, ev, path):
                    return

    def _scan_measurements(self, prefixes: List[List[str]]) -> Iterator[Tuple[Evaluation, Path]]:
        """Fully measured at powers of two (the curve), stopped at the first miss otherwise (the
        others are converted ahead while one is measured)."""
        start = 0
        while start < len(prefixes):
            k = start + 1
            if k & (k - 1) == 0:
                ev, path = self.measure(prefixes[start], self.order, None)
                self.order = ev.worst_first(self.budget.metric)
                yield ev, path
                start += 1
                continue
            end = min(len(prefixes), (1 << k.bit_length()) - 1)   # up to the next power of two
            with closing(self.measure_many(prefixes[start:end], self.order, self.budget.stop_above)) as batch:
                for ev, path in batch:
                    self.order = _failing_first(ev, self.order)
                    yield ev, path
            start = end

    def refine(self) -> None:
        """Each float layer of the best set, least sensitive first, back to INT8 if it still holds."""
        rank = {r.name: r.rank for r in self.ranking}
        tries = sorted(self.best[0].float_layers, key=lambda n: -rank[n])
        for done, name in enumerate(tries, 1):
            keep = [n for n in self.best[0].float_layers if n != name]
            ev, path = self.measure(keep, self.order, self.budget.stop_above)
            self.order = _failing_first(ev, self.order)
            self.tick("refining: float layers back to INT8", done, len(tries))
            self._record("refine", keep, ev, path)

    def _record(self, stage: str, keep: Sequence[str], ev: Evaluation, path: Path) -> bool:
        """Add a measured candidate; True when it is the new smallest set that holds."""
        point = Point(len(self.points), stage, tuple(keep), ev, self.budget.holds(ev))
        self.points.append(point)
        if point.holds and (self.best is None or len(keep) < len(self.best[0].float_layers)):
            if self.best is not None:
                self.best[1].unlink(missing_ok=True)
            self.best = (point, path)
            return True
        if not point.holds and self.best is None and ev.complete and _effort_key(point, self.budget) < _effort_key(self.effort[0], self.budget):
            self.effort[1].unlink(missing_ok=True)
            self.effort = (point, path)
            return False
        path.unlink(missing_ok=True)
        return False


def _effort_key(point: Point, budget: Budget) -> Tuple[float, int]:
    return deciding_error(point.evaluation, budget.metric), len(point.float_layers)


def deciding_error(ev: Evaluation, metric: str) -> float:
    """The deciding error of a measurement for ranking: ``inf`` for non-finite outputs, 0 when
    the metric skips every output."""
    if not ev.finite:
        return float("inf")
    err = ev.errors.get(metric)
    return 0.0 if err is None else float(err)


def _failing_first(ev: Evaluation, order: Sequence[int]) -> List[int]:
    """``order`` with the sample that stopped ``ev`` (if any) moved to the front."""
    if ev.complete:
        return list(order)
    last = list(ev.sample_errors)[-1]
    return [last] + [i for i in order if i != last]


def kept_reason(ranked: Ranked, metric: str, samples: int) -> str:
    return (f"kept float: alone in INT8 its {metric} error is {ranked.error:.5g} on the {samples} worst "
            f"samples (sensitivity rank {ranked.rank})")


def tradeoff_dict(search: FloatSearch, chosen: Point, budget: Budget, total: int, forced: Sequence[str],
                  ranking_samples: Sequence[str]) -> Dict[str, object]:
    """The ranking and every measured point, JSON-ready. ``total``: the model's INT8-able convs;
    ``forced``: those float in every candidate (the converter would not write them INT8)."""
    points = []
    for p in search.points:
        ev = p.evaluation
        floats = list(forced) + list(p.float_layers)
        points.append({
            "round": p.round, "stage": p.stage, "layers_int8": total - len(floats), "layers_float": len(floats),
            "float": floats, "error": ev.errors.get(budget.metric), "errors": dict(ev.errors), "finite": ev.finite,
            "output_cosine": {"mean": ev.output_cosine[0], "min": ev.output_cosine[1]},
            "samples": ev.samples, "complete": ev.complete, "holds": p.holds, "chosen": p is chosen,
        })
    return {
        "metric": budget.metric, "rate": budget.rate, "layers": total,
        "ranking_samples": list(ranking_samples),
        "ranking": [{"layer": r.name, "rank": r.rank, "alone_error": r.error} for r in search.ranking],
        "points": points,
    }


def fallback_notes(search: FloatSearch, chosen: Point, budget: Budget,
                   blank: Sequence[Tuple[str, float, float]]) -> List[str]:
    """What the fallback did, in a line or two; ``blank``: ``(sample, max |ref|, largest)`` of the
    measured samples whose float outputs are all but zero (see the engine)."""
    stages = [p.stage for p in search.points[1:]]
    what = (f"{len(search.ranking)} layers ranked, {stages.count('scan')} scan and {stages.count('refine')} "
            f"refine candidates measured")
    target = f"--rate {budget.rate} ({budget.metric})" if budget.rate is not None else "finite outputs"
    notes = [f"kept {len(chosen.float_layers)} layer(s) float for {target}: {what}" if chosen.holds
             else f"no candidate met {target} ({what}); the best effort was written"]
    if blank:
        names = ", ".join(name for name, _, _ in blank[:3]) + (" ..." if len(blank) > 3 else "")
        notes.append(f"sample(s) {names}: the float model's outputs are all but zero there (max |ref| "
                     f"{blank[0][1]:.3g} against {blank[0][2]:.3g}); cosine on them measures noise, and as the "
                     "worst sample it can decide --rate: leave such samples out of the calibration folder")
    return notes


def all_but_zero(peaks: Dict[str, float]) -> List[Tuple[str, float, float]]:
    """``(sample, peak, largest)`` for the samples whose ``peak`` (largest |output| of the float
    model) is under 1% of the largest over all samples."""
    top = max(peaks.values(), default=0.0)
    return [(name, peak, top) for name, peak in peaks.items() if top > 0.0 and peak < 0.01 * top]
