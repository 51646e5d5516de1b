"""Compare model outputs with a test set's references under one or more metrics."""
from __future__ import annotations

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
    samples (``inf`` when an output was NaN/Inf); ``details`` has one row per output and sample."""

    errors: Dict[str, float]
    details: List[OutputError] = field(default_factory=list)
    nonfinite: List[str] = field(default_factory=list)

    def error(self, metric: str) -> float:
        return self.errors[metric]


def compare(testset: TestSet, outputs: Sequence[Mapping[str, np.ndarray]],
            metrics: Mapping[str, Metric]) -> Measurement:
    """``outputs[i]`` holds the model's outputs for ``testset.samples[i]``."""
    details: List[OutputError] = []
    nonfinite: List[str] = []
    worst: Dict[str, float] = {m: 0.0 for m in metrics}
    counted: Dict[str, int] = {m: 0 for m in metrics}
    for sample, produced in zip(testset.samples, outputs):
        for oname, ref in sample.references.items():
            if oname not in produced:
                raise BadInput(f"the model has no output '{oname}' named in {sample.directory}/input.json")
            out = np.asarray(produced[oname], dtype=np.float64).ravel()
            if out.size != ref.size:
                raise BadInput(f"reference {sample.directory}/{oname} has {ref.size} values "
                               f"but the model's output '{oname}' has {out.size}; regenerate the test set")
            if not np.all(np.isfinite(out)):
                nonfinite.append(f"{sample.name}/{oname}")
                details.append(OutputError(sample.name, oname, float(np.max(np.abs(ref))), float("inf"),
                                           {m: float("inf") for m in metrics}))
                for m in metrics:
                    worst[m] = float("inf")
                    counted[m] += 1
                continue
            values: Dict[str, Optional[float]] = {}
            for mname, metric in metrics.items():
                v = metric.per_output(ref, out)
                values[mname] = v
                if v is not None:
                    counted[mname] += 1
                    worst[mname] = max(worst[mname], float(v))
            details.append(OutputError(sample.name, oname, float(np.max(np.abs(ref))),
                                       float(np.max(np.abs(out - ref))), values))
    for mname, n in counted.items():
        if n == 0:
            raise BadInput(f"metric '{mname}' skips every output of test set {testset.root} "
                           "(e.g. max_rel ignores outputs whose max |ref| <= 0.01), so it could never fail; "
                           "use --metric cosine or a test set with larger outputs")
    return Measurement(worst, details, nonfinite)
