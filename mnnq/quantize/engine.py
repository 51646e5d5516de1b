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
   float model (:mod:`candidates`): outputs must be finite. When they are not, or the ``metric``
   error exceeds ``rate``, the fallback (:mod:`fallback`) ranks the layers, finds the fewest to
   keep float and records the trade-off curve. With ``debug`` a probe copy (:mod:`calibrate`)
   measures every layer of the final configuration.
6. The chosen model (measured on every sample) and its params (``<out>.json``) are written
   atomically, as one set.
"""
from __future__ import annotations

import json
import tempfile
import time
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
from mnnq.quantize.candidates import Calibrated, Candidates, progress_step
from mnnq.quantize.evaluate import Evaluation, FloatReference, eval_indices
from mnnq.quantize.fallback import (Budget, FloatSearch, Point, all_but_zero, deciding_error,
                                    fallback_notes, kept_reason, tradeoff_dict)
from mnnq.quantize.inputs import Samples, make_samples
from mnnq.quantize.writer import sanitize, weight_entry

EVAL_SAMPLES = 64

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
    bias_correction: str = "auto"     # "on", "off", or "auto": measured both ways (see make_candidates)


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
    rounds: int = 0                   # candidates the fallback measured after every layer INT8
    tradeoff: Optional[dict] = None   # the fallback's ranking and measured points (fallback.tradeoff_dict)
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
    bias_correction: str     # the option, checked: "on", "off" or "auto"
    budget: Budget           # what a candidate must meet (--rate on --metric)


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
    bias_correction = bias_correction_mode(opts.bias_correction)   # checked before any work
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
               layers, other, batch, notes, bias_correction,
               Budget(opts.metric if opts.rate is not None else "cosine", opts.rate))


def run_quantize(opts: QuantizeOptions, pm, progress: Optional[Progress] = None) -> QuantizeResult:
    started = time.perf_counter()
    job = prepare(opts, pm)
    return run_job(job, progress, started)


@dataclass
class Outcome:
    """The float layers chosen (name -> reason), the chosen candidate's measurement and model,
    and the fallback's trade-off curve (``None`` when every layer INT8 held)."""

    keep: Dict[str, str]
    evaluation: Evaluation
    model: Path
    met: bool
    tradeoff: Optional[dict] = None
    rounds: int = 0


def run_job(job: Job, progress: Optional[Progress] = None, started: Optional[float] = None) -> QuantizeResult:
    """Calibrate, choose the layers to keep float (measuring real INT8 candidates), write the
    model and its params, and report."""
    started = time.perf_counter() if started is None else started
    timings: Dict[str, float] = {}
    notes = list(job.notes)
    calibrated = calibrate_job(job, notes, progress, timings)
    with tempfile.TemporaryDirectory(prefix="mnnq-quantize-") as work:
        t0 = time.perf_counter()
        candidates = make_candidates(job, Path(work), calibrated, notes, progress)
        outcome = choose_float_layers(job, candidates, notes, progress)
        layer_ev = None
        if job.opts.debug or job.cfg.debug:
            layer_ev = candidates.probe(list(outcome.keep), "measuring every layer")
        timings["measure_s"] = time.perf_counter() - t0
        params_path = write_outputs(job, candidates, outcome)
    return _result(job, calibrated, outcome, layer_ev, params_path, notes, timings, started)


