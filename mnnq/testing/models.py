"""Tiny real models and MNN test dirs for tests, benchmarks and examples.

Models are built through ONNX (``onnx.helper``, opset 13) and converted to float ``.mnn`` with
``-f ONNX``: models saved from ``MNN.expr`` keep conv weights as inputs and are never
weight-quantized by the converter. Weights come from ``numpy.random.default_rng(seed)``, so a
builder writes the same weights for the same seed (the converter stamps each .mnn with a random
UUID, so the file bytes differ). onnx is imported lazily: it is a test-only dependency, and the
test-dir helpers and ``reference_outputs`` work without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from mnnq.mnn_backend.converter import convert
from mnnq.testset import write_multi_testdir, write_testdir  # noqa: F401  (re-exported for tests)

OPSET = 13
IR_VERSION = 8

Arrays = Mapping[str, np.ndarray]


class OnnxGraph:
    """A small ONNX graph builder; each layer's node is named after its output tensor, which
    is what MNN uses as the op name (the key of compression params entries)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []

    def input(self, name: str, shape: Sequence[int], dtype=np.float32) -> str:
        from onnx import helper
        self.inputs.append(helper.make_tensor_value_info(name, _onnx_type(dtype), list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int], dtype=np.float32) -> str:
        from onnx import helper
        self.outputs.append(helper.make_tensor_value_info(name, _onnx_type(dtype), list(shape)))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, extra_outputs: Sequence[str] = (), **attrs) -> str:
        from onnx import helper
        self.nodes.append(helper.make_node(op, list(inputs), [output, *extra_outputs], name=output, **attrs))
        return output

    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """He-normal weights: keeps ReLU activations at a steady scale layer after layer."""
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.05).astype(np.float32)

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, group: int = 1,
             weight: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None) -> str:
        """Conv with stride 1 and 'same' padding; He-initialised unless ``weight`` is given."""
        if weight is None:
            weight = self.he((cout, cin // group, k, k), fan_in=cin // group * k * k)
        if bias is None:
            bias = self.bias(cout)
        w = self.const(f"{name}.weight", weight.astype(np.float32))
        b = self.const(f"{name}.bias", bias.astype(np.float32))
        pad = k // 2
        return self.node("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[pad] * 4,
                         strides=[1, 1], group=group)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], f"{x}_relu")

    def conv_relu(self, x: str, name: str, cin: int, cout: int, k: int, group: int = 1, **kw) -> str:
        return self.relu(self.conv(x, name, cin, cout, k, group, **kw))

    def gap_flatten(self, x: str, name: str = "gap") -> str:
        return self.node("Flatten", [self.node("GlobalAveragePool", [x], name)], f"{name}_flat", axis=1)

    def dense(self, x: str, name: str, cin: int, cout: int, weight: Optional[np.ndarray] = None,
              bias: Optional[np.ndarray] = None) -> str:
        """MatMul on a constant weight [cin, cout] + Add bias, output ``name``; MNN fuses both
        into a conv op named ``<name>__matmul_converted``."""
        if weight is None:
            weight = self.he((cin, cout), fan_in=cin)
        if bias is None:
            bias = self.bias(cout)
        w = self.const(f"{name}.weight", weight.astype(np.float32))
        b = self.const(f"{name}.bias", bias.astype(np.float32))
        return self.node("Add", [self.node("MatMul", [x, w], f"{name}_matmul"), b], name)

    def save(self, path: Path, graph_name: str) -> Path:
        import onnx
        from onnx import helper
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="mnnq")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


def _onnx_type(dtype) -> int:
    from onnx import helper
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def export_and_convert(graph: OnnxGraph, directory: Path, name: str) -> Path:
    """Write ``<name>.onnx`` and the float ``<name>.mnn`` into ``directory``; return the .mnn path."""
    directory = Path(directory)
    onnx_path = graph.save(directory / f"{name}.onnx", name)
    mnn_path = directory / f"{name}.mnn"
    convert(onnx_path, mnn_path, "ONNX")
    return mnn_path


def build_convnet(directory: Path, seed: int = 0) -> Path:
    """``x`` [1,3,16,16] -> conv3x3 3->32, conv1x1 32->64, depthwise 3x3, conv1x1 64->64
    (each + ReLU) -> global average pool -> MatMul 64->10 -> ``y`` [1,10]."""
    g = OnnxGraph(seed)
    h = g.input("x", [1, 3, 16, 16])
    h = g.conv_relu(h, "conv1", 3, 32, 3)
    return export_and_convert(_convnet_head(g, h), directory, "convnet")


