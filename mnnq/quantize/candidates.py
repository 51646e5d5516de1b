"""INT8 candidates of one quantize job: the same calibration, params and float outputs, a
different set of layers kept float; each written by the converter and measured.

The converter runs in child processes (:mod:`mnnq.mnn_backend.native`); when several candidates
are known in advance (:meth:`Candidates.measure_many`) the next ones are converted while one is
measured. The measuring stays in this process, one model at a time: on the shared 2-core machine
two MNN processes running at once each ran at half speed (benchmarks/README.md).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from mnnq.quantize import calibrate as cal
from mnnq.quantize.evaluate import Evaluation, FloatReference, evaluate
from mnnq.quantize.fallback import Stop
from mnnq.quantize.writer import build_params, write_int8

CONVERT_AHEAD = 2         # converter children at once while candidates are measured


@dataclass
class Calibrated:
    """What every INT8 candidate shares: the measured samples, their float outputs and the params."""

    indices: List[int]
    reference: FloatReference
    acts: Dict[str, Tuple[float, int]]
    weights: Dict[str, dict]
    biases: Dict[str, object]


class Candidates:
    """Writes INT8 models (real or probe) for a set of float-kept layers and measures them.
    ``forced`` holds the layers the converter would not write as INT8 (float in every
    candidate, with the reason)."""

    def __init__(self, job, work: Path, calibrated: Calibrated, progress, source: Path, prefix: str = "candidate"):
        self.job, self.work, self.progress = job, work, progress
        self.indices, self.acts, self.weights = calibrated.indices, calibrated.acts, calibrated.weights
        self.float_plain = calibrated.reference
        self.clamp = job.cfg.feature_clamp_value
        self.source = source            # the float model the converter writes INT8 from
        self.prefix = prefix            # of the files it writes in ``work``
        self.forced: Dict[str, str] = {}
        self.written = 0
        self._first: Optional[Tuple[Evaluation, Path]] = None

    def params(self, keep) -> dict:
        return build_params(self.job.layers, self.acts, self.weights, self.clamp, set(keep) | set(self.forced))

    def first(self, notes: List[str]) -> Tuple[Evaluation, Path]:
        """Every layer INT8, measured on every sample; layers the converter left float join
        ``forced`` (measured once: a second call returns the first one's result)."""
        if self._first is not None:
            return self._first
        dst = self._path()
        written = write_int8(self.source, dst, self.params(()), [l.name for l in self.job.layers])
        for name in written["missing"]:
            self.forced[name] = "the converter did not write it as INT8"
            note = f"the converter left layer '{name}' float (its output tensor name did not match)"
            if note not in notes:
                notes.append(note)
        step = progress_step(self.progress, "measuring", len(self.indices))
        self._first = self._measure(dst, self.indices, None, step), dst
        return self._first

    def measure(self, keep: Sequence[str], order: Sequence[int], stop: Stop) -> Tuple[Evaluation, Path]:
        """The model with ``keep`` float, measured on the samples of ``order`` in that order."""
        dst = self._path()
        write_int8(self.source, dst, self.params(keep), [])
        return self._measure(dst, order, stop), dst

    def measure_many(self, keeps: Sequence[Sequence[str]], order: Sequence[int], stop: Stop
                     ) -> Iterator[Tuple[Evaluation, Path]]:
        """:meth:`measure` for each of ``keeps`` in turn, the next ones converted ahead; closing
        the iterator early cancels the conversions not started."""
        def convert(keep: Sequence[str], dst: Path) -> Path:
            write_int8(self.source, dst, self.params(keep), [])
            return dst

        pool = ThreadPoolExecutor(max_workers=CONVERT_AHEAD)
        try:
            futures = [pool.submit(convert, keep, self._path()) for keep in keeps]
            for future in futures:
                dst = future.result()
                yield self._measure(dst, order, stop), dst
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def probe(self, keep: Sequence[str], stage: str) -> Evaluation:
        """Measure outputs and every layer tensor through the probe copy."""
        job, tensors = self.job, cal.layer_tensors(self.job.layers)
        probe_float = cal.build_probe_model(self.source, tensors, self.work / "probe_float.mnn")
        # every layer tensor of every sample: measured once, so not kept
        float_tensors = FloatReference(
            cal.TensorRunner(job.opts.model, job.input_names, job.output_names, tensors), job.samples, 0)
        dst = self.work / "probe_int8.mnn"
        write_int8(probe_float, dst, self.params(keep), [])
        quant = cal.TensorRunner(dst, job.input_names, job.output_names, tensors, cal.PROBE_SUFFIX)
        return evaluate(float_tensors, quant, self.indices, job.metrics, self.acts, self.clamp,
                        progress_step(self.progress, stage, len(self.indices)))

    def _path(self) -> Path:
        self.written += 1
        return self.work / f"{self.prefix}{self.written}.mnn"

    def _measure(self, model: Path, order: Sequence[int], stop: Stop, step=None) -> Evaluation:
        quant = cal.TensorRunner(model, self.job.input_names, self.job.output_names)
        return evaluate(self.float_plain, quant, order, self.job.metrics, self.acts, self.clamp, step, stop)


def progress_step(progress, stage: str, total: int):
    """``on_sample(i)`` for a stage of ``total`` steps of ``progress(stage, done, total)`` (or None)."""
    if progress is None:
        return None
    progress(stage, 0, total)
    return lambda i: progress(stage, i + 1, total)
