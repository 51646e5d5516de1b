"""What a float ``.mnn`` holds: its conv-like ops, read straight from the file.

The MNN file is a flatbuffer (schema ``schema/default/MNN.fbs`` / ``CaffeOp.fbs``); this module
reads the few tables mnnq needs with ``struct`` / ``numpy`` (no flatbuffers dependency):
``Net.oplists`` -> ``Op`` (name, type, tensor indexes) -> ``Convolution2D`` (common params,
float weight and bias, and for a weight-quantized file the ``IDSTQuan`` parameter).

``layers_from_template`` turns the converter's compression-params template into
:class:`mnnq.layers.Layer` records, with kinds and weight shapes when the ops are known.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.errors import BadInput
from mnnq.layers import Layer
from mnnq.params import entry_key, layer_key, template_layers
from mnnq.mnn_backend.flatbuf import FlatBuffer as _Buf

# OpType enum values (MNN.fbs).
OP_CONVOLUTION = 12
OP_CONVOLUTION_DEPTHWISE = 13
OP_DECONVOLUTION = 17
OP_DECONVOLUTION_DEPTHWISE = 18
CONV_OP_TYPES = {
    OP_CONVOLUTION: "Convolution",
    OP_CONVOLUTION_DEPTHWISE: "ConvolutionDepthwise",
    OP_DECONVOLUTION: "Deconvolution",
    OP_DECONVOLUTION_DEPTHWISE: "DeconvolutionDepthwise",
}
MATMUL_SUFFIX = "__matmul_converted"

# Field slots (a union takes two: its type and its value).
_NET_OPLISTS, _NET_TENSOR_NAME, _NET_SUBGRAPHS = 3, 7, 10
_SUB_NAME, _SUB_TENSORS, _SUB_NODES = 0, 3, 4
_OP_INPUTS, _OP_MAIN, _OP_NAME, _OP_OUTPUTS, _OP_TYPE = 0, 2, 3, 4, 5
_CONV_COMMON, _CONV_WEIGHT, _CONV_BIAS, _CONV_QUAN, _CONV_EXTERNAL = 0, 1, 2, 3, 6
_COMMON_FIELDS = (  # (name, slot, struct format, default)
    ("padX", 0, "<i", 0), ("padY", 1, "<i", 0), ("kernelX", 2, "<i", 1), ("kernelY", 3, "<i", 1),
    ("strideX", 4, "<i", 1), ("strideY", 5, "<i", 1), ("dilateX", 6, "<i", 1), ("dilateY", 7, "<i", 1),
    ("padMode", 8, "<b", 0), ("group", 9, "<i", 1), ("outputCount", 10, "<i", 0),
    ("inputCount", 11, "<i", 0), ("relu", 12, "<B", 0), ("relu6", 13, "<B", 0),
    ("hasOutputShape", 16, "<B", 0),
)
_COMMON_PADS, _COMMON_OUTPADS = 14, 15
_QUAN_FIELDS = (
    ("type", 2, "<i", 0), ("quantScale", 4, "<f", 0.0), ("aMaxOrBits", 7, "<i", 0),
    ("aMin", 8, "<i", 0), ("readType", 9, "<i", 0), ("has_scaleInt", 10, "<B", 0),
    ("shapeInt32", 11, "<B", 0), ("scaleStorage", 15, "<b", 0),
)
_QUAN_BUFFER, _QUAN_ALPHA, _QUAN_INDEX, _QUAN_ALPHA_FP16 = 0, 1, 13, 14


@dataclass
class QuantParam:
    """The ``IDSTQuan`` of a weight-quantized conv, as stored."""

    type: int
    bits: int
    a_min: int
    read_type: int
    quant_scale: float
    has_scale_int: bool
    shape_int32: bool
    scale_storage: int
    buffer: Optional[np.ndarray]   # int8 bytes
    alpha: Optional[np.ndarray]    # float32, (min, scale) pairs when asymmetric
    alpha_fp16: Optional[np.ndarray]
    has_index: bool

    @property
    def asymmetric(self) -> bool:
        return self.read_type != 0


@dataclass
class ConvOp:
    """One conv-like op of an MNN file. ``weight`` is the flat float32 weight as stored
    (``None`` when quantized or external); its layout is ``[out, in/group, kh, kw]`` for
    convolutions and ``[in, out/group, kh, kw]`` (ONNX order) for deconvolutions."""

    index: int
    name: str
    op_type: int
    common: Dict[str, int]
    pads: Tuple[int, ...]
    out_pads: Tuple[int, ...]
    inputs: List[str]
    outputs: List[str]
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    quant: Optional[QuantParam] = None
    external: bool = False
    weight_offset: int = -1  # byte offset of the float weight data in the file (-1: none)
    bias_offset: int = -1    # byte offset of the float bias data in the file (-1: none)
    graph: str = ""          # the subgraph holding it (a While loop's body, ...); "" = the main graph

    @property
    def key(self) -> str:
        """The layer name mnnq uses (``params.layer_key``: unique across subgraphs)."""
        return layer_key(self.name, self.graph)

    @property
    def type_name(self) -> str:
        return CONV_OP_TYPES[self.op_type]

    @property
    def is_deconv(self) -> bool:
        return self.op_type in (OP_DECONVOLUTION, OP_DECONVOLUTION_DEPTHWISE)

    @property
    def is_depthwise(self) -> bool:
        return self.op_type in (OP_CONVOLUTION_DEPTHWISE, OP_DECONVOLUTION_DEPTHWISE)

    @property
    def kind(self) -> str:
        if self.name.endswith(MATMUL_SUFFIX):
            return "matmul"
        if self.is_depthwise:
            return "depthwise"
        if self.is_deconv:
            return "deconv"
        return "conv"

    @property
    def kxky(self) -> int:
        return int(self.common["kernelX"]) * int(self.common["kernelY"])

    def weight_count(self) -> int:
        if self.weight is not None:
            return int(self.weight.size)
        c = self.common
        if self.is_depthwise:
            return int(c["outputCount"]) * self.kxky
        return int(c["inputCount"]) * int(c["outputCount"]) // max(int(c["group"]), 1) * self.kxky

    def converter_shape(self) -> Tuple[int, int, int, int]:
        """The weight as the converter's quantizer sees it: ``outputCount`` rows of
        ``kernelSize = count / outputCount`` values, as ``(oc, kernelSize / kxky, kY, kX)``."""
        oc = int(self.common["outputCount"])
        kx, ky = int(self.common["kernelX"]), int(self.common["kernelY"])
        count = self.weight_count()
        return (oc, count // max(oc, 1) // max(kx * ky, 1), ky, kx)


def _read_common(buf: _Buf, table: int) -> Tuple[Dict[str, int], Tuple[int, ...], Tuple[int, ...]]:
    common = {name: buf.scalar(table, slot, fmt, default) for name, slot, fmt, default in _COMMON_FIELDS}
    pads = buf.vector(table, _COMMON_PADS, "<i4")
    out_pads = buf.vector(table, _COMMON_OUTPADS, "<i4")
    return (common, tuple(int(v) for v in pads) if pads is not None else (),
            tuple(int(v) for v in out_pads) if out_pads is not None else ())


def _read_quant(buf: _Buf, table: int) -> QuantParam:
    vals = {name: buf.scalar(table, slot, fmt, default) for name, slot, fmt, default in _QUAN_FIELDS}
    buffer = buf.vector(table, _QUAN_BUFFER, np.int8)
    alpha = buf.vector(table, _QUAN_ALPHA, "<f4")
    alpha16 = buf.vector(table, _QUAN_ALPHA_FP16, "<u2")
    index = buf.indirect(table, _QUAN_INDEX)
    return QuantParam(
        type=vals["type"], bits=vals["aMaxOrBits"], a_min=vals["aMin"], read_type=vals["readType"],
        quant_scale=vals["quantScale"], has_scale_int=bool(vals["has_scaleInt"]),
        shape_int32=bool(vals["shapeInt32"]), scale_storage=vals["scaleStorage"],
        buffer=None if buffer is None else buffer.copy(),
        alpha=None if alpha is None else alpha.astype(np.float32),
        alpha_fp16=None if alpha16 is None else alpha16.copy(),
        has_index=bool(index),
    )


@dataclass(frozen=True)
class ModelGraph:
    """One graph of an MNN file: the main graph (``name`` "") or a subgraph (a While loop's
    body, ...; ``"?"`` when unnamed), its op tables, and where its tensor names are."""

    name: str
    ops: List[int]       # positions of its Op tables
    table: int           # its Net or SubGraph table
    names_slot: int      # the slot of its tensor names in that table

    def tensor_names(self, buf: _Buf) -> List[str]:
        return buf.strings(self.table, self.names_slot)


def model_graphs(buf: _Buf, subgraphs: bool = True) -> List[ModelGraph]:
    """The main graph of ``buf``, then (with ``subgraphs``) every subgraph, in file order."""
    net = buf.root()
    graphs = [ModelGraph("", buf.tables(net, _NET_OPLISTS), net, _NET_TENSOR_NAME)]
    if subgraphs:
        graphs += [ModelGraph(buf.string(sub, _SUB_NAME) or "?", buf.tables(sub, _SUB_NODES), sub, _SUB_TENSORS)
                   for sub in buf.tables(net, _NET_SUBGRAPHS)]
    return graphs


@contextmanager
def reading_model(path: Path, what: str = "the inventory can read") -> Iterator[_Buf]:
    """The flatbuffer of the model at ``path``; a file that cannot be read as one (a struct,
    index or value error inside the block) is a :class:`BadInput` naming it and ``what``."""
    path = Path(path)
    buf = _Buf.read(path)
    try:
        yield buf
    except (struct.error, IndexError, ValueError) as exc:
        raise BadInput(f"{path} is not an MNN model {what} ({exc})") from None


def op_tensor_indexes(buf: _Buf, op: int, slot: int) -> List[int]:
    """An op's input (``_OP_INPUTS``) or output (``_OP_OUTPUTS``) tensor indexes ([] when absent)."""
    values = buf.vector(op, slot, "<i4")
    return [int(v) for v in values] if values is not None else []


