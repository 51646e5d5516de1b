"""Bias correction: give each INT8 conv the bias that cancels the mean shift its rounded weights cause.

A conv's output with quantized weights is ``(W + dW) * x + b``; over the calibration samples its
mean per output channel ``o`` is off by ``sum_{i, kh, kw} dW[o, i, kh, kw] * M[i, kh, kw]``, where
``M`` is the mean of the input value each kernel tap reads (zero padding and stride included:
near a border a tap reads zeros, so the plain channel mean would be wrong on small maps).
Subtracting that from the bias removes the shift (Nagel et al., "Data-Free Quantization through
Weight Equalization and Bias Correction", 2019, with the empirical input statistics).

``dW`` is the converter's own rounding: ``q = clamp(round(w / s), -C, C)`` (half away from zero)
with the weight method's per-channel scales. The converter takes the bias from the float model,
so the corrected biases go into a copy of it (:func:`write_with_biases`) that is converted
instead; the user's file is never touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from mnnq.quantize.calibrate import QuantLayer
from mnnq.weightquant import c_round


def input_window(layer: QuantLayer, in_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> Tuple[int, int]:
    """``(top, left)`` zero padding of ``layer``'s input (MNN's padMode: 0 explicit, 1 valid, 2 same)."""
    c = layer.op.common
    if c["padMode"] == 1:
        return 0, 0
    if c["padMode"] == 2:
        span = [(o - 1) * s + (k - 1) * d + 1 - i for o, s, k, d, i in
                ((out_hw[0], c["strideY"], c["kernelY"], c["dilateY"], in_hw[0]),
                 (out_hw[1], c["strideX"], c["kernelX"], c["dilateX"], in_hw[1]))]
        return max(span[0], 0) // 2, max(span[1], 0) // 2
    pads = layer.op.pads
    return (pads[0], pads[1]) if len(pads) >= 2 else (c["padY"], c["padX"])


def tap_means(layer: QuantLayer, x: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """``[C_in, kh, kw]``: for each kernel tap, the mean over output positions of the input value
    it reads, for one sample ``x`` ``[1, C_in, H, W]``."""
    c = layer.op.common
    kh, kw, sy, sx, dy, dx = (c[k] for k in ("kernelY", "kernelX", "strideY", "strideX", "dilateY", "dilateX"))
    (ho, wo), (h, w) = out_hw, x.shape[2:]
    top, left = input_window(layer, (h, w), out_hw)
    padded = np.zeros((x.shape[1], max((ho - 1) * sy + (kh - 1) * dy + 1, h + top),
                       max((wo - 1) * sx + (kw - 1) * dx + 1, w + left)), np.float64)
    padded[:, top:top + h, left:left + w] = x[0]
    means = np.empty((x.shape[1], kh, kw))
    for a in range(kh):
        for b in range(kw):
            means[:, a, b] = padded[:, a * dy:a * dy + (ho - 1) * sy + 1:sy, b * dx:b * dx + (wo - 1) * sx + 1:sx].mean(axis=(1, 2))
    return means


class TapMeans:
    """Per-tap input means of every 4-D layer, averaged over the samples ``update`` sees."""

    def __init__(self, layers: Sequence[QuantLayer]):
        self.layers = [layer for layer in layers if layer.op is not None]
        self.sums: Dict[str, np.ndarray] = {}
        self.samples = 0

    def update(self, tensors: Mapping[str, np.ndarray]) -> None:
        """One sample's layer tensors (input and output of each layer)."""
        for layer in self.layers:
            x, y = tensors.get(layer.input), tensors.get(layer.output)
            if x is None or y is None or np.ndim(x) != 4 or np.ndim(y) != 4 or x.shape[0] != 1:
                continue
            m = tap_means(layer, np.asarray(x), tuple(np.shape(y)[2:]))
            self.sums[layer.name] = self.sums.get(layer.name, 0.0) + m
        self.samples += 1

    def means(self, name: str):
        return None if name not in self.sums else self.sums[name] / self.samples


def corrected_bias(layer: QuantLayer, scales: np.ndarray, clamp: int, means: np.ndarray) -> np.ndarray:
    """``[out]`` float32 bias of ``layer`` minus the mean shift of its quantized weights."""
    w = layer.weight.astype(np.float64)                                      # [O, I/g, kh, kw]
    s = np.asarray(scales, np.float64).reshape(-1, 1, 1, 1)
    dw = np.clip(c_round(w / s), -clamp, clamp) * s - w
    out, per_group = dw.shape[:2]
    groups = means.shape[0] // per_group
    step = out // groups
    shift = np.concatenate([np.einsum("oikl,ikl->o", dw[g * step:(g + 1) * step],
                                      means[g * per_group:(g + 1) * per_group]) for g in range(groups)])
    return (layer.op.bias.astype(np.float64) - shift).astype(np.float32)


def corrected_biases(layers: Sequence[QuantLayer], weights: Mapping[str, dict], stats: TapMeans
                     ) -> Dict[str, np.ndarray]:
    """Layer name -> corrected bias, for the layers with a stored bias and input statistics;
    ``weights`` are the params file's weight entries (scales, clamp)."""
    out = {}
    for layer in layers:
        means = stats.means(layer.name)
        op = layer.op
        if means is None or op is None or op.bias is None or op.bias_offset < 0 or op.bias.size != layer.weight.shape[0]:
            continue
        entry = weights[layer.name]
        out[layer.name] = corrected_bias(layer, np.asarray(entry["scales"]), int(entry["clampMax"]), means)
    return out


def write_with_biases(src: Path, dst: Path, layers: Sequence[QuantLayer], biases: Mapping[str, np.ndarray]) -> Path:
    """A copy of float model ``src`` at ``dst`` with ``biases`` written over the layers' stored biases."""
    data = bytearray(Path(src).read_bytes())
    for layer in layers:
        if layer.name in biases:
            raw = np.ascontiguousarray(biases[layer.name], dtype="<f4").tobytes()
            data[layer.op.bias_offset:layer.op.bias_offset + len(raw)] = raw
    Path(dst).write_bytes(bytes(data))
    return Path(dst)
