"""End-to-end `mnnq auto-quant` / `mnnq apply` runs on small real MNN models built through ONNX."""
import json
import shutil
import subprocess
import sys

import pytest

from common import DIGITS_DIR, measured
from mnnq.testing import run_cli, tiny_model


@pytest.fixture
def convnet(tiny_convnet):
    """The session's convnet and its 4-sample test set (mnnq.testing.fixtures); tests write elsewhere."""
    return tiny_convnet.model, tiny_convnet.test_dir


def test_digits_default_flags_meet_the_rate_on_the_written_model(tmp_path, pm):
    q = tmp_path / "q.mnn"
    report = tmp_path / "report.json"
    code, out, err = run_cli(["auto-quant", "--model", str(DIGITS_DIR / "digits.mnn"), "--quant_model", str(q),
                              "--test_dir", str(DIGITS_DIR / "testset"), "--report-json", str(report)])
    assert code == 0, out + err
    assert q.is_file() and (tmp_path / "q.mnn.json").is_file()
    data = json.loads(report.read_text())
    assert data["status"] == "MET" and data["weight_method"] == "hqq"
    # the final conversion was started ahead (tests/test_convert_ahead.py), at most one was used
    assert data["timing"]["trials"]["converted_ahead"] >= 1
    assert data["timing"]["trials"]["converted_ahead_used"] in (0, 1)
    # the claim is checked independently, by running the written file
    errors = measured(q, DIGITS_DIR / "testset", pm, memory_mode=data["memory_mode"])
    assert errors["max_rel"] <= 0.05
    assert errors["max_rel"] == pytest.approx(data["errors"]["max_rel"], rel=1e-6, abs=1e-9)
    assert data["size_after_bytes"] < data["size_before_bytes"]
    assert {row["name"] for row in data["layers"]} == {"conv1", "conv2", "conv3", "fc__matmul_converted"}
    assert "MET" in out and "digits" in out


def test_apply_reproduces_the_model_bytes(tmp_path, convnet):
    model, testset = convnet
    q = tmp_path / "q.mnn"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant-model", str(q), "--test-dir", str(testset),
                              "--hqq", "0", "--rate", "0.08"])
    assert code == 0, out + err
    again = tmp_path / "again.mnn"
    code, out, err = run_cli(["apply", str(model), str(again), "--params", str(tmp_path / "q.mnn.json"),
                              "--test-dir", str(testset), "--rate", "0.08"])
    assert code == 0, out + err
    assert again.read_bytes() == q.read_bytes()


def test_unreachable_rate_exits_1_with_best_effort_model(tmp_path, convnet):
    model, testset = convnet
    q = tmp_path / "q.mnn"
    report = tmp_path / "r.json"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(q), "--test_dir", str(testset),
                              "--rate", "1e-9", "--hqq", "0", "--report_json", str(report)])
    assert code == 1, out + err
    assert q.is_file() and (tmp_path / "q.mnn.json").is_file()
    assert "MISSED" in out
    assert json.loads(report.read_text())["status"] == "MISSED"


def test_corrupt_model_exits_2_and_writes_nothing(tmp_path, convnet):
    _, testset = convnet
    bad = tmp_path / "bad.mnn"
    bad.write_bytes(b"this is not a flatbuffer" * 40)
    q = tmp_path / "q.mnn"
    code, out, err = run_cli(["auto-quant", "--model", str(bad), "--quant_model", str(q), "--test_dir", str(testset)])
    assert code == 2
    assert "bad.mnn" in err and len(err.strip().splitlines()) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mnn"]


@pytest.mark.parametrize("case", ["missing-model", "missing-testdir", "same-output", "unknown-metric", "bad-rate",
                                  "no-output-folder"])
def test_bad_usage_exits_2_and_writes_nothing(tmp_path, convnet, case):
    model, testset = convnet
    src = tmp_path / "float.mnn"
    shutil.copyfile(model, src)
    before = src.read_bytes()
    argv = {"missing-model": ["--model", str(tmp_path / "nope.mnn")],
            "missing-testdir": ["--test_dir", str(tmp_path / "nope")],
            "same-output": ["--quant_model", str(src)],
            "unknown-metric": ["--metric", "psnr"],
            "bad-rate": ["--rate", "-1"],
            "no-output-folder": ["--quant_model", str(tmp_path / "missing" / "q.mnn")]}[case]
    base = {"--model": str(src), "--quant_model": str(tmp_path / "q.mnn"), "--test_dir": str(testset)}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    full = ["auto-quant"] + [x for kv in base.items() for x in kv]
    code, out, err = run_cli(full)
    assert code == 2, out + err
    assert "error" in err and "Traceback" not in err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.mnn"]


def test_tiny_weight_layer_is_kept_float_not_collapsed(tmp_path, pm):
    tm = tiny_model(tmp_path, "tiny_weight")  # the model and a 4-sample test set of its outputs
    model, testset = tm.model, tm.test_dir
    q = tmp_path / "q.mnn"
    report = tmp_path / "r.json"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(q), "--test_dir", str(testset),
                              "--hqq", "0", "--report-json", str(report)])
    assert code == 0, out + err
    layers = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert layers["tiny"]["bits"] == 0 and "underflow" in layers["tiny"]["reason"]
    assert measured(q, testset, pm)["cosine"] < 1e-3


