"""Measure an INT8 model against the float model on calibration samples.

Outputs are compared with every metric plugin (max over outputs and samples) and by cosine
similarity (per sample: the worst output), against the float model's results on the same
samples (:class:`FloatReference`, computed once for all the INT8 candidates). With a probe
model (see :mod:`calibrate`) each layer tensor gets its mean and worst cosine similarity
against the float activations, and the share of float values that would saturate under the
tensor's INT8 params (the overflow ratio quantized.out's debug mode prints).

A measurement can stop early (``stop_above``): at the first sample whose error under the
deciding metric is over a bound, or whose outputs are not finite. The ``--rate`` fallback
(:mod:`fallback`) measures most of its candidates that way, worst samples first: a candidate
that misses the budget usually costs one sample instead of all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.measure import Comparison, cosine_similarity
from mnnq.quantize.calibrate import TensorRunner, overflow_ratio
from mnnq.quantize.inputs import Feeds, Samples
from mnnq.records import Metric
from mnnq.testset import Sample

# Float results kept for re-measuring (feeds, outputs and fetched tensors of the measured
# samples); samples beyond it are loaded and run through the float model again each time.
KEEP_BYTES = 256 << 20


@dataclass
class Evaluation:
    errors: Dict[str, Optional[float]]             # metric -> max error (None: metric skipped every output)
    output_cosine: Tuple[float, float]             # (mean, min) over samples of the worst output's cosine
    nonfinite: List[str] = field(default_factory=list)
    tensor_cosine: Dict[str, Tuple[float, float]] = field(default_factory=dict)   # tensor -> (mean, min)
    tensor_overflow: Dict[str, float] = field(default_factory=dict)              # tensor -> mean ratio
    samples: int = 0
    sample_errors: Dict[int, Dict[str, Optional[float]]] = field(default_factory=dict)   # index -> metric -> error
    complete: bool = True            # False: stopped at a sample over ``stop_above`` (``samples`` measured)

    @property
    def finite(self) -> bool:
        return not self.nonfinite

    def worst_first(self, metric: str) -> List[int]:
        """The measured sample indices, the largest ``metric`` error first (non-finite ones first,
        skipped ones last)."""
        def key(i: int) -> float:
            v = self.sample_errors[i].get(metric)
            return float("-inf") if v is None else -v
        return sorted(self.sample_errors, key=lambda i: (key(i), i))


class FloatReference:
    """The float model (``runner``) on calibration samples: ``get(index) -> (feeds, outputs,
    tensors)``. Every INT8 candidate (the ``--rate`` ranking, each round) is measured against
    the same float results, so each sample is loaded and run once and kept while the kept
    results fit in ``budget`` bytes."""

    def __init__(self, runner: TensorRunner, samples: Samples, budget: int = KEEP_BYTES):
        self.runner, self.samples, self.budget = runner, samples, budget
        self._kept: Dict[int, Tuple[Feeds, Feeds, Feeds]] = {}
        self._used = 0

    def get(self, index: int) -> Tuple[Feeds, Feeds, Feeds]:
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        feeds = self.samples.load(index)
        outputs, tensors = self.runner.run(feeds)
        self.keep(index, feeds, outputs, tensors)
        return feeds, outputs, tensors

    def keep(self, index: int, feeds: Feeds, outputs: Feeds, tensors: Optional[Feeds] = None) -> None:
        """Keep sample ``index``'s float results (e.g. from the calibration pass, which ran the
        same model) while they fit in the budget."""
        tensors = {} if tensors is None else tensors
        if self.runner.tensors and not tensors:
            return                       # this reference also needs layer tensors
        size = sum(np.asarray(a).nbytes for part in (feeds, outputs, tensors) for a in part.values())
        if index not in self._kept and self._used + size <= self.budget:
            self._kept[index] = (feeds, outputs, tensors)
            self._used += size


def eval_indices(n: int, limit: int) -> List[int]:
    """At most ``limit`` sample indices spread evenly over ``0..n-1``."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / max(limit - 1, 1))) for i in range(limit)})


