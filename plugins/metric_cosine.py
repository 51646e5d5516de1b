"""cosine: 1 - cosine similarity between output and reference."""
import numpy as np

from mnnq.plugin import Metric, cosine_similarity, hookimpl


def cosine_distance(reference: np.ndarray, actual: np.ndarray) -> float:
    """``1 - cosine similarity`` (mnnq.plugin.cosine_similarity: 0 for two all-zero outputs)."""
    return float(max(0.0, 1.0 - cosine_similarity(reference, actual)))


@hookimpl
def mnnq_metrics():
    yield Metric(
        name="cosine",
        summary="1 - cosine similarity of output and reference, max over outputs and samples",
        per_output=cosine_distance,
    )
