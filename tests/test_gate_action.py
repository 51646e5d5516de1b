"""action.yml: its composite run: steps executed as a runner would (tests/action_harness.py)."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from action_harness import Context, parse_output_file, run_action
from common import DIGITS_DIR

REPO = Path(__file__).resolve().parents[1]
SHA_PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


@pytest.fixture
def models(gate_model_files):
    return gate_model_files  # built once per session (conftest.py)


@pytest.fixture
def workspace(tmp_path, models):
    """A checked-out repository: float model, test set, quantized model and mnnq.yaml in models/."""
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    shutil.copy(DIGITS_DIR / "digits.mnn", ws / "models" / "digits.mnn")
    shutil.copytree(DIGITS_DIR / "testset", ws / "models" / "testset")
    (ws / "models" / "mnnq.yaml").write_text(
        "models:\n  - name: digits\n    float: digits.mnn\n    quantized: digits.q.mnn\n"
        "    test_dir: testset\n    rate: 0.05\n")
    return ws


def use(models, ws: Path, key: str) -> None:
    shutil.copy(models[key], ws / "models" / "digits.q.mnn")


def gate(ws: Path, **inputs):
    """Run the action with mnnq taken from the test interpreter (no network)."""
    return run_action(REPO, {"install": "false", **inputs}, ws, runner_temp=ws.parent / "runner_temp")


def test_within_budget_passes(models, workspace):
    use(models, workspace, "good")
    run = gate(workspace, config="models/mnnq.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.outputs["passed"] == "true"
    assert run.outputs["exit-code"] == "0"
    assert 0 < float(run.outputs["worst-error"]) <= 0.05
    assert run.outputs["worst-model"] == "digits"
    assert "## mnnq check: ✅ passed" in run.summary and "| `digits` | ✅ pass |" in run.summary
    assert run.commands("error") == []
    doc = json.loads(Path(run.outputs["report-json"]).read_text())
    assert doc["status"] == "pass"
    skipped = [s for s in run.steps if s.skipped]
    assert [s.name for s in skipped] == ["Set up Python"]  # install: false


def test_over_budget_fails_the_job_with_an_annotation(models, workspace):
    use(models, workspace, "bad")
    run = gate(workspace, config="models/mnnq.yaml")
    assert run.returncode == 1
    assert run.outputs["passed"] == "false" and run.outputs["exit-code"] == "1"
    assert float(run.outputs["worst-error"]) > 0.05
    assert "## mnnq check: ❌ over budget" in run.summary and "### `digits`: ❌ over budget" in run.summary
    errors = run.commands("error")
    assert len(errors) == 1
    assert errors[0].startswith("::error file=models/mnnq.yaml,line=2,title=mnnq%3A digits over budget::")
    assert "> rate 0.05" in errors[0]
    assert "over budget (see the job summary)" in run.stdout


def test_corrupt_model_fails_closed(models, workspace):
    use(models, workspace, "corrupt")
    run = gate(workspace, config="models/mnnq.yaml")
    assert run.returncode == 2
    assert run.outputs["passed"] == "false" and run.outputs["exit-code"] == "2"
    assert run.outputs["worst-error"] == ""
    assert "⛔ could not measure" in run.summary and "not a readable MNN model" in run.summary
    assert "could not be measured" in run.commands("error")[0]


def test_validate_command_working_directory_and_svg(models, workspace):
    use(models, workspace, "good")
    run = gate(workspace, command="validate", model="digits.q.mnn", **{"test-dir": "testset"}, rate="0.05",
               **{"float-model": "digits.mnn", "working-directory": "models", "svg": "report.svg"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.outputs["passed"] == "true"
    assert "## mnnq validate: ✅ passed" in run.summary
    assert (workspace / "models" / "report.svg").read_text().startswith("<svg")


def test_config_found_from_the_working_directory(models, workspace):
    use(models, workspace, "bad")
    run = gate(workspace, **{"working-directory": "models"})
    assert run.returncode == 1 and run.outputs["passed"] == "false"


def test_bad_config_is_summarised(workspace):
    (workspace / "models" / "mnnq.yaml").write_text("models:\n  - quantized: q.mnn\n    test_dir: t\n")
    run = gate(workspace, config="models/mnnq.yaml")
    assert run.returncode == 2 and run.outputs["passed"] == "false"
    assert "models[0].rate: missing" in run.summary
    assert run.commands("error")[0].startswith("::error file=models/mnnq.yaml,title=mnnq%3A cannot check::")


@pytest.mark.parametrize("inputs, message", [
    ({"command": "validate", "model": "q.mnn"}, "command validate needs the inputs model, test-dir and rate"),
    ({"command": "lint"}, "input command must be check or validate, got 'lint'"),
    ({"rebuild": "yes"}, "input rebuild must be true or false, got 'yes'"),
])
def test_bad_inputs_fail_with_a_message(workspace, inputs, message):
    run = gate(workspace, **inputs)
    assert run.returncode == 2 and run.outputs["passed"] == "false"
    assert message in run.summary and any(message in c for c in run.commands("error"))


def test_install_input_is_checked(workspace):
    run = run_action(REPO, {"install": "maybe"}, workspace)
    assert run.returncode == 2
    assert [s.name for s in run.steps if not s.skipped] == ["Install mnnq from the action's checkout"]
    assert "input install must be true or false" in run.stdout


def test_action_follows_the_conventions():
    """Inputs reach scripts through env: only; third-party actions are pinned by SHA; every
    input is documented; outputs come from the gate step."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    for name, spec in action["inputs"].items():
        assert spec.get("description") and "default" in spec, name
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], step["name"]
            assert step["shell"] == "bash"
        else:
            assert SHA_PINNED.match(step["uses"]), step["uses"]
    assert set(action["outputs"]) >= {"passed", "worst-error"}
    for workflow in (REPO / ".github" / "workflows").glob("*.yml"):
        doc = yaml.safe_load(workflow.read_text())
        for job in doc["jobs"].values():
            for step in job["steps"]:
                uses = step.get("uses")
                if uses and not uses.startswith("./"):
                    assert SHA_PINNED.match(uses), f"{workflow.name}: {uses}"
                assert "${{" not in step.get("run", ""), f"{workflow.name}: {step}"


