"""mnnq validate: within / over budget, and fail-closed on everything that cannot be measured.

The helpers here (``DIGITS_DIR``, ``quantize_digits``, ``gate_models``) also serve the other
``test_gate_*`` modules: real models, weight-quantized with ``mnnq apply``.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.testing import run_cli
from common import DIGITS_DIR

RATE = "0.05"


def quantize_digits(dst: Path, bits: int) -> Path:
    """``digits.mnn`` with every layer weight-quantized to ``bits`` per channel, written by ``mnnq apply``
    (8 bits: max_rel ~0.023, within 0.05; 4 bits: ~0.33, over it)."""
    from mnnq.mnn_backend.converter import params_template

    params = params_template(DIGITS_DIR / "digits.mnn")
    params.pop("forGuide", None)
    for layer in params["algo"][0]["quantParams"]["layer"]:
        layer["weight"][0].update(bits=bits, blockSize=-1)
    pfile = dst.with_suffix(".params.json")
    pfile.write_text(json.dumps(params))
    assert main(["apply", str(DIGITS_DIR / "digits.mnn"), str(dst), "--params", str(pfile)]) == 0
    return dst


def _small_model(directory: Path, name: str, out_name: str = "logits", n_out: int = 10, nan: bool = False) -> Path:
    """input [1,1,8,8] -> Flatten -> MatMul 64->n_out (-> -|x| - 1 -> Log = NaN) -> ``out_name``."""
    from mnnq.testing import OnnxGraph, export_and_convert

    g = OnnxGraph(1)
    h = g.dense(g.node("Flatten", [g.input("input", [1, 1, 8, 8])], "flat", axis=1), "fc", 64, n_out)
    if nan:
        one = g.const("one", np.ones(1, np.float32))
        h = g.node("Log", [g.node("Sub", [g.node("Neg", [g.node("Abs", [h], "abs")], "neg"), one], "sub")], "log")
    g.node("Identity", [h], out_name)
    g.output(out_name, [1, n_out])
    return export_and_convert(g, directory, name)


def gate_models(directory: Path) -> dict:
    """Every model the gate tests need, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    good = quantize_digits(directory / "good.mnn", 8)
    bad = quantize_digits(directory / "bad.mnn", 4)
    corrupt = directory / "corrupt.mnn"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    truncated = directory / "truncated.mnn"
    data = (DIGITS_DIR / "digits.mnn").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {
        "good": good, "bad": bad, "corrupt": corrupt, "truncated": truncated,
        "nan": _small_model(directory, "nan", nan=True),
        "wrong_name": _small_model(directory, "wrong_name", out_name="probs"),
        "wrong_size": _small_model(directory, "wrong_size", n_out=5),
    }


@pytest.fixture
def models(gate_model_files):
    return gate_model_files  # built once per session (conftest.py)


class Output:
    """A run's output (:class:`mnnq.testing.CliRun`) with the terminal's line wrapping undone (``out``/``err``),
    and as printed (``raw``)."""

    def __init__(self, captured):
        self.raw = captured.out
        self.out = " ".join(captured.out.split())
        self.err = " ".join(captured.err.split())


def validate(*args):
    run = run_cli(["validate", *args])
    return run.code, Output(run)


def test_within_budget_passes_with_reports(models, tmp_path):
    paths = {k: tmp_path / f"report.{k}" for k in ("json", "md", "svg")}
    code, out = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE,
                         "--float-model", DIGITS_DIR / "digits.mnn", "--report-json", paths["json"],
                         "--summary-md", paths["md"], "--svg", paths["svg"])
    assert code == 0, out.err
    assert "PASS good: max_rel" in out.out
    assert "errors per output and sample (16 samples)" in out.out
    assert "per layer against the float model" in out.out
    doc = json.loads(paths["json"].read_text())
    assert doc["status"] == "pass" and doc["passed"] is True and doc["exit_code"] == 0
    model = doc["models"][0]
    assert 0 < model["error"] <= 0.05 and model["samples"] == 16
    assert len(model["outputs"]) == 16 and set(model["per_output"]) == {"logits"}
    assert [l["name"] for l in model["layers"]] == ["conv1", "conv2", "conv3", "fc__matmul_converted"]
    assert all(l["error"] is not None and l["error"] < 0.05 for l in model["layers"])
    assert 0 < model["size_ratio"] < 0.5
    md = paths["md"].read_text()
    assert "## mnnq validate: ✅ passed" in md and "| `good` | ✅ pass |" in md
    svg = paths["svg"].read_text()
    assert svg.startswith("<svg") and "PASS" in svg


