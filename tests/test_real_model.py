"""A real pretrained model, end to end, in every test run (CI included): YOLOv8n at 320x320
(SiLU), the ONNX file the ``nudenet`` wheel ships (installed by the ``test`` extra), on real
photos (scikit-learn's bundled sample images, cropped and mirrored with OpenCV, which nudenet
brings). One module-scoped flow, as a user runs it:

``testdir make`` from the ONNX source (references from onnxruntime) -> ``auto-quant`` on the
ONNX file (converted once into mnnq's cache) -> ``validate`` of the written model -> ``quantize``
(full INT8, quantized.out config) -> ``validate`` of the INT8 model with cosine.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.testing import run_cli

RATE = 0.05
INT8_COSINE_RATE = 0.01   # 1 - cosine similarity of the INT8 model's output, worst sample
PREPROCESS = ["--format", "RGB", "--mean", "0", "0", "0", "--normal", *["0.003921569"] * 3,
              "--width", "320", "--height", "320"]


def yolo_onnx() -> Path:
    spec = importlib.util.find_spec("nudenet")
    assert spec is not None and spec.submodule_search_locations, \
        "the real-model test needs the nudenet wheel: pip install -e '.[test]'"
    path = Path(list(spec.submodule_search_locations)[0]) / "320n.onnx"
    assert path.is_file(), f"{path} is missing from the nudenet wheel"
    return path


def photos(folder: Path) -> Path:
    """Eight views of scikit-learn's two bundled 427x640 photos: whole, left and right halves
    (427x320), and turned 180 degrees."""
    import cv2
    import sklearn.datasets

    images = Path(sklearn.datasets.__file__).parent / "images"
    folder.mkdir()
    for name in ("china", "flower"):
        img = cv2.imread(str(images / f"{name}.jpg"))
        h, w = img.shape[:2]
        views = {"whole": img, "left": img[:, : w // 2], "right": img[:, w // 2:], "mirror": img[::-1, ::-1]}
        for view, pixels in views.items():
            cv2.imwrite(str(folder / f"{name}-{view}.png"), np.ascontiguousarray(pixels))
    return folder


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    work = tmp_path_factory.mktemp("real-yolo")
    onnx = yolo_onnx()
    images = photos(work / "images")
    run = run_cli(["testdir", "make", "--model", onnx, "--out", work / "testset", "--images", images,
                   "--shape", "images=1,3,320,320", *PREPROCESS])
    assert run.code == 0, run.out + run.err
    return {"work": work, "onnx": onnx, "images": images, "testset": work / "testset"}


def test_auto_quant_meets_the_rate_on_the_written_model(flow):
    q, report = flow["work"] / "q.mnn", flow["work"] / "q.json"
    run = run_cli(["auto-quant", "--model", flow["onnx"], "--quant_model", q, "--test_dir", flow["testset"],
                   "--rate", str(RATE), "--report-json", report])
    assert run.code == 0, run.out + run.err
    data = json.loads(report.read_text())
    assert data["evaluator"] == "fast" and data["errors"]["max_rel"] <= RATE
    assert data["size_after_bytes"] < 0.35 * data["size_before_bytes"]   # weights at 8 bits or fewer
    check = run_cli(["validate", "--model", q, "--test-dir", flow["testset"], "--rate", str(RATE),
                     "--memory-mode", data["memory_mode"]])
    assert check.code == 0, check.out + check.err


def test_quantize_writes_an_int8_model_that_validates(flow):
    config = flow["work"] / "calib.json"
    config.write_text(json.dumps({"path": str(flow["images"]), "format": "RGB", "mean": [0, 0, 0],
                                  "normal": [1 / 255] * 3, "width": 320, "height": 320}))
    int8, report = flow["work"] / "int8.mnn", flow["work"] / "int8.json"
    run = run_cli(["quantize", _float_mnn(flow), int8, config,
                   "--report-json", report])
    assert run.code == 0, run.out + run.err
    data = json.loads(report.read_text())
    assert data["layers_int8"] >= 0.7 * (data["layers_int8"] + len(data["layers_float"]))
    check = run_cli(["validate", "--model", int8, "--test-dir", flow["testset"], "--metric", "cosine",
                     "--rate", str(INT8_COSINE_RATE)])
    assert check.code == 0, check.out + check.err


def _float_mnn(flow) -> Path:
    """The float .mnn of the ONNX source (``mnnq convert``, as a user would write it)."""
    out = flow["work"] / "float.mnn"
    if not out.is_file():
        run = run_cli(["convert", "-f", "ONNX", "--modelFile", flow["onnx"], "--MNNModel", out])
        assert run.code == 0, run.out + run.err
    return out