def _convnet_head(g: OnnxGraph, h: str, conv2_weight: Optional[np.ndarray] = None) -> OnnxGraph:
    """The rest of the convnet after a 32-channel ``h``: conv1x1 32->64 (``conv2_weight`` or
    He-initialised), depthwise 3x3, conv1x1 64->64 (each + ReLU) -> global average pool ->
    MatMul 64->10 -> ``y`` [1,10]. Returns ``g``."""
    h = g.conv_relu(h, "conv2", 32, 64, 1, weight=conv2_weight)
    h = g.conv_relu(h, "dwconv3", 64, 64, 3, group=64)
    h = g.conv_relu(h, "conv4", 64, 64, 1)
    h = g.dense(g.gap_flatten(h), "fc", 64, 10)
    g.node("Identity", [h], "y")
    g.output("y", [1, 10])
    return g


def build_two_input(directory: Path, seed: int = 0) -> Path:
    """``a``, ``b`` [1,3,8,8] -> conv1x1 on ``a`` + conv3x3 on ``b`` (3->32) -> Add -> ReLU
    -> conv1x1 32->32 + ReLU -> global average pool -> MatMul 32->8 -> ``out`` [1,8]."""
    g = OnnxGraph(seed)
    a = g.conv(g.input("a", [1, 3, 8, 8]), "conv_a", 3, 32, 1)
    b = g.conv(g.input("b", [1, 3, 8, 8]), "conv_b", 3, 32, 3)
    h = g.relu(g.node("Add", [a, b], "sum"))
    h = g.conv_relu(h, "conv_mix", 32, 32, 1)
    h = g.dense(g.gap_flatten(h), "fc", 32, 8)
    g.node("Identity", [h], "out")
    g.output("out", [1, 8])
    return export_and_convert(g, directory, "two_input")


# The tiny layer's largest |w|, as in the OCR detector described in DESIGN.md. Its output channels
# get log-spread maxima down to TINY_WEIGHT_MIN: every channel whose 8-bit scale (max|w_c|/127,
# or range/255 when asymmetric) is <= 1e-6 is zeroed by MNN's encoder.
TINY_WEIGHT_MAX = 2.4e-4
TINY_WEIGHT_MIN = 1e-5


def build_tiny_weight(directory: Path, seed: int = 0) -> Path:
    """Like :func:`build_convnet` with an extra 3x3 conv ``tiny`` (32->32) whose output
    channels are scaled to max |w_c| between 1e-5 and 2.4e-4; the next 1x1 conv multiplies
    each of its input channels by the inverse factor (ReLU commutes with a positive scale), so
    the float model is an ordinary well-conditioned net while MNN's 8-bit encoder zeroes most
    of the tiny layer."""
    g = OnnxGraph(seed)
    h = g.input("x", [1, 3, 16, 16])
    h = g.conv_relu(h, "conv1", 3, 32, 3)
    w = g.he((32, 32, 3, 3), fan_in=32 * 9)
    target = np.geomspace(TINY_WEIGHT_MIN, TINY_WEIGHT_MAX, 32)[g.rng.permutation(32)]
    factor = (target / np.abs(w).reshape(32, -1).max(axis=1)).astype(np.float32)
    h = g.conv_relu(h, "tiny", 32, 32, 3, weight=w * factor[:, None, None, None], bias=g.bias(32) * factor)
    rescale = g.he((64, 32, 1, 1), fan_in=32) / factor[None, :, None, None]
    return export_and_convert(_convnet_head(g, h, conv2_weight=rescale), directory, "tiny_weight")


