"""Runs from a cut: a trial whose changed layers all come after some op of the main graph
starts there, from the sample's float activations (mnnq.mnn_backend.suffix). The outputs must
be the bytes a whole run gives, on every layer of real converted models with branches, several
inputs and While loops."""
from __future__ import annotations

import numpy as np
import pytest

from mnnq.mnn_backend import swap as swap_module
from mnnq.mnn_backend.converter import params_template
from mnnq.mnn_backend.inventory import layers_from_template
from mnnq.mnn_backend.suffix import GraphCuts
from mnnq.mnn_backend.swap import SwappableModel
from mnnq.testing import OnnxGraph
from mnnq.testing.models import export_and_convert
from mnnq.testset import load_testset
from mnnq.weightquant import qdq_hqq


def swappable(model, testset, work, layers=None):
    layers = layers if layers is not None else layers_from_template(params_template(model))
    return SwappableModel.load(model, layers, testset.input_names, testset.output_names, work), layers


@pytest.mark.parametrize("kind", ["convnet", "two_input", "int_input", "lstm", "shared_matmul"])
def test_a_run_from_a_cut_gives_the_bytes_of_a_whole_run(kind, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(swap_module, "CUT_MIN_FORWARD_S", 0.0)
    tiny = tiny_model(kind)
    testset = load_testset(tiny.test_dir)
    cut, layers = swappable(tiny.model, testset, tmp_path / "cut")
    whole, _ = swappable(tiny.model, testset, tmp_path / "whole", layers)
    cut_runs = 0
    for layer in layers:
        quantized = qdq_hqq(cut.weights[layer.name], 4, -1).astype(np.float32)
        cut.set_weights({layer.name: quantized})
        whole.set_weights({layer.name: quantized})
        for sample in testset.samples[:2]:
            first = cut.run(sample.inputs, sample=sample.name)
            expected = whole.run(sample.inputs)
            assert first.keys() == expected.keys()
            for name in expected:
                assert first[name].tobytes() == expected[name].tobytes(), (kind, layer.name, name)
        cut_runs += cut._suffix is not None
        cut.set_weights({layer.name: cut.weights[layer.name]})  # float again: no cut needed
        whole.set_weights({layer.name: whole.weights[layer.name]})
        assert cut._first_changed() is None
    main_graph = [n for n, op in cut.ops.items() if not op.graph]
    # the first op of a graph needs no cut; every later main-graph layer runs from one
    assert cut_runs >= len(main_graph) - 1 > 0 or kind == "lstm"


def test_small_models_run_whole(tiny_convnet, tmp_path):
    """The convnet's forward takes well under CUT_MIN_FORWARD_S: no suffix is ever loaded."""
    testset = load_testset(tiny_convnet.test_dir)
    model, layers = swappable(tiny_convnet.model, testset, tmp_path)
    name = layers[-1].name
    model.set_weights({name: qdq_hqq(model.weights[name], 4, -1).astype(np.float32)})
    for sample in testset.samples:
        model.run(sample.inputs, sample=sample.name)
    assert model._cut_pays is False and model._suffix is None


def test_no_cut_after_an_output_is_written(tmp_path):
    """A model output written before an op: a run from there would not write it."""
    g = OnnxGraph(0)
    h = g.conv_relu(g.input("x", [1, 3, 8, 8]), "conv1", 3, 8, 3)
    early = g.node("Identity", [g.conv(h, "head_a", 8, 4, 1)], "a")
    late = g.node("Identity", [g.conv(g.conv_relu(h, "conv2", 8, 8, 3), "head_b", 8, 4, 1)], "b")
    g.output(early, [1, 4, 8, 8])
    g.output(late, [1, 4, 8, 8])
    model = export_and_convert(g, tmp_path, "two_heads")
    cuts = GraphCuts.read(model, ["x"], ["a", "b"])
    index = {n: i for i, n in enumerate(cuts.names)}
    first_output = min(cuts.producer[index["a"]], cuts.producer[index["b"]])
    assert cuts.frontier(first_output + 1) is None
    assert cuts.frontier(first_output)[0] == "x"
    assert GraphCuts.read(model, ["x"], ["no such output"]) is None


def test_samples_over_the_cache_budget_run_whole(tiny_model, tmp_path, monkeypatch):
    from mnnq.mnn_backend import suffix

    monkeypatch.setattr(swap_module, "CUT_MIN_FORWARD_S", 0.0)
    tiny = tiny_model("convnet")
    testset = load_testset(tiny.test_dir)
    model, layers = swappable(tiny.model, testset, tmp_path)
    name = layers[-1].name
    model.set_weights({name: qdq_hqq(model.weights[name], 4, -1).astype(np.float32)})
    first, second = testset.samples[:2]
    for _ in range(2):  # whole: they time a forward (CUT_MIN_FORWARD_S)
        model.run(first.inputs, sample=first.name)
    model.run(first.inputs, sample=first.name)
    per_sample = model._activations.cached_bytes
    assert per_sample > 0 and model._suffix is not None
    monkeypatch.setattr(suffix, "MAX_CACHED_BYTES", per_sample + per_sample // 2)
    whole = model.run(second.inputs, sample=second.name)
    assert model._activations.values(second.name, second.inputs) is None
    assert model._activations.cached_bytes == per_sample and model._activations._full  # later samples: not computed
    expected, _ = swappable(tiny.model, testset, tmp_path / "whole", layers)
    expected.set_weights({name: qdq_hqq(expected.weights[name], 4, -1).astype(np.float32)})
    assert all(whole[k].tobytes() == v.tobytes() for k, v in expected.run(second.inputs).items())


def test_a_cut_mnn_refuses_falls_back_to_whole_runs(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(swap_module, "CUT_MIN_FORWARD_S", 0.0)
    monkeypatch.setattr(GraphCuts, "frontier", lambda self, position: ("x", "no such tensor"))
    tiny = tiny_model("convnet")
    testset = load_testset(tiny.test_dir)
    model, layers = swappable(tiny.model, testset, tmp_path / "a")
    whole, _ = swappable(tiny.model, testset, tmp_path / "b", layers)
    name = layers[-1].name
    quantized = qdq_hqq(model.weights[name], 4, -1).astype(np.float32)
    model.set_weights({name: quantized})
    whole.set_weights({name: quantized})
    for sample in testset.samples[:3]:
        outs = model.run(sample.inputs, sample=sample.name)
        assert all(outs[k].tobytes() == v.tobytes() for k, v in whole.run(sample.inputs).items())
    assert model._cuts is False and model._suffix is None