def calibrate_job(job: Job, notes: List[str], progress: Optional[Progress], timings: Dict[str, float]) -> Calibrated:
    """Activation params from the calibration pass (which also keeps the measured samples'
    float outputs), then the weight params."""
    t0 = time.perf_counter()
    indices = eval_indices(len(job.samples), max(1, job.opts.eval_samples))
    reference = FloatReference(cal.TensorRunner(job.opts.model, job.input_names, job.output_names), job.samples)
    stats = TapMeans(job.layers) if bias_correction_wanted(job) else None
    acts = activation_params(job, cal.layer_tensors(job.layers), notes, progress, _keeper(reference, indices), stats)
    timings["calibrate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights, biases = weight_params(job, stats)
    timings["weight_scales_s"] = time.perf_counter() - t0
    return Calibrated(indices, reference, acts, weights, biases)


def bias_correction_mode(value) -> str:
    """``"on"``, ``"off"`` or ``"auto"`` from an option value (booleans and 1/0 accepted)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = {"1": "on", "0": "off"}.get(str(value).lower(), str(value).lower())
    if mode not in ("on", "off", "auto"):
        raise BadInput(f"bias_correction: expected auto, on or off, got {value!r}")
    return mode


def bias_correction_wanted(job: Job) -> bool:
    """Whether calibration collects the statistics for bias correction: always with ``on``; with
    ``auto`` when a layer is depthwise (a handful of taps per output, so the rounding errors of
    its weights do not average out; other models pay nothing for ``auto``)."""
    return job.bias_correction == "on" or (job.bias_correction == "auto"
                                           and any(l.kind == "depthwise" for l in job.layers))


def make_candidates(job: Job, work: Path, calibrated: Calibrated, notes: List[str], progress) -> Candidates:
    """The candidates writer, from the float model or from its bias-corrected copy: with
    ``--bias-correction auto``, both are measured with every layer INT8 and the one with the
    smaller error kept (the float model on a tie)."""
    plain = Candidates(job, work, calibrated, progress, Path(job.opts.model))
    if not calibrated.biases:
        return plain
    # the converter reads the biases from the float model: it converts a corrected copy
    corrected = Candidates(job, work, calibrated, progress, write_with_biases(
        Path(job.opts.model), work / "bias_corrected.mnn", job.layers, calibrated.biases), "corrected-candidate")
    count = len(calibrated.biases)
    if job.bias_correction == "on":
        notes.append(f"bias correction: {count} layer biases corrected for their rounded weights")
        return corrected
    metric = job.budget.metric
    errors = [deciding_error(c.first(notes)[0], metric) for c in (plain, corrected)]
    kept = errors[1] < errors[0]
    notes.append(f"bias correction (auto, the model has depthwise convs): {metric} {errors[1]:.6f} with "
                 f"{count} layer biases corrected, {errors[0]:.6f} without, on the calibration samples; "
                 + ("kept" if kept else "not kept"))
    return corrected if kept else plain


def choose_float_layers(job: Job, candidates: Candidates, notes: List[str], progress: Optional[Progress]) -> Outcome:
    """Every layer INT8 first; when that misses ``--rate`` (or is not finite), the fallback
    search (:mod:`fallback`) finds the layers to keep float."""
    opts = job.opts
    first_ev, first_path = candidates.first(notes)
    _check_metric(first_ev, opts)
    budget = job.budget
    first = Point(0, "all INT8", (), first_ev, budget.holds(first_ev))
    if first.holds:
        return Outcome(dict(candidates.forced), first_ev, first_path, True)
    if not first_ev.finite:
        notes.append("INT8 outputs were not finite; keeping the most sensitive layers float")
    layers = [l.name for l in job.layers if l.name not in candidates.forced]
    search = FloatSearch(layers, budget, candidates.measure, candidates.measure_many, first, first_path, progress)
    point, model = search.run()
    if not point.evaluation.finite:
        raise NativeFailure("the INT8 model gives non-finite outputs even with every layer float "
                            f"({', '.join(point.evaluation.nonfinite[:3])}); the float model may be broken")
    reasons = {r.name: kept_reason(r, budget.metric, len(search.ranking_samples)) for r in search.ranking}
    notes += fallback_notes(search, point, budget, _blank_samples(job, candidates, budget))
    tradeoff = tradeoff_dict(search, point, budget, len(job.layers), list(candidates.forced),
                             [job.samples.names[i] for i in search.ranking_samples])
    keep = {**candidates.forced, **{n: reasons[n] for n in point.float_layers}}
    return Outcome(keep, point.evaluation, model, point.holds, tradeoff, len(search.points) - 1)


def _blank_samples(job: Job, candidates: Candidates, budget: Budget) -> List[Tuple[str, float, float]]:
    """With ``--rate`` and ``--metric cosine``: the measured samples whose float outputs are all
    but zero (:func:`fallback.all_but_zero`)."""
    if budget.metric != "cosine" or budget.rate is None:
        return []
    peaks = {job.samples.names[i]: max((float(abs(v).max()) if v.size else 0.0
                                        for v in candidates.float_plain.get(i)[1].values()), default=0.0)
             for i in candidates.indices}
    return all_but_zero(peaks)


def write_outputs(job: Job, candidates: Candidates, outcome: Outcome) -> Path:
    """The chosen model and its params file, replacing any old pair together; the params path."""
    params_path = Path(str(job.opts.out) + ".json")
    with OutputSet() as outputs:
        outputs.copy(outcome.model, Path(job.opts.out))
        outputs.write_text(params_path, json.dumps(candidates.params(list(outcome.keep)), indent=1) + "\n")
    return params_path


def _result(job: Job, calibrated: Calibrated, outcome: Outcome, layer_ev: Optional[Evaluation], params_path: Path,
            notes: List[str], timings: Dict[str, float], started: float) -> QuantizeResult:
    opts, cfg = job.opts, job.cfg
    layers = _layer_reports(job, calibrated.acts, outcome.keep, layer_ev)
    ev = outcome.evaluation
    return QuantizeResult(
        model=Path(opts.model), out=Path(opts.out), params_path=params_path, config=cfg,
        feature_method=cfg.feature_quantize_method, weight_method=cfg.weight_quantize_method,
        samples=len(job.samples), eval_samples=len(calibrated.indices), layers=layers, other_float=job.other_float,
        errors=ev.errors, output_cosine=ev.output_cosine, metric=opts.metric, rate=opts.rate,
        met=outcome.met, size_before=Path(opts.model).stat().st_size, size_after=Path(opts.out).stat().st_size,
        seconds=time.perf_counter() - started, timings=timings, notes=notes,
        debug=bool(opts.debug or cfg.debug), rounds=outcome.rounds, tradeoff=outcome.tradeoff,
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
    on_tensors, fetch = None, []
    if tap_means is not None:
        # per-tap means need each layer input's own values: an alias holds the same values, but
        # maybe in another order or shape (a channel shuffle before a depthwise conv)
        fetch = [t for t in dict.fromkeys(l.input for l in job.layers) if alias[t] != t]
        on_tensors = lambda values: tap_means.update({t: values[t if t in values else alias[t]]  # noqa: E731
                                                      for t in tensors})
    observers = cal.calibrate(model, job.input_names, job.output_names, observed, job.samples,
                              job.feature.make_observer, job.batch_size,
                              progress_step(progress, "calibrating", len(job.samples)), on_outputs, on_tensors, fetch)
    finished = {t: sanitize(*obs.finish(8, clamp), clamp) for t, obs in observers.items()}
    return prop.runtime_params({t: finished[a] for t, a in alias.items()}, graph, groups, tensors, clamp)


def _check_metric(ev: Evaluation, opts: QuantizeOptions) -> None:
    """With ``--rate``, the deciding metric must measure something; another metric that skips
    every output is only not measured (``None``)."""
    if opts.rate is not None and ev.finite and ev.errors.get(opts.metric) is None:
        raise BadInput(f"--metric {opts.metric} skips every output of this model on the {ev.samples} measured "
                       "sample(s) (e.g. max_rel ignores outputs whose max |ref| <= 0.01), so --rate could never "
                       "fail; use --metric cosine")


def _layer_reports(job: Job, acts, keep: Dict[str, str], ev: Optional[Evaluation]) -> List[LayerReport]:
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
