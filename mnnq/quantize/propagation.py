"""Which tensors MNN 3.6.1's INT8 runtime makes INT8, and what that asks of their params.

The converter gives INT8 params only to the input and output tensor of each INT8 conv (the
*layer tensors*). When a session is built (``Pipeline::encode``) the runtime copies params
onto neighbouring tensors that have none, through the ops it treats as value-preserving:
forward from an op's single data input to its outputs, backward from its output to its
inputs. Those ops are the ones that become ``Raster`` (concat, split, slice, reshape,
transpose, ...) and ReLU, ReLU6, pooling and resize (:data:`PROPAGATE_OPS`). An op then runs
its INT8 kernel when its input and output params are equal (raster, pooling) or all present
(binary ops). Measured on x86 with the pip package (``tests/test_quantize_runtime.py``):

1. When two layer tensors with different params reach the same tensor, which one wins depends
   on heap addresses: the same ``.mnn`` gives different outputs in different sessions (a
   YOLOv8n's held-out cosine moved between 0.9973 and 0.9991).
2. INT8 max pooling compares the stored bytes as signed int8, but x86 stores ``q + 128``: the
   result is right only when every code is >= 0.
3. A BinaryOp with a fused ReLU running INT8 clamps at code 0, so its output needs zero point 0.
4. INT8 average pooling truncates the mean (at most one step low); zero points are honoured.

So mnnq gives every *group* -- the layer tensors linked through propagate ops by tensors that
have no params of their own -- one set of params covering every tensor of the group. The
runtime's choice then no longer matters, and the group's ops run INT8 as plain copies. A group
an INT8 max pooling reads or writes gets codes >= 0; a fused-ReLU BinaryOp output that runs
INT8 gets zero point 0; a max pooling between two layer tensors whose params happen to be
equal gets them made unequal (it then runs in float).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from mnnq.mnn_backend.inventory import read_int8_facts
from mnnq.quantize.stats import ActParams, range_params


# MNN.expr op types the runtime propagates params through (they become Raster, or are ReLU,
# ReLU6, Pooling, Interp, CropAndResize, ROIPooling at run time).
PROPAGATE_OPS = frozenset({
    "Concat", "ConvertTensor", "Slice", "SliceTf", "StridedSlice", "Reshape", "Permute", "Transpose",
    "Squeeze", "Unsqueeze", "ExpandDims", "Flatten", "Gather", "GatherV2", "Pack", "Unpack",
    "BroadcastTo", "Crop", "Padding", "Tile", "DepthToSpace", "SpaceToDepth", "ReLU", "ReLU6",
    "Pooling", "Pooling3D", "Interp", "Interp3D", "CropAndResize", "ROIPooling", "Raster",
})
CONSTANT_OPS = frozenset({"Const", "TrainableParam"})
# Ops whose output holds exactly the values of their single data input (layout or shape only).
SAME_VALUES_OPS = frozenset({"ConvertTensor", "Reshape", "Transpose", "Permute", "Squeeze", "Unsqueeze",
                             "ExpandDims", "Flatten"})


@dataclass(frozen=True)
class RuntimeGraph:
    """The float model's tensors: the op type producing each, its data inputs (float,
    non-constant tensors) and the INT8-relevant facts of :func:`read_int8_facts`."""

    kinds: Dict[str, str]
    data_inputs: Dict[str, List[str]]
    facts: Dict[str, str] = field(default_factory=dict)

    def links(self) -> List[Tuple[str, str]]:
        """``(input, output)`` tensor pairs of the propagate ops."""
        return [(i, out) for out, kind in self.kinds.items() if kind in PROPAGATE_OPS
                for i in self.data_inputs.get(out, [])]


def read_runtime_graph(model: Path) -> Optional[RuntimeGraph]:
    """The graph of float ``model``, or ``None`` when MNN's expr API cannot rebuild it."""
    import MNN.expr as F

    try:
        variables = F.load_as_dict(str(model))
        facts = read_int8_facts(Path(model))
    except Exception:  # MNN raises plain exceptions for graphs it cannot rebuild
        return None
    kinds, floats, inputs = {}, set(), {}
    for name, var in variables.items():
        kinds[name] = str(var.op_type)
        if "float" in str(var.dtype) and kinds[name] not in CONSTANT_OPS:
            floats.add(name)
        inputs[name] = [v.name for v in var.inputs]
    data_inputs = {n: [i for i in ins if i in floats] for n, ins in inputs.items() if n in floats}
    return RuntimeGraph(kinds, data_inputs, facts)


@dataclass(frozen=True)
class QuantGroup:
    """Layer tensors whose params reach the same tensors at run time (``linked``: tensors with
    no params of their own that take the group's). ``max_pool``: an INT8 max pooling reads or
    writes one of them."""

    layer_tensors: Tuple[str, ...]
    linked: Tuple[str, ...]
    max_pool: bool

    @property
    def tensors(self) -> Tuple[str, ...]:
        return self.layer_tensors + self.linked


def quant_groups(graph: RuntimeGraph, layer_tensors: Iterable[str]) -> List[QuantGroup]:
    """The groups with at least one linked tensor, in a stable order."""
    own = set(layer_tensors)
    parent: Dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    links = [(a, b) for a, b in graph.links() if not (a in own and b in own)]
    for a, b in links:                   # params cross a link only into a tensor without its own
        parent[find(a)] = find(b)
    members: Dict[str, Set[str]] = {}
    for a, b in links:
        members.setdefault(find(a), set()).update((a, b))
    groups = []
    for tensors in members.values():
        layer = tuple(sorted(t for t in tensors if t in own))
        if not layer:
            continue                     # nothing to propagate: those tensors stay float
        pooled = any(graph.facts.get(t) == "max_pool" for t in tensors)
        groups.append(QuantGroup(layer, tuple(sorted(t for t in tensors if t not in own)), pooled))
    return _merge_shared(groups)


