"""The auto-quant engine: float model -> layer inventory -> search -> written, re-measured model.

Data flow: the converter's params template lists the quantizable layers; an evaluator
(fast: swapped weights in-process, or exact: convert + run) measures proposals from the
search strategies; the final settings are written by the converter and the written file is
re-measured on the whole test set (when the last exact trial ran that very conversion in
the same memory mode, its run of the identical file is the measurement). If that measurement
misses the budget while the search used the simulation, the finishing strategies
(memory-mode, skip-layers) run again on exact measurements.

Before anything runs in-process, the float model is read by the converter and run on the test
set in a child process (a damaged file can crash the MNN runtime). Outputs (model, params,
report) are staged and renamed into place together at the end; Ctrl-C stops the run with
:class:`~mnnq.errors.Interrupted` saying where it stopped, and nothing is written.
"""
from __future__ import annotations

import json
import math
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from mnnq.autoquant.context import SearchContext, StopSearch, Trial
from mnnq.autoquant.evaluators import ExactEvaluator, FastEvaluator
from mnnq.errors import BadInput, Interrupted, MnnqError, NativeFailure
from mnnq.fileio import OutputSet, check_output_path
from mnnq.frontend.sources import resolve_model
from mnnq.layers import LayerSetting, effective_block
from mnnq.measure import Measurement, compare
from mnnq.mnn_backend.converter import start_params_template
from mnnq.mnn_backend.inventory import layers_from_template, read_conv_ops
from mnnq.mnn_backend.isolated import start_isolated
from mnnq.mnn_backend.native import probe_limits
from mnnq.mnn_backend.swap import SwappableModel
from mnnq.plugin_manager import MnnqPluginManager
from mnnq.records import SearchStrategy
from mnnq.testset import TestSet, load_testset

FINISHING = ("memory-mode", "skip-layers")
# A layer is guarded (kept float) when the encoder would zero more than this share of its
# weight energy; zeroing dead channels with ~1e-8 weights costs nothing and is allowed.
COLLAPSE_SHARE = 1e-4


@dataclass
class AutoQuantOptions:
    model: Path
    quant_model: Path
    test_dir: Path
    rate: float = 0.05
    select_bits: bool = True
    select_block: bool = True
    hqq: bool = True
    metric: str = "max_rel"
    weight_method: Optional[str] = None  # default: hqq if hqq else max_abs
    strategies: Optional[List[str]] = None  # default: every default strategy, by order
    evaluator: str = "auto"  # auto | fast | exact
    memory_mode: str = "auto"  # auto (low, then normal) | low | normal
    time_budget: Optional[float] = None
    jobs: int = 1
    report_json: Optional[Path] = None  # also write the report (with the model, atomically)


@dataclass
class LayerRow:
    name: str
    kind: str
    shape: str
    bits: int
    block: int
    reason: str = ""


@dataclass
class AutoQuantResult:
    model: Path
    quant_model: Path
    params_path: Path
    rate: float
    metric: str
    met: bool
    errors: Dict[str, float]
    simulated_error: Optional[float]
    float_errors: Dict[str, float]
    memory_mode: str
    method: str
    evaluator: str
    strategies: List[str]
    layers: List[LayerRow]
    size_before: int
    size_after: int
    trials: List[Trial]
    seconds: float
    notes: List[str] = field(default_factory=list)
    stopped_early: bool = False
    measurement: Optional[Measurement] = None

    @property
    def status(self) -> str:
        return "MET" if self.met else "MISSED"


def collapse_share(method, weight: np.ndarray, bits: int, block: int) -> float:
    """Share of a layer's weight energy that MNN's encoder would zero (scale <= 1e-6).

    Quantization is scale-equivariant except for that threshold, so the collapse is the
    difference between quantizing ``w`` and quantizing ``w * K`` (then dividing by K) for a K
    large enough that no scale underflows.
    """
    w = np.asarray(weight, dtype=np.float32)
    energy = float(np.sum(w.astype(np.float64) ** 2))
    if energy == 0.0:
        return 0.0
    k = np.float32(2.0 ** 20)
    plain = method.quantize_dequantize(w, bits, block).astype(np.float64)
    scaled = method.quantize_dequantize(w * k, bits, block).astype(np.float64) / float(k)
    return float(np.sum((plain - scaled) ** 2)) / energy


