"""The snr_db metric: the transform, skipping, and `mnnq auto-quant` / `mnnq validate` with it."""
import json

import numpy as np
import pytest

from mnnq_plugin_example import snr
from mnnq_plugin_example.snr import rate_for, snr_db, snr_error, snr_of


def test_known_snr():
    ref = np.ones(1000)
    out = ref + 0.01                                    # noise power 1e-4 per value: SNR 40 dB
    assert snr_db(ref, out) == pytest.approx(40.0)
    assert snr_error(ref, out) == pytest.approx(60.0)
    assert snr_of(snr_error(ref, out)) == pytest.approx(40.0)


def test_exact_output_has_zero_error_and_zero_reference_is_skipped():
    ref = np.arange(10, dtype=np.float64)
    assert snr_error(ref, ref.copy()) == 0.0
    assert snr_error(np.zeros(5), np.ones(5)) is None


def test_more_noise_is_a_higher_error():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(500)
    noise = rng.standard_normal(500)
    errors = [snr_error(ref, ref + s * noise) for s in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]
    assert errors == sorted(errors) and errors[0] > 0


def test_rate_round_trip():
    assert rate_for(30) == 70.0 and snr_of(rate_for(25.5)) == 25.5


def test_display_shows_the_snr(mnnq_empty_pm):
    mnnq_empty_pm.register(snr, name="example_snr")
    metric = mnnq_empty_pm.metrics()["snr_db"]
    assert metric.display(70.0) == "SNR 30.00 dB"


def test_auto_quant_and_validate_with_snr(mnnq_install, mnnq_cli, tiny_convnet, tmp_path):
    mnnq_install(snr, "example_snr")
    q, report = tmp_path / "q.mnn", tmp_path / "report.json"
    rate = rate_for(25)                                 # SNR >= 25 dB
    run = mnnq_cli("auto-quant", "--model", tiny_convnet.model, "--quant-model", q, "--test-dir",
                   tiny_convnet.test_dir, "--metric", "snr_db", "--rate", rate, "--report-json", report)
    assert run.code == 0, run.out + run.err
    data = json.loads(report.read_text())
    assert data["metric"] == "snr_db" and data["errors"]["snr_db"] <= rate
    assert any(layer["bits"] == 4 for layer in data["layers"])
    assert mnnq_cli("validate", "--model", q, "--test-dir", tiny_convnet.test_dir, "--metric", "snr_db",
                    "--rate", rate).code == 0
    # a budget the model cannot hold: SNR >= 90 dB
    assert mnnq_cli("validate", "--model", q, "--test-dir", tiny_convnet.test_dir, "--metric", "snr_db",
                    "--rate", rate_for(90)).code == 1
