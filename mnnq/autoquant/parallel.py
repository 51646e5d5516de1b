"""``--jobs N``: simulated trials in N worker processes.

Each worker loads its own in-process model (the same float model, layers and test set) once;
a batch of independent trials (e.g. the sensitivity screening) is spread over the workers.
Only built-in and entry-point plugins are available in workers (they are loaded by name).
"""
from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mnnq.layers import Layer, LayerSetting
from mnnq.measure import Measurement

_worker: Dict[str, object] = {}


def _init(model: str, layers: List[Layer], testset_dir: str, method: str, metrics: List[str], workdir: str,
          decides: str) -> None:
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the parent stops the search and
    # terminates the pool; workers must not die on their own with tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mnnq.autoquant.evaluators import FastEvaluator
    from mnnq.mnn_backend.swap import SwappableModel
    from mnnq.plugin_manager import get_plugin_manager
    from mnnq.testset import load_testset

    pm = get_plugin_manager()
    testset = load_testset(Path(testset_dir))
    work = tempfile.mkdtemp(prefix="worker-", dir=workdir)  # inside the engine's temporary folder
    # ``model`` is the engine's converter re-write of the float model: no conversion of its own
    swappable = SwappableModel.load(Path(model), layers, testset.input_names, testset.output_names, Path(work),
                                    prepare="none")
    all_metrics = pm.metrics()
    _worker["evaluator"] = FastEvaluator(swappable, {l.name: l for l in layers}, pm.pick("mnnq_weight_methods", method),
                                         testset, {m: all_metrics[m] for m in metrics}, decides)


def _measure(args) -> Dict[str, float]:
    settings, quick = args
    return _worker["evaluator"].measure(settings, "normal", quick).errors  # type: ignore[union-attr]


class WorkerPool:
    """A pool of simulation workers; ``evaluate_many`` has the SearchContext contract."""

    def __init__(self, jobs: int, model: Path, layers: Sequence[Layer], testset_dir: Path, method: str,
                 metrics: Sequence[str], workdir: Path, decides: str):
        ctx = multiprocessing.get_context("spawn")
        self.jobs = jobs
        self._pool: Optional[multiprocessing.pool.Pool] = ctx.Pool(
            jobs, initializer=_init, initargs=(str(model), list(layers), str(testset_dir), method, list(metrics), str(workdir),
                                                decides))

    def evaluate_many(self, batch: Sequence[Dict[str, LayerSetting]], memory_mode: str, quick: bool) -> List[Measurement]:
        assert self._pool is not None
        chunk = max(1, len(batch) // (self.jobs * 4))
        results = self._pool.map(_measure, [(dict(s), quick) for s in batch], chunksize=chunk)
        return [Measurement(errors) for errors in results]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
