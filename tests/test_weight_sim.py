"""The numpy weight quantizers and the in-process swapped model reproduce MNN's converter.

A small ONNX model (conv with a tiny-weight channel, depthwise, 1x1 conv without bias,
ConvTranspose with output padding, Gemm) is converted to float MNN once. For each case the
converter writes a weight-quantized model; the test checks that

* the integers and scales stored in that file equal ``mnnq.weightquant``'s bit for bit, and
* running the written file equals running the float model with the numpy quantize-dequantized
  weights swapped in (``SwappableModel``), to float rounding.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from mnnq import weightquant as wq
from mnnq.errors import MnnqError
from mnnq.layers import Layer, converter_block, effective_block

ONNX_INPUT = [1, 32, 6, 6]
OUTPUTS = ["y", "up"]
TINY = "c1"  # its output channel 0 has max|w| = 5e-5: 8-bit scales underflow the encoder


def _build_onnx(path):
    from mnnq.testing import OnnxGraph

    rng = np.random.default_rng(7)
    g = OnnxGraph()

    def const(name, arr):
        return g.const(name, np.asarray(arr, dtype=np.float32))

    w1 = rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.08
    w1[0] *= 5e-5 / np.abs(w1[0]).max()
    h = g.node("Conv", [g.input("x", ONNX_INPUT), const("w1", w1), const("b1", rng.standard_normal(32) * 0.1)], "c1",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.node("Relu", [h], "r1")
    h = g.node("Conv", [h, const("wd", rng.standard_normal((32, 1, 3, 3)) * 0.3),
                        const("bd", rng.standard_normal(32) * 0.1)], "dw",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=32)
    h = g.node("Conv", [h, const("w2", rng.standard_normal((64, 32, 1, 1)) * 0.15)], "c2", kernel_shape=[1, 1])
    h = g.node("Relu", [h], "r2")
    h = g.node("ConvTranspose", [h, const("wt", rng.standard_normal((64, 16, 3, 3)) * 0.06),
                                 const("bt", rng.standard_normal(16) * 0.1)], "up",
               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    h = g.node("GlobalAveragePool", [h], "gap")
    h = g.node("Flatten", [h], "flat", axis=1)
    g.node("Gemm", [h, const("wf", rng.standard_normal((10, 16)) * 0.3), const("bf", rng.standard_normal(10))],
           "y", transB=1)
    g.output("y", [1, 10])
    g.output("up", [1, 16, 12, 12])
    g.save(path, "weight_sim")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from mnnq.mnn_backend.converter import convert, params_template
    from mnnq.mnn_backend.inventory import layers_from_template, read_conv_ops
    from mnnq.mnn_backend.runtime import LoadedModel
    from mnnq.mnn_backend.swap import SwappableModel

    work = tmp_path_factory.mktemp("weight_sim")
    onnx_path = work / "model.onnx"
    _build_onnx(onnx_path)
    float_mnn = work / "float.mnn"
    convert(onnx_path, float_mnn, "ONNX")
    template = params_template(float_mnn)
    ops = read_conv_ops(float_mnn)
    layers = layers_from_template(template, ops=ops)
    models = {mode: SwappableModel.load(float_mnn, layers, ["x"], OUTPUTS, work / mode, mode=mode)
              for mode in ("patch", "module", "module-fast")}
    x = {"x": np.random.default_rng(0).standard_normal(ONNX_INPUT).astype(np.float32)}
    reference = LoadedModel(float_mnn, ["x"], OUTPUTS).run(x)
    return dict(work=work, float_mnn=float_mnn, template=template, ops={op.name: op for op in ops},
                layers=layers, models=models, model=models["patch"], x=x, reference=reference)


def _params(template, settings, asymmetric):
    params = copy.deepcopy(template)
    params.pop("forGuide", None)
    for entry in params["algo"][0]["quantParams"]["layer"]:
        bits, block = settings[entry["opName"]]
        for weight in entry["weight"]:
            weight.update(bits=bits, asymmetric=asymmetric, blockSize=block)
    return params


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


def _check(sim, method, settings):
    from mnnq.mnn_backend.converter import weight_quantize
    from mnnq.mnn_backend.inventory import decode_quantized, read_conv_ops
    from mnnq.mnn_backend.runtime import LoadedModel

    asym = method != "max_abs"
    hqq = method == "hqq"
    tag = "_".join(f"{b}.{k}" for b, k in sorted(set(settings.values())))
    dst = sim["work"] / f"{method}_{tag}.mnn"
    run = weight_quantize(sim["float_mnn"], dst, _params(sim["template"], settings, asym), hqq, asym)
    if hqq:
        assert "Use HQQ" in run.output, "the converter ignored --hqq (check --weightQuantAsymmetric=1)"

    # 1. what the converter stored == what weightquant computes, bit for bit
    quantize = {"max_abs": wq.quantize_symmetric, "min_max": wq.quantize_asymmetric,
                "hqq": wq.quantize_hqq}[method]
    for op in read_conv_ops(dst):
        bits, block = settings[op.name]
        if bits == 0:
            assert op.quant is None and op.weight is not None
            continue
        q, alpha = decode_quantized(op)
        src = sim["ops"][op.name]
        mine = quantize(src.weight.reshape(src.converter_shape()), bits, block)
        np.testing.assert_array_equal(q.reshape(mine[0].shape), mine[0], err_msg=f"{method} {op.name}")
        want_alpha = mine[1] if method == "max_abs" else np.stack(mine[1:], axis=1)
        np.testing.assert_array_equal(alpha.reshape(want_alpha.shape), want_alpha, err_msg=op.name)

    # 2. the written model == the float model with simulated weights swapped in
    want = LoadedModel(dst, ["x"], OUTPUTS).run(sim["x"])
    qdq = wq.QDQ[method]
    for mode, model in sim["models"].items():
        model.set_weights({name: qdq(model.weights[name], *settings[name]) for name in model.weights})
        try:
            got = model.run(sim["x"])
        finally:
            model.reset()
        tolerance = 1e-4 if mode == "module-fast" else 1e-6
        for name in OUTPUTS:
            err = _rel(want[name], got[name])
            assert err < tolerance, (mode, method, settings, name, err)
    return dst


CASES = [
    ("max_abs", 8, -1), ("max_abs", 4, 32), ("min_max", 8, 16), ("min_max", 2, -1),
    ("hqq", 8, -1), ("hqq", 4, 16), ("hqq", 2, 64),
]


@pytest.mark.parametrize("method,bits,block", CASES)
def test_simulation_matches_converter(sim, method, bits, block):
    _check(sim, method, {layer.name: (bits, block) for layer in sim["layers"]})


def test_mixed_settings_and_float_layers(sim):
    names = [layer.name for layer in sim["layers"]]
    choices = [(8, 16), (4, -1), (0, -1), (2, 32), (6, 64)]
    settings = {name: choices[i % len(choices)] for i, name in enumerate(names)}
    _check(sim, "min_max", settings)


def test_layers_and_kinds(sim):
    kinds = {layer.name: layer.kind for layer in sim["layers"]}
    assert kinds["c1"] == "conv" and kinds["dw"] == "depthwise" and kinds["up"] == "deconv"
    assert any(k == "matmul" for k in kinds.values())
    for layer in sim["layers"]:
        assert sim["model"].weights[layer.name].shape == tuple(layer.weight_shape)
    up = next(layer for layer in sim["layers"] if layer.name == "up")
    # a deconvolution is quantized in the converter's view of its stored [ic, oc, kh, kw] array
    assert up.weight_shape == (16, 64, 3, 3)
    assert effective_block(up, 32) == 32 and effective_block(up, 64) == -1   # 64 = one block per row
    dw = next(layer for layer in sim["layers"] if layer.name == "dw")
    assert effective_block(dw, 16) == -1


def test_the_block_rule_is_the_converters(sim, tmp_path):
    """One rule (mnnq.layers.converter_block) for the report, the search and the simulation,
    pinned to the converter: a block as large as the input channels writes the very same model
    as per channel; a smaller valid block writes another; an invalid one falls back to per channel."""
    from mnnq.mnn_backend.converter import weight_quantize

    def written(block):
        settings = {layer.name: (8, -1) for layer in sim["layers"]}
        settings["up"] = (8, block)
        out = tmp_path / f"up-{block}.mnn"
        weight_quantize(sim["float_mnn"], out, _params(sim["template"], settings, False), hqq=False,
                        asymmetric=False)
        return out.read_bytes()

    per_channel = written(-1)
    assert written(64) == per_channel and converter_block(64, 64) == -1
    assert written(32) != per_channel and converter_block(64, 32) == 32
    assert written(24) == per_channel and converter_block(64, 24) == -1   # not a multiple of 16


@pytest.mark.parametrize("mode", ["patch", "module", "module-fast"])
def test_float_swap_matches_file_and_reset(sim, mode):
    model = sim["models"][mode]
    out = model.run(sim["x"])
    for name in OUTPUTS:
        assert _rel(sim["reference"][name], out[name]) < (1e-4 if mode == "module-fast" else 1e-6)
    for layer in ("dw", "up"):
        model.set_weights({layer: np.zeros_like(model.weights[layer])})
        changed = model.run(sim["x"])
        assert _rel(sim["reference"]["y"], changed["y"]) > 1e-3
        model.reset()
        again = model.run(sim["x"])
        np.testing.assert_array_equal(again["y"], out["y"])


def test_patched_files_stay_in_step_with_the_weights(sim, tmp_path):
    """The two swap files are updated in place (only changed layers): after a run of swaps, each
    run equals a fresh load of a file holding exactly the current weights."""
    from mnnq.mnn_backend.runtime import LoadedModel
    from mnnq.mnn_backend.swap import SwappableModel

    model = SwappableModel.load(sim["float_mnn"], sim["layers"], ["x"], OUTPUTS, tmp_path / "swap")
    rng = np.random.default_rng(1)
    names = sorted(model.weights)
    current = dict(model.weights)
    for step in range(7):
        change = {n: (model.weights[n] * rng.uniform(0.5, 1.5)).astype(np.float32)
                  for n in names[step % len(names):][:2]}
        if step == 4:
            model.reset()
            current = dict(model.weights)
        model.set_weights(change)
        current.update(change)
        out = model.run(sim["x"])
        fresh = SwappableModel.load(sim["float_mnn"], sim["layers"], ["x"], OUTPUTS, tmp_path / f"fresh{step}")
        fresh.set_weights(current)
        expected = fresh.run(sim["x"])
        for name in OUTPUTS:
            np.testing.assert_array_equal(out[name], expected[name])
        written = model._workdir / f"swapped_{model._generation % 2}.mnn"
        assert written.read_bytes() == bytes(model._buffer)
        # the simulation loads its files on the quick-start runtime (runtime.quick_init_runtime)
        assert LoadedModel(written, ["x"], OUTPUTS, quick_init=True).run(sim["x"])["y"].tobytes() == out["y"].tobytes()


def test_encoder_underflow_is_predicted_and_simulated(sim):
    from mnnq.mnn_backend.inventory import decode_quantized, read_conv_ops

    w = sim["model"].weights[TINY]
    assert wq.underflows_max_abs(w, 8, -1) and wq.underflows_min_max(w, 8, -1)
    assert not wq.underflows_max_abs(w, 4, -1) and not wq.underflows_min_max(w, 4, -1)
    assert not wq.underflows_hqq(w, 8, -1)
    # an all-zero block is not a collapse
    assert not wq.underflows_max_abs(np.zeros((4, 16, 1, 1), np.float32), 8, -1)
    settings = {layer.name: (8, -1) for layer in sim["layers"]}
    for method in ("max_abs", "min_max"):
        dst = sim["work"] / f"{method}_8.-1.mnn"
        if not dst.exists():
            dst = _check(sim, method, settings)
        op = next(op for op in read_conv_ops(dst) if op.name == TINY)
        q, _ = decode_quantized(op)
        lo = -128 if method == "min_max" else 0
        assert np.all(q[0] == lo)  # the whole channel collapsed
        assert np.all(wq.QDQ[method](w, 8, -1)[0] == wq.QDQ[method](w, 8, -1)[0].flat[0])


def test_unknown_layer_is_refused(sim, tmp_path):
    from mnnq.mnn_backend.swap import SwappableModel

    bogus = Layer(name="not_a_conv", kind="conv", in_channels=3, out_channels=3, kernel=(1, 1))
    with pytest.raises(MnnqError, match="not_a_conv"):
        SwappableModel.load(sim["float_mnn"], [bogus], ["x"], OUTPUTS, tmp_path, prepare="none")


@pytest.mark.parametrize("mode, where", [("patch", "float.mnn"), ("module", "the main graph of float.mnn")])
def test_unknown_layer_message_names_the_graphs_searched(sim, tmp_path, mode, where):
    """The patch backend reads the subgraphs too: its message does not say 'main graph'."""
    from mnnq.mnn_backend.swap import SwappableModel

    bogus = Layer(name="not_a_conv", kind="conv", in_channels=3, out_channels=3, kernel=(1, 1))
    with pytest.raises(MnnqError, match=f"layer not_a_conv is not a conv op of {where};"):
        SwappableModel.load(sim["float_mnn"], [bogus], ["x"], OUTPUTS, tmp_path, prepare="none", mode=mode)


def test_c_round_and_block_rule():
    x = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -3.5], np.float32)
    np.testing.assert_array_equal(wq.c_round(x), [1, -1, 2, 3, -3, 0, -4])
    assert wq.weight_block((8, 64, 3, 3), 32) == 32
    assert wq.weight_block((8, 48, 3, 3), 32) == -1
    assert wq.weight_block((8, 64, 1, 1), 8) == -1      # below 16
    assert wq.weight_block((8, 72, 1, 1), 24) == -1     # not a multiple of 16
    assert wq.weight_block((8, 1, 3, 3), 16) == -1      # depthwise
    assert wq.weight_block((8, 64, 1, 1), 64) == -1     # one block per row: per channel


def test_plugins_are_registered(pm):
    methods = {m.name: m for batch in pm.hook.mnnq_weight_methods() for m in batch}
    assert {"max_abs", "min_max", "hqq"} <= set(methods)
    assert (methods["max_abs"].asymmetric, methods["max_abs"].hqq) == (False, False)
    assert (methods["min_max"].asymmetric, methods["min_max"].hqq) == (True, False)
    assert (methods["hqq"].asymmetric, methods["hqq"].hqq) == (True, True)