def build_int_input(directory: Path, seed: int = 0) -> Path:
    """Integer ``ids`` int32 [1,6] (values 0..15) -> Gather on a constant [16,32] embedding
    -> [1,32,1,6] -> conv1x1 32->32, added to a conv1x1 of float ``x`` [1,4,1,6] -> ``y``."""
    g = OnnxGraph(seed)
    ids = g.input("ids", [1, 6], np.int32)
    table = g.const("embedding", g.rng.standard_normal((16, 32)).astype(np.float32))
    h = g.node("Gather", [table, ids], "embed", axis=0)                      # [1,6,32]
    h = g.node("Transpose", [h], "embed_t", perm=[0, 2, 1])                   # [1,32,6]
    h = g.node("Unsqueeze", [h, g.const("axis2", np.array([2], np.int64))], "embed_nchw")  # [1,32,1,6]
    h = g.conv(h, "conv_ids", 32, 32, 1)
    x = g.conv(g.input("x", [1, 4, 1, 6]), "conv_x", 4, 32, 1)
    h = g.relu(g.node("Add", [h, x], "sum"))
    g.node("Identity", [g.conv(h, "conv_out", 32, 16, 1)], "y")
    g.output("y", [1, 16, 1, 6])
    return export_and_convert(g, directory, "int_input")


# quiet_recurrent's outputs stay under this (max_rel's 0.01 floor): max_rel skips them all.
QUIET_OUTPUT_MAX = 0.005


def build_quiet_recurrent(directory: Path, seed: int = 0) -> Path:
    """A voice-activity-like model with three inputs, one a scalar: ``x`` [1,4,1,16] -> conv1x1
    4->16, conv1x1 16->16 (each + ReLU) -> global average pool, plus MatMul 16->16 of the
    recurrent ``state`` [1,16] -> Tanh; ``state_out`` [1,16] = 0.005 * that, and ``prob`` [1,2]
    = 0.004 * Tanh(MatMul 16->2) * ``sr`` / 16000, with ``sr`` an int64 scalar (shape [],
    e.g. 16000). Both outputs stay under 0.005 in magnitude (for ``sr`` <= 16000)."""
    g = OnnxGraph(seed)
    x = g.input("x", [1, 4, 1, 16])
    state = g.input("state", [1, 16])
    rate = g.node("Cast", [g.input("sr", [], np.int64)], "sr_float", to=1)   # to FLOAT
    gain = g.node("Mul", [rate, g.const("per_16k", np.array(1 / 16000, np.float32))], "gain")
    h = g.conv_relu(g.conv_relu(x, "conv1", 4, 16, 1), "conv2", 16, 16, 1)
    h = g.node("Tanh", [g.node("Add", [g.gap_flatten(h), g.dense(state, "recur", 16, 16)], "mix")], "mix_tanh")
    g.node("Mul", [h, g.const("state_scale", np.array(QUIET_OUTPUT_MAX, np.float32))], "state_out")
    p = g.node("Tanh", [g.dense(h, "head", 16, 2)], "head_tanh")
    p = g.node("Mul", [p, g.const("prob_scale", np.array(0.8 * QUIET_OUTPUT_MAX, np.float32))], "prob_scaled")
    g.node("Mul", [p, gain], "prob")
    g.output("prob", [1, 2])
    g.output("state_out", [1, 16])
    return export_and_convert(g, directory, "quiet_recurrent")


def build_matmul_mlp(directory: Path, seed: int = 0) -> Path:
    """``x`` [1,64] -> MatMul 64->128 + ReLU -> MatMul 128->10 -> ``y`` [1,10]."""
    g = OnnxGraph(seed)
    h = g.relu(g.dense(g.input("x", [1, 64]), "fc1", 64, 128))
    g.node("Identity", [g.dense(h, "fc2", 128, 10)], "y")
    g.output("y", [1, 10])
    return export_and_convert(g, directory, "matmul_mlp")


def build_lstm(directory: Path, seed: int = 0, steps: int = 6, hidden: int = 32) -> Path:
    """A recurrent model: ``x`` [steps,1,16] -> ONNX LSTM 16->hidden -> ONNX LSTM hidden->hidden ->
    ``y`` [steps,1,1,hidden]. MNN's converter turns each LSTM into a While loop whose body holds
    conv ops, and the two bodies' convs have the same op names (the params template tells them
    apart by ``subgraphName``)."""
    g = OnnxGraph(seed)
    h = g.input("x", [steps, 1, 16])
    for i, n_in in enumerate((16, hidden)):
        w = g.const(f"lstm{i}.W", (g.rng.standard_normal((1, 4 * hidden, n_in)) / np.sqrt(n_in)).astype(np.float32))
        r = g.const(f"lstm{i}.R", (g.rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32))
        b = g.const(f"lstm{i}.B", (g.rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32))
        zeros = np.zeros((1, 1, hidden), np.float32)   # MNN's converter needs initial_h and initial_c
        state = [g.const(f"lstm{i}.h0", zeros), g.const(f"lstm{i}.c0", zeros)]
        out = g.node("LSTM", [h, w, r, b, "", *state], f"lstm{i}", hidden_size=hidden,   # [steps, 1, 1, hidden]
                     extra_outputs=[f"lstm{i}_h", f"lstm{i}_c"])  # the converter needs all three outputs
        h = out if i else g.node("Reshape", [out, g.const("seq_shape", np.array([steps, 1, hidden], np.int64))],
                                 "lstm0_seq")
    g.node("Identity", [h], "y")
    g.output("y", [steps, 1, 1, hidden])
    return export_and_convert(g, directory, "lstm")


