"""Only the metric that decides (``--metric``) must count an output; quick screening uses samples it counts.

(a) A voice-activity-like model (three inputs, one an int64 scalar, a recurrent state) whose outputs
stay under max_rel's 0.01 floor: with ``--metric cosine`` auto-quant, validate and quantize work,
max_rel is reported as not measured (null in JSON, "n/a" in the terminal), and with max_rel
deciding the job stops with exit 2.

(b) A test set whose first samples are blind for max_rel (a bias-free, hence positively homogeneous,
convnet fed near-zero inputs) but whose later ones are not: default auto-quant (max_rel) screens on
the informative samples and succeeds; a test set blind everywhere exits 2 naming the metric.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mnnq.autoquant.samples import QUICK_SAMPLES, QuickSamples
from mnnq.measure import informative_samples, informative_subset
from mnnq.plugin_manager import get_plugin_manager
from mnnq.testing import (
    OnnxGraph,
    build_quiet_recurrent,
    export_and_convert,
    file_digests,
    reference_outputs,
    run_cli,
    write_calibration_config,
    write_multi_testdir,
)
from mnnq.testing.models import QUIET_OUTPUT_MAX
from mnnq.testset import load_testset


def strict_json(path):
    """The JSON document at ``path``; NaN / Infinity (not JSON) fail."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


