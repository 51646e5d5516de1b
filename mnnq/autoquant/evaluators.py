"""Evaluators turn per-layer settings into a measured error on the test set.

* :class:`ExactEvaluator` writes the model with MNN's converter and runs the written file.
* :class:`FastEvaluator` quantize-dequantizes weights in numpy exactly as the converter
  would and swaps them into an in-process float model: one forward pass per sample, no
  conversion. Only the layers whose setting changed since the last trial are recomputed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from mnnq.layers import Layer, LayerSetting, effective_block
from mnnq.measure import Measurement, compare
from mnnq.mnn_backend.converter import weight_quantize
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.params import with_settings
from mnnq.records import Metric, WeightMethod
from mnnq.testset import TestSet


def run_testset(model, testset: TestSet):
    return [model.run(sample.inputs) for sample in testset.samples]


class ExactEvaluator:
    """Convert + run: what the user will ship, measured on the test set."""

    name = "exact"
    exact = True

    def __init__(self, float_model: Path, template: dict, method: WeightMethod, testset: TestSet,
                 metrics: Mapping[str, Metric], workdir: Path):
        self.float_model = Path(float_model)
        self.template = template
        self.method = method
        self.testset = testset
        self.metrics = metrics
        self.workdir = Path(workdir)

    def write(self, settings: Dict[str, LayerSetting], dst: Path) -> dict:
        """Write the quantized model to ``dst``; returns the params dict used."""
        params = with_settings(self.template, settings, self.method.asymmetric)
        weight_quantize(self.float_model, dst, params, hqq=self.method.hqq, asymmetric=self.method.asymmetric)
        return params

    def measure_file(self, path: Path, memory_mode: str) -> Measurement:
        model = LoadedModel(path, self.testset.input_names, self.testset.output_names, memory_mode=memory_mode)
        return compare(self.testset, run_testset(model, self.testset), self.metrics)

    def measure(self, settings: Dict[str, LayerSetting], memory_mode: str) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="trial-", dir=self.workdir) as work:
            dst = Path(work) / "trial.mnn"
            self.write(settings, dst)
            return self.measure_file(dst, memory_mode)


class FastEvaluator:
    """In-process simulation with swapped weights (float activations = memory mode normal)."""

    name = "fast"
    exact = False

    def __init__(self, swappable, layers: Mapping[str, Layer], method: WeightMethod, testset: TestSet,
                 metrics: Mapping[str, Metric]):
        self.model = swappable
        self.layers = layers
        self.method = method
        self.testset = testset
        self.metrics = metrics
        self._applied: Dict[str, Tuple[int, int]] = {}
        self._cache: Dict[Tuple[str, int, int], np.ndarray] = {}

    def _weights_for(self, name: str, bits: int, block: int) -> np.ndarray:
        key = (name, bits, block)
        if key not in self._cache:
            original = self.model.weights[name]
            if bits == 0:
                self._cache[key] = original
            else:
                self._cache[key] = self.method.quantize_dequantize(original, bits, block).astype(np.float32)
        return self._cache[key]

    def measure(self, settings: Dict[str, LayerSetting], memory_mode: str = "normal") -> Measurement:
        updates = {}
        for name, s in settings.items():
            if name not in self.model.weights:
                continue
            block = effective_block(self.layers[name], s.block) if s.bits else -1
            key = (s.bits, block)
            if self._applied.get(name) != key:
                updates[name] = self._weights_for(name, s.bits, block)
                self._applied[name] = key
        if updates:
            self.model.set_weights(updates)
        return compare(self.testset, run_testset(self.model, self.testset), self.metrics)


def simulated_layer_error(evaluator: FastEvaluator, name: str, setting: LayerSetting) -> Optional[float]:
    """Relative weight error of one layer under ``setting`` (for reports); None if unknown."""
    if name not in evaluator.model.weights:
        return None
    w = evaluator.model.weights[name]
    q = evaluator._weights_for(name, setting.bits, effective_block(evaluator.layers[name], setting.block))
    denom = float(np.abs(w).max()) or 1.0
    return float(np.abs(q - w).max()) / denom
