"""Reference outputs for a test set: the float MNN model, or onnxruntime on the ONNX source.

onnxruntime is the optional extra ``mnnq[onnx]``. Its references include the conversion error, so
a budget measured against them covers ONNX -> MNN as well as quantization; the float MNN model's
own error against them is reported as ``conversion error``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from mnnq.errors import BadInput

ORT_PIP = "pip install 'mnnq[onnx]'  (or: pip install onnxruntime)"
KINDS = ("auto", "mnn", "onnxruntime")

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def have_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose(kind: str, source: Path) -> str:
    """``auto`` -> onnxruntime for an ONNX source when it is installed, else mnn."""
    is_onnx = Path(source).suffix.lower() == ".onnx"
    if kind == "auto":
        return "onnxruntime" if is_onnx and have_onnxruntime() else "mnn"
    if kind == "onnxruntime":
        if not is_onnx:
            raise BadInput(f"--reference onnxruntime needs an ONNX model; {source} is not one "
                           "(use --reference mnn)")
        if not have_onnxruntime():
            raise BadInput(f"--reference onnxruntime: onnxruntime is not installed; {ORT_PIP}")
    return kind


class MnnReference:
    """The float MNN model, run in-process."""

    def __init__(self, mnn_path: Path, input_names: Sequence[str], output_names: Sequence[str]):
        from mnnq.mnn_backend.runtime import LoadedModel

        self.model = LoadedModel(mnn_path, input_names, output_names)
        self.output_names = list(output_names)

    @staticmethod
    def version() -> str:
        from mnnq.inputs.sources import mnn_version

        return mnn_version()

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.model.run(feeds)


class OrtReference:
    """onnxruntime on the ONNX source (CPU provider), outputs named as the MNN model names them."""

    def __init__(self, onnx_path: Path, input_names: Sequence[str], output_names: Sequence[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BadInput(f"onnxruntime cannot load {onnx_path}: {' '.join(str(exc).split())[:300]} "
                           "(use --reference mnn)") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        ort_outputs = [o.name for o in self.session.get_outputs()]
        missing_in = [n for n in input_names if n not in self.inputs]
        missing_out = [n for n in output_names if n not in ort_outputs]
        if missing_in or missing_out:
            names = ", ".join(missing_in + missing_out)
            raise BadInput(f"the MNN model's tensors {names} are not inputs/outputs of {onnx_path} in onnxruntime "
                           "(the converter renamed them); use --reference mnn")
        self.output_names = list(output_names)

    @staticmethod
    def version() -> str:
        import onnxruntime as ort

        return ort.__version__

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ort_feeds = {}
        for name, arr in feeds.items():
            want = _ORT_DTYPES.get(self.inputs[name].type, np.float32)
            ort_feeds[name] = np.ascontiguousarray(np.asarray(arr).astype(want))
        try:
            results = self.session.run(self.output_names, ort_feeds)
        except Exception as exc:
            raise BadInput(f"onnxruntime failed on these inputs: {' '.join(str(exc).split())[:300]}") from None
        return {n: np.asarray(r) for n, r in zip(self.output_names, results)}


def make_reference(kind: str, source: Path, mnn_path: Path, input_names: Sequence[str],
                   output_names: Sequence[str]):
    if kind == "onnxruntime":
        return OrtReference(source, input_names, output_names)
    return MnnReference(mnn_path, input_names, output_names)


def max_rel(reference: np.ndarray, actual: np.ndarray) -> Optional[float]:
    """max|actual - reference| / max|reference| (``None`` when the reference is all zero)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if scale == 0.0 or ref.size != act.size:
        return None
    return float(np.max(np.abs(act - ref))) / scale


def check_outputs(sample: int, outputs: Mapping[str, np.ndarray], names: List[str]) -> None:
    for name in names:
        arr = outputs.get(name)
        if arr is None:
            raise BadInput(f"the reference model returned no output '{name}'")
        if arr.size == 0:
            raise BadInput(f"output '{name}' is empty for sample {sample}; check the input shapes")
        if not np.all(np.isfinite(arr)):
            raise BadInput(f"output '{name}' holds NaN or Inf for sample {sample}: the model cannot be tested on "
                           "these inputs (check the preprocessing, ranges or shapes)")
