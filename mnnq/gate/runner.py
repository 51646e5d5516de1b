"""Measure one quantized model against its test set and decide pass / fail / error.

Fail closed: anything that keeps the model from being measured — a missing or corrupt file,
a test dir that is missing or malformed, an output the model lacks, a size mismatch, NaN or
Inf in an output, a runtime crash — makes the result ``error`` (exit 2), never ``pass``.

The model runs in a child process (:mod:`mnnq.mnn_backend.child_run`): a file that crashes the MNN
runtime becomes an ``error`` result with a clear message, and the other models and the
reports are still produced.

Per-layer errors (diagnostics, never a gate failure): when the float model is known, the
output tensor of every conv-like layer of the quantized model is compared with the same
tensor of the float model under the gate's metric, on a few samples that metric counts.
"""
from __future__ import annotations

import json
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from mnnq.errors import MnnqError, NativeFailure
from mnnq.measure import NOT_MEASURED, OutputError, compare, informative_subset
from mnnq.records import Metric

LAYER_SAMPLES = 4
CHILD_TAIL_LINES = 6


@dataclass
class GateTarget:
    """What to measure: the quantized ``model`` on ``test_dir`` under ``metric`` <= ``rate``.

    ``source`` / ``line`` locate it for annotations (the config entry, or the model file).
    """

    name: str
    model: Path
    test_dir: Path
    rate: float
    metric: str = "max_rel"
    memory_mode: str = "normal"
    float_model: Optional[Path] = None
    source: Optional[Path] = None
    line: Optional[int] = None

    @classmethod
    def from_spec(cls, spec) -> "GateTarget":
        """From a :class:`mnnq.gate.project.ModelSpec`."""
        return cls(name=spec.name, model=spec.quantized, test_dir=spec.test_dir, rate=spec.rate, metric=spec.metric,
                   memory_mode=spec.memory_mode, float_model=spec.float_model, source=spec.config, line=spec.line)


@dataclass
class LayerError:
    """Error of one layer's output tensor against the float model (``None``: the metric skips it)."""

    name: str
    tensor: str
    kind: str
    error: Optional[float]


@dataclass
class GateResult:
    target: GateTarget
    status: str = "error"              # pass | fail | error
    error: Optional[float] = None      # the metric's value (max over outputs and samples)
    errors: Dict[str, Optional[float]] = field(default_factory=dict)  # None: that metric skips every output
    details: List[OutputError] = field(default_factory=list)
    nonfinite: List[str] = field(default_factory=list)
    message: str = ""
    samples: int = 0
    size_bytes: Optional[int] = None
    float_size_bytes: Optional[int] = None
    layers: List[LayerError] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    rebuild: Optional[dict] = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def worst_row(self) -> Optional[OutputError]:
        """The output/sample with the largest error under the gate's metric."""
        rows = [d for d in self.details if d.values.get(self.target.metric) is not None]
        return max(rows, key=lambda d: d.values[self.target.metric]) if rows else None

    def per_output(self) -> Dict[str, Optional[float]]:
        """Worst error of each output over all samples (``None`` when the metric skips it everywhere)."""
        worst: Dict[str, Optional[float]] = {}
        for d in self.details:
            v = d.values.get(self.target.metric)
            cur = worst.get(d.output)
            worst[d.output] = cur if v is None else (v if cur is None else max(cur, v))
        return worst


def errored(target: GateTarget, message: str, **extra) -> GateResult:
    return GateResult(target=target, status="error", message=message, **extra)


def _size(path: Optional[Path]) -> Optional[int]:
    try:
        return Path(path).stat().st_size if path is not None and Path(path).is_file() else None
    except OSError:
        return None


def measure(target: GateTarget, pm, layers: bool = True, timeout: Optional[float] = None) -> GateResult:
    """Measure ``target``; never raises for a model that cannot be measured (the result says why)."""
    started = time.monotonic()
    result = _measure(target, pm, layers, timeout)
    result.size_bytes = _size(target.model)
    result.float_size_bytes = _size(target.float_model)
    result.seconds = time.monotonic() - started
    return result


