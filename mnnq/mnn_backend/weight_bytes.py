"""Where the weight bytes of an ``.mnn`` file are: quantized, or left float and why.

MNN 3.6.1's weight quantization (``--weightQuantBits`` / a compression params file,
``tools/converter/source/common/WeightQuantAndCoding.cpp``) encodes only the weights stored
inside conv ops: Convolution, ConvolutionDepthwise, Deconvolution(Depthwise), the
``<out>__matmul_converted`` convs a MatMul/Gemm with a constant weight becomes, and the convs
an ONNX LSTM/GRU becomes inside its While-loop subgraph. Every other float weight is written
as it was: constants feeding MatMul, Add, Mul, Gather (embedding tables), BatchNorm / Scale /
LayerNorm parameters, conv biases. A MatMul whose constant weight feeds more than 4 ops stays
a MatMul (``optimizer/merge/ConvertMatMulToConv2D.cpp``: the limit is 4, 1 with
``--optimizePrefer 1``, 100 with ``--optimizePrefer 2``; each converted op gets its own copy of
the weight), so an unrolled recurrent cell keeps its weights float.

:func:`account_weights` reads a model file (main graph and subgraphs) and returns a
:class:`WeightAccount`: quantized bytes per op kind, float weight bytes per op kind and
reason, and the rest of the file (graph structure, names, integer constants).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from mnnq.mnn_backend.flatbuf import FlatBuffer
from mnnq.mnn_backend.inventory import MATMUL_SUFFIX, ModelGraph, model_graphs, op_tensor_indexes, reading_model
from mnnq.params import layer_key

# The converter turns a MatMul into a conv only when its constant weight feeds at most this
# many ops (ConvertMatMulToConv2D, default --optimizePrefer 0).
MATMUL_SHARE_LIMIT = 4

# Reasons a float weight is left unquantized (short and stable: tests and JSON readers match them).
SHARED = "shared constant weight of MatMul/Gemm"
MATMUL_KEPT = "constant weight of a MatMul the converter kept as MatMul"
BIAS = "bias"
EMBEDDING = "embedding table (Gather): not a conv op"
CONV_INPUT = "conv weight given as a tensor, not stored in the conv"
NOT_CONV = "not a conv op"
NOT_COVERED = "op not covered by MNN's weight quantization"
ORIGIN_RNN = "LSTM/GRU op kept whole (--useOriginRNNImpl)"
EXTERNAL = "external"
KEPT_BY_MNNQ = "kept float by mnnq"
FLOAT_CONV = "conv not weight-quantized in this file"

# OpType values (schema/default/MNN.fbs) and readable names for the ones mnnq reports.
OP_NAMES = {
    0: "AbsVal", 7: "BinaryOp", 9: "Cast", 10: "Concat", 11: "Const", 12: "Convolution",
    13: "ConvolutionDepthwise", 17: "Deconvolution", 18: "DeconvolutionDepthwise", 22: "Eltwise",
    27: "Fill", 30: "Gather", 31: "GatherV2", 33: "InnerProduct", 35: "Interp", 38: "LSTM", 39: "MatMul",
    43: "Normalize", 45: "Padding", 49: "PReLU", 73: "Reshape", 74: "Resize", 75: "RNN", 77: "Scale", 83: "Slice",
    91: "StridedSlice", 98: "Tile", 100: "Transpose", 103: "Where", 105: "RNNSequenceGRU",
    106: "BatchMatMul", 113: "Convolution3D", 115: "GatherND", 118: "ScatterNd", 120: "BroadcastTo",
    128: "Raster", 141: "LSTMBlockCell", 151: "ScatterElements", 152: "GatherElements", 257: "Select",
    266: "TrainableParam", 267: "BatchNorm", 268: "ConvTranspose3D", 299: "Attention", 304: "GroupNorm",
    512: "Extra", 513: "ConvInt8", 515: "DepthwiseConvInt8", 600: "While", 601: "If", 603: "LayerNorm",
}
CONV_TYPES = {12, 13, 17, 18, 513, 515}
CONST_TYPES = {11, 266}
MATMUL_TYPES = {39, 106}
GATHER_TYPES = {30, 31, 115, 152}
MATMUL_KIND = "MatMul/Gemm"

# Slots (a union takes two: type and value).
_OP_INPUTS, _OP_MAIN_TYPE, _OP_MAIN, _OP_NAME, _OP_OUTPUTS, _OP_TYPE = 0, 1, 2, 3, 4, 5
_P_BLOB, _P_CONV2D = 7, 9
_BLOB_DATATYPE, _BLOB_UINT8S, _BLOB_FLOAT32S, _BLOB_EXTERNAL = 2, 3, 7, 9
_DT_FLOAT, _DT_HALF = 1, 19
_CONV_COMMON, _CONV_WEIGHT, _CONV_BIAS, _CONV_QUAN, _CONV_SYMQUAN, _CONV_EXTERNAL = 0, 1, 2, 3, 4, 6
_QUAN_BUFFER, _QUAN_ALPHA, _QUAN_TYPE, _QUAN_INDEX, _QUAN_ALPHA_FP16 = 0, 1, 2, 13, 14
_QUAN_FP16 = 3  # IDSTQuan.type 3: the weight stored as fp16 (--fp16), not quantized
_SYMQUAN_VECTORS = ((0, 1), (1, 4), (2, 4))  # QuantizedFloatParam weight (int8), bias (int32), scale
# Recurrent ops kept whole, with their weights in Blob fields: union type -> Blob slots.
_RNN_BLOBS = {24: (3, 4, 5, 6, 7), 72: tuple(range(4, 14))}  # LSTM (Caffe), RNNParam (GRU)
RNN_TYPES = {38, 75, 105, 141}  # LSTM, RNN, RNNSequenceGRU, LSTMBlockCell
# Other parameter tables holding float vectors: union type -> (kind, float vector slots, external slot).
_FLOAT_PARAMS = {
    5: ("BatchNorm", (1, 2, 3, 4, 5, 6), None), 58: ("Scale", (1, 2), 3), 88: ("LayerNorm", (2, 3), 5),
    95: ("GroupNorm", (2, 3), 6), 32: ("PReLU", (1,), None), 27: ("Normalize", (3,), None),
    80: ("Convolution3D", (1, 2), 3), 20: ("InnerProduct", (3, 4), None),
}


@dataclass(frozen=True)
class FloatWeights:
    """Float weight bytes of one op kind left unquantized for one reason.

    ``ops``: ops reading them; ``tensors``: stored tensors (a shared constant counts once);
    ``bytes``: stored bytes (for ``external`` rows, bytes outside the .mnn file); ``uses``: for
    constants, the most ops one tensor feeds; ``why``: the reason, spelled out."""

    kind: str
    reason: str
    dtype: str
    ops: int
    tensors: int
    bytes: int
    external: bool = False
    uses: int = 0
    why: str = ""


@dataclass(frozen=True)
class QuantizedWeights:
    """Quantized weights of one op kind: stored bytes (integers and scales) and what the same
    weights take as float32."""

    kind: str
    ops: int
    bytes: int
    float32_bytes: int


@dataclass(frozen=True)
class WeightAccount:
    """Every weight byte of one model file. ``other_bytes``: what is not a weight (graph,
    names, shapes, integer constants, flatbuffer headers)."""

    path: str
    file_bytes: int
    quantized: List[QuantizedWeights] = field(default_factory=list)
    float: List[FloatWeights] = field(default_factory=list)

    @property
    def quantized_bytes(self) -> int:
        return sum(q.bytes for q in self.quantized)

    @property
    def float_bytes(self) -> int:
        """Float weight bytes stored in the file (external ones excluded)."""
        return sum(f.bytes for f in self.float if not f.external)

    @property
    def external_bytes(self) -> int:
        return sum(f.bytes for f in self.float if f.external)

    @property
    def other_bytes(self) -> int:
        return self.file_bytes - self.quantized_bytes - self.float_bytes

    def share(self, nbytes: int) -> float:
        return nbytes / self.file_bytes if self.file_bytes else 0.0

    def headline(self) -> Optional[str]:
        """One sentence on the largest float group, e.g. ``62% of the written file is float
        weights in 80 MatMul/Gemm ops sharing 3 weight tensors``."""
        inside = [f for f in self.float if not f.external]
        if not inside:
            return None
        top = max(inside, key=lambda f: f.bytes)
        if top.reason == SHARED:
            where = f"{top.ops} {top.kind} ops sharing {top.tensors} weight tensor{'s' if top.tensors != 1 else ''}"
        else:
            where = f"{top.ops} {top.kind} op{'s' if top.ops != 1 else ''} ({top.reason})"
        total = _percent(self.share(self.float_bytes))
        if self.share(top.bytes) < 0.05:
            return f"{total} of the written file is float weights, the largest part in {where}"
        rest = f"; {total} float weights in all" if len(inside) > 1 else ""
        return f"{_percent(self.share(top.bytes))} of the written file is float weights in {where}{rest}"

    def as_dict(self) -> dict:
        return {
            "file_bytes": self.file_bytes,
            "quantized_bytes": self.quantized_bytes,
            "float_bytes": self.float_bytes,
            "float_share": round(self.share(self.float_bytes), 6),
            "external_bytes": self.external_bytes,
            "other_bytes": self.other_bytes,
            "headline": self.headline(),
            "quantized": [{"kind": q.kind, "ops": q.ops, "bytes": q.bytes, "float32_bytes": q.float32_bytes}
                          for q in self.quantized],
            "float": [{"kind": f.kind, "reason": f.reason, "dtype": f.dtype, "ops": f.ops, "tensors": f.tensors,
                       "bytes": f.bytes, "share": round(self.share(f.bytes), 6) if not f.external else None,
                       "external": f.external, "uses": f.uses, "why": f.why} for f in self.float],
        }


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.095 else f"{share:.1%}"


# ---------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class _Op:
    key: Tuple[int, int]        # (graph number, op position)
    type: int
    param: int                  # OpParameter union type
    main: int                   # position of the parameter table (0: none)
    name: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    graph: str = ""             # its subgraph's name ("" = the main graph)

    @property
    def layer(self) -> str:
        """The layer name mnnq gives it (``params.layer_key``, as ``ConvOp.key``)."""
        return layer_key(self.name, self.graph)

    @property
    def type_name(self) -> str:
        return OP_NAMES.get(self.type, f"op type {self.type}")


@dataclass
class _Piece:
    """One stored weight tensor (or one op's bias / parameter vectors)."""

    kind: str
    reason: str = ""
    dtype: str = "float32"
    nbytes: int = 0
    ops: Tuple[Tuple[int, int], ...] = ()
    external: bool = False
    quantized: bool = False
    float32_bytes: int = 0
    uses: int = 0


def _ops(buf: FlatBuffer, graph: ModelGraph, number: int) -> List[_Op]:
    out = []
    for i, t in enumerate(graph.ops):
        out.append(_Op((number, i), buf.scalar(t, _OP_TYPE, "<i", 0), buf.scalar(t, _OP_MAIN_TYPE, "<B", 0),
                       buf.indirect(t, _OP_MAIN), buf.string(t, _OP_NAME) or "",
                       tuple(op_tensor_indexes(buf, t, _OP_INPUTS)), tuple(op_tensor_indexes(buf, t, _OP_OUTPUTS)),
                       graph.name))
    return out


def _external_bytes(buf: FlatBuffer, table: int, slot: Optional[int]) -> int:
    """Bytes an ``external: [offset, size, ...]`` field says are stored outside the file."""
    if slot is None:
        return 0
    ext = buf.vector(table, slot, "<i8")
    return int(ext[1:].sum()) if ext is not None and ext.size > 1 else 0


def _blob_float(buf: FlatBuffer, blob: int) -> Tuple[str, int, int]:
    """``(dtype, bytes in the file, external bytes)`` of a float Blob (``("", 0, 0)`` if not float)."""
    dtype = buf.scalar(blob, _BLOB_DATATYPE, "<i", _DT_FLOAT)
    if dtype == _DT_FLOAT:
        return "float32", 4 * buf.length(blob, _BLOB_FLOAT32S), _external_bytes(buf, blob, _BLOB_EXTERNAL)
    if dtype == _DT_HALF:
        return "float16", buf.length(blob, _BLOB_UINT8S), _external_bytes(buf, blob, _BLOB_EXTERNAL)
    return "", 0, 0


def _with_external(piece: _Piece, external: int) -> List[_Piece]:
    """``piece`` (when it has bytes in the file) and its external share as an EXTERNAL piece."""
    out = [piece] if piece.nbytes else []
    if external:
        out.append(_Piece(piece.kind, EXTERNAL, piece.dtype, external, piece.ops, external=True, uses=piece.uses))
    return out


def _conv_kind(op: _Op) -> str:
    return MATMUL_KIND if op.name.endswith(MATMUL_SUFFIX) else op.type_name


def _conv_weight_count(buf: FlatBuffer, op: _Op) -> int:
    """Weights of a conv from its common params (what a quantized conv held as float)."""
    common = buf.indirect(op.main, _CONV_COMMON)
    if not common:
        return 0
    kxky = buf.scalar(common, 2, "<i", 1) * buf.scalar(common, 3, "<i", 1)
    oc, ic, group = buf.scalar(common, 10, "<i", 0), buf.scalar(common, 11, "<i", 0), buf.scalar(common, 9, "<i", 1)
    if op.type in (13, 18):  # depthwise: one input channel per output channel
        return oc * kxky
    return ic * oc // max(group, 1) * kxky


def _conv_pieces(buf: FlatBuffer, op: _Op, float_reasons: Mapping[str, str], default: str) -> List[_Piece]:
    """A conv's weight (quantized, fp16 or float32) and bias."""
    kind, ops, main = _conv_kind(op), (op.key,), op.main
    reason = float_reasons.get(op.layer, default)
    pieces: List[_Piece] = []
    quantized = 0
    quan = buf.indirect(main, _CONV_QUAN)
    if quan and buf.scalar(quan, _QUAN_TYPE, "<i", 0) == _QUAN_FP16:
        pieces.append(_Piece(kind, reason, "float16", buf.length(quan, _QUAN_BUFFER), ops))
    elif quan:
        quantized += (buf.length(quan, _QUAN_BUFFER) + 4 * buf.length(quan, _QUAN_ALPHA)
                      + 4 * buf.length(quan, _QUAN_INDEX) + 2 * buf.length(quan, _QUAN_ALPHA_FP16))
    sym = buf.indirect(main, _CONV_SYMQUAN)  # full INT8: int8 weights, int32 bias, float scales
    if sym:
        quantized += sum(size * buf.length(sym, slot) for slot, size in _SYMQUAN_VECTORS)
    if quantized:
        pieces.append(_Piece(kind, nbytes=quantized, ops=ops, quantized=True,
                             float32_bytes=4 * _conv_weight_count(buf, op)))
    ext = buf.vector(main, _CONV_EXTERNAL, "<i8")  # [offset, weight bytes, bias bytes]
    ext_weight = int(ext[1]) if ext is not None and ext.size > 1 else 0
    ext_bias = int(ext[2]) if ext is not None and ext.size > 2 else 0
    pieces += _with_external(_Piece(kind, reason, "float32", 4 * buf.length(main, _CONV_WEIGHT), ops), ext_weight)
    pieces += _with_external(_Piece(kind, BIAS, "float32", 4 * buf.length(main, _CONV_BIAS), ops), ext_bias)
    return pieces


def _const_reader(readers: Sequence[Tuple[_Op, int]]) -> Tuple[str, str, Tuple[Tuple[int, int], ...]]:
    """``(kind, reason, ops)`` of a float constant from the ops reading it (``(op, input slot)``)."""
    def reading(types):
        return [(o, slot) for o, slot in readers if o.type in types]

    def keys(hits):
        return tuple(o.key for o, _ in hits)

    matmul = reading(MATMUL_TYPES)
    if matmul:
        slots = {slot for _, slot in matmul}
        if 1 in slots:  # the weight (B) input: the converter's limit counts every reader
            return MATMUL_KIND, SHARED if len(readers) > MATMUL_SHARE_LIMIT else MATMUL_KEPT, keys(matmul)
        return MATMUL_KIND, BIAS if max(slots) >= 2 else MATMUL_KEPT, keys(matmul)
    gather = reading(GATHER_TYPES)
    if gather:
        return "Gather", EMBEDDING if any(slot == 0 for _, slot in gather) else NOT_CONV, keys(gather)
    rnn = reading(RNN_TYPES)
    if rnn:
        return rnn[0][0].type_name, ORIGIN_RNN, keys(rnn)
    conv = reading(CONV_TYPES)
    if conv:
        return _conv_kind(conv[0][0]), CONV_INPUT if any(slot == 1 for _, slot in conv) else BIAS, keys(conv)
    if not readers:
        return "Const", "constant no op of its graph reads", ()
    names = [o.type_name for o, _ in readers]
    return max(sorted(set(names)), key=names.count), NOT_CONV, keys(readers)


def _const_pieces(buf: FlatBuffer, op: _Op, readers: Dict[int, List[Tuple[_Op, int]]]) -> List[_Piece]:
    dtype, nbytes, external = _blob_float(buf, op.main)
    if not dtype:
        return []
    reading = [r for t in op.outputs for r in readers.get(t, [])]
    kind, reason, ops = _const_reader(reading)
    return _with_external(_Piece(kind, reason, dtype, nbytes, ops, uses=len(reading)), external)


def _param_pieces(buf: FlatBuffer, op: _Op) -> List[_Piece]:
    """Float vectors of BatchNorm, Scale, LayerNorm, ... and the Blobs of a whole RNN op."""
    if op.param in _RNN_BLOBS:
        pieces: List[_Piece] = []
        for slot in _RNN_BLOBS[op.param]:
            blob = buf.indirect(op.main, slot)
            dtype, nbytes, external = _blob_float(buf, blob) if blob else ("", 0, 0)
            if dtype:
                pieces += _with_external(_Piece(op.type_name, ORIGIN_RNN, dtype, nbytes, (op.key,)), external)
        return pieces
    kind, slots, ext_slot = _FLOAT_PARAMS[op.param]
    reason = NOT_COVERED if kind in ("Convolution3D", "InnerProduct") else NOT_CONV
    nbytes = sum(4 * buf.length(op.main, slot) for slot in slots)
    return _with_external(_Piece(kind, reason, "float32", nbytes, (op.key,)), _external_bytes(buf, op.main, ext_slot))


def _graph_pieces(buf: FlatBuffer, ops: List[_Op], float_reasons: Mapping[str, str], default: str) -> List[_Piece]:
    readers: Dict[int, List[Tuple[_Op, int]]] = defaultdict(list)
    for op in ops:
        for slot, tensor in enumerate(op.inputs):
            readers[tensor].append((op, slot))
    pieces: List[_Piece] = []
    for op in ops:
        if not op.main:
            continue
        if op.param == _P_BLOB and op.type in CONST_TYPES:
            pieces += _const_pieces(buf, op, readers)
        elif op.param == _P_CONV2D:
            pieces += _conv_pieces(buf, op, float_reasons, default)
        elif op.param in _FLOAT_PARAMS or op.param in _RNN_BLOBS:
            pieces += _param_pieces(buf, op)
    return pieces


# ---------------------------------------------------------------------------------------------
# grouping and the reasons spelled out


def shared_why(uses: int) -> str:
    """Why a MatMul/Gemm weight read by ``uses`` ops stays float, and what the converter's
    only route to quantize it (a copy per op) would cost against fp16 storage (0.5x)."""
    widest = (16 - 1) // max(uses, 1)  # copies at b bits take uses*b/32 of float32: below fp16's 0.5x iff uses*b < 16
    versus = (f"below fp16's 0.5x only at {widest} bits or fewer" if widest >= 2
              else "never below fp16's 0.5x")
    return (f"one weight tensor feeds up to {uses} ops; MNN's converter turns a MatMul into a quantizable conv "
            f"only when its constant weight feeds at most {MATMUL_SHARE_LIMIT} ops. Its --optimizePrefer 2 (ONNX "
            f"source only) lifts that limit by copying the weight into every op: {uses} copies take "
            f"{uses * 8 / 32:.3g}x the float32 bytes at 8 bits and {uses * 4 / 32:.3g}x at 4 bits, {versus}, so "
            "mnnq does not build it. auto-quant --fp16-float-weights 1 stores these weights as fp16 instead "
            "(half the bytes), kept only when the written model still meets the rate")


WHY = {
    MATMUL_KEPT: "the converter turns a MatMul into a conv only for a constant 1-D/2-D float weight as its second "
                 "input (with --convertMatmulToConv 1, the default); this one is batched, N-D or the first input",
    BIAS: "biases are stored as float32: MNN's weight quantization covers weights only",
    EMBEDDING: "Gather reads rows of the table; MNN's weight quantization covers conv weights only",
    CONV_INPUT: "the conv reads its weight from another op's output; the converter quantizes only weights stored "
                "inside the conv (its params template lists such convs with outputChannel -1)",
    NOT_CONV: "MNN's weight quantization covers Convolution, ConvolutionDepthwise, Deconvolution and MatMul/Gemm "
              "with a constant weight, nothing else",
    NOT_COVERED: "MNN's weight quantization (WeightQuantAndCoding) encodes Convolution, ConvolutionDepthwise and "
                 "Deconvolution weights only",
    ORIGIN_RNN: "converted with --useOriginRNNImpl: the op keeps its weights whole; without that flag the converter "
                "builds a While loop whose convs are quantizable",
    EXTERNAL: "stored in the .weight file next to the model (--saveExternalData, or a model over 2 GB), "
              "not in the .mnn file",
}


def _why(reason: str, uses: int) -> str:
    return shared_why(uses) if reason == SHARED else WHY.get(reason, "")


def _ops_of(pieces: Iterable[_Piece]) -> int:
    return len({key for p in pieces for key in p.ops})


def _grouped(pieces: Sequence[_Piece]) -> Tuple[List[QuantizedWeights], List[FloatWeights]]:
    quantized: Dict[str, List[_Piece]] = defaultdict(list)
    floats: Dict[tuple, List[_Piece]] = defaultdict(list)
    for p in pieces:
        if p.quantized:
            quantized[p.kind].append(p)
        elif p.nbytes:
            floats[(p.kind, p.reason, p.dtype, p.external)].append(p)
    q_rows = [QuantizedWeights(kind, _ops_of(ps), sum(p.nbytes for p in ps), sum(p.float32_bytes for p in ps))
              for kind, ps in quantized.items()]
    f_rows = []
    for (kind, reason, dtype, external), ps in floats.items():
        uses = max(p.uses for p in ps)
        f_rows.append(FloatWeights(kind, reason, dtype, _ops_of(ps), len(ps), sum(p.nbytes for p in ps),
                                   external, uses, _why(reason, uses)))
    return (sorted(q_rows, key=lambda r: (-r.bytes, r.kind)),
            sorted(f_rows, key=lambda r: (r.external, -r.bytes, r.kind, r.reason)))


def kept_float_reason(detail: str = "") -> str:
    """The reason of a layer auto-quant or quantize kept float (``detail``: why, e.g. "scale underflow")."""
    return f"{KEPT_BY_MNNQ} ({detail or 'the search chose 0 bits'})"


def account_weights(path: Path, float_reasons: Optional[Mapping[str, str]] = None,
                    float_conv_reason: str = FLOAT_CONV) -> WeightAccount:
    """Every weight byte of the model at ``path`` (main graph and subgraphs).

    ``float_reasons`` maps layer names (``params.layer_key``: ``<subgraph>::<op>`` inside a
    subgraph) to the reason their weights are float (e.g. from
    :func:`kept_float_reason`); other float convs get ``float_conv_reason``."""
    path = Path(path)
    reasons = dict(float_reasons or {})
    with reading_model(path, "whose weights can be read") as buf:
        pieces = [p for number, graph in enumerate(model_graphs(buf))
                  for p in _graph_pieces(buf, _ops(buf, graph, number), reasons, float_conv_reason)]
    quantized, floats = _grouped(pieces)
    return WeightAccount(str(path), len(buf.data), quantized, floats)
