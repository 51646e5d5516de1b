"""The quantizable layers of a model and the per-layer settings the search assigns."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

FLOAT_BITS = 0
PER_CHANNEL = -1


@dataclass(frozen=True)
class Layer:
    """A conv-like op the converter can weight-quantize, as listed in its params template.

    ``name`` is the op name the compression params file matches on. ``kind`` is one of
    ``conv``, ``depthwise``, ``deconv``, ``matmul`` (a MatMul/Gemm the converter turned
    into ``<out>__matmul_converted``). ``in_channels`` is the total input channel count the
    template reports; ``weight_shape`` is ``[out, in_per_group, kh, kw]`` when known.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: Tuple[int, int]
    weight_shape: Tuple[int, ...] = ()

    @property
    def weight_count(self) -> int:
        if self.weight_shape:
            n = 1
            for d in self.weight_shape:
                n *= d
            return n
        in_per_group = 1 if self.kind == "depthwise" else self.in_channels
        return in_per_group * self.out_channels * self.kernel[0] * self.kernel[1]

    @property
    def in_per_group(self) -> int:
        return self.weight_shape[1] if self.weight_shape else self.in_channels

    def shape_text(self) -> str:
        shape = self.weight_shape or (self.out_channels, self.in_channels, *self.kernel)
        return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class LayerSetting:
    """``bits`` 0 keeps the layer float, 2..8 quantizes; ``block`` is input channels per
    quantization block (``-1`` = one scale per output channel)."""

    bits: int = 8
    block: int = PER_CHANNEL
    reason: str = ""

    def with_bits(self, bits: int) -> "LayerSetting":
        return replace(self, bits=bits)

    def with_block(self, block: int) -> "LayerSetting":
        return replace(self, block=block)

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS


def converter_block(in_per_group: int, block: int) -> int:
    """The input channels per block MNN's converter really uses for a layer with
    ``in_per_group`` input channels per group, or ``PER_CHANNEL`` (one group per output channel).

    ``WeightQuantAndCoding.cpp`` blocks when ``icCount % block == 0``, ``block >= 16`` and
    ``block % 16 == 0`` (depthwise weights have ``icCount == 1`` and never block). A block as
    large as the input channels is one block per output channel: byte for byte the same model
    as per channel (tests/test_weight_sim.py pins this on the converter), so it is
    ``PER_CHANNEL`` here too and reports and searches never tell the two apart.
    """
    if block is None or block <= 0:
        return PER_CHANNEL
    ic = int(in_per_group)
    if block >= 16 and block % 16 == 0 and ic % block == 0 and ic > block:
        return int(block)
    return PER_CHANNEL


def block_applies(layer: Layer, block: int) -> bool:
    """Whether the converter really uses ``block`` for ``layer`` (else it is per channel)."""
    if layer.kind == "depthwise":
        return False
    return converter_block(layer.in_per_group, block) != PER_CHANNEL


def effective_block(layer: Layer, block: int) -> int:
    return block if block_applies(layer, block) else PER_CHANNEL


def weight_bytes(layer: Layer, setting: LayerSetting) -> float:
    """Approximate stored size of the layer's weights (bytes), including scales."""
    count = layer.weight_count
    if setting.is_float:
        return 4.0 * count
    block = effective_block(layer, setting.block)
    per_block = (block * layer.kernel[0] * layer.kernel[1]) if block > 0 else count // max(layer.out_channels, 1)
    groups = max(count // max(per_block, 1), 1)
    return count * setting.bits / 8.0 + groups * 8.0