def _measure(target: GateTarget, pm, layers: bool, timeout: Optional[float]) -> GateResult:
    checked = _checked_inputs(target, pm)
    if isinstance(checked, GateResult):
        return checked
    metrics, model, testset = checked
    notes: List[str] = []
    tensors = _layer_tensors(target, notes) if layers else []
    ran = _run_in_child(target, model, testset, metrics, tensors, timeout, notes)
    if isinstance(ran, GateResult):
        return ran
    outputs, layer_runs = ran
    return _judge(target, testset, outputs, metrics, tensors, layer_runs, notes)


def _checked_inputs(target: GateTarget, pm):
    """``(metrics, model, testset)``, or the errored result naming what is wrong with them."""
    from mnnq.mnn_backend.converter import check_float_model
    from mnnq.testset import load_testset

    try:
        metrics = pm.metrics()
        pm.metric(target.metric)
        model = Path(target.model)
        if not model.exists():
            return errored(target, f"quantized model not found: {model}")
        if not model.is_file() or model.stat().st_size == 0:
            return errored(target, f"quantized model is empty or not a file: {model}")
        testset = load_testset(Path(target.test_dir))
        check_float_model(model)  # the converter reads it in a child: a corrupt file fails here, cleanly
    except MnnqError as exc:
        # check_float_model's message points at converter output the gate does not print.
        return errored(target, str(exc).replace("; see the converter output below", ""))
    return metrics, model, testset


