"""The quantize job: calibrate -> scales -> params -> converter -> load, run, measure.

1. Check everything first (config, methods, samples, model, output paths): a bad input raises
   :class:`BadInput` before anything is written.
2. Stream the calibration samples through the float model; the feature method's observers see
   the input and output tensor of every full-INT8 layer, and the tensors the INT8 runtime will
   give those tensors' params (:mod:`propagation`).
3. Activation params from the observers, made to suit MNN 3.6.1's INT8 runtime (one set per
   propagation group, codes >= 0 around INT8 max pooling, zero point 0 on fused-ReLU binary
   ops: :mod:`propagation`); per-channel weight scales from the weight method.
4. The converter writes the INT8 model from the params file (:mod:`writer`).
5. The INT8 model is loaded and run on (up to ``eval_samples``) calibration samples against the
   float model: outputs must be finite. When they are not, or the ``metric`` error exceeds
   ``rate``, each layer's sensitivity is measured by writing it as the only INT8 layer, and the
   most sensitive layers are kept float, one at a time, until it holds. With ``debug`` a probe
   copy (:mod:`calibrate`) measures every layer of the final configuration.
6. The final model and its params (``<out>.json``) are written atomically, as one set, and it is
   re-measured.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from mnnq.errors import BadInput, NativeFailure, PluginError
from mnnq.fileio import OutputSet, check_output_path
from mnnq.inputs.feeds import model_inputs
from mnnq.mnn_backend.weight_bytes import WeightAccount, account_weights, kept_float_reason
from mnnq.quantize import calibrate as cal
from mnnq.quantize import propagation as prop
from mnnq.quantize.bias import TapMeans, corrected_biases, write_with_biases
from mnnq.quantize.config import QuantizeConfig, load_config
from mnnq.quantize.evaluate import Evaluation, FloatReference, eval_indices, evaluate
from mnnq.quantize.inputs import Samples, make_samples
from mnnq.quantize.writer import build_params, sanitize, weight_entry, write_int8

EVAL_SAMPLES = 64
RANK_WORKERS = 4          # converter child processes at once while ranking layers

Progress = Callable[[str, int, int], None]   # (stage, done, total)


@dataclass
class QuantizeOptions:
    model: Path
    out: Path
    config: Path
    debug: bool = False
    rate: Optional[float] = None
    metric: str = "max_rel"
    eval_samples: int = EVAL_SAMPLES
    report_json: Optional[Path] = None
    bias_correction: bool = False


@dataclass
class LayerReport:
    name: str
    kind: str
    shape: str
    input: str
    output: str
    status: str                       # "int8" or "float"
    reason: str = ""
    input_params: Tuple[float, int] = (0.0, 0)
    output_params: Tuple[float, int] = (0.0, 0)
    cos_in: Optional[float] = None
    cos_out: Optional[float] = None
    min_cos_out: Optional[float] = None
    overflow_in: Optional[float] = None
    overflow_out: Optional[float] = None

    @property
    def drop(self) -> Optional[float]:
        if self.cos_in is None or self.cos_out is None:
            return None
        return self.cos_in - self.cos_out


@dataclass
class QuantizeResult:
    model: Path
    out: Path
    params_path: Path
    config: QuantizeConfig
    feature_method: str
    weight_method: str
    samples: int
    eval_samples: int
    layers: List[LayerReport]
    other_float: List[Tuple[str, str]]
    errors: Dict[str, Optional[float]]
    output_cosine: Tuple[float, float]
    metric: str
    rate: Optional[float]
    met: bool
    size_before: int
    size_after: int
    seconds: float
    timings: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    debug: bool = False
    rounds: int = 0
    history: List[dict] = field(default_factory=list)   # per --rate round: layer kept float, errors
    weights: Optional[WeightAccount] = None   # the written file's weight bytes: INT8, float and why

    @property
    def status(self) -> str:
        return "MET" if self.met else "MISSED"

    @property
    def kept_float(self) -> List[LayerReport]:
        return [r for r in self.layers if r.status == "float"]


@dataclass
class Job:
    """Everything checked and loaded before any work starts."""

    opts: QuantizeOptions
    cfg: QuantizeConfig
    feature: object
    weight: object
    metrics: dict
    samples: Samples
    input_names: List[str]
    output_names: List[str]
    layers: List[cal.QuantLayer]
    other_float: List[Tuple[str, str]]
    batch_size: int
    notes: List[str]


def prepare(opts: QuantizeOptions, pm) -> Job:
    """Validate inputs and build the job; raises BadInput (nothing written)."""
    model = Path(opts.model)
    if not model.is_file() or model.stat().st_size == 0:
        raise BadInput(f"float model not found or empty: {model}")
    check_output_path(Path(opts.out), [model, Path(opts.config)], "output model")
    check_output_path(Path(str(opts.out) + ".json"), [model, Path(opts.config)], "params file")
    if opts.report_json:
        check_output_path(Path(opts.report_json), [model, Path(opts.config), Path(opts.out)], "--report-json")
    weight_names = [n for n, m in pm.weight_methods().items() if m.channel_scales is not None]
    cfg = load_config(Path(opts.config), sorted(pm.feature_methods()), sorted(weight_names))
    metrics = pm.metrics()
    if opts.metric not in metrics:
        raise BadInput(f"--metric: unknown metric '{opts.metric}'; available: {', '.join(sorted(metrics))}")
    try:
        feature = pm.feature_method(cfg.feature_quantize_method)
        weight = pm.weight_method(cfg.weight_quantize_method)
    except PluginError as exc:
        raise BadInput(str(exc)) from None
    layers, other = cal.find_layers(model, cfg.skip_quant_op_names)
    inputs, output_names = model_inputs(model)   # run in a child first: a crash must not kill this process
    notes = list(cfg.warnings)
    known = {l.name for l in layers} | {n for n, _ in other}
    for name in cfg.skip_quant_op_names:
        if name not in known:
            notes.append(f"skip_quant_op_names: no conv op named '{name}' in {model.name}")
    if not layers:
        raise BadInput(f"{model} has no Convolution / ConvolutionDepthwise layer with stored float weights "
                       "to quantize (all are skipped, external or already quantized)")
    samples = make_samples(cfg, inputs)
    if samples.skipped:
        notes.append(f"{len(samples.skipped)} entries of {cfg.path} skipped (not readable samples): "
                     + ", ".join(samples.skipped[:5]) + (" ..." if len(samples.skipped) > 5 else ""))
    batch = cfg.batch_size
    first_batch = inputs[0].shape[0] if inputs[0].shape else 0
    if not cfg.batch_size_set and first_batch and first_batch > 0:
        batch = first_batch          # quantized.out: without batch_size, EMA uses the model's batch
    return Job(opts, cfg, feature, weight, metrics, samples, [i.name for i in inputs], output_names,
               layers, other, batch, notes)


def run_quantize(opts: QuantizeOptions, pm, progress: Optional[Progress] = None) -> QuantizeResult:
    started = time.perf_counter()
    job = prepare(opts, pm)
    return run_job(job, progress, started)


def _step(progress: Optional[Progress], stage: str, total: int):
    if progress is None:
        return None
    progress(stage, 0, total)
    return lambda i: progress(stage, i + 1, total)


def run_job(job: Job, progress: Optional[Progress] = None, started: Optional[float] = None) -> QuantizeResult:
    started = time.perf_counter() if started is None else started
    opts, cfg = job.opts, job.cfg
    timings: Dict[str, float] = {}
    tensors = cal.layer_tensors(job.layers)
    notes = list(job.notes)

    t0 = time.perf_counter()
    indices = eval_indices(len(job.samples), max(1, opts.eval_samples))
    reference = FloatReference(cal.TensorRunner(opts.model, job.input_names, job.output_names), job.samples)
    stats = TapMeans(job.layers) if opts.bias_correction else None
    acts = activation_params(job, tensors, notes, progress, _keeper(reference, indices), stats)
    clamp = cfg.feature_clamp_value
    timings["calibrate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    weights, biases = weight_params(job, stats)
    timings["weight_scales_s"] = time.perf_counter() - t0

    keep: Dict[str, str] = {}
    rounds = 0
    history: List[dict] = []
    layer_ev: Optional[Evaluation] = None
    with tempfile.TemporaryDirectory(prefix="mnnq-quantize-") as work:
        source = Path(opts.model)
        if biases:      # the converter reads the biases from the float model: convert a corrected copy
            source = write_with_biases(source, Path(work) / "bias_corrected.mnn", job.layers, biases)
            notes.append(f"bias correction: {len(biases)} layer biases corrected for their rounded weights")
        m = _Measurer(job, Path(work), tensors, indices, acts, weights, clamp, progress, reference, source)
        t0 = time.perf_counter()
        final = Path(work) / "final.mnn"
        final_ev = m.write_and_check(final, keep, notes, "measuring")
        history.append({"round": 0, "kept_float": None, **_errors_of(final_ev)})
        _check_metric(final_ev, opts)
        if not _holds(final_ev, opts):
            if not final_ev.finite:
                notes.append("INT8 outputs were not finite; keeping the most sensitive layers float")
            for name, why in m.rank(keep, opts.metric if opts.rate is not None else "cosine"):
                keep[name] = why
                rounds += 1
                final_ev = m.write_and_check(final, keep, notes, f"round {rounds}: {name} kept float")
                history.append({"round": rounds, "kept_float": name, **_errors_of(final_ev)})
                if _holds(final_ev, opts):
                    break
        if opts.debug or cfg.debug:
            layer_ev = m.probe(keep, "measuring every layer")
        timings["measure_s"] = time.perf_counter() - t0
        if not final_ev.finite:
            raise NativeFailure("the INT8 model gives non-finite outputs even with every layer float "
                                f"({', '.join(final_ev.nonfinite[:3])}); the float model may be broken")
        params_path = Path(str(opts.out) + ".json")
        with OutputSet() as outputs:     # the model and its params file replace the old pair together
            outputs.copy(final, Path(opts.out))
            outputs.write_text(params_path, json.dumps(m.params(keep), indent=1) + "\n")

    layers = _layer_reports(job, acts, keep, layer_ev, clamp)
    met = _holds(final_ev, opts)
    if rounds and met:
        notes.append(f"kept {rounds} more layer(s) float to meet --rate {opts.rate} ({opts.metric})")
    return QuantizeResult(
        model=Path(opts.model), out=Path(opts.out), params_path=params_path, config=cfg,
        feature_method=cfg.feature_quantize_method, weight_method=cfg.weight_quantize_method,
        samples=len(job.samples), eval_samples=len(indices), layers=layers, other_float=job.other_float,
        errors=final_ev.errors, output_cosine=final_ev.output_cosine, metric=opts.metric, rate=opts.rate,
        met=met, size_before=Path(opts.model).stat().st_size, size_after=Path(opts.out).stat().st_size,
        seconds=time.perf_counter() - started, timings=timings, notes=notes,
        debug=bool(opts.debug or cfg.debug), rounds=rounds, history=history,
        weights=_weight_account(Path(opts.out), layers, job.other_float),
    )


def _weight_account(written: Path, layers: List[LayerReport], other_float: List[Tuple[str, str]]) -> WeightAccount:
    """Where the written model's weight bytes are; a conv mnnq kept float carries its reason
    (layers kept float for the rate share one, so they group together)."""
    reasons = {name: why for name, why in other_float}
    for r in layers:
        if r.status == "float":
            reasons[r.name] = kept_float_reason("to meet the rate" if r.reason.startswith("kept float") else r.reason)
    return account_weights(written, reasons)


def _keeper(reference: FloatReference, indices: List[int]):
    """``on_outputs`` for the calibration pass: the measured samples' float results are kept."""
    measured = set(indices)

    def keep(i: int, feeds, outputs) -> None:
        if i in measured:
            reference.keep(i, feeds, outputs)
    return keep