# Named pipelines, usable wherever a strategy name is (--strategy auto_quant).
PRESETS = {
    "auto_quant": ["select-bits", "select-block", "memory-mode", "skip-layers"],
    "sensitivity": ["sensitivity", "memory-mode", "skip-layers"],
}


def _pipeline(pm: MnnqPluginManager, opts: AutoQuantOptions) -> List[SearchStrategy]:
    available = pm.search_strategies()
    if opts.strategies:
        names = [n for name in opts.strategies for n in PRESETS.get(name, [name])]
        chosen = [pm.pick("mnnq_search_strategies", n) for n in names]
    else:
        chosen = sorted((s for s in available.values() if s.default), key=lambda s: (s.order, s.name))
    skip = set()
    if not opts.select_bits:
        skip.add("select-bits")
    if not opts.select_block:
        skip.add("select-block")
    return [s for s in chosen if s.name not in skip]


def _validate(opts: AutoQuantOptions) -> None:
    if not (isinstance(opts.rate, float) or isinstance(opts.rate, int)) or not math.isfinite(opts.rate) or opts.rate <= 0:
        raise BadInput(f"--rate must be a positive number, got {opts.rate!r}")
    if opts.memory_mode not in ("auto", "low", "normal"):
        raise BadInput(f"--memory-mode must be auto, low or normal, got {opts.memory_mode!r}")
    if not isinstance(opts.jobs, int) or opts.jobs < 1:
        raise BadInput(f"--jobs must be a positive integer, got {opts.jobs!r}")
    if opts.evaluator not in ("auto", "fast", "exact"):
        raise BadInput(f"--evaluator must be auto, fast or exact, got {opts.evaluator!r}")
    model = Path(opts.model)
    if not model.exists():
        raise BadInput(f"model not found: {model} (give the float .mnn model with --model)")
    if not model.is_file() or model.stat().st_size == 0:
        raise BadInput(f"model is empty or not a file: {model}")
    check_output_path(Path(opts.quant_model), [model], "--quant_model")
    check_output_path(Path(str(opts.quant_model) + ".json"), [model], "--quant_model (params file)")
    if opts.report_json is not None:
        check_output_path(Path(opts.report_json), [model, opts.quant_model, Path(str(opts.quant_model) + ".json")],
                          "--report-json")


class _Progress:
    """Where a run is, for the one line an interrupted run prints."""

    def __init__(self, metric: str, rate: float):
        self.metric = metric
        self.rate = rate
        self.stage = "checking the inputs"
        self.ctx: Optional[SearchContext] = None

    def text(self) -> str:
        trials = self.ctx.trials if self.ctx is not None else []
        done = [t.error for t in trials if not t.quick and math.isfinite(t.error)]
        best = (f"best {self.metric} so far {min(done):.6g} (rate {self.rate:g})" if done
                else "no full trial finished yet")
        return (f"interrupted while {self.stage}, after {len(trials)} trial{'s' if len(trials) != 1 else ''}; "
                f"{best}; nothing was written")


def run_auto_quant(opts: AutoQuantOptions, pm: MnnqPluginManager,
                   on_trial: Callable[[Trial], None] = lambda t: None) -> AutoQuantResult:
    """Search, write and re-measure; raises :class:`BadInput` / :class:`NativeFailure` with
    nothing written, :class:`Interrupted` on Ctrl-C (nothing written either)."""
    progress = _Progress(opts.metric, opts.rate)
    try:
        return _run(opts, pm, on_trial, progress)
    except KeyboardInterrupt:
        raise Interrupted(progress.text()) from None


def _read_model(model: Path, testset: TestSet, keep_model: Path):
    """The converter's params template and conv ops for ``model``, after proving the file
    safe: the converter reads it in a child (under probe limits) while the runtime runs it on
    the test set in another child; a converter failure is reported first (and stops the
    runtime child). The converter's float re-write of the model is kept at ``keep_model``: the
    weight-quantizing conversion starts from that graph, so the ops are read from it (once:
    the in-process simulation uses the same file and ops). Returns ``(template, ops, float
    outputs per sample)``."""
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
        ops = read_conv_ops(keep_model)
    except (ValueError, IndexError, struct.error, OverflowError, MemoryError) as exc:
        raise BadInput(f"cannot read the layers of {model} ({exc}); re-export it with MNNConvert") from None
    return template, ops, float_outputs


