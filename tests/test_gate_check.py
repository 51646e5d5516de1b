"""mnnq check: the project config, model selection, --rebuild, and one summary for every model."""
import filecmp
import json
import shutil
from pathlib import Path

import pytest

from mnnq.errors import BadInput
from mnnq.gate.check_command import rebuild_argv
from mnnq.gate.project import find_config, load_config
from mnnq.testing import run_cli
from common import DIGITS_DIR
from test_gate_validate import Output


@pytest.fixture
def models(gate_model_files):
    return gate_model_files  # built once per session (conftest.py)


def make_project(root: Path, models: dict, quantized: dict, extra: str = "") -> Path:
    """A project folder with the float digits model, its test set, the given quantized files
    (name -> model key) and an mnnq.yaml listing them."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(DIGITS_DIR / "digits.mnn", root / "digits.mnn")
    if not (root / "testset").exists():
        shutil.copytree(DIGITS_DIR / "testset", root / "testset")
    entries = []
    for name, key in quantized.items():
        if key is not None:
            shutil.copy(models[key], root / f"{name}.mnn")
        entries.append(f"  - name: {name}\n    float: digits.mnn\n    quantized: {name}.mnn\n    test_dir: testset\n")
    (root / "mnnq.yaml").write_text("defaults:\n  rate: 0.05\nmodels:\n" + "".join(entries) + extra)
    return root / "mnnq.yaml"


def check(*args):
    run = run_cli(["check", *args])
    return run.code, Output(run)


def test_all_within_budget(models, tmp_path):
    config = make_project(tmp_path, models, {"a": "good", "b": "good"})
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    code, out = check("--config", config, "--report-json", report, "--summary-md", md)
    assert code == 0, out.out
    assert "2 models: 2 passed, 0 over budget, 0 could not be measured" in out.out
    doc = json.loads(report.read_text())
    assert doc["status"] == "pass" and [m["status"] for m in doc["models"]] == ["pass", "pass"]
    assert doc["models"][0]["line"] == 4 and doc["models"][1]["line"] == 8
    assert doc["models"][0]["layers"], "per-layer errors against the float model"
    assert "## mnnq check: ✅ passed" in md.read_text()


def test_one_over_budget_fails_the_check(models, tmp_path, monkeypatch):
    config = make_project(tmp_path, models, {"a": "good", "b": "bad"})
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    code, out = check("--config", config, "--report-json", report, "--summary-md", md, "--no-layers")
    assert code == 1
    doc = json.loads(report.read_text())
    assert [m["status"] for m in doc["models"]] == ["pass", "fail"]
    assert doc["worst_model"] == "b" and doc["worst_error"] > 0.05
    assert not doc["models"][0]["layers"]
    errors = [ln for ln in out.raw.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1
    assert errors[0].startswith("::error file=mnnq.yaml,line=8,title=mnnq%3A b over budget::")
    text = md.read_text()
    assert "| `a` | ✅ pass |" in text and "| `b` | ❌ over budget |" in text and "### `b`" in text


def test_corrupt_model_fails_closed_and_the_others_are_still_measured(models, tmp_path):
    config = make_project(tmp_path, models, {"a": "corrupt", "b": "bad", "c": "good"})
    report = tmp_path / "r.json"
    code, out = check("--config", config, "--report-json", report)
    assert code == 2
    doc = json.loads(report.read_text())
    assert [m["status"] for m in doc["models"]] == ["error", "fail", "pass"]
    assert doc["worst_model"] == "a" and doc["worst_error"] is None
    assert "not a readable MNN model" in doc["models"][0]["message"]
    assert "3 models: 1 passed, 1 over budget, 1 could not be measured" in out.out


def test_missing_quantized_file_or_test_dir_fail_closed(models, tmp_path):
    config = make_project(tmp_path, models, {"a": None})
    code, out = check("--config", config)
    assert code == 2 and "quantized model not found" in out.out
    shutil.copy(models["good"], tmp_path / "a.mnn")
    shutil.rmtree(tmp_path / "testset")
    code, out = check("--config", config)
    assert code == 2 and "test dir not found" in out.out


def test_model_selection_and_changed_files(models, tmp_path, monkeypatch):
    config = make_project(tmp_path, models, {"a": "good", "b": "bad"})
    monkeypatch.chdir(tmp_path)
    code, out = check("--model", "a")  # config found from the current folder
    assert code == 0 and "1 model: 1 passed" in out.out
    code, out = check("--model", "zzz")
    assert code == 2 and "lists no such model" in out.err
    # pre-commit passes the changed files: only the models they belong to are checked
    code, out = check("a.mnn", "unrelated.txt")
    assert code == 0 and "1 model: 1 passed" in out.out
    code, out = check("testset/003/logits.txt")
    assert code == 1 and "2 models: 1 passed, 1 over budget" in out.out
    code, out = check("notes.txt", "other.mnn")
    assert code == 0 and "nothing to check" in out.out
    code, out = check(config.name)
    assert code == 1 and "2 models" in out.out


def test_pyproject_tool_mnnq(models, tmp_path, monkeypatch):
    make_project(tmp_path, models, {"a": "good"})
    (tmp_path / "mnnq.yaml").unlink()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.mnnq.defaults]\nmetric = "cosine"\n\n'
        '[[tool.mnnq.models]]\nname = "a"\nquantized = "a.mnn"\ntest_dir = "testset"\nrate = 0.01\n'
        'job = { apply = { params = "a.json", hqq = false } }\nfloat = "digits.mnn"\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_config(Path.cwd()) == tmp_path / "pyproject.toml"
    spec = load_config(tmp_path / "pyproject.toml").models[0]
    assert spec.metric == "cosine" and spec.line == 7 and spec.job.options["params"] == tmp_path / "a.json"
    code, out = check()
    assert code == 0 and "PASS a: cosine" in out.out


@pytest.mark.parametrize("text, message", [
    ("models:\n  - quantized: a.mnn\n    test_dir: t\n    rat: 0.05\n",
     "mnnq.yaml:4: models[0].rat: unknown key; expected one of name, float, quantized"),
    ("models:\n  - quantized: a.mnn\n    test_dir: t\n",
     "mnnq.yaml:2: models[0].rate: missing; give the error budget"),
    ("models:\n  - quantized: a.mnn\n    test_dir: t\n    rate: -1\n",
     "mnnq.yaml:4: models[0].rate: expected a positive number (e.g. 0.05), got -1"),
    ("models:\n  - test_dir: t\n    rate: 0.05\n",
     "mnnq.yaml:2: models[0].quantized: missing"),
    ("models:\n  - {quantized: a.mnn, test_dir: t, rate: 0.05, memory_mode: fast}\n",
     "mnnq.yaml:2: models[0].memory_mode: expected one of normal, low, got 'fast'"),
    ("models:\n  - quantized: a.mnn\n    test_dir: t\n    rate: 0.05\n    job: {auto-quant: {}}\n",
     "mnnq.yaml:5: models[0].job: a job rebuilds the quantized file from the float model; add float:"),
    ("models:\n  - quantized: a.mnn\n    float: f.mnn\n    test_dir: t\n    rate: 0.05\n    job: {convert: {}}\n",
     "mnnq.yaml:6: models[0].job.convert: unknown job; expected one of auto-quant, quantize, apply"),
    ("models:\n  - quantized: a.mnn\n    float: f.mnn\n    test_dir: t\n    rate: 0.05\n"
     "    job: {auto-quant: {hqq: 2}}\n",
     "mnnq.yaml:6: models[0].job.auto-quant.hqq: expected 0 or 1, got 2"),
    ("models:\n  - quantized: a.mnn\n    float: f.mnn\n    test_dir: t\n    rate: 0.05\n    job: {quantize: {}}\n",
     "mnnq.yaml:6: models[0].job.quantize.config: missing"),
    ("models:\n  - {quantized: a.mnn, test_dir: t, rate: 0.05}\n  - {quantized: b/a.mnn, test_dir: t, rate: 0.05}\n",
     "mnnq.yaml:3: models[1].name: 'a' is already the name of models[0]"),
    ("model:\n  - {quantized: a.mnn}\n", "mnnq.yaml:1: model: unknown key; expected one of models, defaults"),
    ("models: []\n", "mnnq.yaml:1: models: needs a non-empty list"),
    ("", "mnnq.yaml: (top level): the config is empty"),
    ("models:\n  - [oops\n", "mnnq.yaml:3: not valid YAML"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "mnnq.yaml").write_text(text)
    with pytest.raises(BadInput) as exc:
        load_config(tmp_path / "mnnq.yaml")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_config_error_is_reported_and_annotated(tmp_path, monkeypatch):
    (tmp_path / "mnnq.yaml").write_text("models:\n  - quantized: a.mnn\n    test_dir: t\n    rate: zero\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    code, out = check("--config", tmp_path / "mnnq.yaml", "--report-json", report, "--summary-md", md)
    assert code == 2
    assert "models[0].rate: expected a positive number" in out.err
    assert "::error file=mnnq.yaml,title=mnnq%3A cannot check::" in out.raw
    doc = json.loads(report.read_text())
    assert doc["status"] == "error" and "models[0].rate" in doc["error"] and doc["models"] == []
    assert "⛔ could not measure" in md.read_text()


def test_no_config_found(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    code, out = check()
    assert code == 2 and "no mnnq.yaml" in out.err


def test_rebuild_with_apply_and_auto_quant_jobs(models, tmp_path):
    import json as _json

    from mnnq.mnn_backend.converter import params_template

    params = params_template(DIGITS_DIR / "digits.mnn")
    params.pop("forGuide", None)
    for layer in params["algo"][0]["quantParams"]["layer"]:
        layer["weight"][0].update(bits=8, blockSize=-1)
    config = make_project(tmp_path, models, {"applied": None, "searched": None, "nojob": "good"})
    (tmp_path / "p8.json").write_text(_json.dumps(params))
    text = config.read_text().replace(
        "    quantized: applied.mnn\n", "    quantized: applied.mnn\n    job: {apply: {params: p8.json}}\n").replace(
        "    quantized: searched.mnn\n", "    quantized: searched.mnn\n    job: {auto-quant: {hqq: 0}}\n")
    config.write_text(text)
    report = tmp_path / "r.json"
    code, out = check("--config", config, "--rebuild", "--model", "applied", "--model", "searched",
                      "--report-json", report)
    assert code == 0, out.out + out.err
    assert (tmp_path / "applied.mnn").is_file() and (tmp_path / "searched.mnn").is_file()
    assert (tmp_path / "searched.mnn.json").is_file()  # auto-quant writes its params next to the model
    doc = json.loads(report.read_text())
    assert [m["rebuild"]["job"] for m in doc["models"]] == ["apply", "auto-quant"]
    assert all(m["rebuild"]["exit_code"] == 0 and m["status"] == "pass" for m in doc["models"])
    code, out = check("--config", config, "--rebuild", "--model", "nojob")
    assert code == 2 and "has no job" in out.out


def test_failed_rebuild_fails_closed(models, tmp_path):
    config = make_project(tmp_path, models, {"a": "good"})
    config.write_text(config.read_text().replace("    quantized: a.mnn\n",
                                                 "    quantized: a.mnn\n    job: {apply: {params: missing.json}}\n"))
    code, out = check("--config", config, "--rebuild")
    assert code == 2 and "rebuild failed: params file not found" in out.out


def test_failed_rebuild_names_the_option(models, tmp_path):
    """The job's error comes back typed from the engines, not scraped from the CLI's stderr."""
    config = make_project(tmp_path, models, {"a": "good"})
    (tmp_path / "c.json").write_text(json.dumps({"path": "testset", "input_type": "sequence"}))
    config.write_text(config.read_text().replace(
        "    quantized: a.mnn\n", "    quantized: a.mnn\n    job: {quantize: {config: c.json, eval_sampels: 4}}\n"))
    code, out = check("--config", config, "--rebuild", "--report-json", tmp_path / "r.json")
    assert code == 2
    assert "rebuild failed: quantize: unknown option 'eval_sampels' (did you mean 'eval_samples'?)" in out.out
    assert "mnnq: error: quantize: unknown option 'eval_sampels'" in out.err  # as `mnnq quantize` prints it
    rebuilt = json.loads((tmp_path / "r.json").read_text())["models"][0]["rebuild"]
    assert rebuilt["exit_code"] == 2 and rebuilt["message"].startswith("quantize: unknown option 'eval_sampels'")
    assert filecmp.cmp(models["good"], tmp_path / "a.mnn", shallow=False)  # nothing was written


def test_rebuild_argv(tmp_path):
    (tmp_path / "mnnq.yaml").write_text(
        "defaults: {rate: 0.02, metric: cosine}\nmodels:\n"
        "  - {name: a, float: f.mnn, quantized: a.mnn, test_dir: t,"
        " job: {auto-quant: {hqq: 0, strategy: [select-bits, skip-layers], rate: 0.01}}}\n"
        "  - {name: b, float: f.mnn, quantized: b.mnn, test_dir: t, job: {quantize: {config: c.json, rate: 0.02}}}\n"
        "  - {name: c, float: f.mnn, quantized: c.mnn, test_dir: t, job: {apply: {params: p.json, hqq: true}}}\n")
    a, b, c = load_config(tmp_path / "mnnq.yaml").models
    t = str(tmp_path)
    assert rebuild_argv(a) == ["auto-quant", "--model", f"{t}/f.mnn", "--quant_model", f"{t}/a.mnn", "--test_dir",
                               f"{t}/t", "--rate", "0.01", "--metric", "cosine", "--memory_mode", "normal",
                               "--hqq", "0", "--strategy", "select-bits", "--strategy", "skip-layers"]
    assert rebuild_argv(b) == ["quantize", f"{t}/f.mnn", f"{t}/b.mnn", f"{t}/c.json", "--rate", "0.02"]
    assert rebuild_argv(c) == ["apply", f"{t}/f.mnn", f"{t}/c.mnn", "--params", f"{t}/p.json", "--hqq"]


def test_bundled_example_passes():
    """examples/digits/mnnq.yaml: the committed digits.q.mnn is within its budget (the example gate)."""
    code, out = check("--config", DIGITS_DIR / "mnnq.yaml")
    assert code == 0, out.out
    assert "PASS digits: max_rel" in out.out
