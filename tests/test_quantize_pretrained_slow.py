"""``mnnq quantize`` on real pretrained models vs MNN's native calibration (quantized.out).

Slow group (``python -m pytest -m slow``): the models come from benchmarks/pretrained.py (built
on first use from the packages in benchmarks/README.md; skipped when they are missing). Each
method calibrates on the model's ``testset`` and must reach at least the native KL result's
held-out output cosine (mean and min over samples).
"""
import json

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.mnn_backend.native import run_tool
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.testset import load_testset

pytestmark = pytest.mark.slow


def prepared(name):
    from benchmarks.pretrained import MissingPackages, prepare

    try:
        return prepare(name)
    except MissingPackages as exc:
        pytest.skip(str(exc))


def heldout_cosine(float_mnn, quant_mnn, heldout):
    ts = load_testset(heldout)
    ref = LoadedModel(float_mnn, ts.input_names, ts.output_names)
    got = LoadedModel(quant_mnn, ts.input_names, ts.output_names)
    cos = []
    for s in ts.samples:
        a, b = ref.run(s.inputs), got.run(s.inputs)
        worst = 1.0
        for n in ts.output_names:
            x, y = a[n].ravel().astype(np.float64), b[n].ravel().astype(np.float64)
            worst = min(worst, float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) if np.all(np.isfinite(y)) else 0.0)
        cos.append(worst)
    return float(np.mean(cos)), float(np.min(cos))


@pytest.fixture(scope="module", params=["efficientnet_lite0", "mtcnn_onet"])
def model_and_native(request, tmp_path_factory):
    model = prepared(request.param)
    work = tmp_path_factory.mktemp(request.param)
    cfg = work / "kl.json"
    cfg.write_text(json.dumps({"path": str(model.testset), "input_type": "sequence"}))
    native = work / "native_kl.mnn"
    run = run_tool("mnnquant", ["quantized.out", str(model.float_mnn), str(native), str(cfg)])
    assert not run.crashed and native.is_file(), run.tail()
    return model, heldout_cosine(model.float_mnn, native, model.heldout)


@pytest.mark.parametrize("feature", ["KL", "ADMM", "EMA", "MSE"])
def test_each_method_at_least_matches_native_kl(feature, model_and_native, tmp_path):
    model, (native_mean, native_min) = model_and_native
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"path": str(model.testset), "input_type": "sequence",
                               "feature_quantize_method": feature}))
    out = tmp_path / "q.mnn"
    assert main(["quantize", str(model.float_mnn), str(out), str(cfg)]) == 0
    mean, worst = heldout_cosine(model.float_mnn, out, model.heldout)
    assert mean >= native_mean and worst >= native_min, ((mean, worst), (native_mean, native_min))
    assert out.stat().st_size < 0.5 * model.float_mnn.stat().st_size


def test_rate_on_a_real_model(tmp_path):
    model = prepared("efficientnet_lite0")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"path": str(model.testset), "input_type": "sequence"}))
    out, report = tmp_path / "q.mnn", tmp_path / "r.json"
    assert main(["quantize", str(model.float_mnn), str(out), str(cfg), "--rate", "0.005", "--metric", "cosine",
                 "--report-json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["status"] == "MET" and doc["errors"]["cosine"] <= 0.005 and doc["rounds"] >= 1
    assert doc["layers_int8"] > 0


def test_yolo_int8_is_close_and_the_same_in_every_session(tmp_path):
    """YOLOv8n (SiLU, C2f concat/split, SPPF max pools): the runtime gives linked tensors one set
    of params, so a fresh session of the written file computes the same outputs; and the default
    reaches the issue-14 quality on the held-out photos."""
    model = prepared("yolov8n_320")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"path": str(model.testset), "input_type": "sequence"}))
    out = tmp_path / "q.mnn"
    assert main(["quantize", str(model.float_mnn), str(out), str(cfg)]) == 0
    mean, worst = heldout_cosine(model.float_mnn, out, model.heldout)
    assert mean >= 0.999 and worst >= 0.997, (mean, worst)
    ts = load_testset(model.heldout)
    feeds = ts.samples[0].inputs
    runs = [LoadedModel(out, ts.input_names, ts.output_names).run(feeds) for _ in range(4)]
    for other in runs[1:]:
        for name, value in runs[0].items():
            np.testing.assert_array_equal(value, other[name])
