"""cosine: 1 - cosine similarity between output and reference."""
import numpy as np

from mnnq.plugin import Metric, hookimpl


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # not np.dot / np.linalg.norm: OpenBLAS's threads busy-wait after a call and slow down the
    # MNN runs between two measurements on a small machine
    return float(np.einsum("i,i->", a, b))


def cosine_distance(reference: np.ndarray, actual: np.ndarray) -> float:
    ref = reference.ravel().astype(np.float64)
    out = actual.ravel().astype(np.float64)
    nr, no = _dot(ref, ref) ** 0.5, _dot(out, out) ** 0.5
    if nr == 0.0 and no == 0.0:
        return 0.0
    if nr == 0.0 or no == 0.0:
        return 1.0
    return float(max(0.0, 1.0 - _dot(ref, out) / (nr * no)))


@hookimpl
def mnnq_metrics():
    yield Metric(
        name="cosine",
        summary="1 - cosine similarity of output and reference, max over outputs and samples",
        per_output=cosine_distance,
    )
