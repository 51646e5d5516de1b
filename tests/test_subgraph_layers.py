"""Layers inside subgraphs (an ONNX LSTM becomes a While loop whose body holds conv ops) are
searched, simulated in-process and written like any other, even when two bodies use the same op
name: mnnq keys them ``<subgraph>::<op name>``, as the converter tells them apart."""
import json

import numpy as np
import pytest

from common import measured
from mnnq.mnn_backend.converter import params_template, weight_quantize
from mnnq.mnn_backend.inventory import read_conv_ops
from mnnq.mnn_backend.swap import SwappableModel
from mnnq.params import with_settings
from mnnq.plugin import LayerSetting
from mnnq.testing import run_cli
from mnnq.testset import load_testset
from mnnq.weightquant import qdq_max_abs


@pytest.fixture
def lstm(tiny_model):
    """The session's shared LSTM tiny model (built once by mnnq's ``tiny_model`` fixture)."""
    return tiny_model("lstm")


def test_same_named_convs_in_two_subgraphs_are_two_layers(lstm, tmp_path):
    ops = read_conv_ops(lstm.model, subgraphs=True)
    inner = sorted(op.key for op in ops if op.graph)
    assert inner == ["lstm0_main0::Convolution23", "lstm1_main0::Convolution23"]
    template = params_template(lstm.model)
    settings = {op.key: LayerSetting(8) for op in ops}
    settings["lstm0_main0::Convolution23"] = LayerSetting(4)
    settings["lstm1_main0::Convolution23"] = LayerSetting(0)
    out = tmp_path / "q.mnn"
    weight_quantize(lstm.model, out, with_settings(template, settings, False), hqq=False, asymmetric=False)
    written = {op.key: op for op in read_conv_ops(out, subgraphs=True)}
    assert written["lstm0_main0::Convolution23"].quant is not None          # 4 bits
    assert written["lstm1_main0::Convolution23"].quant is None              # kept float


def test_subgraph_weights_are_simulated_exactly(lstm, tmp_path):
    """The in-process model patches the weights inside the loop bodies: its outputs equal a run
    of the converter's file with the same settings."""
    from mnnq.mnn_backend.inventory import layers_from_template
    from mnnq.mnn_backend.runtime import LoadedModel

    ts = load_testset(lstm.test_dir)
    template = params_template(lstm.model)
    layers = layers_from_template(template, ops=read_conv_ops(lstm.model, subgraphs=True))
    model = SwappableModel.load(lstm.model, layers, ts.input_names, ts.output_names, tmp_path / "swap")
    settings = {layer.name: LayerSetting(4) for layer in layers}
    model.set_weights({n: qdq_max_abs(model.weights[n], 4, -1) for n in settings})
    out = tmp_path / "q.mnn"
    weight_quantize(model.path, out, with_settings(template, settings, False), hqq=False, asymmetric=False)
    want = LoadedModel(out, ts.input_names, ts.output_names).run(ts.samples[0].inputs)
    got = model.run(ts.samples[0].inputs)
    for name in ts.output_names:
        assert np.max(np.abs(want[name] - got[name])) <= 1e-5 * max(1.0, float(np.max(np.abs(want[name]))))


def test_auto_quant_searches_the_loop_bodies_in_process(lstm, tmp_path, pm):
    q, report = tmp_path / "q.mnn", tmp_path / "r.json"
    code, out, err = run_cli(["auto-quant", "--model", lstm.model, "--quant_model", q, "--test_dir", lstm.test_dir,
                              "--report-json", report, "--hqq", "0"])
    assert code == 0, out + err
    data = json.loads(report.read_text())
    assert data["evaluator"] == "fast" and not any("simulation unavailable" in n for n in data["notes"])
    names = {row["name"] for row in data["layers"]}
    assert {"lstm0_main0::Convolution23", "lstm1_main0::Convolution23"} <= names
    assert measured(q, lstm.test_dir, pm, data["memory_mode"])["max_rel"] == pytest.approx(data["errors"]["max_rel"])
    rebuilt = tmp_path / "rebuilt.mnn"
    code, out, err = run_cli(["apply", lstm.model, rebuilt, "--params", str(q) + ".json"])
    assert code == 0, out + err
    assert rebuilt.read_bytes() == q.read_bytes()


def test_module_parameters_are_matched_by_layer_name():
    """The module backend matches its parameters to ops by layer name (``<subgraph>::<op>``),
    the name its layers carry: two same-named ops in two subgraphs are two layers."""
    from types import SimpleNamespace

    from mnnq.layers import Layer
    from mnnq.mnn_backend.inventory import OP_CONVOLUTION, ConvOp

    common = {"kernelX": 1, "kernelY": 1, "outputCount": 2, "inputCount": 2, "group": 1}
    ops = [ConvOp(index=0, name="Convolution23", op_type=OP_CONVOLUTION, common=common, pads=(), out_pads=(),
                  inputs=["a"], outputs=["b"], weight=np.random.default_rng(seed).standard_normal(4).astype(np.float32),
                  bias=np.zeros(2, np.float32), graph=graph)
           for seed, graph in enumerate(["lstm0_main0", "lstm1_main0"])]

    class Param:
        def __init__(self, value):
            self.value = value

        def read(self):
            return self.value

    model = SwappableModel()
    # parameters come in reverse execution order, weights then biases
    model._module = SimpleNamespace(parameters=[Param(op.weight.reshape(2, 2, 1, 1)) for op in reversed(ops)]
                                    + [Param(op.bias) for op in ops])
    model.ops = {op.key: op for op in ops}
    model.weights = {op.key: op.weight.reshape(op.converter_shape()) for op in ops}
    layers = [Layer(name=op.key, kind="conv", in_channels=2, out_channels=2, kernel=(1, 1)) for op in ops]
    model._map_parameters(ops, layers)
    assert model._weight_index == {"lstm1_main0::Convolution23": 0, "lstm0_main0::Convolution23": 1}
    assert model.other_parameters == []
