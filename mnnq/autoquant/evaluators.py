"""Evaluators turn per-layer settings into a measured error on the test set.

* :class:`ExactEvaluator` writes the model with MNN's converter and runs the written file.
* :class:`FastEvaluator` quantize-dequantizes weights in numpy exactly as the converter
  would and swaps them into an in-process float model: one forward pass per sample, no
  conversion. Only the layers whose setting changed since the last trial are recomputed, and
  a sample already run with the same settings is not run again (its comparison is kept).
"""
from __future__ import annotations

import json
import math
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.autoquant.timing import Timings
from mnnq.errors import MnnqError
from mnnq.layers import Layer, LayerSetting, effective_block
from mnnq.autoquant.samples import QuickSamples
from mnnq.measure import Comparison, Measurement
from mnnq.mnn_backend.converter import WeightQuantizeRun, start_weight_quantize
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.params import with_settings
from mnnq.records import Metric, WeightMethod
from mnnq.testset import TestSet


def measure_until_miss(model, testset: TestSet, metrics: Mapping[str, Metric], metric: str,
                       limit: float, timings: Optional[Timings] = None,
                       order: Optional[Sequence[int]] = None) -> Tuple[Measurement, bool]:
    """Run ``model`` sample by sample and stop once ``metric`` is over ``limit``: a model's
    error is the maximum over samples, so the rest cannot bring it back. Returns
    ``(measurement, complete)``; the complete measurement is exactly :func:`compare` over the
    whole test set (samples ``metric`` skips cannot cause a miss; they only delay the stop).
    ``order``: sample indices in the order to run them (default: test-set order)."""
    timings = timings or Timings()
    comparison = Comparison(metrics, metric)
    for index in order if order is not None else range(len(testset.samples)):
        sample = testset.samples[index]
        with timings.cost("forward"):
            produced = model.run(sample.inputs)
        with timings.cost("compare"):
            comparison.add(sample, produced)
        if comparison.error(metric) > limit:
            return comparison.result(testset, complete=False), False
    return comparison.result(testset), True


KEPT_SAMPLE_RUNS = 4096  # per-sample comparisons kept, most recently used (a settings key and a row per output each)


def settings_key(settings: Mapping[str, LayerSetting]) -> tuple:
    return tuple(sorted((n, s.bits, s.block) for n, s in settings.items()))


