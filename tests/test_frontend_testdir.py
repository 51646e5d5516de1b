"""`mnnq testdir make` (images / arrays / random, MNN or onnxruntime references) and `mnnq testdir show`."""
import json
import shutil
from importlib import resources

import numpy as np
import pytest

from mnnq.inputs import references
from mnnq.inputs.images import make_config, preprocess, read_bgr
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.testing import build_convnet, build_int_input, run_cli, write_multi_testdir, write_testdir
from mnnq.testing.models import OnnxGraph, export_and_convert
from mnnq.testset import load_testset

HAVE_ORT = references.have_onnxruntime()
IMAGENET = ["--format", "RGB", "--mean", "123.675", "116.28", "103.53", "--normal", "0.017125", "0.017507", "0.017429"]


def error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("mnnq: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MNNQ_CACHE", str(tmp_path_factory.getbasetemp() / "mnnq-cache"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    build_convnet(d)
    build_int_input(d)
    g = OnnxGraph(3)                      # an image classifier: [1,3,32,32] -> [1,5]
    h = g.conv_relu(g.input("image", [1, 3, 32, 32]), "conv1", 3, 8, 3)
    h = g.dense(g.gap_flatten(h), "fc", 8, 5)
    g.node("Identity", [h], "scores")
    g.output("scores", [1, 5])
    export_and_convert(g, d, "imagenet_like")
    g = OnnxGraph(4)                      # dynamic H, W
    h = g.conv_relu(g.input("x", [1, 3, "H", "W"]), "conv1", 3, 8, 3)
    g.node("Identity", [g.dense(g.gap_flatten(h), "fc", 8, 4)], "y")
    g.output("y", [1, 4])
    export_and_convert(g, d, "dynamic")
    g = OnnxGraph(5)                      # outputs under max_rel's 0.01 floor
    h = g.conv_relu(g.input("x", [1, 3, 8, 8]), "conv1", 3, 8, 3)
    h = g.dense(g.gap_flatten(h), "fc", 8, 4)
    g.node("Mul", [h, g.const("tiny", np.array(1e-4, np.float32))], "y")
    g.output("y", [1, 4])
    export_and_convert(g, d, "tiny_out")
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos: scikit-learn's two JPEGs, a PNG crop written with MNN.cv, and a non-image."""
    import MNN.cv as cv
    import MNN.expr as F

    d = tmp_path_factory.mktemp("photos")
    src = resources.files("sklearn.datasets") / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(str(src / name), d / name)
    crop = np.ascontiguousarray(read_bgr(d / "china.jpg")[100:300, 200:450])
    assert cv.imwrite(str(d / "crop.png"), F.const(crop.reshape(-1), list(crop.shape), F.NHWC, F.uint8))
    (d / "README.txt").write_text("not an image")
    return d


def outputs_of(model, testset_dir):
    ts = load_testset(testset_dir)
    m = LoadedModel(model, ts.input_names, ts.output_names)
    return ts, [m.run(s.inputs) for s in ts.samples]


# ------------------------------------------------------------------------------ make: random

def test_random_fallback_is_single_testdir_labelled_and_round_trips(models, tmp_path):
    out = tmp_path / "td"
    code, stdout, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(out)])
    assert code == 0, err
    assert "RANDOM" in stdout and "RANDOM data (the fallback)" in err
    meta = json.loads((out / "mnnq-testset.json").read_text())
    assert meta["random_fallback"] is True and meta["layout"] == "single" and meta["reference"]["kind"] == "mnn"
    assert meta["inputs"][0]["source"] == "random" and meta["inputs"][0]["range"] == [0.0, 1.0]
    assert (out / "input.json").is_file() and (out / "x.txt").is_file()
    ts, got = outputs_of(models / "convnet.mnn", out)
    assert ts.samples[0].inputs["x"].shape == (1, 3, 16, 16)
    assert 0 <= ts.samples[0].inputs["x"].min() and ts.samples[0].inputs["x"].max() < 1
    np.testing.assert_allclose(got[0]["y"].ravel(), ts.samples[0].references["y"], rtol=1e-6, atol=1e-7)
    code, stdout, _ = run_cli(["testdir", "show", str(out)])
    assert code == 0 and "RANDOM" in stdout and "fallback" in stdout


