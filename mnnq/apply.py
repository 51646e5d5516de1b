"""``mnnq apply``: write a weight-quantized model from a params file, optionally re-measure.

The float model is read by the converter in a child first (under probe limits); the written
model is measured on the test set in a child too (:mod:`mnnq.mnn_backend.isolated`), so a
damaged file never reaches the MNN runtime in this process. The model and the report are
staged and renamed into place together: a failed or interrupted run writes nothing.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

from mnnq.errors import BadInput, NativeFailure
from mnnq.fileio import OutputSet, check_output_path
from mnnq.inputs.sources import resolve_model
from mnnq.measure import compare
from mnnq.mnn_backend.converter import params_template, store_float_weights_fp16, weight_quantize
from mnnq.mnn_backend.isolated import probe_runtime, run_isolated
from mnnq.mnn_backend.native import probe_limits
from mnnq.params import entry_key, read_params_file, settings_from_params, template_layers
from mnnq.testset import load_testset


def apply_params(model: Path, out: Path, params_path: Path, hqq: bool, test_dir: Optional[Path], metric: str,
                 rate: Optional[float], memory_mode: str, pm, report_json: Optional[Path] = None,
                 fp16_float_weights: bool = False) -> dict:
    if not model.exists():
        raise BadInput(f"model not found: {model}")
    if not model.is_file() or model.stat().st_size == 0:
        raise BadInput(f"model is empty or not a file: {model}")
    check_output_path(out, [model, params_path], "output model")
    if report_json is not None:
        check_output_path(report_json, [model, params_path, out], "--report-json")
    model = resolve_model(model)  # an ONNX / TFLite source becomes its cached float .mnn
    doc = read_params_file(params_path)
    settings = settings_from_params(doc, str(params_path))
    metrics = pm.metrics()
    pm.metric(metric)
    testset = load_testset(test_dir) if test_dir else None
    try:
        template = params_template(model, limits=probe_limits(model))
    except NativeFailure as exc:
        raise NativeFailure(f"not a readable MNN model: {model} ({exc}); re-export it with MNNConvert",
                            tail=exc.tail) from None
    inputs, _ = probe_runtime(model)  # in a child: a file the runtime crashes on never reaches this process
    if testset is not None:
        unknown_inputs = [n for n in testset.input_names if inputs and n not in inputs]
        if unknown_inputs:
            raise BadInput(f"the model {model} has no input '{unknown_inputs[0]}' (its inputs: {', '.join(inputs)}); "
                           "fix the test set's input.json")
    known = {entry_key(e) for e in template_layers(template)}
    if not known:
        raise BadInput(f"{model} has no weight-quantizable layers (conv, depthwise, deconv, matmul with "
                       "constant weights); nothing to apply")
    unknown = [n for n in settings if n not in known]
    if unknown:
        raise BadInput(f"params file {params_path} names layers the model lacks: {', '.join(unknown[:5])}"
                       f"{' ...' if len(unknown) > 5 else ''}; regenerate it for {model}")
    asymmetric = hqq or any(bool(e.get("weight", [{}])[0].get("asymmetric", False)) for e in template_layers(doc))
    result = {"out": str(out), "params": str(params_path), "layers": len(settings), "hqq": hqq,
              "fp16_float_weights": fp16_float_weights,
              "size_before_bytes": model.stat().st_size, "errors": None, "met": None}
    with tempfile.TemporaryDirectory(prefix="mnnq-apply-") as work:
        tmp = Path(work) / "out.mnn"
        weight_quantize(model, tmp, doc, hqq=hqq, asymmetric=asymmetric)
        if fp16_float_weights:  # as auto-quant --fp16-float-weights 1 did: a second conversion
            store_float_weights_fp16(tmp, Path(work) / "out-fp16.mnn")
            tmp = Path(work) / "out-fp16.mnn"
        if testset is not None:
            outputs = run_isolated(tmp, testset.root, memory_mode, name=f"{out} (written from {model})", testset=testset)
            measurement = compare(testset, outputs, metrics, metric)
            result["errors"] = measurement.errors
            result["met"] = None if rate is None else measurement.error(metric) <= rate
        result["size_after_bytes"] = tmp.stat().st_size
        with OutputSet() as outputs:
            outputs.copy(tmp, out)
            if report_json is not None:
                outputs.write_text(report_json, json.dumps(result, indent=2) + "\n")
    return result
