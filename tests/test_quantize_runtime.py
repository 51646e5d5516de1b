"""What MNN 3.6.1's INT8 runtime (the x86 pip build) does with activation params, shown on tiny
ONNX models, and that mnnq's params (mnnq/quantize/propagation.py) stay clear of its defects.

Each model is ``x -> c1 -> <op under test> -> c2 [-> ...]``; params are written by hand through
mnnq's params writer, and a session callback lists the ops that ran their INT8 kernel."""
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.measure import cosine_similarity
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.quantize import calibrate as cal
from mnnq.quantize import propagation as prop
from mnnq.quantize.writer import build_params, weight_entry, write_int8
from mnnq.testing.models import OnnxGraph, export_and_convert, write_multi_testdir
from mnnq.weightquant import channel_scales_max_abs

C = 127
SHAPE = [1, 8, 12, 12]


def int8_op_types(model: Path) -> set:
    """Op types that ran an INT8 kernel (convs and casts left out) on one run of ``model``."""
    import MNN

    interp = MNN.Interpreter(str(model))
    session = interp.createSession({"numThread": 1})
    feed = interp.getSessionInput(session)
    feed.copyFrom(MNN.Tensor(SHAPE, MNN.Halide_Type_Float, np.zeros(SHAPE, np.float32), MNN.Tensor_DimensionType_Caffe))
    seen = []
    interp.runSessionWithCallBackInfo(session, lambda t, op: True, lambda t, op: seen.append(op.getType()) or True)
    return {t.split(" [")[0] for t in seen if "INT8" in t} - {"Convolution", "FloatToInt8"}


class Probe:
    """A float model, its layers, the float range of every layer tensor, and a writer of INT8
    copies with given params."""

    def __init__(self, graph: OnnxGraph, out: str, folder: Path, seed: int = 0):
        g = graph
        g.node("Identity", [out], "y")
        g.output("y", [1, 8, 6, 6] if "pool" in out else SHAPE)
        self.model = export_and_convert(g, folder, "m")
        self.folder = folder
        self.layers, _ = cal.find_layers(self.model)
        self.by_name = {layer.name: layer for layer in self.layers}
        tensors = cal.layer_tensors(self.layers)
        rng = np.random.default_rng(seed)
        self.feeds = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)]
        runner = cal.TensorRunner(self.model, ["x"], ["y"], tensors)
        runs = [runner.run(f) for f in self.feeds]
        self.ref = [r[0]["y"] for r in runs]
        self.lo = {t: min(float(r[1][t].min()) for r in runs) for t in tensors}
        self.hi = {t: max(float(r[1][t].max()) for r in runs) for t in tensors}
        self.weights = {layer.name: weight_entry(layer, channel_scales_max_abs(layer.weight, 8, C), 8, C)
                        for layer in self.layers}

    def cosine(self, overrides: dict, name: str = "q.mnn"):
        """Mean output cosine vs float, and the INT8 op types, with every layer tensor at its own
        range (zero-pointed) except ``overrides`` (tensor -> params)."""
        acts = {t: prop.params_for_range(self.lo[t], self.hi[t], C) for t in self.lo}
        acts.update(overrides)
        dst = self.folder / name
        write_int8(self.model, dst, build_params(self.layers, acts, self.weights, C), [])
        got = LoadedModel(dst, ["x"], ["y"])
        cos = [cosine_similarity(r, got.run(f)["y"]) for r, f in zip(self.ref, self.feeds)]
        return float(np.mean(cos)), int8_op_types(dst)


def test_int8_max_pool_is_right_only_for_non_negative_codes(tmp_path):
    """c1's signed output -> MaxPool -> c2: given equal params the pool runs INT8, and it compares
    the stored bytes (q + 128 on x86) as signed int8: wrong with zero point 0 or a negative one,
    right once every code is >= 0."""
    g = OnnxGraph(0)
    h = g.conv(g.input("x", SHAPE), "c1", 8, 8, 3)
    probe = Probe(g, g.conv(g.node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2]), "c2", 8, 8, 1),
                  tmp_path)
    lo, hi = probe.lo["c1"], probe.hi["c1"]
    assert lo < 0 < hi
    symmetric = prop.params_for_range(lo, hi, C, symmetric=True)
    shifted = prop.params_for_range(lo, hi, C)
    non_negative = prop.params_for_range(lo, hi, C, codes_non_negative=True)
    assert shifted[1] != 0 and non_negative[1] > 0
    results = {kind: probe.cosine({"c1": p, "pool": p}, f"{kind}.mnn")
               for kind, p in (("symmetric", symmetric), ("shifted", shifted), ("non_negative", non_negative))}
    assert all("Pooling" in ops for _, ops in results.values())
    assert results["symmetric"][0] < 0.5 and results["shifted"][0] < 0.99
    assert results["non_negative"][0] > 0.999
    # unequal params: the pooling runs in float and is right
    cos, ops = probe.cosine({"c1": shifted, "pool": (shifted[0] * 1.001, shifted[1])}, "unequal.mnn")
    assert "Pooling" not in ops and cos > 0.999