def test_explicit_random_is_seeded_and_needs_a_range_for_integer_inputs(models, tmp_path):
    base = ["testdir", "make", "--model", str(models / "int_input.mnn"), "--random", "--samples", "3"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "a")])
    assert code == 2 and "--input-range ids=LO,HI" in error_line(err)
    assert not (tmp_path / "a").exists()
    for name in ("a", "b"):
        code, _, err = run_cli([*base, "--out", str(tmp_path / name), "--input-range", "ids=0,15", "--seed", "7"])
        assert code == 0, err
    assert (tmp_path / "a" / "001" / "ids.txt").read_text() == (tmp_path / "b" / "001" / "ids.txt").read_text()
    meta = json.loads((tmp_path / "a" / "mnnq-testset.json").read_text())
    assert meta["random_fallback"] is False and meta["samples"] == 3
    ts, got = outputs_of(models / "int_input.mnn", tmp_path / "a")
    ids = np.concatenate([s.inputs["ids"].ravel() for s in ts.samples])
    assert np.all(ids == np.round(ids)) and ids.min() >= 0 and ids.max() <= 15
    assert "." not in (tmp_path / "a" / "000" / "ids.txt").read_text()     # written as integers
    for g, s in zip(got, ts.samples):
        np.testing.assert_allclose(g["y"].ravel(), s.references["y"], rtol=1e-5, atol=1e-6)


def test_dynamic_dimensions_need_explicit_sizes(models, tmp_path):
    model = str(models / "dynamic.mnn")
    code, _, err = run_cli(["testdir", "make", "--model", model, "--out", str(tmp_path / "a")])
    assert code == 2 and "--shape x=" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", model, "--out", str(tmp_path / "a"),
                            "--shape", "x=1,3,20,24"])
    assert code == 0, err
    assert load_testset(tmp_path / "a").samples[0].inputs["x"].shape == (1, 3, 20, 24)
    code, _, err = run_cli(["testdir", "make", "--model", model, "--out", str(tmp_path / "b"),
                            "--shape", "x=1,4,20,24"])
    assert code == 2 and "does not fit" in error_line(err)


# ------------------------------------------------------------------------------ make: arrays

def test_npy_stack_gives_a_multi_sample_set(models, tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)   # batch-1 model: 4 samples
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "td"
    code, stdout, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(out),
                                 "--npy", str(tmp_path / "x.npy")])
    assert code == 0, err
    assert "RANDOM" not in stdout + err
    ts, got = outputs_of(models / "convnet.mnn", out)
    assert [s.name for s in ts.samples] == ["000", "001", "002", "003"]
    for i, s in enumerate(ts.samples):
        np.testing.assert_allclose(s.inputs["x"], x[i:i + 1], rtol=1e-6)
        np.testing.assert_allclose(got[i]["y"].ravel(), s.references["y"], rtol=1e-6, atol=1e-7)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(out),
                            "--npy", str(tmp_path / "x.npy"), "--samples", "2"])
    assert code == 2 and "not empty" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(out),
                            "--npy", str(tmp_path / "x.npy"), "--samples", "2", "--force"])
    assert code == 0, err
    assert len(load_testset(out).samples) == 2


def test_npz_feeds_integer_and_float_inputs_by_name(models, tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "in.npz", ids=rng.integers(0, 16, (3, 1, 6)), x=rng.standard_normal((3, 1, 4, 1, 6)))
    out = tmp_path / "td"
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "int_input.mnn"), "--out", str(out),
                            "--npy", str(tmp_path / "in.npz"), "--reference", "mnn"])
    assert code == 0, err
    ts, got = outputs_of(models / "int_input.mnn", out)
    assert len(ts.samples) == 3
    for g, s in zip(got, ts.samples):
        np.testing.assert_allclose(g["y"].ravel(), s.references["y"], rtol=1e-5, atol=1e-6)
    # a bare .npy for a two-input model must say which input it feeds
    np.save(tmp_path / "ids.npy", rng.integers(0, 16, (1, 6)))
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "int_input.mnn"), "--out", str(tmp_path / "b"),
                            "--npy", str(tmp_path / "ids.npy")])
    assert code == 2 and "NAME=" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "int_input.mnn"), "--out", str(tmp_path / "b"),
                            "--npy", f"ids={tmp_path / 'ids.npy'}"])
    assert code == 2 and "x get no data" in error_line(err)
    np.save(tmp_path / "bad.npy", np.full((1, 3, 16, 16), np.nan, np.float32))
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(tmp_path / "c"),
                            "--npy", str(tmp_path / "bad.npy")])
    assert code == 2 and "NaN" in error_line(err)


# ------------------------------------------------------------------------------ make: images