def _run_in_child(target: GateTarget, model: Path, testset, metrics, tensors, timeout: Optional[float],
                  notes: List[str]):
    """``(outputs per sample, per-layer runs or None)`` from the child that runs the model, or
    the errored result when it could not."""
    with tempfile.TemporaryDirectory(prefix="mnnq-gate-") as work:
        work = Path(work)
        files = {k: str(work / k) for k in ("outputs", "layers", "error", "layers_error")}
        request = {
            "model": str(model.resolve()), "test_dir": str(Path(target.test_dir).resolve()),
            "testset": str(work / "testset"),  # already parsed here: the child reads the arrays, not the text
            "memory_mode": target.memory_mode,
            # per-layer errors on the (up to LAYER_SAMPLES) most informative samples the gate's
            # metric judges (a blind sample shows nothing)
            "layer_samples": informative_subset(testset, metrics[target.metric], LAYER_SAMPLES) if tensors else [],
            "float_model": str(Path(target.float_model).resolve()) if tensors else None,
            "layer_tensors": [t for _, t, _ in tensors], **files,
        }
        with open(request["testset"], "wb") as fh:
            pickle.dump(testset, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (work / "request.json").write_text(json.dumps(request))
        failure = _run_child(work, timeout)
        if Path(files["error"]).is_file():
            return errored(target, Path(files["error"]).read_text().strip(), samples=len(testset.samples))
        if not Path(files["outputs"]).is_file():
            return errored(target, f"the MNN runtime {failure or 'stopped'} while running {model} on "
                                   f"{target.test_dir}; the file is corrupt or the test inputs do not fit the model",
                           samples=len(testset.samples))
        outputs = _unpickle(files["outputs"])
        layer_runs = _unpickle(files["layers"]) if Path(files["layers"]).is_file() else None
        if Path(files["layers_error"]).is_file():
            notes.append("per-layer errors unavailable: " + Path(files["layers_error"]).read_text().strip())
        elif tensors and layer_runs is None:
            notes.append(f"per-layer errors unavailable: the MNN runtime {failure or 'stopped'} while reading them")
    return outputs, layer_runs


def _judge(target: GateTarget, testset, outputs, metrics, tensors, layer_runs, notes: List[str]) -> GateResult:
    """The gate's verdict on the outputs: pass, fail (over the rate) or error (not measurable)."""
    try:
        m = compare(testset, outputs, metrics, target.metric)
    except MnnqError as exc:
        return errored(target, str(exc), samples=len(testset.samples))
    notes += [f"metric {name}: {NOT_MEASURED} (not the gate's metric)" for name, v in m.errors.items() if v is None]
    result = GateResult(target=target, errors=dict(m.errors), details=list(m.details), nonfinite=list(m.nonfinite),
                        samples=len(testset.samples), notes=notes, error=m.error(target.metric))
    if layer_runs is not None:
        result.layers = _layer_errors(tensors, layer_runs, metrics[target.metric])
    if m.nonfinite:
        shown = ", ".join(m.nonfinite[:3]) + (" ..." if len(m.nonfinite) > 3 else "")
        result.status = "error"
        result.message = (f"the model produced NaN or Inf ({shown}); its error cannot be measured — "
                          "re-quantize it (e.g. keep the offending layers float)")
        return result
    metric = target.metric
    if result.error <= target.rate:
        result.status = "pass"
        result.message = f"{metric} {result.error:.6g} <= rate {target.rate:g}"
    else:
        result.status = "fail"
        worst = result.worst_row()
        where = f" (worst: output '{worst.output}' of sample {worst.sample})" if worst else ""
        result.message = f"{metric} {result.error:.6g} > rate {target.rate:g}{where}"
    return result


def _run_child(work: Path, timeout: Optional[float]) -> str:
    """Run the child; return '' when it exited normally, else what happened to it."""
    from mnnq.mnn_backend import child_run
    from mnnq.mnn_backend.native import Limits, crashed, exit_text, output_tail, run_python

    try:
        proc = run_python(["-m", child_run.__name__, str(work / "request.json")], "the gate's child",
                          cwd=str(work), limits=Limits(timeout=timeout))
    except NativeFailure:  # run_child's timeout
        return f"did not finish within {timeout:g} s"
    code = proc.returncode
    if code in (0, child_run.EXIT_REPORTED):
        return ""
    # the same words as every other native child's failure (native.exit_text)
    what = f"crashed ({exit_text(code)})" if crashed(code) else f"exited with {exit_text(code)}"
    tail = output_tail(proc.stdout.decode("utf-8", "replace"), CHILD_TAIL_LINES)
    if tail:
        what += " after printing: " + " | ".join(tail.splitlines())
    return what


def _unpickle(path: str):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _layer_tensors(target: GateTarget, notes: List[str]) -> List[tuple]:
    """``[(layer name, tensor name, kind)]`` present in both the quantized and the float model."""
    from mnnq.mnn_backend.converter import check_float_model
    from mnnq.mnn_backend.inventory import read_conv_ops

    if target.float_model is None:
        return []
    if not Path(target.float_model).is_file():
        notes.append(f"per-layer errors unavailable: float model not found: {target.float_model}")
        return []
    try:
        check_float_model(Path(target.float_model))
        quant_ops = read_conv_ops(Path(target.model))
        float_tensors = {op.outputs[0] for op in read_conv_ops(Path(target.float_model)) if op.outputs}
    except MnnqError as exc:
        notes.append(f"per-layer errors unavailable: {exc}")
        return []
    seen = set()
    out = []
    for op in quant_ops:
        if op.outputs and op.outputs[0] in float_tensors and op.outputs[0] not in seen:
            seen.add(op.outputs[0])
            out.append((op.name, op.outputs[0], op.kind))
    return out


def _layer_errors(tensors: Sequence[tuple], runs: Mapping[str, Mapping[str, list]], metric: Metric) -> List[LayerError]:
    rows = []
    for name, tensor, kind in tensors:
        worst: Optional[float] = None
        for ref, out in zip(runs["float"][tensor], runs["quantized"][tensor]):
            ref = np.asarray(ref, dtype=np.float64).ravel()
            out = np.asarray(out, dtype=np.float64).ravel()
            if ref.size != out.size:
                worst = None
                break
            v = float("inf") if not np.all(np.isfinite(out)) else metric.per_output(ref, out)
            if v is not None:
                worst = v if worst is None else max(worst, v)
        rows.append(LayerError(name, tensor, kind, worst))
    return rows