def test_int8_relu_binary_needs_zero_point_zero(tmp_path):
    """c3 + c4 -> Add with a fused ReLU -> c2 runs as an INT8 BinaryOp that clamps at code 0:
    right with output zero point 0 whatever the inputs' zero points, wrong with -127."""
    g = OnnxGraph(0)
    h = g.conv(g.input("x", SHAPE), "c1", 8, 8, 3)
    s = g.relu(g.node("Add", [g.conv(h, "c3", 8, 8, 1), g.conv(h, "c4", 8, 8, 1)], "sum"))
    probe = Probe(g, g.conv(s, "c2", 8, 8, 1), tmp_path)
    out = probe.by_name["c2"].input
    assert probe.lo[out] >= 0.0
    assert prop.read_runtime_graph(probe.model).facts[out] == "relu_binary"
    zero = prop.params_for_range(0.0, probe.hi[out], C, symmetric=True)
    full = prop.params_for_range(0.0, probe.hi[out], C)
    assert full[1] == -C
    cos_zero, ops = probe.cosine({out: zero}, "zero.mnn")
    cos_full, _ = probe.cosine({out: full}, "full.mnn")
    assert "BinaryOp" in ops
    assert cos_zero > 0.999 and cos_full < 0.8


def test_params_propagate_to_tensors_without_their_own(tmp_path):
    """c1 -> Add(const) -> MaxPool -> c2: the Add's output has no params, the runtime gives it
    c2's (backward through the pooling), so the pooling runs INT8 on c2's params. mnnq finds the
    group and gives it codes >= 0."""
    g = OnnxGraph(0)
    h = g.conv(g.input("x", SHAPE), "c1", 8, 8, 3)
    shifted = g.node("Add", [h, g.const("half", np.array(0.5, np.float32))], "shifted")
    probe = Probe(g, g.conv(g.node("MaxPool", [shifted], "pool", kernel_shape=[2, 2], strides=[2, 2]), "c2", 8, 8, 1),
                  tmp_path)
    groups = prop.quant_groups(prop.read_runtime_graph(probe.model), probe.lo)
    assert [(grp.linked, grp.max_pool) for grp in groups if "pool" in grp.layer_tensors] == [(("shifted",), True)]
    lo, hi = min(probe.lo["c1"] + 0.5, 0.0), probe.hi["pool"]
    cos_signed, ops = probe.cosine({"pool": prop.params_for_range(lo, hi, C)}, "signed.mnn")
    cos_safe, _ = probe.cosine({"pool": prop.params_for_range(lo, hi, C, codes_non_negative=True)}, "safe.mnn")
    assert "Pooling" in ops
    assert cos_signed < 0.99 and cos_safe > 0.999


def c2f_model(folder: Path) -> Path:
    """YOLOv8's C2f block: c1 -> split in halves -> conv m on one half -> concat of both halves
    and m's output -> c2. The first half has no params of its own: it can get c1's output params
    (forward through the split) or c2's input params (backward through the concat)."""
    g = OnnxGraph(3)
    h = g.conv(g.input("x", SHAPE), "c1", 8, 16, 3)
    a = g.node("Slice", [h, g.const("s0", np.array([0], np.int64)), g.const("e0", np.array([8], np.int64)),
                         g.const("ax0", np.array([1], np.int64))], "half_a")
    b = g.node("Slice", [h, g.const("s1", np.array([8], np.int64)), g.const("e1", np.array([16], np.int64)),
                         g.const("ax1", np.array([1], np.int64))], "half_b")
    m = g.conv(b, "m", 8, 8, 3, weight=g.he((8, 8, 3, 3), 72) * 3)
    cat = g.node("Concat", [a, b, m], "cat", axis=1)
    g.node("Identity", [g.conv(cat, "c2", 24, 8, 1)], "y")
    g.output("y", SHAPE)
    return export_and_convert(g, folder, "c2f")