def weight_params(job: Job, stats: Optional[TapMeans]) -> Tuple[Dict[str, dict], Dict[str, object]]:
    """The params file's weight entries (the weight method's per-channel scales) and, with
    ``stats``, the bias-corrected biases (:mod:`bias`)."""
    cfg = job.cfg
    wclamp = cfg.weight_clamp
    weights = {l.name: weight_entry(l, job.weight.channel_scales(l.weight, cfg.quant_bits, wclamp),
                                    cfg.quant_bits, wclamp) for l in job.layers}
    return weights, (corrected_biases(job.layers, weights, stats) if stats is not None else {})


def activation_params(job: Job, tensors: List[str], notes: List[str], progress: Optional[Progress],
                      on_outputs, tap_means: Optional[TapMeans] = None) -> Dict[str, Tuple[float, int]]:
    """Calibrate the layer tensors and the tensors the INT8 runtime links to them, then turn each
    tensor's params into params the runtime handles (:mod:`propagation`); ``tap_means`` (bias
    correction) sees every sample's layer tensors."""
    model, clamp = job.opts.model, job.cfg.feature_clamp_value
    graph = prop.read_runtime_graph(model)
    groups = prop.quant_groups(graph, tensors) if graph is not None else []
    if graph is None:
        notes.append("MNN could not rebuild the model's graph: activation params are per tensor, without the "
                     "INT8 runtime's propagation rules")
    alias = prop.same_values(graph, tensors + [t for g in groups for t in g.linked])
    observed = list(dict.fromkeys(alias.values()))
    on_tensors = None
    if tap_means is not None:
        on_tensors = lambda values: tap_means.update({t: values[alias[t]] for t in tensors})  # noqa: E731
    observers = cal.calibrate(model, job.input_names, job.output_names, observed, job.samples,
                              job.feature.make_observer, job.batch_size,
                              _step(progress, "calibrating", len(job.samples)), on_outputs, on_tensors)
    finished = {t: sanitize(*obs.finish(8, clamp), clamp) for t, obs in observers.items()}
    return prop.runtime_params({t: finished[a] for t, a in alias.items()}, graph, groups, tensors, clamp)


