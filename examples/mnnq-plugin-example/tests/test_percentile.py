"""The percentile feature method: streamed histogram, clipping, zero point, and `mnnq quantize`."""
import json

import numpy as np
import pytest

from mnnq_plugin_example import percentile
from mnnq_plugin_example.percentile import AbsHistogram, PercentileObserver


def test_streamed_quantile_matches_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(5000) * (1 + i / 10) for i in range(40)]   # range grows: bins merge
    hist = AbsHistogram(bins=1024)
    for c in chunks:
        hist.update(c)
    exact = np.percentile(np.abs(np.concatenate(chunks)), 99.99)
    assert hist.quantile(0.9999) == pytest.approx(exact, abs=hist.width)
    assert hist.total == 40 * 5000


def test_memory_does_not_grow_with_batches():
    rng = np.random.default_rng(1)
    obs = PercentileObserver()
    for i in range(300):
        obs.update(rng.standard_normal((1, 4, 8, 8)) * (i + 1))
    assert obs.hist.counts.shape == (percentile.BINS,)


def test_outliers_are_clipped_and_max_is_not_used():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(200_000)
    x[123] = 1000.0                                     # one outlier
    obs = PercentileObserver()
    obs.update(x)
    scale, zero = obs.finish(8, 127)
    assert zero == 0
    assert scale * 127 == pytest.approx(np.percentile(np.abs(x), 99.99), rel=0.02)
    assert scale * 127 < 10.0                           # absmax would give 1000


def test_non_negative_tensors_use_the_zero_point():
    obs = PercentileObserver()
    obs.update(np.maximum(np.random.default_rng(3).standard_normal(10_000), 0.0))   # a ReLU output
    scale, zero = obs.finish(8, 127)
    assert zero == -127 and scale > 0
    top = scale * (127 - zero)                          # real value of q = +127
    assert top == pytest.approx(obs.hist.quantile(0.9999))


def test_all_zero_tensor_leaves_the_scale_to_the_host():
    obs = PercentileObserver()
    obs.update(np.zeros((1, 2, 4, 4)))
    assert obs.finish(8, 127) == (0.0, 0)


def test_registers_a_feature_method(mnnq_empty_pm):
    mnnq_empty_pm.register(percentile, name="example_percentile")
    method = mnnq_empty_pm.feature_methods()["percentile"]
    observer = method.make_observer()
    observer.update(np.linspace(-1, 1, 101))
    assert observer.finish(8, 127)[0] > 0


def test_mnnq_quantize_calibrates_with_percentile(mnnq_install, mnnq_cli, tiny_convnet, tmp_path):
    mnnq_install(percentile, "example_percentile")     # a no-op when the package is installed
    config = tiny_convnet.calibration_config(tmp_path / "calib.json", feature_quantize_method="percentile")
    report = tmp_path / "report.json"
    run = mnnq_cli("quantize", tiny_convnet.model, tmp_path / "int8.mnn", config, "--report-json", report)
    assert run.code == 0, run.out + run.err
    data = json.loads(report.read_text())
    assert data["feature_quantize_method"] == "percentile"
    assert data["layers_int8"] == 5
    assert data["output_cosine"]["min"] > 0.999
