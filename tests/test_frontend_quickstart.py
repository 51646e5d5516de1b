"""README's quickstart, end to end with mnnq commands only: ONNX file -> `mnnq testdir make` (real
photos) -> `mnnq auto-quant` -> `mnnq validate`; the slow group runs it on a pretrained ImageNet model."""
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from mnnq.inputs.images import read_bgr
from mnnq.testing import run_cli
from mnnq.testing.models import OnnxGraph
from test_frontend_testdir import IMAGENET


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNNQ_CACHE", str(tmp_path / "mnnq-cache"))


def write_photos(folder: Path, crops: int = 4) -> Path:
    """scikit-learn's two photos plus ``crops`` PNG crops / mirrors of them (written with MNN.cv)."""
    import MNN.cv as cv
    import MNN.expr as F

    folder.mkdir(parents=True, exist_ok=True)
    src = resources.files("sklearn.datasets") / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(str(src / name), folder / name)
    rng = np.random.default_rng(0)
    for i in range(crops):
        img = read_bgr(folder / ("china.jpg", "flower.jpg")[i % 2])
        side = int(rng.integers(150, 400))
        y, x = int(rng.integers(0, img.shape[0] - side)), int(rng.integers(0, img.shape[1] - side))
        crop = img[y:y + side, x:x + side][:, ::-1 if i % 3 == 0 else 1]
        crop = np.ascontiguousarray(crop)
        cv.imwrite(str(folder / f"crop{i}.png"), F.const(crop.reshape(-1), list(crop.shape), F.NHWC, F.uint8))
    return folder


def small_cnn(path: Path) -> Path:
    """A small image CNN in ONNX: [1,3,48,48] -> 3 convs (3x3, depthwise, 1x1) -> GAP -> MatMul -> [1,10]."""
    g = OnnxGraph(11)
    h = g.conv_relu(g.input("input", [1, 3, 48, 48]), "conv1", 3, 32, 3)
    h = g.conv_relu(h, "dw2", 32, 32, 3, group=32)
    h = g.conv_relu(h, "conv3", 32, 64, 1)
    g.node("Identity", [g.dense(g.gap_flatten(h), "fc", 64, 10)], "logits")
    g.output("logits", [1, 10])
    return g.save(path, "small_cnn")


def quickstart(model_onnx: Path, work: Path, auto_quant_model: Path):
    photos = write_photos(work / "photos")
    code, out, err = run_cli(["testdir", "make", "--model", str(model_onnx), "--out", str(work / "testset"),
                              "--images", str(photos), *IMAGENET])
    assert code == 0, err
    assert "RANDOM" not in out + err
    code, out, err = run_cli(["testdir", "show", str(work / "testset")])
    assert code == 0, out
    q = work / "model_q.mnn"
    code, out, err = run_cli(["auto-quant", "--model", str(auto_quant_model), "--quant_model", str(q),
                              "--test_dir", str(work / "testset"), "--report-json", str(work / "aq.json")])
    assert code == 0, out + err
    code, out, err = run_cli(["validate", "--model", str(q), "--test-dir", str(work / "testset"), "--rate", "0.05"])
    assert code == 0, out + err
    return json.loads((work / "aq.json").read_text())


def test_quickstart_with_an_explicit_convert_step(tmp_path):
    onnx_path = small_cnn(tmp_path / "model.onnx")
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(onnx_path),
                              "--MNNModel", str(tmp_path / "model.mnn")])
    assert code == 0, err
    report = quickstart(onnx_path, tmp_path, tmp_path / "model.mnn")
    assert report["size_after_bytes"] < report["size_before_bytes"]


def test_quickstart_auto_quant_takes_the_onnx_file(tmp_path):
    onnx_path = small_cnn(tmp_path / "model.onnx")
    report = quickstart(onnx_path, tmp_path, onnx_path)
    assert report["size_after_bytes"] < report["size_before_bytes"]


@pytest.mark.slow
def test_pretrained_efficientnet_from_onnx_with_real_photos(tmp_path):
    from benchmarks.pretrained import prepare

    model = prepare("efficientnet_lite0")
    onnx_path = tmp_path / "efficientnet_lite0.onnx"
    onnx_path.symlink_to(model.onnx)
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(onnx_path),
                              "--MNNModel", str(tmp_path / "model.mnn")])
    assert code == 0, err
    report = quickstart(onnx_path, tmp_path, tmp_path / "model.mnn")
    meta = json.loads((tmp_path / "testset" / "mnnq-testset.json").read_text())
    assert meta["samples"] == 6 and meta["inputs"][0]["source"] == "images"
    assert report["size_after_bytes"] < 0.5 * report["size_before_bytes"]