def build_shared_matmul(directory: Path, seed: int = 0, steps: int = 6, hidden: int = 64) -> Path:
    """An unrolled recurrent cell whose Gemm weights are shared across time steps, after two convs:
    ``x`` [1,3,1,steps] -> conv1x1 3->32 + ReLU -> conv1x1 32->32 + ReLU -> ``steps`` rows of 32 ->
    ``h_t = tanh(Gemm(x_t, Wx, b) + Gemm(h_{t-1}, Wh))`` with ``Wx`` [hidden,32] and ``Wh``
    [hidden,hidden] (``transB=1``) read by every step -> ``y`` = ``h_last`` [1,hidden].

    ``h_0`` is zero, so the converter folds the first ``Wh`` product away: ``Wx`` feeds ``steps``
    Gemms and ``Wh`` ``steps - 1``. With ``steps`` >= 6 both feed more than 4 ops, and MNN's
    converter keeps them as shared float constants that weight quantization never reaches."""
    g = OnnxGraph(seed)
    h = g.conv_relu(g.input("x", [1, 3, 1, steps]), "conv1", 3, 32, 1)
    h = g.conv_relu(h, "conv2", 32, 32, 1)                                             # [1,32,1,steps]
    rows = g.node("Transpose", [g.node("Reshape", [h, g.const("seq_shape", np.array([32, steps], np.int64))],
                                       "seq")], "rows", perm=[1, 0])                      # [steps,32]
    wx, wh = g.const("Wx", g.he((hidden, 32), 32)), g.const("Wh", g.he((hidden, hidden), hidden) * 0.5)
    b = g.const("b", g.bias(hidden))
    state = g.const("h_init", np.zeros((1, hidden), np.float32))
    axis = g.const("axis0", np.array([0], np.int64))
    for t in range(steps):
        start, end = g.const(f"start{t}", np.array([t], np.int64)), g.const(f"end{t}", np.array([t + 1], np.int64))
        x_t = g.node("Slice", [rows, start, end, axis], f"x{t}")
        total = g.node("Add", [g.node("Gemm", [x_t, wx, b], f"gx{t}", transB=1),
                               g.node("Gemm", [state, wh], f"gh{t}", transB=1)], f"sum{t}")
        state = g.node("Tanh", [total], f"h{t}")
    g.node("Identity", [state], "y")
    g.output("y", [1, hidden])
    return export_and_convert(g, directory, "shared_matmul")


def reference_outputs(
    mnn_path: Path, inputs: Arrays, output_names: Optional[Sequence[str]] = None
) -> Dict[str, np.ndarray]:
    """Run ``mnn_path`` in-process with the MNN runtime and return its outputs as NCHW arrays.

    ``inputs`` maps every input name to an array; ``output_names`` defaults to the model's outputs.
    """
    import MNN.expr as F
    import MNN.nn as nn

    if output_names is None:
        output_names = nn.load_module_from_file(str(mnn_path), [], []).get_info()["outputNames"]
    names = list(inputs)
    module = nn.load_module_from_file(str(mnn_path), names, list(output_names))
    feeds = []
    for name, wanted in zip(names, module.get_info()["inputs"]):
        arr = np.asarray(inputs[name])
        var = F.const(arr.astype(np.int32 if wanted.dtype == F.int else np.float32).reshape(-1),
                      list(arr.shape), F.NCHW, wanted.dtype)
        feeds.append(var if wanted.data_format == F.NCHW else F.convert(var, wanted.data_format))
    results = module.forward(feeds)
    return {name: np.array(F.convert(out, F.NCHW).read()) for name, out in zip(output_names, results)}