def test_images_are_preprocessed_like_quantized_out(models, photos, tmp_path):
    out = tmp_path / "td"
    code, stdout, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"), "--out", str(out),
                                 "--images", str(photos), *IMAGENET, "--reference", "mnn"])
    assert code == 0, err
    assert "README.txt" in err                                      # skipped, and said so
    meta = json.loads((out / "mnnq-testset.json").read_text())
    assert meta["inputs"][0]["files"] == ["china.jpg", "crop.png", "flower.jpg"]
    assert meta["inputs"][0]["preprocessing"]["width"] == 32 and meta["random_inputs"] is False
    ts, got = outputs_of(models / "imagenet_like.mnn", out)
    assert len(ts.samples) == 3
    # Independent check on the PNG: align-corners bilinear resize in numpy, BGR -> RGB, (v - mean) * normal.
    bgr = read_bgr(photos / "crop.png").astype(np.float64)
    h, w = bgr.shape[:2]
    ys, xs = np.linspace(0, h - 1, 32), np.linspace(0, w - 1, 32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    resized = (bgr[y0][:, x0] * (1 - wy) * (1 - wx) + bgr[y0][:, x1] * (1 - wy) * wx
               + bgr[y1][:, x0] * wy * (1 - wx) + bgr[y1][:, x1] * wy * wx)[..., ::-1]
    expected = ((resized - [123.675, 116.28, 103.53]) * [0.017125, 0.017507, 0.017429]).transpose(2, 0, 1)[None]
    assert np.abs(ts.samples[1].inputs["image"] - expected).max() < 2 * 0.0176   # within 2 pixel levels
    for g, s in zip(got, ts.samples):
        np.testing.assert_allclose(g["scores"].ravel(), s.references["scores"], rtol=1e-5, atol=1e-6)


def test_image_config_file_and_size_checks(models, photos, tmp_path):
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(f"path: {photos}\nformat: BGR\nmean: [103.94, 116.78, 123.68]\nnormal: [0.017, 0.017, 0.017]\n"
                   "used_image_num: 2\nfeature_quantize_method: KL\n")
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "a"), "--image-config", str(cfg)])
    assert code == 0, err
    meta = json.loads((tmp_path / "a" / "mnnq-testset.json").read_text())
    assert meta["samples"] == 2 and meta["inputs"][0]["preprocessing"]["format"] == "BGR"
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "b"), "--images", str(photos), "--width", "64"])
    assert code == 2 and "--width 64 does not match" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "b"), "--images", str(photos), "--format", "GRAY"])
    assert code == 2 and "takes 3" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "b"), "--images", str(photos), "--format", "RGB", "--mean", "1", "2"])
    assert code == 2 and "'mean': format RGB has 3 channel(s), so 'mean' needs 3 values" in error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "b"), "--images", str(empty)])
    assert code == 2 and "no readable images" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "dynamic.mnn"), "--out", str(tmp_path / "b"),
                            "--images", str(photos), "--samples", "1"])
    assert code == 2 and "--height" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "dynamic.mnn"), "--out", str(tmp_path / "b"),
                            "--images", str(photos), "--samples", "1", "--width", "40", "--height", "30"])
    assert code == 0, err
    assert load_testset(tmp_path / "b").samples[0].inputs["x"].shape == (1, 3, 30, 40)


def test_images_smaller_than_the_input_are_upsampled(models, photos, tmp_path):
    import MNN.cv as cv
    import MNN.expr as F

    small = tmp_path / "small"
    small.mkdir()
    patch = np.ascontiguousarray(read_bgr(photos / "flower.jpg")[200:220, 300:320])     # 20x20 < 32x32
    assert cv.imwrite(str(small / "patch.png"), F.const(patch.reshape(-1), [20, 20, 3], F.NHWC, F.uint8))
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "imagenet_like.mnn"),
                            "--out", str(tmp_path / "td"), "--images", str(small)])
    assert code == 0, err
    x = load_testset(tmp_path / "td").samples[0].inputs["image"]
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 0, 0], patch[0, 0].astype(float))           # BGR, corners kept
    np.testing.assert_allclose(x[0, :, -1, -1], patch[-1, -1].astype(float))


def test_same_pixels_as_mnnq_quantize_calibration(photos):
    from mnnq.quantize import inputs
    from mnnq.quantize.config import QuantizeConfig

    cfg = make_config({"format": "RGB", "mean": [1, 2, 3], "normal": [0.5, 0.25, 2], "width": 40, "height": 30,
                       "center_crop_h": 0.8})
    bgr = read_bgr(photos / "flower.jpg")
    q = QuantizeConfig(path=photos, format="RGB", mean=list(cfg.mean), normal=list(cfg.normal), width=40,
                       height=30, center_crop_h=0.8)
    np.testing.assert_array_equal(preprocess(bgr, cfg), inputs.preprocess(bgr, q, 40, 30))


# ------------------------------------------------------------------------------ make: references