def test_workflows():
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert any("python -m pytest -q" in s.get("run", "") for j in ci["jobs"].values() for s in j["steps"])
    example = yaml.safe_load((REPO / ".github" / "workflows" / "example-gate.yml").read_text())
    uses = [s for j in example["jobs"].values() for s in j["steps"] if s.get("uses") == "./"]
    assert uses and all("examples/digits" in json.dumps(s.get("with", {})) for s in uses)


def test_harness_expressions_and_output_files():
    ctx = Context({"install": "true", "python-version": ""}, {"action_path": "/a"}, {"temp": "/t"})
    assert ctx.condition("inputs.install == 'true' && inputs.python-version != ''") is False
    assert ctx.condition("${{ inputs.install == 'TRUE' }}") is True
    assert ctx.condition("always() || failure()") is True
    ctx.failed = True
    assert ctx.condition(None) is False and ctx.condition("failure()") is True
    assert ctx.substitute("${{ github.action_path }}/x") == "/a/x"
    with pytest.raises(NotImplementedError):
        ctx.value("fromJSON(inputs.install)")
    assert parse_output_file("a=1\nb<<EOF\nx\ny\nEOF\nc=\n") == {"a": "1", "b": "x\ny", "c": ""}


@pytest.mark.slow
def test_install_from_the_action_checkout(models, workspace):
    """install: true as on a runner: a fresh venv with mnnq pip-installed from the action's folder
    (needs the package registry, ~30 s; opt-in with -m slow)."""
    use(models, workspace, "good")
    run = run_action(REPO, {"install": "true", "config": "models/mnnq.yaml"}, workspace,
                     runner_temp=workspace.parent / "runner_temp")
    assert run.returncode == 0, run.stdout + run.stderr
    venv = workspace.parent / "runner_temp" / "mnnq-action-venv"
    assert f"installed mnnq from {REPO} into {venv}" in run.stdout
    assert run.outputs["passed"] == "true"