def test_two_input_model(tmp_path, pm):
    tm = tiny_model(tmp_path, "two_input")  # the model and a 4-sample test set of its outputs
    model, testset = tm.model, tm.test_dir
    q = tmp_path / "q.mnn"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(q), "--test_dir", str(testset),
                              "--metric", "cosine", "--rate", "0.001"])
    assert code == 0, out + err
    assert measured(q, testset, pm)["cosine"] <= 0.001


def test_integer_input_model(tmp_path, pm):
    tm = tiny_model(tmp_path, "int_input")  # the model and a 4-sample test set of its outputs
    model, testset = tm.model, tm.test_dir
    q = tmp_path / "q.mnn"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(q), "--test_dir", str(testset),
                              "--evaluator", "exact", "--select_block", "0"])
    assert code == 0, out + err
    assert measured(q, testset, pm)["max_rel"] <= 0.05


def test_console_script_runs(tmp_path, convnet):
    model, testset = convnet
    proc = subprocess.run([sys.executable, "-m", "mnnq", "auto-quant", "--model", str(model), "--quant_model",
                           str(tmp_path / "q.mnn"), "--test_dir", str(testset), "--hqq", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MET" in proc.stdout


def test_auto_quant_py_pipeline_stays_selectable(tmp_path, convnet):
    model, testset = convnet
    report = tmp_path / "r.json"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(tmp_path / "q.mnn"),
                              "--test_dir", str(testset), "--hqq", "0", "--strategy", "auto_quant",
                              "--report-json", str(report)])
    assert code == 0, out + err
    data = json.loads(report.read_text())
    assert data["strategies"] == ["select-bits", "select-block", "memory-mode", "skip-layers"]
    assert {row["bits"] for row in data["layers"]} <= {0, 4, 8}


@pytest.mark.parametrize("hqq,strategy", [("0", "sensitivity"), ("1", "sensitivity"),
                                          # a whole-set trial before the screening batch: the quick
                                          # samples have grown here, and workers must use them too
                                          ("0", "select-block,sensitivity")])
def test_jobs_give_the_same_model_and_report(tmp_path, convnet, hqq, strategy, monkeypatch):
    """Worker processes take part of the trials (the report counts them) and change nothing:
    same model, same params, same trial log as one process."""
    monkeypatch.setenv("MNNQ_WAIT_FOR_WORKERS", "1")   # the tiny model's batches would end first
    model, testset = convnet
    reports = {}
    for jobs in ("1", "3"):
        report = tmp_path / f"r{jobs}.json"
        code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(tmp_path / f"q{jobs}.mnn"),
                                  "--test_dir", str(testset), "--hqq", hqq, "--jobs", jobs, "--strategy", strategy,
                                  "--report-json", report])
        assert code == 0, out + err
        reports[jobs] = json.loads(report.read_text())
    assert (tmp_path / "q1.mnn").read_bytes() == (tmp_path / "q3.mnn").read_bytes()
    assert (tmp_path / "q1.mnn.json").read_bytes() == (tmp_path / "q3.mnn.json").read_bytes()
    log = [[(t["note"], t["error"]) for t in reports[j]["trial_log"]] for j in ("1", "3")]
    assert log[0] == log[1]
    assert reports["1"]["timing"]["trials"]["worker_processes"] == 0
    assert reports["3"]["timing"]["trials"]["worker_processes"] == 2
    assert reports["3"]["timing"]["trials"]["in_workers"] > 0


def test_spent_time_budget_still_writes_and_measures(tmp_path, convnet, pm):
    model, testset = convnet
    q = tmp_path / "q.mnn"
    report = tmp_path / "r.json"
    code, out, err = run_cli(["auto-quant", "--model", str(model), "--quant_model", str(q), "--test_dir", str(testset),
                              "--hqq", "0", "--time-budget", "0.001", "--report-json", str(report)])
    data = json.loads(report.read_text())
    assert data["stopped_early"] and "time budget" in " ".join(data["notes"])
    assert code == (0 if data["met"] else 1)
    assert measured(q, testset, pm, data["memory_mode"])["max_rel"] == pytest.approx(data["errors"]["max_rel"])


def test_module_backend_is_chosen_when_a_reload_costs_more(tmp_path, convnet, pm, monkeypatch):
    """Large files are simulated without a reload per trial when that is cheaper (forced here
    on a small model); the written model is measured as always and meets the rate."""
    import mnnq
    import mnnq.autoquant.prepare as prepare

    model, testset = convnet
    monkeypatch.setenv("MNNQ_WAIT_FOR_WORKERS", "1")
    monkeypatch.setattr(prepare, "MODULE_TRY_BYTES", 0)
    monkeypatch.setattr(prepare, "MODULE_GAIN", 1e9)
    r = mnnq.auto_quant(model, tmp_path / "q.mnn", testset, rate=0.05, hqq=False, jobs=2)
    assert any("swaps weights without reloading" in n for n in r.notes), r.notes
    assert r.passed and measured(tmp_path / "q.mnn", testset, pm, r.details.memory_mode)["max_rel"] == r.error
    assert r.report["timing"]["trials"]["in_workers"] > 0          # the workers use the same backend
