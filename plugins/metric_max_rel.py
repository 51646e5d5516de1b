"""max_rel: auto_quant.py's rate, max |out - ref| / max |ref|, skipping near-zero outputs."""
from typing import Optional

import numpy as np

from mnnq.plugin import Metric, hookimpl

# auto_quant.py ignores an output whose max |ref| is at or under this floor.
ABS_MAX_FLOOR = 0.01


def max_rel(reference: np.ndarray, actual: np.ndarray) -> Optional[float]:
    abs_max = float(np.max(np.abs(reference))) if reference.size else 0.0
    if abs_max <= ABS_MAX_FLOOR:
        return None
    return float(np.max(np.abs(actual - reference))) / abs_max


@hookimpl
def mnnq_metrics():
    yield Metric(
        name="max_rel",
        summary="auto_quant.py's rate: max|out-ref| / max|ref| per output (skips max|ref| <= 0.01), max over outputs",
        per_output=max_rel,
    )
