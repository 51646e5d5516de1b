"""mnnq's Python API: the CLI's three jobs as functions that return a :class:`Result`.

::

    import mnnq

    r = mnnq.auto_quant("float.mnn", "q.mnn", "testset/", rate=0.05, metric="cosine")
    r.passed                      # True: the written q.mnn measured within the rate
    r.model_path, r.params_path   # Path("q.mnn"), Path("q.mnn.json")
    r.metrics                     # {"max_rel": 0.031, "cosine": 0.0004}, measured on the written file
    r.layers[0]                   # {"name": "conv1", "kind": "conv", "bits": 4, "block": 64, ...}

    q = mnnq.quantize("float.mnn", "int8.mnn", {"path": "calib/", "input_type": "sequence"})
    v = mnnq.validate("q.mnn", "testset/", rate=0.05)

Each function takes the CLI's flags as keyword arguments (underscores for hyphens). Bad input
(a missing model, a malformed test dir or config, an unknown option) raises
:class:`~mnnq.errors.BadInput` before anything is written, an unknown plugin name
:class:`~mnnq.errors.PluginError`, a native failure :class:`~mnnq.errors.NativeFailure`: all are
:class:`~mnnq.errors.MnnqError`, whose ``exit_code`` is the CLI's. A missed budget is not an
exception: ``passed`` is False (the CLI's exit code 1), and for auto-quant and quantize the
best-effort model is still written.

Plugins: every call loads the installed plugins afresh (``disable_plugins="name,..."`` blocks some
by entry-point name, on top of ``MNNQ_DISABLE_PLUGINS``), or uses ``plugin_manager=``; a plugin
that fails to load is skipped with a :class:`PluginWarning`.

The engines are called directly (``run_auto_quant``, ``run_quantize``, the gate's ``measure``);
the ``report`` of a result is the document the CLI's ``--report-json`` writes.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
import tempfile
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from mnnq.cli_args import name_list
from mnnq.errors import BadInput

PathLike = Union[str, "os.PathLike[str]"]
# Keyword arguments every function takes besides the job's options.
COMMON = ("plugin_manager", "disable_plugins")


class PluginWarning(UserWarning):
    """A plugin failed to load or its hook raised; it was skipped."""


class ModelNotMeasurable(BadInput):
    """``validate`` could not measure the model (missing or corrupt file, test dir that does not
    fit, NaN/Inf outputs: the CLI's exit 2). ``result`` holds what was found."""

    def __init__(self, message: str, result: "Result"):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Result:
    """What a job did.

    ``command``: ``"auto-quant"``, ``"quantize"`` or ``"validate"``. ``passed``: within the budget
    (auto-quant, validate; quantize: within ``rate`` if given, else outputs finite). ``status``:
    ``MET``/``MISSED`` (auto-quant, quantize) or ``pass``/``fail`` (validate). ``model_path``: the
    model written (auto-quant, quantize) or measured (validate). ``params_path``: its compression
    params file (``<model>.json``; for validate only when that file exists). ``metric``/``rate``/
    ``error``: the budget's metric, the rate (``None`` for quantize without one) and the measured
    value. ``metrics``: every loaded metric's value (max over outputs and samples; ``None`` when
    the metric skips every output). ``layers``: the per-layer table, one dict per layer, as in the
    ``--report-json`` document (``report``). ``weights`` (auto-quant, quantize): where the written
    file's bytes are, as the report's ``weights``: quantized bytes per op kind, and the float weight
    bytes left unquantized per op kind with the reason and their share of the file
    (``weights["headline"]`` says the largest part in one sentence). ``details``: the engine's own
    result object.
    """

    command: str
    passed: bool
    status: str
    model_path: Path
    params_path: Optional[Path]
    metric: str
    rate: Optional[float]
    error: Optional[float]
    metrics: Dict[str, Optional[float]]
    layers: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)
    report: Dict[str, Any] = field(default_factory=dict, repr=False)
    details: Any = field(default=None, repr=False)
    weights: Optional[Dict[str, Any]] = field(default=None, repr=False)

    @property
    def params(self) -> Optional[dict]:
        """The compression params file, parsed (``None`` when there is none)."""
        if self.params_path is None or not Path(self.params_path).is_file():
            return None
        return json.loads(Path(self.params_path).read_text())


# ---------------------------------------------------------------------------------------------
# argument checking


def _path(value: Any, what: str) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise BadInput(f"{what}: expected a file or folder path, got {value!r}")


