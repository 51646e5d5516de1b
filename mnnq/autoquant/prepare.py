"""Stage 1 of auto-quant: read the float model safely and set up what the search measures with.

Before anything runs in-process, the converter reads the user's file in a child (under probe
limits) while the runtime runs it on the test set in another child (a damaged file can crash
the MNN runtime); a converter failure is reported first. The converter's float re-write of
the model is kept: the weight-quantizing conversion starts from that graph, so the layers'
ops and weights are read from it, once, and the in-process simulation loads the same file.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from mnnq.autoquant.evaluators import ExactEvaluator, FastEvaluator
from mnnq.autoquant.timing import Timings
from mnnq.autoquant.weights import WeightOracle
from mnnq.errors import BadInput, MnnqError, NativeFailure
from mnnq.layers import FLOAT_BITS, PER_CHANNEL, Layer, LayerSetting
from mnnq.measure import Measurement, compare
from mnnq.mnn_backend.converter import start_params_template
from mnnq.mnn_backend.inventory import layers_from_template, read_conv_ops
from mnnq.mnn_backend.isolated import start_isolated
from mnnq.mnn_backend.native import probe_limits
from mnnq.mnn_backend.swap import SwappableModel
from mnnq.records import Metric, WeightMethod
from mnnq.testset import TestSet


@dataclass
class Prepared:
    """Everything the search needs, read from the float model once."""

    model: Path
    rewritten: Path                  # the converter's float re-write (what the simulation loads)
    testset: TestSet
    layers: List[Layer]
    float_measure: Measurement       # the float model against the references
    exact: ExactEvaluator
    fast: Optional[FastEvaluator]
    oracle: WeightOracle
    candidates: List[str]            # smallest first, without the pinned layers
    settings: Dict[str, LayerSetting]
    notes: List[str] = field(default_factory=list)


def read_model(model: Path, testset: TestSet, keep_model: Path):
    """``(params template, conv ops, float outputs per sample)`` of ``model``, after proving it
    safe to load in-process (see the module docstring)."""
    listing = start_params_template(model, limits=probe_limits(model))
    try:
        float_run = start_isolated(model, testset.root, testset=testset)
    except BaseException:
        listing.cancel()
        raise
    try:
        try:
            template = listing.result(keep_model=keep_model)
        except NativeFailure as exc:
            raise NativeFailure(f"not a readable MNN model: {model} ({exc}); re-export it with MNNConvert",
                                tail=exc.tail) from None
    except BaseException:
        float_run.cancel()
        raise
    float_outputs = float_run.result()
    try:
        ops = read_conv_ops(keep_model, subgraphs=True)
    except (ValueError, IndexError, struct.error, OverflowError, MemoryError) as exc:
        raise BadInput(f"cannot read the layers of {model} ({exc}); re-export it with MNNConvert") from None
    return template, ops, float_outputs


def prepare(model: Path, testset: TestSet, method: WeightMethod, noise_method: WeightMethod,
            metrics: Mapping[str, Metric], decides: str, evaluator: str, work: Path, timings: Timings,
            on_read: Callable[[Path, List[Layer], str], None] = lambda *a: None) -> Prepared:
    """Read ``model`` and build the evaluators, the weight oracle and the starting settings.
    ``decides``: the metric the budget is on (only it must count an output; it picks the
    quick-screening samples). ``on_read(rewritten, layers, backend)`` is called as soon as the
    model is read when the simulation's backend is already known (``"patch"`` for files under
    MODULE_TRY_BYTES), so that --jobs workers can start loading while the search is prepared."""
    rewritten = work / "float-rewritten.mnn"
    with timings.phase("read model (listing + float run)"):
        template, ops, float_outputs = read_model(model, testset, keep_model=rewritten)
        float_measure = compare(testset, float_outputs, metrics, decides)
    layers = layers_from_template(template, ops=ops)
    if not layers:
        raise BadInput(f"{model} has no weight-quantizable layers (conv, depthwise, deconv, matmul with "
                       "constant weights); nothing to quantize")
    if evaluator in ("auto", "fast") and rewritten.stat().st_size < MODULE_TRY_BYTES:
        on_read(rewritten, layers, "patch")
    with timings.phase("prepare search"):
        notes: List[str] = []
        exact = ExactEvaluator(model, template, method, testset, metrics, work, decides, timings=timings)
        fast = _fast_evaluator(rewritten, layers, ops, method, testset, metrics, decides, work, evaluator, notes,
                               timings)
        weights = {op.key: np.asarray(op.weight, dtype=np.float32).reshape(op.converter_shape())
                   for op in ops if op.weight is not None}
        layer_map = {l.name: l for l in layers}
        oracle = WeightOracle(layer_map, weights, method, noise_method)
        candidates, settings = _starting_settings(layers, oracle, notes)
    return Prepared(model, rewritten, testset, layers, float_measure, exact, fast, oracle, candidates, settings, notes)


def _fast_evaluator(rewritten: Path, layers: List[Layer], ops, method: WeightMethod, testset: TestSet,
                    metrics: Mapping[str, Metric], decides: str, work: Path, evaluator: str, notes: List[str],
                    timings: Timings) -> Optional[FastEvaluator]:
    if evaluator not in ("auto", "fast"):
        return None
    try:
        swappable = SwappableModel.load(rewritten, layers, testset.input_names, testset.output_names, work,
                                        prepare="none", ops=ops, timings=timings)
    except MnnqError as exc:
        if evaluator == "fast":
            raise
        notes.append(f"in-process simulation unavailable ({exc}); every trial converts and runs the model")
        return None
    if rewritten.stat().st_size >= MODULE_TRY_BYTES:
        swappable = faster_backend(swappable, layers, testset, method, work, notes)
    return FastEvaluator(swappable, {l.name: l for l in layers}, method, testset, metrics, decides, timings=timings)


# A trial of the patch backend reloads the whole file: for large files (an embedding table, big
# fully connected layers) the module backend, which swaps weights without a reload, is timed too.
MODULE_TRY_BYTES = 20 << 20
MODULE_GAIN = 0.7  # the module backend is used when a trial costs at most this share of a reload


def faster_backend(patch: SwappableModel, layers: List[Layer], testset: TestSet, method: WeightMethod,
                   work: Path, notes: List[str]) -> SwappableModel:
    """``patch`` or the same model on the module backend (``mode="module-fast"``, weights as
    inputs), whichever measured a trial (one layer's weights swapped, one sample run) cheaper."""
    sample = testset.samples[0].inputs
    name = max(patch.weights, key=lambda n: patch.weights[n].size)
    changed = {name: method.quantize_dequantize(patch.weights[name], 8, -1).astype(np.float32)}

    def trial_cost(model: SwappableModel) -> float:
        model.set_weights(changed)
        started = time.process_time()
        model.run(sample)
        cost = time.process_time() - started
        model.reset()
        return cost

    try:
        module = SwappableModel.load(patch.path, layers, testset.input_names, testset.output_names,
                                     work / "module", prepare="none", mode="module-fast")
        module.run(sample)  # its first run builds the executors
        reload_cost, module_cost = trial_cost(patch), trial_cost(module)
    except MnnqError:
        return patch
    if module_cost > MODULE_GAIN * reload_cost:
        return patch
    notes.append(f"in-process simulation swaps weights without reloading the {patch.path.stat().st_size >> 20} MB "
                 f"file: {module_cost * 1000:.0f} ms of CPU a trial instead of {reload_cost * 1000:.0f} ms "
                 "(outputs within ~1e-5 of the file's kernels; the written model is measured as always)")
    return module


def _starting_settings(layers: List[Layer], oracle: WeightOracle, notes: List[str]):
    """``(candidates smallest first, settings)``: every layer at 8 bits per channel, except the
    layers whose scales underflow even then, which are pinned float."""
    candidates = [l.name for l in sorted(layers, key=lambda l: l.weight_count)]
    eight = LayerSetting(8, PER_CHANNEL)
    pinned = [n for n in candidates if oracle.underflows(n, eight)]
    settings = {l.name: eight for l in layers}
    for name in pinned:
        notes.append(f"{name}: kept float, its weights are so small that MNN's encoder would zero them "
                     "(scale <= 1e-6)")
        settings[name] = LayerSetting(FLOAT_BITS, PER_CHANNEL, "scale underflow")
    return [n for n in candidates if n not in pinned], settings
