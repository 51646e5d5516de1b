"""``mnnq quantize`` end to end on real models: every method writes an INT8 model that loads,
runs and stays close to the float model; image and sequence input; the debug table; --rate."""
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.mnn_backend.runtime import LoadedModel
from common import DIGITS_MODEL, int8_layers


# Held-out output cosine vs float, measured with MNN 3.6.1 (x86-64): digits KL / ADMM 0.9992-0.9993
# with either weight method, EMA 0.989 (MNN's 0.99 moving average trails); the ONNX convnet from
# images 0.9988-0.9994; the two-input model 0.9997 (KL, ADMM) and 0.9968 (EMA); the dynamic-shape
# model 0.9991. The bounds leave a margin under those.
DIGITS_MIN_COSINE = {"KL": 0.998, "ADMM": 0.998, "EMA": 0.98}
CONVNET_MIN_COSINE = 0.997
TWO_INPUT_MIN_COSINE = {"KL": 0.998, "ADMM": 0.998, "EMA": 0.994}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """48 calibration digits as test dirs and as grey PNGs, 64 other digits held out."""
    import MNN.cv as cv
    import MNN.expr as F
    from sklearn.datasets import load_digits
    from mnnq.testing.models import write_multi_testdir

    root = tmp_path_factory.mktemp("qdigits")
    images = load_digits().images
    x = (images / 16.0).astype(np.float32)[:, None, None]          # [N, 1, 1, 8, 8]
    write_multi_testdir(root / "seq", [({"input": x[i]}, {"logits": np.zeros(10, np.float32)}) for i in range(48)])
    (root / "png").mkdir()
    for i in range(48):
        px = np.repeat((images[i] * 15).astype(np.uint8)[..., None], 3, axis=2)   # x = px / 240
        cv.imwrite(str(root / "png" / f"{i:03d}.png"), F.const(px.reshape(-1), [8, 8, 3], F.NHWC, F.uint8))
    return {"root": root, "seq": root / "seq", "png": root / "png", "heldout": [{"input": x[-1 - i]} for i in range(64)]}


def write_config(config_file: Path, **keys) -> Path:
    config_file.write_text(json.dumps(keys))
    return config_file


def quantize(capsys, model, out, cfg, *flags):
    rc = main(["quantize", str(model), str(out), str(cfg), *map(str, flags)])
    stdout, stderr = capsys.readouterr()
    return rc, stdout, stderr