def read_conv_ops(path: Path, subgraphs: bool = False) -> List[ConvOp]:
    """All Convolution / ConvolutionDepthwise / Deconvolution / DeconvolutionDepthwise ops of
    the main graph of ``path``, in file order; with ``subgraphs``, then those of every subgraph
    (an ONNX LSTM becomes a While loop whose body holds convs), ``graph`` naming theirs."""
    with reading_model(path) as buf:
        return [op for graph in model_graphs(buf, subgraphs)
                for op in _graph_conv_ops(buf, graph.ops, graph.tensor_names(buf), graph.name)]


def _graph_conv_ops(buf, tables, names: List[str], graph: str) -> List[ConvOp]:
    """The conv-like ops among one graph's op tables (``names``: that graph's tensor names)."""
    ops: List[ConvOp] = []
    for i, op in enumerate(tables):
        op_type = buf.scalar(op, _OP_TYPE, "<i", 0)
        main = buf.indirect(op, _OP_MAIN) if op_type in CONV_OP_TYPES else 0
        if not main:
            continue
        common_t = buf.indirect(main, _CONV_COMMON)
        common, pads, out_pads = _read_common(buf, common_t) if common_t else ({}, (), ())
        weight = buf.vector(main, _CONV_WEIGHT, "<f4")
        bias = buf.vector(main, _CONV_BIAS, "<f4")
        quan_t = buf.indirect(main, _CONV_QUAN)
        ins, outs = op_tensor_indexes(buf, op, _OP_INPUTS), op_tensor_indexes(buf, op, _OP_OUTPUTS)
        ops.append(ConvOp(
            index=i, name=buf.string(op, _OP_NAME) or "", op_type=op_type, common=common, pads=pads,
            out_pads=out_pads,
            inputs=[names[j] for j in ins if 0 <= j < len(names)],
            outputs=[names[j] for j in outs if 0 <= j < len(names)],
            weight=None if weight is None or weight.size == 0 else weight.astype(np.float32),
            bias=None if bias is None or bias.size == 0 else bias.astype(np.float32),
            quant=_read_quant(buf, quan_t) if quan_t else None,
            external=bool(buf.indirect(main, _CONV_EXTERNAL)),
            weight_offset=buf.vector_offset(main, _CONV_WEIGHT) if weight is not None and weight.size else -1,
            bias_offset=buf.vector_offset(main, _CONV_BIAS) if bias is not None and bias.size else -1,
            graph=graph,
        ))
    return ops


