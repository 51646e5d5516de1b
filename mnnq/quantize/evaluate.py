"""Measure an INT8 model against the float model on calibration samples.

Outputs are compared with every metric plugin (max over outputs and samples) and by cosine
similarity (per sample: the worst output), against the float model's results on the same
samples (:class:`FloatReference`, computed once for all the INT8 candidates). With a probe
model (see :mod:`calibrate`) each layer tensor gets its mean and worst cosine similarity
against the float activations, and the share of float values that would saturate under the
tensor's INT8 params (the overflow ratio quantized.out's debug mode prints).
"""
from __future__ import annotations

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

    @property
    def finite(self) -> bool:
        return not self.nonfinite


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
    return sorted({int(round(i * (n - 1) / (limit - 1))) for i in range(limit)})


def evaluate(reference: FloatReference, quant_runner: TensorRunner, indices: Sequence[int],
             metrics: Mapping[str, Metric], act_params: Mapping[str, Tuple[float, int]], clamp: int,
             on_sample: Optional[Callable[[int], None]] = None) -> Evaluation:
    """``quant_runner.tensors`` (probe names stripped) choose the tensors measured; the float
    reference's runner must fetch the same tensors."""
    comparison = Comparison(metrics, None, mismatch_fails=True)   # the same rules as every measurement
    out_cos: List[float] = []
    cos_sum: Dict[str, float] = {}
    cos_min: Dict[str, float] = {}
    over_sum: Dict[str, float] = {}
    for done, idx in enumerate(indices):
        feeds, ref_out, ref_t = reference.get(idx)
        got_out, got_t = quant_runner.run(feeds)
        name = reference.samples.names[idx]
        comparison.add(Sample(name, Path(name), {}, {o: np.asarray(r, dtype=np.float64).ravel()
                                                      for o, r in ref_out.items()}), got_out)
        sample_cos = min((cosine_similarity(ref, got_out[o]) if np.size(got_out[o]) == np.size(ref) else 0.0
                          for o, ref in ref_out.items()), default=1.0)
        out_cos.append(sample_cos)
        for t in quant_runner.tensors:
            c = cosine_similarity(ref_t[t], got_t[t])
            cos_sum[t] = cos_sum.get(t, 0.0) + c
            cos_min[t] = min(cos_min.get(t, 1.0), c)
            if t in act_params:
                s, z = act_params[t]
                over_sum[t] = over_sum.get(t, 0.0) + overflow_ratio(ref_t[t], s, z, clamp)
        if on_sample:
            on_sample(done)
    n = max(len(indices), 1)
    measured = comparison.result(None, complete=False)  # a blind --metric is the engine's check
    return Evaluation(
        errors=measured.errors,
        output_cosine=(float(np.mean(out_cos)) if out_cos else 1.0, float(np.min(out_cos)) if out_cos else 1.0),
        nonfinite=measured.nonfinite,
        tensor_cosine={t: (cos_sum[t] / n, cos_min[t]) for t in cos_sum},
        tensor_overflow={t: v / n for t, v in over_sum.items()},
        samples=len(indices),
    )