def heldout_cosine(float_mnn, quant_mnn, feeds_list):
    """(mean, min) over samples of the worst output's cosine; fails on non-finite outputs."""
    import MNN.nn as nn

    names = list(feeds_list[0])
    outs = nn.load_module_from_file(str(float_mnn), [], []).get_info()["outputNames"]
    ref, got = LoadedModel(float_mnn, names, outs), LoadedModel(quant_mnn, names, outs)
    cos = []
    for feeds in feeds_list:
        a, b = ref.run(feeds), got.run(feeds)
        worst = 1.0
        for n in outs:
            x, y = a[n].ravel().astype(np.float64), b[n].ravel().astype(np.float64)
            assert np.all(np.isfinite(y)), f"non-finite output {n}"
            worst = min(worst, float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
        cos.append(worst)
    return float(np.mean(cos)), float(np.min(cos))


@pytest.mark.parametrize("weight", ["MAX_ABS", "ADMM"])
@pytest.mark.parametrize("feature", ["KL", "ADMM", "EMA"])
def test_each_method_writes_a_runnable_int8_model(feature, weight, digits, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", path=str(digits["seq"]), input_type="sequence",
                       feature_quantize_method=feature, weight_quantize_method=weight)
    out, report = tmp_path / "int8.mnn", tmp_path / "report.json"
    rc, stdout, _ = quantize(capsys, DIGITS_MODEL, out, cfg, "--report-json", report)
    assert rc == 0, stdout
    assert int8_layers(out) == ["conv1", "conv2", "conv3", "fc__matmul_converted"]
    assert out.stat().st_size < 0.5 * DIGITS_MODEL.stat().st_size
    mean, worst = heldout_cosine(DIGITS_MODEL, out, digits["heldout"])
    assert mean >= DIGITS_MIN_COSINE[feature], (mean, worst)
    doc = json.loads(report.read_text())
    assert doc["status"] == "MET" and doc["feature_quantize_method"] == feature
    assert doc["weight_quantize_method"] == weight and doc["layers_int8"] == 4
    params = json.loads(Path(str(out) + ".json").read_text())
    entry = params["algo"][0]["quantParams"]["layer"][0]
    assert set(entry) == {"input", "output", "weight"} and "forGuide" not in params
    assert f"features {feature}, weights {weight}" in stdout


def test_image_folder_matches_the_same_samples_as_test_dirs(digits, tmp_path, capsys):
    """Grey PNGs through quantized.out's preprocessing give the tensors the test dirs hold."""
    seq = write_config(tmp_path / "seq.json", path=str(digits["seq"]), input_type="sequence")
    img = write_config(tmp_path / "img.json", path=str(digits["png"]), format="GRAY", width=8, height=8,
                       mean=[0.0], normal=[1 / 240])
    assert quantize(capsys, DIGITS_MODEL, tmp_path / "a.mnn", seq)[0] == 0
    assert quantize(capsys, DIGITS_MODEL, tmp_path / "b.mnn", img)[0] == 0
    a = json.loads((tmp_path / "a.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    b = json.loads((tmp_path / "b.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    for la, lb in zip(a, b):
        for side in ("input", "output"):
            assert la[side][0]["scales"][0] == pytest.approx(lb[side][0]["scales"][0], rel=1e-5)
            assert la[side][0]["zeroPoint"] == lb[side][0]["zeroPoint"]


def test_image_preprocessing_is_mnn_image_process(tmp_path):
    """Centre crop, corner-aligned bilinear resize, colour order and (x - mean) * normal."""
    from mnnq.quantize.config import QuantizeConfig
    from mnnq.quantize.inputs import preprocess

    bgr = np.zeros((10, 20, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    cfg = QuantizeConfig(path=tmp_path, format="RGB", mean=[1.0, 2.0, 3.0, 0.0], normal=[0.5, 0.25, 2.0, 1.0],
                         center_crop_h=0.5, center_crop_w=0.5)
    x = preprocess(bgr, cfg, 4, 3)
    assert x.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(x[0, :, 0, 0], [(30 - 1) * 0.5, (20 - 2) * 0.25, (10 - 3) * 2.0])
    ramp = np.repeat(np.repeat(np.arange(0, 250, 50, dtype=np.uint8)[None, :, None], 2, 0), 3, 2)  # 0..200
    gray = preprocess(ramp, QuantizeConfig(path=tmp_path, format="GRAY"), 9, 2)
    np.testing.assert_allclose(gray[0, 0, 0, ::2], [0, 50, 100, 150, 200])   # corners land on source pixels


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """The ONNX-built convnet ([1,3,16,16]), a folder of 14 odd-sized RGB images (the first 8
    calibrate) and the other 6 preprocessed as held-out inputs."""
    import MNN.cv as cv
    import MNN.expr as F
    from mnnq.quantize.config import QuantizeConfig
    from mnnq.quantize.inputs import preprocess, read_image
    from mnnq.testing.models import build_convnet

    root = tmp_path_factory.mktemp("qconv")
    model = build_convnet(root)
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    yy, xx = np.mgrid[0:21, 0:27]
    for i in range(14):
        base = (np.sin(xx / (3 + i % 5)) + np.cos(yy / (2 + i % 3))) * 60 + 128
        img = np.clip(base[..., None] + rng.normal(0, 20, (21, 27, 3)), 0, 255).astype(np.uint8)
        cv.imwrite(str(root / "img" / f"{i:02d}.jpg"), F.const(img.reshape(-1), [21, 27, 3], F.NHWC, F.uint8))
    (root / "img" / "README.txt").write_text("not an image\n")
    prep = QuantizeConfig(path=root, format="RGB", mean=[127.5] * 4, normal=[1 / 127.5] * 4,
                          center_crop_h=0.875, center_crop_w=0.875)
    held = [{"x": preprocess(read_image(root / "img" / f"{i:02d}.jpg"), prep, 16, 16)} for i in range(8, 14)]
    return {"model": model, "img": root / "img", "heldout": held}


@pytest.mark.parametrize("feature", ["ADMM", "EMA", "KL"])
def test_image_input_every_method(feature, convnet, tmp_path, capsys):
    """ADMM with image input crashes quantized.out; here every method runs."""
    cfg = write_config(tmp_path / "cfg.json", path=str(convnet["img"]), format="RGB", width=16, height=16,
                       mean=[127.5] * 3, normal=[1 / 127.5] * 3, center_crop_h=0.875, center_crop_w=0.875,
                       used_image_num=8, feature_quantize_method=feature, batch_size=4)
    out, report = tmp_path / "q.mnn", tmp_path / "r.json"
    rc, stdout, _ = quantize(capsys, convnet["model"], out, cfg, "--report-json", report)
    assert rc == 0, stdout
    doc = json.loads(report.read_text())
    assert doc["calibration_samples"] == 8 and doc["layers_int8"] == 5
    mean, worst = heldout_cosine(convnet["model"], out, convnet["heldout"])
    assert mean >= CONVNET_MIN_COSINE, (mean, worst)


@pytest.fixture(scope="module")
def two_input(tmp_path_factory):
    from mnnq.testing.models import build_two_input, reference_outputs, write_multi_testdir

    root = tmp_path_factory.mktemp("qtwo")
    model = build_two_input(root)
    rng = np.random.default_rng(1)

    def feeds():
        return {"a": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
                "b": rng.random((1, 3, 8, 8)).astype(np.float32)}

    samples = [feeds() for _ in range(24)]
    write_multi_testdir(root / "calib", [(f, reference_outputs(model, f)) for f in samples])
    return {"model": model, "calib": root / "calib", "heldout": [feeds() for _ in range(16)]}


@pytest.mark.parametrize("feature", ["KL", "ADMM", "EMA"])
def test_two_input_model_through_sequence_input(feature, two_input, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", path=str(two_input["calib"]), input_type="sequence",
                       feature_quantize_method=feature)
    out = tmp_path / "q.mnn"
    rc, stdout, _ = quantize(capsys, two_input["model"], out, cfg)
    assert rc == 0, stdout
    assert int8_layers(out) == ["conv_a", "conv_b", "conv_mix", "fc__matmul_converted"]
    mean, worst = heldout_cosine(two_input["model"], out, two_input["heldout"])
    assert mean >= TWO_INPUT_MIN_COSINE[feature], (mean, worst)


def test_zero_points_stay_on_tensors_the_int8_runtime_handles(two_input, tmp_path, capsys):
    """The ReLU-fused Add output feeding conv_mix must be symmetric: MNN's INT8 BinaryOp
    ignores zero points (with one, this model's output cosine falls to about 0.8)."""
    cfg = write_config(tmp_path / "cfg.json", path=str(two_input["calib"]), input_type="sequence",
                       feature_quantize_method="EMA")
    assert quantize(capsys, two_input["model"], tmp_path / "q.mnn", cfg)[0] == 0
    layers = json.loads((tmp_path / "q.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    by_input = {l["input"][0]["name"]: l for l in layers}
    assert by_input["sum_relu"]["input"][0]["zeroPoint"] == 0
    assert any(l["output"][0]["zeroPoint"] != 0 for l in layers)       # conv outputs keep theirs


def test_debug_table_measured_on_the_int8_model(digits, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", path=str(digits["seq"]), input_type="sequence", debug=True)
    rc, stdout, _ = quantize(capsys, DIGITS_MODEL, tmp_path / "q.mnn", cfg, "--report-json", tmp_path / "r.json")
    assert rc == 0
    assert "per-layer INT8 vs float" in stdout and "overflow" in stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = doc["debug"]
    assert [r["layer"] for r in rows] and len(rows) == 4
    cosines = [r["cosine"] for r in rows]
    assert cosines == sorted(cosines) and all(0.9 < c <= 1.0 for c in cosines)
    assert all(0.0 <= r["overflow_ratio"] <= 1.0 for r in rows)
    # the last layer's cosine is the model output's cosine on the same samples
    fc = next(r for r in rows if r["layer"] == "fc__matmul_converted")
    assert fc["cosine"] == pytest.approx(doc["output_cosine"]["mean"], abs=1e-4)


def test_probe_copy_gives_the_real_int8_outputs(convnet, tmp_path):
    """Per-layer numbers come from a probe copy; its outputs must equal the real INT8 model's."""
    from mnnq.quantize import calibrate as cal
    from mnnq.quantize.writer import build_params, write_int8

    layers, _ = cal.find_layers(convnet["model"])
    tensors = cal.layer_tensors(layers)
    rng = np.random.default_rng(2)
    acts = {t: (float(rng.uniform(0.005, 0.02)), int(rng.integers(-127, 0))) for t in tensors}
    weights = {l.name: {"name": l.name, "bits": 8, "clampMin": -127, "clampMax": 127,
                        "scales": [float(v) for v in np.abs(l.weight).reshape(len(l.weight), -1).max(1) / 127]} for l in layers}
    params = build_params(layers, acts, weights, 127)
    probe = cal.build_probe_model(convnet["model"], tensors, tmp_path / "probe.mnn")
    write_int8(probe, tmp_path / "probe8.mnn", params, [])
    written = write_int8(convnet["model"], tmp_path / "real8.mnn", params, [l.name for l in layers])
    assert written["missing"] == []
    real = cal.TensorRunner(tmp_path / "real8.mnn", ["x"], ["y"])
    probed = cal.TensorRunner(tmp_path / "probe8.mnn", ["x"], ["y"], tensors, cal.PROBE_SUFFIX)
    for feeds in convnet["heldout"][:4]:
        (out_real, _), (out_probe, inner) = real.run(feeds), probed.run(feeds)
        np.testing.assert_array_equal(out_real["y"], out_probe["y"])
        assert set(inner) == set(tensors)


def test_rate_keeps_the_most_sensitive_layers_float(two_input, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", path=str(two_input["calib"]), input_type="sequence")
    out, report = tmp_path / "q.mnn", tmp_path / "r.json"
    rc, stdout, _ = quantize(capsys, two_input["model"], out, cfg, "--rate", "0.0005", "--metric", "cosine",
                             "--report-json", report)
    doc = json.loads(report.read_text())
    assert rc == 0 and doc["status"] == "MET" and "MET" in stdout, stdout
    assert doc["rounds"] >= 1 and doc["errors"]["cosine"] <= 0.0005
    kept = [l["name"] for l in doc["layers"] if l["status"] == "float"]
    assert kept and all("sensitivity rank" in l["reason"] for l in doc["layers"] if l["status"] == "float")
    points = doc["tradeoff"]["points"]
    assert len(points) == doc["rounds"] + 1 and points[0]["errors"]["cosine"] > 0.0005
    chosen = next(p for p in points if p["chosen"])
    assert set(chosen["float"]) == set(kept) and chosen["errors"]["cosine"] <= 0.0005
    assert all(p["layers_float"] >= len(kept) for p in points if p["holds"])
    assert sorted(set(int8_layers(out)) | set(kept)) == ["conv_a", "conv_b", "conv_mix", "fc__matmul_converted"]
    assert not set(int8_layers(out)) & set(kept)
    assert "layers kept float" in stdout


def test_rate_missed_writes_the_model_marked_and_exits_1(two_input, tmp_path, capsys, monkeypatch):
    from mnnq import plugin_manager
    from mnnq.hookspecs import hookimpl
    from mnnq.records import Metric

    class AlwaysBad:
        @hookimpl
        def mnnq_metrics(self):
            yield Metric(name="always_bad", summary="reports an error of 1", per_output=lambda ref, out: 1.0)

    real = plugin_manager.get_plugin_manager

    def with_fake(load=True):
        pm = real(load)
        pm.register(AlwaysBad(), name="always_bad")
        return pm

    monkeypatch.setattr(plugin_manager, "get_plugin_manager", with_fake)
    cfg = write_config(tmp_path / "cfg.json", path=str(two_input["calib"]), input_type="sequence")
    out = tmp_path / "q.mnn"
    rc, stdout, _ = quantize(capsys, two_input["model"], out, cfg, "--rate", "0.5", "--metric", "always_bad",
                             "--report-json", tmp_path / "r.json")
    assert rc == 1 and out.is_file() and "MISSED" in stdout
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "MISSED"


def test_skip_quant_op_names_keeps_layers_float(digits, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", path=str(digits["seq"]), input_type="sequence",
                       skip_quant_op_names=["conv1", "no_such_op"])
    out = tmp_path / "q.mnn"
    rc, stdout, _ = quantize(capsys, DIGITS_MODEL, out, cfg, "--report-json", tmp_path / "r.json")
    assert rc == 0
    assert int8_layers(out) == ["conv2", "conv3", "fc__matmul_converted"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {"name": "conv1", "reason": "listed in skip_quant_op_names"} in doc["other_float_ops"]
    assert any("no_such_op" in n for n in doc["notes"])


def test_ema_on_a_dynamic_shape_model(tmp_path, capsys):
    """quantized.out's EMA crashes on dynamic input shapes; samples of two sizes work here."""
    from mnnq.testing.models import OnnxGraph, export_and_convert, write_multi_testdir

    g = OnnxGraph(4)
    h = g.conv_relu(g.input("x", [1, 3, "H", "W"]), "c1", 3, 16, 3)
    h = g.conv(h, "c2", 16, 8, 1)
    g.node("Identity", [h], "y")
    g.output("y", [1, 8, "H", "W"])
    model = export_and_convert(g, tmp_path, "dynamic")
    rng = np.random.default_rng(5)
    samples = [{"x": rng.standard_normal((1, 3, s, s + 2)).astype(np.float32)} for s in (8, 12, 8, 12, 10, 6)]
    write_multi_testdir(tmp_path / "calib", [(f, {"y": np.zeros(1, np.float32)}) for f in samples])
    cfg = write_config(tmp_path / "cfg.json", path=str(tmp_path / "calib"), input_type="sequence",
                       feature_quantize_method="EMA", batch_size=2)
    out = tmp_path / "q.mnn"
    rc, stdout, _ = quantize(capsys, model, out, cfg)
    assert rc == 0, stdout
    mean, _ = heldout_cosine(model, out, samples[:2] + [{"x": rng.standard_normal((1, 3, 9, 5)).astype(np.float32)}])
    assert mean >= 0.997


def test_convs_around_a_signed_max_pool_are_int8(tmp_path, capsys):
    """MNN's INT8 max pooling gets negative codes wrong (tests/test_quantize_runtime.py); it runs
    only when the pool's input and output params are equal, so mnnq makes them differ: all three
    convs are INT8 and the output stays close to float."""
    from mnnq.testing.models import OnnxGraph, export_and_convert, write_multi_testdir

    g = OnnxGraph(6)
    h = g.conv(g.input("x", [1, 3, 12, 12]), "c1", 3, 16, 3)                     # signed output
    h = g.node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = g.conv_relu(h, "c2", 16, 16, 3)
    h = g.conv(h, "c3", 16, 8, 1)
    g.node("Identity", [h], "y")
    g.output("y", [1, 8, 6, 6])
    model = export_and_convert(g, tmp_path, "signed_pool")
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(12)]
    write_multi_testdir(tmp_path / "calib", [(f, {"y": np.zeros(1, np.float32)}) for f in feeds[:8]])
    cfg = write_config(tmp_path / "cfg.json", path=str(tmp_path / "calib"), input_type="sequence")
    out = tmp_path / "q.mnn"
    rc, stdout, _ = quantize(capsys, model, out, cfg, "--report-json", tmp_path / "r.json")
    assert rc == 0, stdout
    assert int8_layers(out) == ["c1", "c2", "c3"]
    layers = json.loads((tmp_path / "q.mnn.json").read_text())["algo"][0]["quantParams"]["layer"]
    params = {side[0]["name"]: (side[0]["scales"], side[0]["zeroPoint"]) for l in layers for side in (l["input"], l["output"])}
    assert params["c1"] != params["pool"]
    assert heldout_cosine(model, out, feeds[8:])[0] >= 0.999


def test_image_input_with_a_constant_second_input(two_input, digits, tmp_path, capsys):
    """Image input feeds the first input; the other gets the config's constant."""
    import MNN.cv as cv
    import MNN.expr as F

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(8)
    for i in range(4):
        img = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        cv.imwrite(str(tmp_path / "img" / f"{i}.png"), F.const(img.reshape(-1), [9, 9, 3], F.NHWC, F.uint8))
    cfg = write_config(tmp_path / "cfg.json", path=str(tmp_path / "img"), format="RGB", width=8, height=8,
                       normal=[1 / 255] * 3, inputs=[{"name": "b", "shape": [1, 3, 8, 8], "value": 0.5}])
    rc, stdout, _ = quantize(capsys, two_input["model"], tmp_path / "q.mnn", cfg, "--report-json", tmp_path / "r.json")
    assert rc == 0, stdout
    assert json.loads((tmp_path / "r.json").read_text())["calibration_samples"] == 4
    no_b = write_config(tmp_path / "bad.json", path=str(tmp_path / "img"), format="RGB", width=8, height=8)
    rc, _, err = quantize(capsys, two_input["model"], tmp_path / "q2.mnn", no_b)
    assert rc == 2 and "'b'" in err and not (tmp_path / "q2.mnn").exists()


def test_one_evaluation_sample_is_the_first(tiny_convnet, tmp_path):
    """--eval-samples 1 measures sample 0 (it divided by zero spreading one index)."""
    from mnnq.quantize.evaluate import _over, eval_indices

    assert eval_indices(5, 1) == [0] and eval_indices(5, 2) == [0, 4] and eval_indices(3, 5) == [0, 1, 2]
    # a non-finite error is over any bound, an infinite one included (no --rate: the bound is inf)
    assert _over(float("inf"), float("inf")) and _over(float("nan"), float("inf")) and not _over(1.0, float("inf"))
    config = tiny_convnet.calibration_config(tmp_path / "c.json")
    assert main(["quantize", str(tiny_convnet.model), str(tmp_path / "q.mnn"), str(config), "--eval-samples", "1"]) == 0
