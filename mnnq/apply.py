"""``mnnq apply``: write a weight-quantized model from a params file, optionally re-measure."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from mnnq.errors import BadInput, NativeFailure
from mnnq.fileio import atomic_copy, check_output_path
from mnnq.measure import compare
from mnnq.mnn_backend.converter import params_template, weight_quantize
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.params import read_params_file, settings_from_params, template_layers
from mnnq.testset import load_testset


def apply_params(model: Path, out: Path, params_path: Path, hqq: bool, test_dir: Optional[Path], metric: str,
                 rate: Optional[float], memory_mode: str, pm) -> dict:
    if not model.is_file() or model.stat().st_size == 0:
        raise BadInput(f"model not found or empty: {model}")
    check_output_path(out, [model, params_path], "output model")
    doc = read_params_file(params_path)
    settings = settings_from_params(doc, str(params_path))
    metrics = pm.metrics()
    pm.pick("mnnq_metrics", metric)
    testset = load_testset(test_dir) if test_dir else None
    try:
        template = params_template(model)
    except NativeFailure:
        raise BadInput(f"not a readable MNN model: {model} (MNN's converter cannot parse it); "
                       "re-export it with MNNConvert") from None
    known = {e.get("opName") for e in template_layers(template)}
    unknown = [n for n in settings if n not in known]
    if unknown:
        raise BadInput(f"params file {params_path} names layers the model lacks: {', '.join(unknown[:5])}"
                       f"{' ...' if len(unknown) > 5 else ''}; regenerate it for {model}")
    asymmetric = hqq or any(bool(e.get("weight", [{}])[0].get("asymmetric", False)) for e in template_layers(doc))
    result = {"out": str(out), "params": str(params_path), "layers": len(settings), "hqq": hqq,
              "size_before_bytes": model.stat().st_size, "errors": None, "met": None}
    with tempfile.TemporaryDirectory(prefix="mnnq-apply-") as work:
        tmp = Path(work) / "out.mnn"
        weight_quantize(model, tmp, doc, hqq=hqq, asymmetric=asymmetric)
        if testset is not None:
            loaded = LoadedModel(tmp, testset.input_names, testset.output_names, memory_mode=memory_mode)
            measurement = compare(testset, [loaded.run(s.inputs) for s in testset.samples], metrics)
            del loaded
            result["errors"] = measurement.errors
            result["met"] = None if rate is None else measurement.error(metric) <= rate
        atomic_copy(tmp, out)
    result["size_after_bytes"] = out.stat().st_size
    return result