# OpType values and the table slots of the op parameters MNN's INT8 runtime looks at.
OP_BINARY, OP_POOLING, OP_POOLING3D = 7, 47, 112
_POOL_TYPE, _POOL3D_TYPE, _BINARY_ACTIVATION = 7, 3, 2   # Pool.type, Pool3D.type, BinaryOp.activationType
_MAX_POOL = 0                                             # PoolType.MAXPOOL


def read_int8_facts(path: Path) -> Dict[str, str]:
    """Output tensor name -> ``"max_pool"``, ``"avg_pool"`` or ``"relu_binary"`` (a BinaryOp
    with a fused ReLU) for the ops of the main graph of ``path`` whose INT8 kernels need care
    (see :mod:`mnnq.quantize.propagation`)."""
    facts: Dict[str, str] = {}
    with reading_model(path) as buf:
        [graph] = model_graphs(buf, subgraphs=False)
        names = graph.tensor_names(buf)
        for op in graph.ops:
            op_type = buf.scalar(op, _OP_TYPE, "<i", 0)
            main = buf.indirect(op, _OP_MAIN)
            if op_type in (OP_POOLING, OP_POOLING3D):
                slot = _POOL_TYPE if op_type == OP_POOLING else _POOL3D_TYPE
                kind = _MAX_POOL if not main else buf.scalar(main, slot, "<b", _MAX_POOL)
                fact = "max_pool" if kind == _MAX_POOL else "avg_pool"
            elif op_type == OP_BINARY and main and buf.scalar(main, _BINARY_ACTIVATION, "<i", 0) == 1:
                fact = "relu_binary"
            else:
                continue
            for i in op_tensor_indexes(buf, op, _OP_OUTPUTS):
                if 0 <= i < len(names):
                    facts[names[i]] = fact
    return facts