def evaluate(reference: FloatReference, quant_runner: TensorRunner, indices: Sequence[int],
             metrics: Mapping[str, Metric], act_params: Mapping[str, Tuple[float, int]], clamp: int,
             on_sample: Optional[Callable[[int], None]] = None,
             stop_above: Optional[Tuple[str, float]] = None) -> Evaluation:
    """``quant_runner.tensors`` (probe names stripped) choose the tensors measured; the float
    reference's runner must fetch the same tensors. Samples are measured in the order of
    ``indices``; with ``stop_above=(metric, bound)`` the measurement ends after the first
    sample whose ``metric`` error is over ``bound`` or whose outputs are not finite."""
    comparison = Comparison(metrics, None, mismatch_fails=True)   # the same rules as every measurement
    out_cos: Dict[int, float] = {}
    per_sample: Dict[int, Dict[str, Optional[float]]] = {}
    cos_sum: Dict[str, float] = {}
    cos_min: Dict[str, float] = {}
    over_sum: Dict[str, float] = {}
    for done, idx in enumerate(indices):
        feeds, ref_out, ref_t = reference.get(idx)
        got_out, got_t = quant_runner.run(feeds)
        per_sample[idx], out_cos[idx] = _sample_errors(comparison, reference.samples.names[idx], ref_out, got_out)
        for t in quant_runner.tensors:
            c = cosine_similarity(ref_t[t], got_t[t])
            cos_sum[t] = cos_sum.get(t, 0.0) + c
            cos_min[t] = min(cos_min.get(t, 1.0), c)
            if t in act_params:
                s, z = act_params[t]
                over_sum[t] = over_sum.get(t, 0.0) + overflow_ratio(ref_t[t], s, z, clamp)
        if on_sample:
            on_sample(done)
        if stop_above is not None and _over(per_sample[idx].get(stop_above[0]), stop_above[1]):
            break
    n = max(len(out_cos), 1)
    measured = comparison.result(None, complete=False)  # a blind --metric is the engine's check
    cosines = list(out_cos.values())
    return Evaluation(
        errors=measured.errors,
        output_cosine=(float(np.mean(cosines)) if cosines else 1.0, float(np.min(cosines)) if cosines else 1.0),
        nonfinite=measured.nonfinite,
        tensor_cosine={t: (cos_sum[t] / n, cos_min[t]) for t in cos_sum},
        tensor_overflow={t: v / n for t, v in over_sum.items()},
        samples=len(out_cos), sample_errors=per_sample,
        complete=len(out_cos) == len(indices),
    )


def _sample_errors(comparison: Comparison, name: str, ref_out: Feeds, got_out: Feeds
                   ) -> Tuple[Dict[str, Optional[float]], float]:
    """Add one sample to ``comparison``; its error under each metric (max over its outputs,
    ``inf`` when one is not finite, ``None`` when the metric skips them all) and its worst output's
    cosine (0 for an output of the wrong size). The outputs are made float64 once for both."""
    refs = {o: np.asarray(r, dtype=np.float64).ravel() for o, r in ref_out.items()}
    got = {o: np.asarray(v, dtype=np.float64).ravel() for o, v in got_out.items()}
    before = len(comparison.details)
    comparison.add(Sample(name, Path(name), {}, refs), got)
    errors: Dict[str, Optional[float]] = {}
    for m in comparison.metrics:
        values = [row.values[m] for row in comparison.details[before:] if row.values[m] is not None]
        errors[m] = max(values) if values else None
    worst = min((cosine_similarity(ref, got[o]) if got[o].size == ref.size else 0.0 for o, ref in refs.items()),
                default=1.0)
    return errors, worst


def _over(error: Optional[float], bound: float) -> bool:
    return error is not None and not (error <= bound and math.isfinite(error))   # NaN and inf are over