def test_a_group_gets_one_set_of_params_and_sessions_agree(tmp_path, capsys):
    model = c2f_model(tmp_path)
    layers, _ = cal.find_layers(model)
    groups = prop.quant_groups(prop.read_runtime_graph(model), cal.layer_tensors(layers))
    shared = [grp for grp in groups if len(grp.layer_tensors) > 1]
    assert [(grp.layer_tensors, grp.linked) for grp in shared] == [(("c1", "cat"), ("half_a",))]
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(12)]
    write_multi_testdir(tmp_path / "calib", [(f, {"y": np.zeros(1, np.float32)}) for f in feeds[:8]])
    (tmp_path / "cfg.json").write_text(json.dumps({"path": str(tmp_path / "calib"), "input_type": "sequence"}))
    out = tmp_path / "q.mnn"
    assert main(["quantize", str(model), str(out), str(tmp_path / "cfg.json")]) == 0
    capsys.readouterr()
    entries = json.loads((tmp_path / "q.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    params = {side[0]["name"]: (tuple(side[0]["scales"]), side[0]["zeroPoint"]) for e in entries
              for side in (e["input"], e["output"])}
    assert len({params[t] for t in shared[0].layer_tensors}) == 1
    runs = [LoadedModel(out, ["x"], ["y"]).run(feeds[-1])["y"] for _ in range(4)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("params, lo, hi", [((0.1, 0), -12.7, 12.7), ((0.05, -127), 0.0, 12.7), ((0.02, 30), -3.14, 1.94)])
def test_covered_range_and_back(params, lo, hi):
    got = prop.covered_range(params, C)
    assert got == pytest.approx((lo, hi))
    assert prop.params_for_range(*got, C) == pytest.approx(params)


def test_union_params_cover_every_member_and_respect_the_pool_rule():
    a, b = (0.1, 0), (0.05, -100)                              # [-12.7, 12.7] and [-1.35, 11.35]
    s, z = prop.union_params([a, b], C)
    assert (s, z) == pytest.approx((0.1, 0))                  # one is symmetric and covers the other
    s, z = prop.union_params([(0.02, -127), (0.05, -100)], C, codes_non_negative=True)
    lo, hi = prop.covered_range((s, z), C)
    assert z >= 0 and lo <= -1.35 + 1e-9 and (C - z) * s >= 11.35 - 1e-9 and hi >= 11.35 - 1e-9


def test_runtime_params_rules_on_a_hand_built_graph():
    """conv a -> MaxPool -> b (both layer tensors, equal params); a, b -> fused-ReLU Add -> r
    (layer tensor); c (layer tensor) -> Reshape -> d -> Concat with e (layer tensor)."""
    graph = prop.RuntimeGraph(
        kinds={"a": "Convolution", "b": "Pooling", "r": "ADD", "c": "Convolution", "d": "Reshape",
               "e": "Convolution", "f": "Concat"},
        data_inputs={"a": [], "b": ["a"], "r": ["a", "b"], "c": [], "d": ["c"], "e": [], "f": ["d", "e"]},
        facts={"b": "max_pool", "r": "relu_binary"})
    layer_tensors = ["a", "b", "r", "c", "e", "f"]
    groups = prop.quant_groups(graph, layer_tensors)
    assert [(g.layer_tensors, g.linked) for g in groups] == [(("c", "f"), ("d",))]
    own = {"a": (0.1, 0), "b": (0.1, 0), "r": (0.05, -127), "c": (0.2, 0), "d": (0.2, 0), "e": (0.3, 5),
           "f": (0.1, -20)}
    acts = prop.runtime_params(own, graph, groups, layer_tensors, C)
    assert acts["a"] == (0.1, 0) and acts["b"][0] > 0.1                         # no INT8 max pooling
    assert acts["r"] == pytest.approx((0.1, 0))                                 # [0, 12.7] at zero point 0
    assert acts["c"] == acts["f"] == prop.union_params([own["c"], own["d"], own["f"]], C)
    assert acts["e"] == own["e"]


def test_same_values_tensors_are_calibrated_once():
    graph = prop.RuntimeGraph(
        kinds={"x": "Input", "x_nc4": "ConvertTensor", "c": "Convolution", "r": "Reshape", "s": "SILU"},
        data_inputs={"x": [], "x_nc4": ["x"], "c": ["x_nc4"], "r": ["c"], "s": ["r"]})
    assert prop.same_values(graph, ["x_nc4", "c", "x", "r", "s"]) == {
        "x_nc4": "x_nc4", "c": "c", "x": "x_nc4", "r": "c", "s": "s"}
    assert prop.same_values(None, ["a", "b"]) == {"a": "a", "b": "b"}
