"""Facts about each layer's float weights that need no model run (numpy only, cached).

* ``underflows(name, setting)``: MNN's weight encoder treats a scale <= 1e-6 as zero and
  would zero a noticeable share of the layer (dead, near-zero channels that it zeroes
  harmlessly do not count: the share of zeroed weight energy must exceed COLLAPSE_SHARE).
* ``weight_noise(name, setting)``: the squared quantization error of the weights, computed with
  the weight method's ``estimate_with`` method when it names a cheaper one.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from mnnq.layers import Layer, LayerSetting, effective_block
from mnnq.records import WeightMethod

# A layer is guarded (kept float) when the encoder would zero more than this share of its
# weight energy; zeroing dead channels with ~1e-8 weights costs nothing and is allowed.
COLLAPSE_SHARE = 1e-4


def collapse_share(method: WeightMethod, weight: np.ndarray, bits: int, block: int) -> float:
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


class WeightOracle:
    """``weights[name]``: float32 ``[out, in_per_group, kh, kw]`` (converter view) per layer."""

    def __init__(self, layers: Mapping[str, Layer], weights: Mapping[str, np.ndarray], method: WeightMethod,
                 noise_method: Optional[WeightMethod] = None):
        self.layers = layers
        self.weights = weights
        self.method = method
        self.noise_method = noise_method or method
        self._underflow: Dict[Tuple[str, int, int], bool] = {}
        self._noise: Dict[Tuple[str, int, int], float] = {}

    def underflows(self, name: str, setting: LayerSetting) -> bool:
        if name not in self.weights or setting.bits == 0:
            return False
        block = effective_block(self.layers[name], setting.block)
        key = (name, setting.bits, block)
        if key not in self._underflow:
            w = self.weights[name]
            self._underflow[key] = bool(self.method.underflows(w, setting.bits, block)) and \
                collapse_share(self.method, w, setting.bits, block) > COLLAPSE_SHARE
        return self._underflow[key]

    def weight_noise(self, name: str, setting: LayerSetting) -> Optional[float]:
        if name not in self.weights:
            return None
        block = effective_block(self.layers[name], setting.block) if setting.bits else -1
        key = (name, setting.bits, block)
        if key not in self._noise:
            w = self.weights[name]
            q = w if setting.bits == 0 else self.noise_method.quantize_dequantize(w, setting.bits, block)
            self._noise[key] = float(np.sum((np.asarray(q, np.float64) - w) ** 2))
        return self._noise[key]