class ExactEvaluator:
    """Convert + run: what the user will ship, measured on the test set. ``decides``: the
    metric the search judges by (it picks the quick samples; only it must count an output)."""

    name = "exact"
    exact = True

    def __init__(self, float_model: Path, template: dict, method: WeightMethod, testset: TestSet,
                 metrics: Mapping[str, Metric], workdir: Path, decides: str, timings: Optional[Timings] = None):
        self.timings = timings or Timings()
        self.float_model = Path(float_model)
        self.template = template
        self.method = method
        self.testset = testset
        self.metrics = metrics
        self.decides = decides
        self.quick = QuickSamples(testset, metrics[decides], decides)
        self.workdir = Path(workdir)
        self._last_key: Optional[str] = None
        # whole-test-set measurements of the last written conversion, by memory mode
        self._last_measured: Dict[str, Measurement] = {}
        self._ahead: Optional[Tuple[str, WeightQuantizeRun]] = None  # see convert_ahead

    def _params(self, settings: Dict[str, LayerSetting]) -> Tuple[dict, str]:
        params = with_settings(self.template, settings, self.method.asymmetric)
        return params, json.dumps(params, sort_keys=True)

    def convert_ahead(self, settings: Dict[str, LayerSetting]) -> None:
        """Start converting ``settings`` in a child while the search goes on (the simulated
        search leaves a core idle between its batches): when the search ends on these settings,
        the final write only waits for what is left of the conversion. A newer call replaces
        an older one still running."""
        params, key = self._params(settings)
        if key == self._last_key or (self._ahead is not None and self._ahead[0] == key):
            return
        self.cancel_ahead()
        try:
            self._ahead = (key, self._start_conversion(params))
        except (MnnqError, OSError):
            return  # no head start: the final write converts (and reports what fails) itself
        self.timings.converted_ahead["started"] += 1

    def _start_conversion(self, params: dict) -> WeightQuantizeRun:
        return start_weight_quantize(self.float_model, params, self.method.hqq, self.method.asymmetric)

    def cancel_ahead(self) -> None:
        if self._ahead is not None:
            job, self._ahead = self._ahead[1], None
            job.cancel()

    def _converted(self, settings: Dict[str, LayerSetting]) -> Tuple[dict, Path]:
        """``(params, path)`` of the conversion of ``settings``. The last conversion is kept:
        the same settings again (another memory mode, the final write) reuse it instead of
        converting again (HQQ conversions are slow)."""
        params, key = self._params(settings)
        last = self.workdir / "last-written.mnn"
        if key != self._last_key or not last.is_file():
            self._last_key = None
            self._last_measured = {}
            with self.timings.cost("convert"):
                if self._ahead is not None and self._ahead[0] == key:
                    job, self._ahead = self._ahead[1], None
                    self.timings.converted_ahead["used"] += 1
                else:
                    self.cancel_ahead()
                    job = self._start_conversion(params)
                job.result(last)
            self._last_key = key
        return params, last

    def write(self, settings: Dict[str, LayerSetting], dst: Path) -> dict:
        """Write the quantized model to ``dst``; returns the params dict used."""
        params, converted = self._converted(settings)
        shutil.copyfile(converted, dst)
        return params

    def write_and_measure(self, settings: Dict[str, LayerSetting], dst: Path, memory_mode: str
                          ) -> Tuple[dict, Measurement]:
        """Write ``dst`` and measure it on the whole test set. When the last trial already ran
        this very conversion (a byte-identical file) in this memory mode, its measurement is
        returned instead of running the same file on the same samples again."""
        params = self.write(settings, dst)
        return params, self._measure_whole(dst, memory_mode)

    def _measure_whole(self, path: Path, memory_mode: str) -> Measurement:
        """The whole-test-set measurement of the last conversion (``path`` holds it)."""
        measured = self._last_measured.get(memory_mode)
        if measured is None:
            measured = self._last_measured[memory_mode] = self.measure_file(path, memory_mode)
        return measured

    def measure_file(self, path: Path, memory_mode: str, testset: Optional[TestSet] = None) -> Measurement:
        testset = testset or self.testset
        with self.timings.cost("load"):
            model = LoadedModel(path, testset.input_names, testset.output_names, memory_mode=memory_mode)
        return measure_until_miss(model, testset, self.metrics, self.decides, math.inf, self.timings)[0]

    # Trials run the kept conversion itself: no copy of the file per trial.
    def measure(self, settings: Dict[str, LayerSetting], memory_mode: str, quick: bool = False) -> Measurement:
        _, converted = self._converted(settings)
        if quick:
            return self.measure_file(converted, memory_mode, self.quick.view)
        measured = self._measure_whole(converted, memory_mode)
        self.quick.learn(measured)
        return measured

    def measure_until_miss(self, settings: Dict[str, LayerSetting], memory_mode: str, metric: str,
                           limit: float, quick: bool = False) -> Tuple[Measurement, bool]:
        _, converted = self._converted(settings)
        with self.timings.cost("load"):
            model = LoadedModel(converted, self.testset.input_names, self.testset.output_names,
                                memory_mode=memory_mode)
        testset = self.quick.view if quick else self.testset
        order = None if quick else self.quick.order()
        result = measure_until_miss(model, testset, self.metrics, metric, limit, self.timings, order)
        if not quick:
            self.quick.learn(result[0])
        return result


