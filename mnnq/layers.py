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


def block_applies(layer: Layer, block: int) -> bool:
    """Whether the converter really uses ``block`` for ``layer`` (else it is per-channel).

    The converter needs the per-group input channels divisible by the block, the block a
    multiple of 16 and at least 16; depthwise convs (one input channel per group) never block.
    """
    if block is None or block <= 0 or layer.kind == "depthwise":
        return False
    icg = layer.in_per_group
    # A block as large as the input channels is one block per output channel: the same
    # quantization as per channel, so it is reported (and deduplicated) as per channel.
    return block >= 16 and block % 16 == 0 and icg % block == 0 and icg > block


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