def test_over_budget_fails_with_exit_1(models, tmp_path):
    report = tmp_path / "r.json"
    md = tmp_path / "r.md"
    # underscore spellings, as the rest of the CLI accepts them
    code, out = validate("--model", models["bad"], "--test_dir", DIGITS_DIR / "testset", "--rate", RATE,
                         "--report_json", report, "--summary_md", md)
    assert code == 1
    assert "FAIL bad: max_rel" in out.out and "> rate 0.05" in out.out
    doc = json.loads(report.read_text())
    assert doc["status"] == "fail" and doc["passed"] is False and doc["exit_code"] == 1
    assert doc["models"][0]["per_output"]["logits"] > 0.05
    assert doc["worst_model"] == "bad" and doc["worst_error"] > 0.05
    text = md.read_text()
    assert "❌ over budget" in text and "worst: output 'logits'" in text


def test_single_sample_test_dir(models):
    code, out = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset" / "003", "--rate", RATE)
    assert code == 0
    assert "1 sample," in out.out


def test_memory_mode_low_and_cosine_metric(models, tmp_path):
    report = tmp_path / "r.json"
    code, _ = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset", "--rate", "0.01",
                       "--metric", "cosine", "--memory-mode", "low", "--report-json", report)
    assert code == 0
    model = json.loads(report.read_text())["models"][0]
    assert model["memory_mode"] == "low" and model["metric"] == "cosine" and model["error"] < 0.01


@pytest.mark.parametrize("case, needle", [
    ("corrupt", "not a readable MNN model"),
    # The converter reads past the end of a truncated file: whether it crashes depends on
    # what lies in memory there, so either check may be the one that rejects it.
    ("truncated", ("could not load", "not a readable MNN model")),
    ("nan", "NaN or Inf"),
    ("wrong_name", "has no output 'logits' (its outputs: probs)"),
    ("wrong_size", "has 10 values but the model's output 'logits' has 5"),
])
def test_cannot_measure_fails_closed(models, tmp_path, case, needle):
    report = tmp_path / "r.json"
    md = tmp_path / "r.md"
    code, out = validate("--model", models[case], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE,
                         "--report-json", report, "--summary-md", md)
    assert code == 2, out.out
    needles = needle if isinstance(needle, tuple) else (needle,)
    assert f"ERROR {case}:" in out.out and any(n in out.out for n in needles)
    doc = json.loads(report.read_text())
    assert doc["status"] == "error" and doc["passed"] is False and doc["exit_code"] == 2
    assert any(n in doc["models"][0]["message"] for n in needles)
    assert "⛔ could not measure" in md.read_text()


def test_missing_model_test_dir_or_metric_fail_closed(models, tmp_path):
    code, out = validate("--model", tmp_path / "nope.mnn", "--test-dir", DIGITS_DIR / "testset", "--rate", RATE)
    assert code == 2 and "quantized model not found" in out.out
    code, out = validate("--model", models["good"], "--test-dir", tmp_path / "no-tests", "--rate", RATE)
    assert code == 2 and "test dir not found" in out.out
    code, out = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE,
                         "--metric", "nope")
    assert code == 2 and "unknown metric 'nope'" in out.out


def test_bad_rate_is_a_usage_error(models, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--model", str(models["good"]), "--test-dir", str(DIGITS_DIR / "testset"), "--rate", "-1"])
    assert exc.value.code == 2
    assert "positive finite number" in capsys.readouterr().err


def test_report_may_not_overwrite_the_model(models):
    code, out = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE,
                         "--report-json", models["good"])
    assert code == 2
    assert "is the input file" in out.err


def test_a_runtime_crash_becomes_an_error(models, monkeypatch):
    import mnnq.gate.runner as runner

    monkeypatch.setattr(runner, "_run_child", lambda work, timeout: "crashed (killed by SIGSEGV)")
    code, out = validate("--model", models["good"], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE)
    assert code == 2
    assert "crashed (killed by SIGSEGV)" in out.out


def test_github_annotations_only_under_actions(models, monkeypatch):
    args = ("--model", models["bad"], "--test-dir", DIGITS_DIR / "testset", "--rate", RATE)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    _, out = validate(*args)
    assert "::error" not in out.out
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(models["bad"].parent))
    _, out = validate(*args)
    lines = [ln for ln in out.raw.splitlines() if ln.startswith("::error")]
    assert len(lines) == 1
    assert lines[0].startswith("::error file=bad.mnn,title=mnnq%3A bad over budget::bad (bad.mnn): max_rel ")


def test_annotations_are_capped_and_escaped():
    from mnnq.gate.reports import annotations
    from mnnq.gate.runner import GateTarget, errored

    results = [errored(GateTarget(f"m{i}", Path(f"m{i}.mnn"), Path("t"), 0.05, source=Path("mnnq.yaml"), line=i + 2),
                       "50% worse,\nsee: log") for i in range(5)]
    lines = annotations(results, limit=3)
    assert len(lines) == 4
    assert lines[0] == ("::error file=mnnq.yaml,line=2,title=mnnq%3A m0 could not be measured::"
                        "m0 (m0.mnn): 50%25 worse,%0Asee: log")
    assert lines[-1].startswith("::warning title=mnnq::2 more failure(s) not annotated")
    os.environ.pop("MNNQ_MAX_ANNOTATIONS", None)
    assert len(annotations(results)) == 5
