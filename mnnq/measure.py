"""Compare model outputs with a test set's references under one or more metrics."""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from mnnq.errors import BadInput
from mnnq.records import Metric
from mnnq.testset import TestSet


@dataclass
class OutputError:
    sample: str
    output: str
    abs_max: float
    diff_max: float
    values: Dict[str, Optional[float]]  # metric name -> error, None when the metric skips it


@dataclass
class Measurement:
    """Errors of one model run over a test set. ``errors[metric]`` is the max over outputs and
    samples (``inf`` when an output was NaN/Inf), or ``None`` when that metric skipped every
    output (not measured: a metric other than the deciding one may be blind to a test set);
    ``details`` has one row per output and sample."""

    errors: Dict[str, Optional[float]]
    details: List[OutputError] = field(default_factory=list)
    nonfinite: List[str] = field(default_factory=list)

    def error(self, metric: str) -> Optional[float]:
        return self.errors[metric]


# How a metric that skipped every output (not measured) is shown; JSON reports hold null.
NOT_MEASURED = "n/a: skips every output"


def error_text(value: Optional[float], fmt: str = "{:.6f}") -> str:
    """``value`` for people: formatted, or :data:`NOT_MEASURED` for ``None`` (never 0)."""
    return NOT_MEASURED if value is None else fmt.format(value)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` of two 1-D arrays without BLAS: numpy's OpenBLAS threads busy-wait after a
    call and took the second core from the MNN runs in between (measuring a YOLOv8n's INT8 model:
    2.9 s instead of 0.6 s on a 2-core machine)."""
    return float(np.einsum("i,i->", a, b))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (any shape, same size): 1 when both are all zeros, 0 when
    only one is, or when either holds NaN/Inf."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = math.sqrt(dot(a, a)), math.sqrt(dot(b, b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0 or not (math.isfinite(na) and math.isfinite(nb)):
        return 0.0
    return dot(a, b) / (na * nb)


class Comparison:
    """Errors accumulated sample by sample (``compare`` in steps): ``error(metric)`` is the
    maximum so far, so a caller can stop as soon as it is over a budget. ``decides`` names the
    metric the caller judges by: only it must count an output (see :meth:`result`).

    An output that is not finite counts as an infinite error for every metric. An output whose
    size differs from its reference is a bad test set (BadInput) when the references are the
    user's; with ``mismatch_fails`` (references mnnq computed itself, e.g. the float model's
    outputs against an INT8 model's) it counts as an infinite error too.
    """

    def __init__(self, metrics: Mapping[str, Metric], decides: Optional[str], mismatch_fails: bool = False):
        if decides is not None and decides not in metrics:
            raise KeyError(f"deciding metric '{decides}' is not among the metrics {', '.join(metrics)}")
        self.metrics = metrics
        self.decides = decides
        self.mismatch_fails = mismatch_fails
        self.details: List[OutputError] = []
        self.nonfinite: List[str] = []
        self.worst: Dict[str, float] = {m: 0.0 for m in metrics}
        self.counted: Dict[str, int] = {m: 0 for m in metrics}

    def error(self, metric: str) -> float:
        return self.worst[metric]

    def add(self, sample, produced: Mapping[str, np.ndarray]) -> None:
        """Compare one sample's outputs with its references."""
        metrics = self.metrics
        for oname, ref in sample.references.items():
            if oname not in produced:
                raise BadInput(f"the model has no output '{oname}' named in {sample.directory}/input.json")
            out = np.asarray(produced[oname], dtype=np.float64).ravel()
            if out.size != ref.size and not self.mismatch_fails:
                raise BadInput(f"reference {sample.directory}/{oname} has {ref.size} values "
                               f"but the model's output '{oname}' has {out.size}; regenerate the test set")
            if out.size != ref.size or not np.all(np.isfinite(out)):
                self.nonfinite.append(f"{sample.name}/{oname}")
                self._record(OutputError(sample.name, oname, float(np.max(np.abs(ref))), float("inf"),
                                         {m: float("inf") for m in metrics}))
                continue
            values = {mname: metric.per_output(ref, out) for mname, metric in metrics.items()}
            self._record(OutputError(sample.name, oname, float(np.max(np.abs(ref))),
                                     float(np.max(np.abs(out - ref))), values))

    def add_recorded(self, rows: Sequence[OutputError], nonfinite: Sequence[str]) -> None:
        """Add one sample's comparison as :meth:`add` recorded it earlier, over the same
        metrics (``details`` and ``nonfinite`` entries it appended): the same outcome without
        running the model again."""
        for row in rows:
            self._record(row)
        self.nonfinite.extend(nonfinite)

    def _record(self, row: OutputError) -> None:
        """One output's errors (``row.values``: one per metric of this comparison, ``None``
        where the metric skips the output) into the details, counts and maxima."""
        self.details.append(row)
        for mname, v in row.values.items():
            if v is not None:
                self.counted[mname] += 1
                self.worst[mname] = max(self.worst[mname], float(v))

    def result(self, testset: TestSet, complete: bool = True) -> Measurement:
        """The measurement so far. ``complete``: every sample was added; the deciding metric
        skipping every output (it could never fail) is then a BadInput. Any other metric that
        skipped every output is not measured: its value is ``None``, never 0."""
        if complete and self.decides is not None and self.counted[self.decides] == 0:
            raise BadInput(f"metric '{self.decides}' skips every output of all {len(testset.samples)} sample(s) of "
                           f"test set {testset.root} (e.g. max_rel ignores outputs whose max |ref| <= 0.01), so it "
                           "could never fail; use --metric cosine or a test set with larger outputs")
        errors = {m: (v if self.counted[m] else None) for m, v in self.worst.items()}
        return Measurement(errors, list(self.details), list(self.nonfinite))


def compare(testset: TestSet, outputs: Sequence[Mapping[str, np.ndarray]],
            metrics: Mapping[str, Metric], decides: str) -> Measurement:
    """``outputs[i]`` holds the model's outputs for ``testset.samples[i]``; ``decides`` is the
    metric the caller judges by (see :meth:`Comparison.result`)."""
    comparison = Comparison(metrics, decides)
    for sample, produced in zip(testset.samples, outputs):
        comparison.add(sample, produced)
    return comparison.result(testset)


def informative_samples(testset: TestSet, metric: Metric) -> List[int]:
    """Indices of the samples ``metric`` counts, most informative first: by the largest max|ref|
    over the outputs it counts, ties in test-set order (deterministic). Whether an output counts
    is read from the reference alone, ``metric.per_output(ref, ref) is not None`` (max_rel's
    floor is on max|ref|). Empty when the metric is blind to the whole test set."""
    scored = []
    for index, sample in enumerate(testset.samples):
        ranges = [float(np.max(np.abs(ref))) if ref.size else 0.0 for ref in sample.references.values()
                  if metric.per_output(ref, ref) is not None]
        if ranges:
            scored.append((-max(ranges), index))
    return [index for _, index in sorted(scored)]


def informative_subset(testset: TestSet, metric: Metric, k: int,
                       ranked: Optional[Sequence[int]] = None) -> List[int]:
    """Up to ``k`` sample indices in test-set order: the ``k`` most informative samples
    ``metric`` counts (``ranked``, or :func:`informative_samples`), or the first ``k`` samples
    when it counts none."""
    if ranked is None:
        ranked = informative_samples(testset, metric)
    return sorted(ranked[:k]) or list(range(min(k, len(testset.samples))))
