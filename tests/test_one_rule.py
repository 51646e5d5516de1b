"""Rules that more than one command applies have one implementation, and the commands agree on
real models. quantize's measurement of an INT8 model (against the float model's outputs) and
validate's (against a test set holding those same outputs) use the same comparison and cosine:
the worst sample's output cosine quantize reports is 1 - the cosine error validate measures.
(The block rule, the params entries the converter reads and the crash wording are pinned in
test_weight_sim.py, test_params_rule.py and test_bad_inputs.py.)"""
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.measure import Comparison, cosine_similarity
from mnnq.plugin_manager import get_plugin_manager
from mnnq.testing import run_cli
from mnnq.testset import Sample


def test_quantize_and_validate_measure_an_int8_model_alike(tiny_convnet, tmp_path):
    config = tiny_convnet.calibration_config(tmp_path / "calib.json")
    int8, report = tmp_path / "int8.mnn", tmp_path / "report.json"
    run = run_cli(["quantize", tiny_convnet.model, int8, config, "--report-json", report])
    assert run.code == 0, run.out + run.err
    worst_cosine = json.loads(report.read_text())["output_cosine"]["min"]
    gate = tmp_path / "gate.json"
    run = run_cli(["validate", "--model", int8, "--test-dir", tiny_convnet.test_dir, "--metric", "cosine",
                   "--rate", "1", "--report-json", gate])
    assert run.code == 0, run.out + run.err
    cosine_error = json.loads(gate.read_text())["models"][0]["errors"]["cosine"]
    assert cosine_error == pytest.approx(1.0 - worst_cosine, abs=1e-7)


def test_the_metric_cosine_is_the_shared_cosine():
    rng = np.random.default_rng(0)
    metric = get_plugin_manager().metric("cosine")
    for a, b in [(rng.standard_normal(50), rng.standard_normal(50)), (np.zeros(4), np.zeros(4)),
                 (np.zeros(4), np.ones(4))]:
        assert metric.per_output(a, b) == pytest.approx(max(0.0, 1.0 - cosine_similarity(a, b)))


def test_a_size_mismatch_is_bad_input_for_a_test_set_and_a_failure_for_mnnq_references():
    from mnnq.errors import BadInput

    metrics = get_plugin_manager().metrics()
    sample = Sample("000", Path("000"), {}, {"y": np.ones(4)})
    with pytest.raises(BadInput, match="regenerate the test set"):
        Comparison(metrics, "max_rel").add(sample, {"y": np.ones(3)})
    lenient = Comparison(metrics, None, mismatch_fails=True)
    lenient.add(sample, {"y": np.ones(3)})
    assert lenient.error("max_rel") == float("inf") and lenient.nonfinite == ["000/y"]
