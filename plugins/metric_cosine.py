"""cosine: 1 - cosine similarity between output and reference."""
import numpy as np

from mnnq.plugin import Metric, hookimpl


def cosine_distance(reference: np.ndarray, actual: np.ndarray) -> float:
    ref = reference.ravel().astype(np.float64)
    out = actual.ravel().astype(np.float64)
    nr, no = float(np.linalg.norm(ref)), float(np.linalg.norm(out))
    if nr == 0.0 and no == 0.0:
        return 0.0
    if nr == 0.0 or no == 0.0:
        return 1.0
    return float(max(0.0, 1.0 - float(np.dot(ref, out)) / (nr * no)))


@hookimpl
def mnnq_metrics():
    yield Metric(
        name="cosine",
        summary="1 - cosine similarity of output and reference, max over outputs and samples",
        per_output=cosine_distance,
    )