# ---------------------------------------------------------------------------------------------
# Decoding what the converter wrote (used to check the numpy simulation bit for bit).

def _unpack_bits(buf: np.ndarray, count: int, bits: int) -> np.ndarray:
    """MSB-first packed ``bits``-wide unsigned values (IDSTEncoder ``FillBuffer``)."""
    raw = np.unpackbits(buf.view(np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int32)
    return raw.astype(np.int32) @ weights


def decode_quantized(op: ConvOp) -> Tuple[np.ndarray, np.ndarray]:
    """``(q, alpha)`` of a dense (type 1) weight-quantized conv: ``q`` int32 of shape
    ``[blocks, block_elements]`` (the stored integers), ``alpha`` float32 as stored
    (``[blocks]`` symmetric, ``[blocks, 2]`` = (min, scale) asymmetric)."""
    quan = op.quant
    if quan is None or quan.buffer is None:
        raise BadInput(f"layer {op.name} is not weight-quantized")
    if quan.type != 1:
        raise BadInput(f"layer {op.name}: quantized storage type {quan.type} is not decoded here")
    data = quan.buffer.view(np.uint8)
    pos = 0
    ndim = int(data[pos]); pos += 1
    if quan.shape_int32:
        dims = [int(v) for v in data[pos: pos + 4 * ndim].view("<u4")]; pos += 4 * ndim
    else:
        dims = [int(v) for v in data[pos: pos + 2 * ndim].view("<u2")]; pos += 2 * ndim
    channel, area = dims[0], dims[1]
    n_values = int(data[pos]); pos += 1
    if n_values == 0:  # 256 values do not fit the count byte
        n_values = 256
    value_set = data[pos: pos + n_values].view(np.int8).astype(np.int32); pos += n_values
    need_bits = max(int(np.ceil(np.log2(n_values))), 1)
    count = channel * area
    idx = _unpack_bits(data[pos:], count, need_bits)
    q = value_set[idx].reshape(channel, area)
    if quan.scale_storage == 1 and quan.alpha_fp16 is not None:
        alpha = quan.alpha_fp16.view(np.float16).astype(np.float32)
    else:
        alpha = quan.alpha
    if quan.asymmetric:
        alpha = alpha.reshape(-1, 2)
    return q, alpha


def dequantize_like_runtime(op: ConvOp) -> np.ndarray:
    """The float weight MNN's CPU runtime rebuilds from ``op`` (ConvolutionCommon::load, memory
    mode normal), flat in stored order."""
    q, alpha = decode_quantized(op)
    quan = op.quant
    qf = q.astype(np.float32)
    if quan.asymmetric:
        clamp_min = np.float32(-128 if quan.a_min == 0 else quan.a_min)
        scale = alpha[:, 1:2]
        low = alpha[:, 0:1] - clamp_min * scale
        w = qf * scale + low
    else:
        w = qf * alpha.reshape(-1, 1)
    if quan.quant_scale != 1.0 and not quan.has_scale_int:
        raise BadInput(f"layer {op.name}: quantScale {quan.quant_scale} is not simulated")
    return w.astype(np.float32).reshape(-1)


# ---------------------------------------------------------------------------------------------

def layers_from_template(template: Mapping, ops: Optional[Sequence[ConvOp]] = None) -> List[Layer]:
    """The converter template's layers as :class:`Layer` records.

    ``ops`` (``read_conv_ops(float_mnn, subgraphs=True)``) gives exact kinds and weight shapes.
    A layer none of them is (or without ``ops``) gets its kind from its name (``matmul`` for
    ``__matmul_converted`` names, else ``conv``) and an empty ``weight_shape``.
    ``weight_shape`` is the converter's quantization view ``(oc, kernelSize/kxky, kY, kX)``
    (for a deconvolution that is the stored ``[in, out, kh, kw]`` array re-viewed, not its
    semantic layout); the quantization blocks run along its second axis.

    Entries for convs whose weights are graph inputs (the template lists them with
    ``outputChannel`` -1; the converter skips them) are left out.
    """
    by_name: Dict[str, ConvOp] = {op.key: op for op in ops or ()}
    layers: List[Layer] = []
    seen = set()
    for entry in template_layers(template):
        name = entry_key(entry)
        if not name or name in seen:
            continue
        seen.add(name)
        conv = entry.get("conv", {})
        ic = int(conv.get("inputChannel", 0))
        oc = int(conv.get("outputChannel", 0))
        op = by_name.get(name)
        if oc <= 0 or ic <= 0 or (op is not None and op.weight is None and op.quant is None):
            # a conv whose weights are graph inputs: the converter lists it but cannot quantize it
            continue
        ks = conv.get("kernelSize", [1, 1]) or [1, 1]
        kernel = (int(ks[0]), int(ks[1]) if len(ks) > 1 else int(ks[0]))
        if op is not None:
            kind, shape = op.kind, tuple(op.converter_shape())
        else:
            kind, shape = ("matmul" if name.endswith(MATMUL_SUFFIX) else "conv"), ()
        layers.append(Layer(name=name, kind=kind, in_channels=ic, out_channels=oc, kernel=kernel, weight_shape=shape))
    return layers