def _merge_shared(groups: List[QuantGroup]) -> List[QuantGroup]:
    """Groups sharing a layer tensor (one tensor has one set of params) become one."""
    merged: List[QuantGroup] = []
    for g in sorted(groups, key=lambda g: g.layer_tensors):
        hit = [m for m in merged if set(m.layer_tensors) & set(g.layer_tensors)]
        for m in hit:
            merged.remove(m)
            g = QuantGroup(tuple(sorted(set(g.layer_tensors) | set(m.layer_tensors))),
                           tuple(sorted(set(g.linked) | set(m.linked))), g.max_pool or m.max_pool)
        merged.append(g)
    return merged


def same_values(graph: Optional[RuntimeGraph], tensors: Sequence[str]) -> Dict[str, str]:
    """Tensor -> the one of ``tensors`` holding the same values (a layout or shape change of it,
    either way round), for the tensors that need not be calibrated on their own; the others map
    to themselves."""
    wanted = list(dict.fromkeys(tensors))
    if graph is None:
        return {t: t for t in wanted}
    parent = {t: t for t in wanted}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for t in wanted:
        inputs = graph.data_inputs.get(t, [])
        if graph.kinds.get(t) in SAME_VALUES_OPS and len(inputs) == 1 and inputs[0] in parent:
            a, b = find(t), find(inputs[0])
            if a != b:
                parent[max(a, b, key=wanted.index)] = min(a, b, key=wanted.index)   # the first listed stays
    return {t: find(t) for t in wanted}


def int8_relu_binaries(graph: RuntimeGraph, with_params: Set[str]) -> Set[str]:
    """Outputs of fused-ReLU BinaryOps that run INT8 (the output and every data input have params)."""
    return {t for t, fact in graph.facts.items() if fact == "relu_binary" and t in with_params
            and graph.data_inputs.get(t) and all(i in with_params for i in graph.data_inputs[t])}


def max_pool_pairs(graph: RuntimeGraph, layer_tensors: Set[str]) -> List[Tuple[str, str]]:
    """``(input, output)`` of max poolings between two layer tensors."""
    return [(graph.data_inputs[t][0], t) for t, fact in graph.facts.items()
            if fact == "max_pool" and t in layer_tensors and len(graph.data_inputs.get(t, [])) == 1
            and graph.data_inputs[t][0] in layer_tensors]


# ------------------------------------------------------------------------------- params

def covered_range(params: ActParams, clamp: int) -> Tuple[float, float]:
    """``[lo, hi]`` the codes ``-C..C`` of ``(scale, zero)`` stand for."""
    scale, zero = params
    return (-clamp - zero) * scale, (clamp - zero) * scale


def params_for_range(lo: float, hi: float, clamp: int, symmetric: bool = False,
                     codes_non_negative: bool = False) -> ActParams:
    """Params covering ``[lo, hi]`` (widened to include 0): the full code range with a zero
    point, the symmetric ``[-T, T]``, or codes ``0..C`` only (``real >= 0`` at zero point 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0.0 or not (math.isfinite(lo) and math.isfinite(hi)):
        return 1.0, 0
    if codes_non_negative:
        scale = (hi - lo) / clamp
        zero = min(clamp - 1, int(math.ceil(-lo / scale - 1e-9)))
        return max(scale, hi / (clamp - zero)), zero      # the rounded-up zero point still leaves room for hi
    if symmetric:
        return max(-lo, hi) / clamp, 0
    return range_params(lo, hi, clamp)


def union_params(params: Sequence[ActParams], clamp: int, codes_non_negative: bool = False) -> ActParams:
    """One set of params covering every ``params``' range (symmetric when all are)."""
    ranges = [covered_range(p, clamp) for p in params]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return params_for_range(lo, hi, clamp, symmetric=all(p[1] == 0 for p in params),
                            codes_non_negative=codes_non_negative)


def runtime_params(own: Mapping[str, ActParams], graph: Optional[RuntimeGraph], groups: Sequence[QuantGroup],
                   layer_tensors: Sequence[str], clamp: int) -> Dict[str, ActParams]:
    """Final params of every layer tensor from each tensor's ``own`` params (layer and linked
    tensors), following the module docstring's rules."""
    acts = {t: own[t] for t in layer_tensors}
    if graph is None:
        return acts
    for g in groups:
        shared = union_params([own[t] for t in g.tensors], clamp, codes_non_negative=g.max_pool)
        for t in g.layer_tensors:
            acts[t] = shared
    with_params = set(layer_tensors) | {t for g in groups for t in g.linked}
    for t in int8_relu_binaries(graph, with_params):
        group = next((g for g in groups if t in g.tensors), None)
        for member in (group.layer_tensors if group else (t,)):
            if member in acts and acts[member][1] != 0:
                lo, hi = covered_range(acts[member], clamp)
                acts[member] = params_for_range(lo, hi, clamp, symmetric=True)
    for a, b in max_pool_pairs(graph, set(layer_tensors)):
        if acts[a] == acts[b]:           # equal params would run the pooling in INT8
            acts[b] = (acts[b][0] * (1.0 + 1e-6), acts[b][1])
    return acts