def _options(job: str, given: Mapping[str, Any], allowed: Iterable[str]) -> Dict[str, Any]:
    allowed = sorted(set(allowed))
    for key in given:
        if key not in allowed and key not in COMMON:
            close = difflib.get_close_matches(key, list(allowed) + list(COMMON), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadInput(f"{job}: unknown option {key!r}{hint}; options: {', '.join(allowed + list(COMMON))}")
    return {k: v for k, v in given.items() if k not in COMMON}


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(f"{what}: expected a positive finite number, got {value!r}")
    return float(value)


def _manager(plugin_manager=None, disable_plugins: Any = None):
    """The manager a call uses: ``plugin_manager`` as given, or a fresh one with the installed plugins
    (minus ``disable_plugins``); load failures become :class:`PluginWarning`."""
    from mnnq.plugin_manager import MnnqPluginManager

    if plugin_manager is not None:
        if disable_plugins:
            raise BadInput("give plugin_manager or disable_plugins, not both (block plugins on your manager)")
        return plugin_manager
    pm = MnnqPluginManager(disabled=name_list(disable_plugins, "disable_plugins") or ())
    pm.load_entrypoints()
    pm.collect_all()  # now, so that a hook that raises is warned about too
    for failure in pm.failures:
        warnings.warn(f"plugin '{failure.plugin}' skipped: {failure.error}", PluginWarning, stacklevel=3)
    return pm


# ---------------------------------------------------------------------------------------------
# the jobs


def _writer_result(command: str, result: Any, model_path: PathLike, report: Dict[str, Any]) -> Result:
    """The :class:`Result` of a job that wrote a model (auto-quant, quantize): ``result`` is the
    engine's (``met``, ``status``, ``params_path``, ``metric``, ``rate``, ``errors``, ``notes``)."""
    return Result(
        command=command, passed=bool(result.met), status=result.status, model_path=Path(model_path),
        params_path=Path(result.params_path), metric=result.metric, rate=result.rate,
        error=result.errors.get(result.metric), metrics=dict(result.errors), layers=report["layers"],
        notes=list(result.notes), report=report, details=result, weights=report.get("weights"))


def auto_quant(model: PathLike, quant_model: PathLike, test_dir: PathLike, rate: float = 0.05, *,
               on_trial: Optional[Callable[[Any], None]] = None, **options) -> Result:
    """Weight-only auto-quant, as ``mnnq auto-quant``: writes ``quant_model`` and ``<quant_model>.json``.

    ``options`` (defaults as the CLI's): ``select_bits=True``, ``select_block=True``, ``hqq=True``,
    ``metric="max_rel"``, ``weight_method=None``, ``strategies=None`` (names or presets, a list or
    a comma-separated string), ``evaluator="auto"``, ``memory_mode="auto"``, ``time_budget=None``,
    ``fp16_float_weights="auto"`` (store the weights MNN cannot quantize as fp16 when that meets the
    rate: True, False, or "auto" = when they are at least a quarter of the written file),
    and any other field of :class:`mnnq.autoquant.engine.AutoQuantOptions`; plus ``plugin_manager``
    and ``disable_plugins``. ``on_trial(trial)`` is called after every measured trial.

    ``layers`` rows: ``name, kind, shape, bits (0 = float), block (-1 = per channel), reason``.
    """
    from mnnq.autoquant.engine import AutoQuantOptions, run_auto_quant
    from mnnq.report import autoquant_dict

    fixed = ("model", "quant_model", "test_dir", "rate")
    names = [f.name for f in dataclasses.fields(AutoQuantOptions) if f.name not in fixed]
    opts = _options("auto_quant", options, names)
    if "strategies" in opts:
        opts["strategies"] = name_list(opts["strategies"], "strategies")
    for flag in ("select_bits", "select_block", "hqq", "fp16_float_weights"):
        if flag in opts and opts[flag] != "auto":
            opts[flag] = bool(opts[flag])
    pm = _manager(options.get("plugin_manager"), options.get("disable_plugins"))
    result = run_auto_quant(
        AutoQuantOptions(model=_path(model, "model"), quant_model=_path(quant_model, "quant_model"),
                         test_dir=_path(test_dir, "test_dir"), rate=_positive(rate, "rate"), **opts),
        pm, on_trial=on_trial or (lambda trial: None))
    return _writer_result("auto-quant", result, result.quant_model, autoquant_dict(result))


def quantize(model: PathLike, out: PathLike, config: Union[PathLike, Mapping[str, Any]], *,
             on_progress: Optional[Callable[[str, int, int], None]] = None, **options) -> Result:
    """Full INT8, as ``mnnq quantize model out config``: writes ``out`` and ``<out>.json``.

    ``config``: a quantized.out config file (JSON or YAML), or the same keys as a mapping
    (a relative ``path`` is then resolved against the current folder). ``options``:
    ``debug=False``, ``rate=None`` (keep the most sensitive layers float until ``metric`` <= rate),
    ``metric="max_rel"``, ``eval_samples=64``, ``report_json=None``, ``bias_correction="auto"``
    (``"on"``, ``"off"``; auto: for models with depthwise convs, kept when it measures better);
    plus ``plugin_manager`` and
    ``disable_plugins``. ``on_progress(stage, done, total)`` reports progress.

    ``layers`` rows: ``name, kind, shape, status ("int8" | "float"), reason, input, output``
    (``{tensor, scale, zero_point}``), and cosines / overflow ratios when measured per layer.
    """
    from mnnq.quantize.engine import QuantizeOptions, run_quantize
    from mnnq.quantize.report import result_dict

    fixed = ("model", "out", "config")
    opts = _options("quantize", options, [f.name for f in dataclasses.fields(QuantizeOptions) if f.name not in fixed])
    if opts.get("rate") is not None:
        value = opts["rate"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BadInput(f"rate: expected a finite number >= 0, got {value!r}")
    if "eval_samples" in opts:  # as the CLI's --eval-samples (the engine would fail on it later, untyped)
        value = opts["eval_samples"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"eval_samples: expected a positive integer, got {value!r}")
    if opts.get("report_json") is not None:
        opts["report_json"] = _path(opts["report_json"], "report_json")
    pm = _manager(options.get("plugin_manager"), options.get("disable_plugins"))
    with tempfile.TemporaryDirectory(prefix="mnnq-api-") as work:
        if isinstance(config, Mapping):
            config_path = Path(work) / "config.json"
            try:
                config_path.write_text(json.dumps(dict(config)))
            except (TypeError, ValueError) as exc:
                raise BadInput(f"config: the mapping is not JSON-serialisable ({exc})") from None
        else:
            config_path = _path(config, "config")
        result = run_quantize(QuantizeOptions(model=_path(model, "model"), out=_path(out, "out"),
                                              config=config_path, **opts), pm, on_progress)
    return _writer_result("quantize", result, result.out, result_dict(result))


def validate(model: PathLike, test_dir: PathLike, rate: float, **options) -> Result:
    """Measure a quantized model, as ``mnnq validate``. Nothing is written.

    ``options``: ``metric="max_rel"``, ``memory_mode="normal"`` (or ``"low"``), ``float_model=None``
    (adds per-layer errors against the float model), ``name=None``; plus ``plugin_manager`` and
    ``disable_plugins``. Raises :class:`ModelNotMeasurable` when the model cannot be measured
    (the CLI's exit 2); ``passed`` is False when the error exceeds ``rate`` (exit 1).

    ``layers`` rows (only with ``float_model``): ``name, tensor, kind, error``.
    """
    from mnnq.gate.reports import result_dict
    from mnnq.gate.runner import GateTarget, measure

    opts = _options("validate", options, ("metric", "memory_mode", "float_model", "name"))
    if opts.get("memory_mode", "normal") not in ("normal", "low"):
        raise BadInput(f"memory_mode: expected 'normal' or 'low', got {opts['memory_mode']!r}")
    model = _path(model, "model")
    float_model = _path(opts["float_model"], "float_model") if opts.get("float_model") is not None else None
    target = GateTarget(name=opts.get("name") or model.stem, model=model, test_dir=_path(test_dir, "test_dir"),
                        rate=_positive(rate, "rate"), metric=opts.get("metric", "max_rel"),
                        memory_mode=opts.get("memory_mode", "normal"), float_model=float_model)
    pm = _manager(options.get("plugin_manager"), options.get("disable_plugins"))
    pm.metric(target.metric)  # an unknown metric is a PluginError, as in auto_quant
    gate = measure(target, pm, layers=float_model is not None)
    report = result_dict(gate)
    params = Path(str(model) + ".json")
    result = Result(
        command="validate", passed=gate.passed, status=gate.status, model_path=model,
        params_path=params if params.is_file() else None, metric=target.metric, rate=target.rate,
        error=gate.error, metrics=dict(gate.errors), layers=report["layers"], notes=list(gate.notes),
        report=report, details=gate)
    if gate.status == "error":
        raise ModelNotMeasurable(gate.message, result)
    return result


class CallablePackage(types.ModuleType):
    """The class given to the ``mnnq.quantize`` subpackage: calling it runs :func:`quantize`, so
    ``mnnq.quantize(...)`` is the API function while ``mnnq.quantize.engine`` stays a module."""

    def __call__(self, *args, **kwargs) -> Result:
        return quantize(*args, **kwargs)


def make_callable(package: types.ModuleType) -> types.ModuleType:
    """Make ``package`` (``mnnq.quantize``) callable as :func:`quantize`; returns it."""
    package.__class__ = CallablePackage
    package.__signature__ = inspect.signature(quantize)
    return package


__all__ = ["Result", "PluginWarning", "ModelNotMeasurable", "auto_quant", "quantize", "validate"]