class FastEvaluator:
    """In-process simulation with swapped weights (float activations = memory mode normal);
    ``decides`` as for :class:`ExactEvaluator`."""

    name = "fast"
    exact = False

    def __init__(self, swappable, layers: Mapping[str, Layer], method: WeightMethod, testset: TestSet,
                 metrics: Mapping[str, Metric], decides: str, timings: Optional[Timings] = None):
        self.timings = timings or Timings()
        self.model = swappable
        self.layers = layers
        self.method = method
        self.testset = testset
        self.metrics = metrics
        self.decides = decides
        self.quick = QuickSamples(testset, metrics[decides], decides)
        # (settings, sample name) -> the rows comparing that run with its references: a quick
        # decision's samples are not run again when the whole set (or a larger quick set) is asked
        self._sample_runs: "OrderedDict[Tuple[tuple, str], Tuple[list, list]]" = OrderedDict()
        self._applied: Dict[str, Tuple[int, int]] = {}
        self._cache: Dict[Tuple[str, int, int], np.ndarray] = {}

    def weights_for(self, name: str, bits: int, block: int) -> np.ndarray:
        """The layer's weights as the converter would dequantize them (cached)."""
        key = (name, bits, block)
        if key not in self._cache:
            original = self.model.weights[name]
            if bits == 0:
                self._cache[key] = original
            else:
                with self.timings.cost("weight_quant"):
                    self._cache[key] = self.method.quantize_dequantize(original, bits, block).astype(np.float32)
        return self._cache[key]

    def measure(self, settings: Dict[str, LayerSetting], memory_mode: str = "normal",
                quick: bool = False) -> Measurement:
        """Every sample (``quick``: every quick sample); errors are maxima over samples, so the
        order :meth:`measure_until_miss` runs them in changes nothing."""
        return self.measure_until_miss(settings, memory_mode, self.decides, math.inf, quick)[0]

    def measure_until_miss(self, settings: Dict[str, LayerSetting], memory_mode: str, metric: str,
                           limit: float, quick: bool = False) -> Tuple[Measurement, bool]:
        """As :func:`measure_until_miss` (``quick``: over the quick samples only), samples already
        run with ``settings`` answered from memory (they come first: a miss among them costs no
        forward)."""
        comparison = Comparison(self.metrics, metric)
        key = settings_key(settings)
        testset = self.quick.view if quick else self.testset
        order = [i for i in self.quick.order() if not quick or i in self.quick.indices]
        order = [i for i in order if (key, self.testset.samples[i].name) in self._sample_runs] + \
                [i for i in order if (key, self.testset.samples[i].name) not in self._sample_runs]
        # the quick samples met the budget with these settings and the whole set is asked: on a
        # miss, they were too optimistic; while they can still grow, measure every sample so
        # that the worst samples that miss join them (see mnnq.autoquant.samples)
        learn_all = not quick and self.quick.can_grow() and self._quick_met(key, metric, limit)
        missed = False
        for index in order:
            self._add_sample(comparison, key, settings, self.testset.samples[index])
            if comparison.error(metric) > limit:
                missed = True
                if not learn_all:
                    break
        if missed and not learn_all:
            result = (comparison.result(testset, complete=False), False)
        else:
            result = (comparison.result(testset), True)
        if not quick:
            self.quick.learn(result[0], limit if learn_all else None)
        return result

    def _quick_met(self, key: tuple, metric: str, limit: float) -> bool:
        """Whether every quick sample was run with the settings ``key`` and they met ``limit``."""
        comparison = Comparison(self.metrics, metric)
        for index in self.quick.indices:
            kept = self._sample_runs.get((key, self.testset.samples[index].name))
            if kept is None:
                return False
            comparison.add_recorded(*kept)
        return comparison.error(metric) <= limit

    def _add_sample(self, comparison: Comparison, key: tuple, settings: Dict[str, LayerSetting], sample) -> None:
        """Compare ``sample`` under ``settings``: from memory, or by running the model."""
        kept = self._sample_runs.get((key, sample.name))
        if kept is not None:
            self._sample_runs.move_to_end((key, sample.name))
            with self.timings.cost("compare"):
                comparison.add_recorded(*kept)
            return
        self._apply(settings)
        rows, nonfinite = len(comparison.details), len(comparison.nonfinite)
        with self.timings.cost("forward"):
            produced = self.model.run(sample.inputs, sample=sample.name)
        with self.timings.cost("compare"):
            comparison.add(sample, produced)
        self._sample_runs[(key, sample.name)] = (comparison.details[rows:], comparison.nonfinite[nonfinite:])
        while len(self._sample_runs) > KEPT_SAMPLE_RUNS:
            self._sample_runs.popitem(last=False)

    def _apply(self, settings: Dict[str, LayerSetting]) -> None:
        """Swap in the weights of every layer whose setting changed since the last trial."""
        updates = {}
        for name, s in settings.items():
            if name not in self.model.weights:
                continue
            block = effective_block(self.layers[name], s.block) if s.bits else -1
            key = (s.bits, block)
            if self._applied.get(name) != key:
                updates[name] = self.weights_for(name, s.bits, block)
                self._applied[name] = key
        if updates:
            with self.timings.cost("swap"):
                self.model.set_weights(updates)