def _run(opts: AutoQuantOptions, pm: MnnqPluginManager, on_trial: Callable[[Trial], None],
         progress: _Progress) -> AutoQuantResult:
    started = time.monotonic()
    _validate(opts)
    metrics = pm.metrics()
    metric = pm.pick("mnnq_metrics", opts.metric).name
    progress.metric = metric
    method = pm.pick("mnnq_weight_methods", opts.weight_method or ("hqq" if opts.hqq else "max_abs"))
    pipeline = _pipeline(pm, opts)
    testset = load_testset(Path(opts.test_dir))
    model = resolve_model(Path(opts.model))  # an ONNX / TFLite source becomes its cached float .mnn

    with tempfile.TemporaryDirectory(prefix="mnnq-autoquant-") as work:
        work = Path(work)
        rewritten = work / "float-rewritten.mnn"
        template, ops, float_outputs = _read_model(model, testset, keep_model=rewritten)
        float_measure = compare(testset, float_outputs, metrics, metric)
        layers = layers_from_template(template, ops=ops)
        if not layers:
            raise BadInput(f"{model} has no weight-quantizable layers (conv, depthwise, deconv, matmul with "
                           "constant weights); nothing to quantize")
        notes: List[str] = []
        progress.stage = "preparing the search"
        exact = ExactEvaluator(model, template, method, testset, metrics, work, decides=metric)

        fast: Optional[FastEvaluator] = None
        weights: Dict[str, np.ndarray] = {
            op.name: np.asarray(op.weight, dtype=np.float32).reshape(op.converter_shape())
            for op in ops if op.weight is not None}
        if opts.evaluator in ("auto", "fast"):
            try:
                swappable = SwappableModel.load(rewritten, layers, testset.input_names, testset.output_names,
                                               work, prepare="none", ops=ops)
                fast = FastEvaluator(swappable, {l.name: l for l in layers}, method, testset, metrics, decides=metric)
            except MnnqError as exc:
                if opts.evaluator == "fast":
                    raise
                notes.append(f"in-process simulation unavailable ({exc}); every trial converts and runs the model")
        layer_map = {l.name: l for l in layers}

        guard_cache: Dict[tuple, bool] = {}

        def underflows(name: str, s: LayerSetting) -> bool:
            """True when the encoder would zero a noticeable share of the layer (dead,
            near-zero channels that it zeroes harmlessly do not count)."""
            if name not in weights:
                return False
            block = effective_block(layer_map[name], s.block)
            key = (name, s.bits, block)
            if key not in guard_cache:
                w = weights[name]
                guard_cache[key] = bool(method.underflows(w, s.bits, block)) and \
                    collapse_share(method, w, s.bits, block) > COLLAPSE_SHARE
            return guard_cache[key]

        candidates = [l.name for l in sorted(layers, key=lambda l: l.weight_count)]
        # Layers whose scales underflow even at 8 bits per channel are pinned float.
        pinned = [n for n in candidates if underflows(n, LayerSetting(8, -1))]
        for name in pinned:
            notes.append(f"{name}: kept float, its weights are so small that MNN's encoder would zero them "
                         "(scale <= 1e-6)")
        candidates = [n for n in candidates if n not in pinned]
        settings = {l.name: LayerSetting(8, -1) for l in layers}
        for name in pinned:
            settings[name] = LayerSetting(0, -1, "scale underflow")

        def evaluate(s, memory_mode, quick=False):
            if ctx.evaluator_name == "fast":
                return fast.measure(s, memory_mode, quick)
            return exact.measure(s, memory_mode, quick)

        def evaluate_until_miss(s, memory_mode, metric_name, limit):
            evaluator = fast if ctx.evaluator_name == "fast" else exact
            return evaluator.measure_until_miss(s, memory_mode, metric_name, limit)

        noise_cache: Dict[tuple, float] = {}
        noise_method = pm.weight_methods().get(method.estimate_with or "", method)

        def weight_noise(name: str, s: LayerSetting) -> Optional[float]:
            if name not in weights:
                return None
            block = effective_block(layer_map[name], s.block) if s.bits else -1
            key = (name, s.bits, block)
            if key not in noise_cache:
                w = weights[name]
                q = w if s.bits == 0 else noise_method.quantize_dequantize(w, s.bits, block)
                noise_cache[key] = float(np.sum((np.asarray(q, np.float64) - w) ** 2))
            return noise_cache[key]

        ctx = SearchContext(
            layers=layer_map, settings=settings, candidates=candidates, target=float(opts.rate), metric=metric,
            evaluate=evaluate, evaluate_until_miss=evaluate_until_miss, evaluator_name="fast" if fast else "exact",
            memory_mode="low" if opts.memory_mode in ("auto", "low") else "normal",
            memory_modes_allowed=("low", "normal") if opts.memory_mode == "auto" else (opts.memory_mode,),
            underflows=underflows, on_trial=on_trial,
            allow_low_bits=opts.select_bits, allow_blocks=opts.select_block, weight_noise=weight_noise,
            deadline=(time.monotonic() + opts.time_budget) if opts.time_budget else None,
            unmeasured_note="initial: all layers 8 bits, per channel",
        )
        progress.ctx = ctx
        pool = None
        stopped = False
        try:
            if opts.jobs > 1 and fast is not None:
                from mnnq.autoquant.parallel import WorkerPool

                pool = WorkerPool(opts.jobs, rewritten, layers, Path(opts.test_dir), method.name, list(metrics), work,
                                  decides=metric)
                ctx.evaluate_many = pool.evaluate_many
            for strategy in pipeline:
                progress.stage = f"searching (strategy {strategy.name})"
                strategy.run(ctx)
        except StopSearch:
            stopped = True
            notes.append("time budget spent: stopped with the best configuration found so far")
        finally:
            if pool is not None:
                pool.close()
        simulated = ctx.measured_error if ctx.evaluator_name == "fast" else None

        progress.stage = "writing and re-measuring the model"
        final_settings = ctx.guarded(ctx.settings)
        out_model = work / "final.mnn"
        params, final = exact.write_and_measure(final_settings, out_model, ctx.memory_mode)
        ctx.error = final.error(metric)

        if not ctx.meets(ctx.error) and ctx.evaluator_name == "fast" and not stopped:
            simulation = f" (simulation with float activations: {simulated:.4g})" if simulated is not None else ""
            notes.append(f"the written model measured {ctx.error:.4g} in memory mode {ctx.memory_mode}"
                         f"{simulation}; finishing with exact measurements")
            ctx.evaluator_name = "exact"
            ctx.deadline = None
            for strategy in pipeline:
                if strategy.name in FINISHING:
                    progress.stage = f"finishing on exact measurements (strategy {strategy.name})"
                    strategy.run(ctx)
            progress.stage = "writing and re-measuring the model"
            final_settings = ctx.guarded(ctx.settings)
            params, final = exact.write_and_measure(final_settings, out_model, ctx.memory_mode)
            ctx.error = final.error(metric)

        qpath = Path(opts.quant_model)
        ppath = Path(str(qpath) + ".json")
        rows = [LayerRow(l.name, l.kind, l.shape_text(), final_settings[l.name].bits,
                         effective_block(l, final_settings[l.name].block) if final_settings[l.name].bits else -1,
                         final_settings[l.name].reason) for l in layers]
        progress.stage = "writing the outputs"
        with OutputSet() as outputs:
            outputs.copy(out_model, qpath)
            outputs.write_text(ppath, json.dumps(params, indent=1) + "\n")
            result = AutoQuantResult(
                model=model, quant_model=qpath, params_path=ppath, rate=float(opts.rate), metric=metric,
                met=ctx.meets(final.error(metric)), errors=dict(final.errors), simulated_error=simulated,
                float_errors=dict(float_measure.errors), memory_mode=ctx.memory_mode, method=method.name,
                evaluator="fast" if fast else "exact", strategies=[s.name for s in pipeline], layers=rows,
                size_before=model.stat().st_size, size_after=out_model.stat().st_size, trials=ctx.trials,
                seconds=time.monotonic() - started, notes=notes + ctx.notes, stopped_early=stopped,
                measurement=final,
            )
            if opts.report_json is not None:
                from mnnq.report import autoquant_dict

                outputs.write_text(Path(opts.report_json), json.dumps(autoquant_dict(result), indent=2) + "\n")
    return result
