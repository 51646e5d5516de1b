"""Bias correction (mnnq/quantize/bias.py): the per-tap input means give exactly the mean output
shift of a weight change, padding and stride included; the CLI writes the corrected biases."""
import json
import re

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.mnn_backend.inventory import read_conv_ops
from mnnq.quantize import bias
from mnnq.quantize import calibrate as cal
from mnnq.testing import write_calibration_config
from mnnq.testing.models import OnnxGraph, export_and_convert, write_multi_testdir


def conv2d(x, w, stride, pads, group):
    """Direct convolution: x [1, C, H, W], w [O, C/group, kh, kw], pads (top, left, bottom, right)."""
    _, c, h, wd = x.shape
    o, icg, kh, kw = w.shape
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((o, ho, wo))
    per_group = o // group
    for oc in range(o):
        g = oc // per_group
        for a in range(kh):
            for b in range(kw):
                patch = xp[g * icg:(g + 1) * icg, a:a + (ho - 1) * stride + 1:stride, b:b + (wo - 1) * stride + 1:stride]
                out[oc] += np.tensordot(w[oc, :, a, b], patch, axes=1)
    return out[None]


def calibration_config(folder, shape, seed, count, shift):
    """``count`` samples of input x (standard normal + ``shift``, from ``seed``) as test dirs in
    ``folder/calib``: ``(the sequence config calibrating on them (folder/cfg.json), the feeds)``."""
    rng = np.random.default_rng(seed)
    feeds = [{"x": (rng.standard_normal(shape) + shift).astype(np.float32)} for _ in range(count)]
    write_multi_testdir(folder / "calib", [(f, {"y": np.zeros(1, np.float32)}) for f in feeds])
    return write_calibration_config(folder / "cfg.json", folder / "calib"), feeds


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    """x [1,4,9,7] -> 3x3 stride-2 pad-1 conv (4->6) -> 3x3 depthwise (6) -> 1x1 conv (6->3)."""
    folder = tmp_path_factory.mktemp("bias")
    g = OnnxGraph(4)
    w1 = g.he((6, 4, 3, 3), 36)
    h = g.node("Conv", [g.input("x", [1, 4, 9, 7]), g.const("w1", w1), g.const("b1", g.bias(6))], "c1",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    h = g.conv(h, "dw", 6, 6, 3, group=6)
    g.node("Identity", [g.conv(h, "pw", 6, 3, 1)], "y")
    g.output("y", [1, 3, 5, 4])
    return {"model": export_and_convert(g, folder, "strided"), "folder": folder}


def test_tap_means_give_the_mean_shift_of_a_weight_change(strided):
    layers, _ = cal.find_layers(strided["model"])
    runner = cal.TensorRunner(strided["model"], ["x"], ["y"], cal.layer_tensors(layers))
    x = np.random.default_rng(0).standard_normal((1, 4, 9, 7)).astype(np.float32) + 0.5   # a non-zero mean
    _, tensors = runner.run({"x": x})
    for layer in layers:
        op = layer.op
        stride, group = op.common["strideY"], op.common["group"]
        pads = op.pads if op.pads else (op.common["padY"], op.common["padX"]) * 2
        dw = np.random.default_rng(1).standard_normal(layer.weight.shape) * 0.01
        x_in = tensors[layer.input].astype(np.float64)
        want = conv2d(x_in, dw, stride, pads, group).mean(axis=(0, 2, 3))
        means = bias.tap_means(layer, x_in, tensors[layer.output].shape[2:])
        per_group = dw.shape[1]
        got = [np.sum(dw[o] * means[(o // (dw.shape[0] // group)) * per_group:][:per_group]) for o in range(dw.shape[0])]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_cli_writes_the_corrected_biases(strided, tmp_path, capsys):
    cfg, _ = calibration_config(tmp_path, (1, 4, 9, 7), seed=2, count=8, shift=0.5)
    runs = {}
    for on, flag in ((False, ["--bias-correction", "off"]), (True, ["--bias-correction"])):
        out = tmp_path / f"q{int(on)}.mnn"
        assert main(["quantize", str(strided["model"]), str(out), str(cfg), *flag]) == 0
        runs[on] = (out, capsys.readouterr().out)
    assert "bias correction: 3 layer biases corrected" in runs[True][1]
    assert "bias correction" not in runs[False][1]
    # the written INT8 models differ in the biases only; the user's float model is untouched
    float_ops = {op.name: op for op in read_conv_ops(strided["model"])}
    plain, corrected = (read_conv_ops(runs[k][0]) for k in (False, True))
    moved = [a.name for a, b in zip(plain, corrected) if not np.array_equal(a.bias, b.bias)]
    assert sorted(moved) == sorted(float_ops)
    assert all(np.array_equal(a.quant.buffer, b.quant.buffer) for a, b in zip(plain, corrected))


def test_auto_keeps_the_biases_that_measure_better(strided, tmp_path, capsys):
    """The model has a depthwise conv: auto measures the INT8 model with and without corrected
    biases and keeps the better one; the written file is that one, byte for byte."""
    cfg, _ = calibration_config(tmp_path, (1, 4, 9, 7), seed=5, count=8, shift=0.5)
    outputs = {}
    for mode in ("auto", "on", "off"):
        out = tmp_path / f"{mode}.mnn"
        report = tmp_path / f"{mode}.json"
        assert main(["quantize", str(strided["model"]), str(out), str(cfg), "--bias-correction", mode,
                     "--report-json", str(report)]) == 0
        outputs[mode] = (out.read_bytes(), capsys.readouterr().out, json.loads(report.read_text()))
    note = next(n for n in outputs["auto"][2]["notes"] if n.startswith("bias correction (auto"))
    kept = note.endswith("; kept")
    with_error, without_error = (float(v) for v in re.findall(r"[0-9]+\.[0-9]{6}", note)[:2])
    assert kept == (with_error < without_error)
    assert with_error == pytest.approx(outputs["on"][2]["errors"]["cosine"], abs=1e-6)
    assert without_error == pytest.approx(outputs["off"][2]["errors"]["cosine"], abs=1e-6)
    assert outputs["auto"][0] == outputs["on" if kept else "off"][0]


def test_auto_skips_models_without_depthwise_convs(tmp_path, capsys):
    g = OnnxGraph(3)
    h = g.conv(g.input("x", [1, 3, 8, 8]), "c1", 3, 4, 3)
    g.node("Identity", [g.conv(h, "c2", 4, 2, 1)], "y")
    g.output("y", [1, 2, 6, 6])
    model = export_and_convert(g, tmp_path, "plain")
    cfg, _ = calibration_config(tmp_path, (1, 3, 8, 8), seed=6, count=4, shift=0.0)
    assert main(["quantize", str(model), str(tmp_path / "q.mnn"), str(cfg)]) == 0
    assert "bias correction" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """x [1,4,8,8] -> 1x1 conv (4->6) -> channel shuffle (reshape, transpose, reshape) ->
    3x3 depthwise (6) -> 1x1 conv (6->3): the depthwise conv's input holds the first conv's values
    in another channel order, so calibration may read it through that conv's output."""
    folder = tmp_path_factory.mktemp("shuffle")
    g = OnnxGraph(7)
    h = g.conv(g.input("x", [1, 4, 8, 8]), "c1", 4, 6, 1)
    h = g.node("Reshape", [h, g.const("s5", np.array([1, 2, 3, 8, 8], np.int64))], "r1")
    h = g.node("Transpose", [h], "t", perm=[0, 2, 1, 3, 4])
    h = g.node("Reshape", [h, g.const("s4", np.array([1, 6, 8, 8], np.int64))], "r2")
    h = g.conv(h, "dw", 6, 6, 3, group=6)
    g.node("Identity", [g.conv(h, "pw", 6, 3, 1)], "y")
    g.output("y", [1, 3, 8, 8])
    return export_and_convert(g, folder, "shuffled")


def test_corrected_biases_read_each_layer_input_itself(shuffled, tmp_path):
    """The biases written with --bias-correction are those of the per-tap means of each layer's
    own input (the shuffled tensor for the depthwise conv), measured directly."""
    cfg, feeds = calibration_config(tmp_path, (1, 4, 8, 8), seed=8, count=6, shift=0.5)
    out = tmp_path / "q.mnn"
    assert main(["quantize", str(shuffled), str(out), str(cfg), "--bias-correction"]) == 0
    layers, _ = cal.find_layers(shuffled)
    runner = cal.TensorRunner(shuffled, ["x"], ["y"], cal.layer_tensors(layers))
    stats = bias.TapMeans(layers)
    for f in feeds:
        stats.update(runner.run(f)[1])
    entries = json.loads((tmp_path / "q.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    scales = {e["weight"][0]["name"]: e["weight"][0] for e in entries}
    written = {op.name: op for op in read_conv_ops(out)}
    for layer in layers:
        entry = scales[layer.name]
        want = bias.corrected_bias(layer, np.asarray(entry["scales"]), int(entry["clampMax"]), stats.means(layer.name))
        np.testing.assert_allclose(written[layer.name].bias, want, rtol=1e-5, atol=1e-6)