class _Measurer:
    """Writes INT8 models (real or probe) for a set of float-kept layers and measures them."""

    def __init__(self, job: Job, work: Path, tensors, indices, acts, weights, clamp: int, progress,
                 reference: FloatReference, source: Path):
        self.job, self.work, self.tensors, self.indices = job, work, tensors, indices
        self.acts, self.weights, self.clamp, self.progress = acts, weights, clamp, progress
        self.float_plain = reference
        self.source = source            # the float model the converter writes INT8 from
        self.float_tensors: Optional[FloatReference] = None
        self.probe_float: Optional[Path] = None

    def params(self, keep) -> dict:
        return build_params(self.job.layers, self.acts, self.weights, self.clamp, keep)

    def _evaluate(self, ref, quant, stage: str) -> Evaluation:
        return evaluate(ref, quant, self.indices, self.job.metrics, self.acts, self.clamp,
                        _step(self.progress, stage, len(self.indices)))

    def write_and_check(self, dst: Path, keep: Dict[str, str], notes: List[str], stage: str) -> Evaluation:
        """Write the real INT8 model to ``dst`` and measure its outputs."""
        expected = [l.name for l in self.job.layers if l.name not in keep]
        written = write_int8(self.source, dst, self.params(keep), expected)
        for name in written["missing"]:
            keep.setdefault(name, "the converter did not write it as INT8")
            notes.append(f"the converter left layer '{name}' float (its output tensor name did not match)")
        quant = cal.TensorRunner(dst, self.job.input_names, self.job.output_names)
        return self._evaluate(self.float_plain, quant, stage)

    def rank(self, keep: Dict[str, str], metric: str) -> List[Tuple[str, str]]:
        """The INT8 layers, most sensitive first: each is written as the only INT8 layer and the
        model's ``metric`` error measured (non-finite outputs rank first). The converter runs
        in child processes, a few at a time."""
        candidates = [l for l in self.job.layers if l.name not in keep]
        names = [l.name for l in self.job.layers]

        def write_alone(i: int) -> Path:
            dst = self.work / f"alone{i}.mnn"
            alone = {n: "" for n in names if n != candidates[i].name}
            write_int8(self.source, dst, self.params(alone), [])
            return dst

        scored = []
        tick = _step(self.progress, "ranking layers by sensitivity", len(candidates))
        workers = max(1, min(RANK_WORKERS, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, dst in enumerate(pool.map(write_alone, range(len(candidates)))):
                quant = cal.TensorRunner(dst, self.job.input_names, self.job.output_names)
                ev = evaluate(self.float_plain, quant, self.indices, self.job.metrics, self.acts, self.clamp)
                dst.unlink(missing_ok=True)
                err = ev.errors.get(metric)
                err = float("inf") if not ev.finite else (err if err is not None else 1.0 - ev.output_cosine[0])
                scored.append((err, i, candidates[i].name))
                if tick:
                    tick(i)
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [(name, f"kept float: alone in INT8 it gives {metric} {err:.5g} (sensitivity rank {rank + 1})")
                for rank, (err, _, name) in enumerate(scored)]

    def probe(self, keep: Dict[str, str], stage: str) -> Evaluation:
        """Measure outputs and every layer tensor through the probe copy."""
        job = self.job
        if self.probe_float is None:
            self.probe_float = cal.build_probe_model(self.source, self.tensors, self.work / "probe_float.mnn")
            # every layer tensor of every sample: measured once, so not kept
            self.float_tensors = FloatReference(
                cal.TensorRunner(job.opts.model, job.input_names, job.output_names, self.tensors), job.samples, 0)
        dst = self.work / "probe_int8.mnn"
        write_int8(self.probe_float, dst, self.params(keep), [])
        quant = cal.TensorRunner(dst, job.input_names, job.output_names, self.tensors, cal.PROBE_SUFFIX)
        return self._evaluate(self.float_tensors, quant, stage)


def _errors_of(ev: Evaluation) -> dict:
    return {"errors": dict(ev.errors), "output_cosine": ev.output_cosine[0], "finite": ev.finite}


def _check_metric(ev: Evaluation, opts: QuantizeOptions) -> None:
    """With ``--rate``, the deciding metric must measure something; another metric that skips
    every output is only not measured (``None``)."""
    if opts.rate is not None and ev.finite and ev.errors.get(opts.metric) is None:
        raise BadInput(f"--metric {opts.metric} skips every output of this model on the {ev.samples} measured "
                       "sample(s) (e.g. max_rel ignores outputs whose max |ref| <= 0.01), so --rate could never "
                       "fail; use --metric cosine")


def _holds(ev: Evaluation, opts: QuantizeOptions) -> bool:
    if not ev.finite:
        return False
    if opts.rate is None:
        return True
    err = ev.errors.get(opts.metric)
    return err is None or err <= opts.rate


def _layer_reports(job: Job, acts, keep: Dict[str, str], ev: Optional[Evaluation], clamp: int) -> List[LayerReport]:
    rows = []
    for layer in job.layers:
        row = LayerReport(layer.name, layer.kind, layer.shape_text, layer.input, layer.output,
                          "float" if layer.name in keep else "int8", keep.get(layer.name, ""),
                          acts[layer.input], acts[layer.output])
        if ev is not None:
            row.cos_in = ev.tensor_cosine.get(layer.input, (None, None))[0]
            row.cos_out, row.min_cos_out = ev.tensor_cosine.get(layer.output, (None, None))
            row.overflow_in = ev.tensor_overflow.get(layer.input)
            row.overflow_out = ev.tensor_overflow.get(layer.output)
        rows.append(row)
    return rows