@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime (mnnq[onnx]) not installed")
def test_onnx_source_gets_onnxruntime_references_and_the_conversion_error(models, tmp_path):
    out = tmp_path / "td"
    code, stdout, err = run_cli(["testdir", "make", "--model", str(models / "convnet.onnx"), "--out", str(out),
                                 "--random", "--samples", "2"])
    assert code == 0, err
    meta = json.loads((out / "mnnq-testset.json").read_text())
    assert meta["reference"]["kind"] == "onnxruntime"
    assert 0 <= meta["conversion_error"]["y"] < 1e-4
    assert "conversion error" in stdout
    # the converter's own check accepts the test dir
    code, stdout, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(models / "convnet.onnx"),
                                 "--MNNModel", str(tmp_path / "c.mnn"), "--testdir", str(out / "000")])
    assert code == 0 and "TEST_SUCCESS" in stdout, err


def test_onnxruntime_reference_without_onnxruntime_names_the_pip_command(models, tmp_path, monkeypatch):
    monkeypatch.setattr(references, "have_onnxruntime", lambda: False)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.onnx"), "--out", str(tmp_path / "a"),
                            "--reference", "onnxruntime"])
    assert code == 2 and "pip install 'mnnq[onnx]'" in error_line(err)
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.onnx"), "--out", str(tmp_path / "a")])
    assert code == 0, err     # auto falls back to the float MNN model
    assert json.loads((tmp_path / "a" / "mnnq-testset.json").read_text())["reference"]["kind"] == "mnn"
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(tmp_path / "b"),
                            "--reference", "onnxruntime"])
    assert code == 2 and "needs an ONNX model" in error_line(err)


# ------------------------------------------------------------------------------ show

def test_make_and_show_flag_outputs_under_the_floor(models, tmp_path):
    out = tmp_path / "td"
    code, _, err = run_cli(["testdir", "make", "--model", str(models / "tiny_out.mnn"), "--out", str(out),
                            "--random", "--samples", "2"])
    assert code == 0, err
    assert "under max_rel's 0.01 floor in every sample" in err
    code, stdout, _ = run_cli(["testdir", "show", str(out)])
    assert code == 1
    assert "PROBLEM: output 'y'" in stdout and "can never fail" in stdout


def test_show_flags_nan_size_mismatch_and_missing_files(tmp_path):
    x = np.ones((1, 3, 2, 2), np.float32)
    write_multi_testdir(tmp_path / "ts", [({"x": x}, {"y": np.array([1.0, 2.0])}),
                                          ({"x": x * 2}, {"y": np.array([1.0, 2.0, 3.0])})])
    (tmp_path / "ts" / "000" / "x.txt").write_text("1 2 nan " + "1 " * 9)
    code, stdout, _ = run_cli(["testdir", "show", str(tmp_path / "ts")])
    assert code == 1
    assert "NaN or Inf" in stdout and "other samples have 2" in stdout
    (tmp_path / "ts" / "001" / "x.txt").write_text("1\n2\n1e60\n" + "1\n" * 9)
    code, stdout, _ = run_cli(["testdir", "show", str(tmp_path / "ts")])
    assert code == 1 and "beyond float32's range (first at line 3)" in " ".join(stdout.split())
    (tmp_path / "ts" / "001" / "y.txt").unlink()
    code, stdout, _ = run_cli(["testdir", "show", str(tmp_path / "ts")])
    assert code == 1 and "no file for output 'y'" in stdout
    write_testdir(tmp_path / "short", {"x": x}, {"y": np.array([1.0, 2.0])})
    (tmp_path / "short" / "x.txt").write_text("1 2 3")
    code, stdout, _ = run_cli(["testdir", "show", str(tmp_path / "short")])
    assert code == 1 and "3 values but shape [1, 3, 2, 2] needs 12" in stdout


def test_show_clean_set_and_model_check(models, tmp_path):
    out = tmp_path / "td"
    assert run_cli(["testdir", "make", "--model", str(models / "convnet.mnn"), "--out", str(out), "--random",
                    "--samples", "3"]).code == 0
    code, stdout, _ = run_cli(["testdir", "show", str(out), "--model", str(models / "convnet.mnn")])
    assert code == 0 and "3 samples" in stdout and "no problems found" in stdout
    code, stdout, _ = run_cli(["testdir", "show", str(out), "--model", str(models / "int_input.mnn")])
    assert code == 1 and "model inputs with no data: ids" in stdout


def test_show_unreadable_dirs_exit_2(tmp_path):
    code, _, err = run_cli(["testdir", "show", str(tmp_path / "missing")])
    assert code == 2 and "not found" in error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["testdir", "show", str(tmp_path / "empty")])
    assert code == 2 and "not an MNN test set" in error_line(err)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "input.json").write_text("{not json")
    code, _, err = run_cli(["testdir", "show", str(tmp_path / "broken")])
    assert code == 2 and "input.json" in error_line(err)