def wide(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# (a) tiny outputs: max_rel is blind, cosine decides


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    model = build_quiet_recurrent(root)
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(4):
        feeds = {"x": rng.standard_normal((1, 4, 1, 16)).astype(np.float32),
                 "state": (0.1 * rng.standard_normal((1, 16))).astype(np.float32),
                 "sr": np.array(16000, np.int64)}
        cases.append((feeds, reference_outputs(model, feeds)))
    write_multi_testdir(root / "testset", cases)
    assert max(float(np.abs(v).max()) for _, refs in cases for v in refs.values()) < QUIET_OUTPUT_MAX
    return model, root / "testset"


def test_scalar_input_model_with_tiny_outputs_under_cosine(quiet, tmp_path):
    model, testset = quiet
    assert json.loads((testset / "000" / "input.json").read_text())["inputs"][2] == {"name": "sr", "shape": []}
    sources = file_digests(model.parent)
    q, report = tmp_path / "q.mnn", tmp_path / "aq.json"
    run = run_cli(["auto-quant", "--model", model, "--quant_model", q, "--test_dir", testset, "--rate", "0.02",
                   "--metric", "cosine", "--report-json", report])
    assert run.code == 0, run.err
    doc = strict_json(report)
    assert doc["errors"]["max_rel"] is None and doc["float_model_errors"]["max_rel"] is None
    assert 0 < doc["errors"]["cosine"] <= 0.02
    assert "error max_rel  n/a: skips every output" in run.out

    summary, svg, gate = tmp_path / "s.md", tmp_path / "r.svg", tmp_path / "v.json"
    run = run_cli(["validate", "--model", q, "--test-dir", testset, "--rate", "0.02", "--metric", "cosine",
                   "--report-json", gate, "--summary-md", summary, "--svg", svg])
    assert run.code == 0, run.err
    measured = strict_json(gate)["models"][0]
    assert measured["errors"]["max_rel"] is None and measured["errors"]["cosine"] == pytest.approx(
        doc["errors"]["cosine"], abs=1e-3)  # memory mode normal here, low (its default) in auto-quant
    assert "metric max_rel: n/a: skips every output" in wide(run.out) and svg.stat().st_size > 0

    int8, qreport = tmp_path / "int8.mnn", tmp_path / "q.json"
    run = run_cli(["quantize", model, int8, write_calibration_config(tmp_path / "cal.json", testset),
                   "--rate", "0.02", "--metric", "cosine", "--report-json", qreport])
    assert run.code == 0, run.err
    qdoc = strict_json(qreport)
    assert qdoc["errors"]["max_rel"] is None and 0 <= qdoc["errors"]["cosine"] <= 0.02
    assert file_digests(model.parent) == sources


def test_api_reports_a_blind_metric_as_none(quiet, tmp_path):
    import mnnq

    model, testset = quiet
    result = mnnq.auto_quant(model, tmp_path / "q.mnn", testset, 0.02, metric="cosine")
    assert result.passed and result.metrics["max_rel"] is None and result.error == result.metrics["cosine"]
    gate = mnnq.validate(tmp_path / "q.mnn", testset, 0.02, metric="cosine")
    assert gate.passed and gate.metrics["max_rel"] is None and not math.isnan(gate.error)


@pytest.mark.parametrize("command", ["auto-quant", "validate", "quantize"])
def test_a_blind_deciding_metric_is_exit_2(quiet, tmp_path, command):
    model, testset = quiet
    out = tmp_path / "out"
    out.mkdir()
    argv = {
        "auto-quant": ["auto-quant", "--model", model, "--quant_model", out / "q.mnn", "--test_dir", testset,
                       "--rate", "0.05"],
        "validate": ["validate", "--model", model, "--test-dir", testset, "--rate", "0.05"],
        "quantize": ["quantize", model, out / "int8.mnn", write_calibration_config(tmp_path / "cal.json", testset),
                     "--rate", "0.05"],
    }[command]
    run = run_cli(argv)
    assert run.code == 2, run.out + run.err
    assert "max_rel" in run.err and "skips every output" in run.err and "--metric cosine" in run.err
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# (b) blind first samples


def build_homogeneous(directory):
    """The convnet without biases: ReLU convs and a MatMul, so f(a x) = a f(x) for a > 0."""
    g = OnnxGraph(seed=5)
    h = g.input("x", [1, 3, 16, 16])
    h = g.conv_relu(h, "conv1", 3, 32, 3, bias=np.zeros(32))
    h = g.conv_relu(h, "conv2", 32, 64, 1, bias=np.zeros(64))
    h = g.conv_relu(h, "dwconv3", 64, 64, 3, group=64, bias=np.zeros(64))
    h = g.dense(g.gap_flatten(h), "fc", 64, 10, bias=np.zeros(10))
    g.node("Identity", [h], "y")
    g.output("y", [1, 10])
    return export_and_convert(g, directory, "homogeneous")


def scaled_testset(model, directory, scales):
    """One sample per scale: standard-normal input times the scale, the float model's outputs."""
    rng = np.random.default_rng(7)
    cases = []
    for scale in scales:
        feeds = {"x": (scale * rng.standard_normal((1, 3, 16, 16))).astype(np.float32)}
        cases.append((feeds, reference_outputs(model, feeds)))
    write_multi_testdir(directory, cases)
    return directory


@pytest.fixture(scope="module")
def homogeneous(tmp_path_factory):
    root = tmp_path_factory.mktemp("homogeneous")
    return build_homogeneous(root), root


def test_quick_subset_skips_samples_the_metric_cannot_count(homogeneous):
    model, root = homogeneous
    testset = load_testset(scaled_testset(model, root / "mixed", [1e-4, 1e-4, 0.5, 1e-4, 1.0, 0.8]))
    max_ref = [max(float(np.abs(r).max()) for r in s.references.values()) for s in testset.samples]
    assert max(max_ref[:2]) <= 0.01 < min(max_ref[2], max_ref[4], max_ref[5])
    metrics = get_plugin_manager().metrics()
    ranked = informative_samples(testset, metrics["max_rel"])
    assert sorted(ranked) == [2, 4, 5] and ranked[0] == int(np.argmax(max_ref))
    quick = QuickSamples(testset, metrics["max_rel"], "max_rel").view
    assert [s.name for s in quick.samples] == sorted(testset.samples[i].name for i in ranked[:QUICK_SAMPLES])
    # cosine counts every sample: the largest reference ranges win, ties by order
    assert [s.name for s in QuickSamples(testset, metrics["cosine"], "cosine").view.samples] == \
        sorted(testset.samples[i].name for i in np.argsort(-np.array(max_ref), kind="stable")[:QUICK_SAMPLES])


def test_informative_subset_is_in_test_set_order_and_falls_back_to_the_first(homogeneous):
    """The quick samples' and the gate's per-layer samples' choice (measure.informative_subset)."""
    model, root = homogeneous
    metric = get_plugin_manager().metrics()["max_rel"]
    testset = load_testset(scaled_testset(model, root / "subset", [1e-4, 1e-4, 0.5, 1e-4, 1.0, 0.8]))
    assert informative_subset(testset, metric, 2) == [4, 5]
    assert informative_subset(testset, metric, 9) == [2, 4, 5]
    assert informative_subset(testset, metric, 2, ranked=[3, 1, 0]) == [1, 3]
    blind = load_testset(scaled_testset(model, root / "blind", [1e-4, 1e-4, 1e-4]))
    assert informative_subset(blind, metric, 2) == [0, 1] and informative_subset(blind, metric, 4) == [0, 1, 2]


def test_auto_quant_succeeds_when_only_the_first_samples_are_blind(homogeneous, tmp_path):
    model, root = homogeneous
    testset = scaled_testset(model, tmp_path / "ts", [1e-4, 2e-4, 1.0, 0.7])
    q, report = tmp_path / "q.mnn", tmp_path / "r.json"
    run = run_cli(["auto-quant", "--model", model, "--quant_model", q, "--test_dir", testset, "--rate", "0.05",
                   "--report-json", report])
    assert run.code == 0, run.err
    doc = strict_json(report)
    assert doc["metric"] == "max_rel" and 0 < doc["errors"]["max_rel"] <= 0.05
    assert any(t["quick"] for t in doc["trial_log"]), "the sensitivity screening ran on the quick subset"
    assert doc["size_after_bytes"] < doc["size_before_bytes"]


def test_a_test_set_blind_everywhere_is_exit_2(homogeneous, tmp_path):
    model, root = homogeneous
    testset = scaled_testset(model, tmp_path / "ts", [1e-4, 2e-4, 1e-4])
    out = tmp_path / "out"
    out.mkdir()
    run = run_cli(["auto-quant", "--model", model, "--quant_model", out / "q.mnn", "--test_dir", testset,
                   "--rate", "0.05"])
    assert run.code == 2, run.out + run.err
    lines = [line for line in run.err.splitlines() if line.startswith("mnnq: error:")]
    assert len(lines) == 1 and f"metric 'max_rel' skips every output of all 3 sample(s) of test set {testset}" \
        in wide(lines[0])
    assert list(out.iterdir()) == []
