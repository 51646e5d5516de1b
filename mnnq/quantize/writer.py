"""The full-INT8 compression params file, and writing the INT8 model with the converter.

Schema (verified with MNN 3.6.1's converter; JSON of the ``MNN.Compression.Pipeline``
protobuf, snake_case or lowerCamelCase keys both parse)::

    {"version": "0.0.0",
     "algo": [{"type": "QUANTIZE", "quantParams": {"layer": [
        {"input":  [{"name": <conv input tensor>,  "bits": 8, "scales": [s], "zeroPoint": z,
                     "clampMin": -C, "clampMax": C}],
         "output": [{"name": <conv output tensor>, "bits": 8, "scales": [s], "zeroPoint": z,
                     "clampMin": -C, "clampMax": C}],
         "weight": [{"name": <op name>, "bits": b, "scales": [one per output channel],
                     "clampMin": -Cw, "clampMax": Cw}]},
        ...]}}]}

``forGuide`` must be absent (or false). A layer is matched by ``output[0].name`` against the
conv's output tensor (or ``<name>__matmul_converted``); ``opName`` must be absent, or the
weight-only path would also claim the layer. A tensor shared by two layers takes the params of
the first entry that names it, so params are keyed by tensor. The converter rounds
``w / scale`` and clamps to ``[clampMin, clampMax]``; ``real = scale * (q - zeroPoint)``.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from mnnq.errors import NativeFailure
from mnnq.mnn_backend.converter import convert, params_rejected
from mnnq.mnn_backend.inventory import read_conv_ops
from mnnq.quantize.calibrate import QuantLayer
from mnnq.quantize.stats import ActParams

ACTIVATION_BITS = 8


def sanitize(scale: float, zero: int, clamp: int) -> ActParams:
    """A usable ``(scale, zero)``: a tensor that was always zero (scale 0) gets scale 1."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0.0):
        return 1.0, 0
    return float(scale), int(max(-clamp, min(clamp, int(zero))))


def _activation(name: str, params: ActParams, clamp: int) -> dict:
    scale, zero = params
    return {"name": name, "bits": ACTIVATION_BITS, "scales": [float(scale)], "zeroPoint": int(zero),
            "clampMin": -int(clamp), "clampMax": int(clamp)}


def weight_entry(layer: QuantLayer, scales: np.ndarray, bits: int, clamp: int) -> dict:
    s = np.asarray(scales, dtype=np.float64).ravel()
    if s.size != layer.weight.shape[0]:
        raise NativeFailure(f"layer {layer.name}: the weight method gave {s.size} scales for "
                            f"{layer.weight.shape[0]} output channels")
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)     # an all-zero channel quantizes to 0 anyway
    return {"name": layer.name, "bits": int(bits), "scales": [float(v) for v in s],
            "clampMin": -int(clamp), "clampMax": int(clamp)}


def build_params(layers: Sequence[QuantLayer], activations: Mapping[str, ActParams],
                 weights: Mapping[str, dict], feature_clamp: int, keep_float: Iterable[str] = ()) -> dict:
    """The params dict for every layer not in ``keep_float``; ``weights`` maps a layer name to
    its :func:`weight_entry`."""
    keep = set(keep_float)
    entries = []
    for layer in layers:
        if layer.name in keep:
            continue
        entries.append({
            "input": [_activation(layer.input, activations[layer.input], feature_clamp)],
            "output": [_activation(layer.output, activations[layer.output], feature_clamp)],
            "weight": [weights[layer.name]],
        })
    return {"version": "0.0.0", "algo": [{"type": "QUANTIZE", "quantParams": {"layer": entries}}]}


def quantized_layers(model: Path) -> List[str]:
    """Names of the conv ops of ``model`` stored as INT8 (full quant or weight-quantized)."""
    return [op.name for op in read_conv_ops(Path(model)) if op.quant is not None and op.weight is None]


def write_int8(src: Path, dst: Path, params: dict, expected: Sequence[str]) -> Dict[str, object]:
    """Convert float ``src`` into ``dst`` (atomically) with ``params``; check the converter took
    the file and wrote every ``expected`` layer as INT8. Returns ``{"missing": [...]}`` with
    expected layers it left float, and the converter output."""
    with tempfile.TemporaryDirectory(prefix="mnnq-int8-") as work:
        pfile = Path(work) / "params.json"
        pfile.write_text(json.dumps(params))
        run = convert(Path(src), Path(dst), "MNN", ["--compressionParamsFile", str(pfile)],
                      what="writing the INT8 model")
    if params_rejected(run, Path(dst)):
        raise NativeFailure("MNN converter rejected the full-INT8 params (it would write a float model)",
                            tail=run.tail())
    done = set(quantized_layers(Path(dst))) if expected else set()   # re-read the file only to check
    return {"missing": [n for n in expected if n not in done], "output": run.output}
