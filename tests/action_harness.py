"""Run a composite GitHub Action's ``run:`` steps the way a runner does, for tests.

``run_action(action_dir, inputs, workspace)`` reads ``action.yml``, resolves inputs from their
defaults and the given values, and runs each ``run:`` step with ``bash --noprofile --norc -eo
pipefail`` (the runner's ``shell: bash``) in its ``working-directory``, with the step's ``env:``
resolved and the runner's files and variables: ``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``,
``GITHUB_PATH``, ``GITHUB_ENV`` (fresh per step, read back after it), ``GITHUB_ACTIONS=true``,
``GITHUB_ACTION_PATH`` / ``${{ github.action_path }}`` (the action's folder),
``GITHUB_WORKSPACE``, ``RUNNER_TEMP``. ``uses:`` steps (other actions) are not run: they are
reported as skipped. Step ``if:`` conditions support ``==``, ``!=``, ``&&``, ``||``, ``!``,
string literals, ``inputs.*`` / ``steps.*.outputs.*`` / ``github.*`` / ``runner.*`` and
``success()`` / ``failure()`` / ``always()``; anything else raises, so the harness never
silently runs a step GitHub would not.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class StepRun:
    name: str
    id: Optional[str]
    skipped: bool = False
    reason: str = ""
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    outputs: Dict[str, str] = field(default_factory=dict)


@dataclass
class ActionRun:
    returncode: int
    outputs: Dict[str, str]
    summary: str
    steps: List[StepRun]

    @property
    def stdout(self) -> str:
        return "".join(s.stdout for s in self.steps)

    @property
    def stderr(self) -> str:
        return "".join(s.stderr for s in self.steps)

    def commands(self, level: str = "error") -> List[str]:
        """Workflow command lines (``::error ...``) the steps printed on stdout."""
        return [ln for ln in self.stdout.splitlines() if ln.startswith(f"::{level} ") or ln.startswith(f"::{level}::")]


class Context:
    def __init__(self, inputs: Mapping[str, str], github: Mapping[str, str], runner: Mapping[str, str]):
        self.inputs = dict(inputs)
        self.github = dict(github)
        self.runner = dict(runner)
        self.steps: Dict[str, Dict[str, str]] = {}
        self.failed = False

    # -- values --------------------------------------------------------------------------
    def value(self, expr: str) -> str:
        expr = expr.strip()
        if (expr.startswith("'") and expr.endswith("'")) and len(expr) >= 2:
            return expr[1:-1].replace("''", "'")
        if expr in ("true", "false"):
            return expr
        parts = expr.split(".")
        if parts[0] == "inputs" and len(parts) == 2:
            if parts[1] not in self.inputs:
                raise KeyError(f"action.yml uses undeclared input '{parts[1]}'")
            return self.inputs[parts[1]]
        if parts[0] in ("github", "runner") and len(parts) == 2:
            return getattr(self, parts[0]).get(parts[1], "")
        if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
            return self.steps.get(parts[1], {}).get(parts[3], "")
        raise NotImplementedError(f"the harness does not evaluate the expression {expr!r}")

    def substitute(self, text) -> str:
        if not isinstance(text, str):
            return "" if text is None else str(text).lower() if isinstance(text, bool) else str(text)
        return EXPR.sub(lambda m: self.value(m.group(1)), text)

    # -- conditions ----------------------------------------------------------------------
    def condition(self, expr: Optional[str]) -> bool:
        if expr is None:
            return not self.failed
        expr = expr.strip()
        m = EXPR.fullmatch(expr)
        if m:
            expr = m.group(1)
        status_checked = re.search(r"\b(success|failure|always|cancelled)\(\)", expr) is not None
        result = self._or(expr)
        return result if status_checked else (result and not self.failed)

    def _or(self, expr: str) -> bool:
        return any(self._and(part) for part in _split(expr, "||"))

    def _and(self, expr: str) -> bool:
        return all(self._atom(part) for part in _split(expr, "&&"))

    def _atom(self, expr: str) -> bool:
        expr = expr.strip()
        if expr.startswith("!") and not expr.startswith("!="):
            return not self._atom(expr[1:])
        if expr.startswith("(") and expr.endswith(")"):
            return self._or(expr[1:-1])
        funcs = {"success()": not self.failed, "failure()": self.failed, "always()": True, "cancelled()": False}
        if expr in funcs:
            return funcs[expr]
        for op in ("==", "!="):
            if op in expr:
                left, right = expr.split(op, 1)
                # GitHub compares strings case-insensitively
                equal = self.value(left).lower() == self.value(right).lower()
                return equal if op == "==" else not equal
        v = self.value(expr)
        return v not in ("", "false", "0")


def _split(expr: str, op: str) -> List[str]:
    parts, depth, start, i, quoted = [], 0, 0, 0, False
    while i < len(expr):
        c = expr[i]
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        elif not quoted and depth == 0 and expr.startswith(op, i):
            parts.append(expr[start:i])
            start = i + len(op)
            i += len(op)
            continue
        i += 1
    parts.append(expr[start:])
    return parts


def parse_output_file(text: str) -> Dict[str, str]:
    """``GITHUB_OUTPUT`` / ``GITHUB_ENV`` syntax: ``name=value`` lines and ``name<<DELIM`` blocks."""
    out: Dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            out[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        elif line.strip():
            raise ValueError(f"malformed output line: {line!r}")
        i += 1
    return out


def resolve_inputs(action: dict, given: Mapping[str, str]) -> Dict[str, str]:
    declared = action.get("inputs") or {}
    unknown = set(given) - set(declared)
    if unknown:
        raise KeyError(f"inputs not declared in action.yml: {', '.join(sorted(unknown))}")
    inputs = {}
    for name, spec in declared.items():
        spec = spec or {}
        if name in given:
            inputs[name] = str(given[name])
        elif "default" in spec:
            d = spec["default"]
            inputs[name] = str(d).lower() if isinstance(d, bool) else ("" if d is None else str(d))
        elif spec.get("required"):
            raise KeyError(f"required input '{name}' not given")
        else:
            inputs[name] = ""
    return inputs


def run_action(action_dir: Path, inputs: Mapping[str, str], workspace: Path,
               env: Optional[Mapping[str, str]] = None, runner_temp: Optional[Path] = None,
               timeout: float = 300) -> ActionRun:
    """Run the action in ``action_dir`` with ``inputs`` in ``workspace``. ``RUNNER_TEMP`` is
    ``runner_temp`` when given (kept afterwards), else a folder removed at the end."""
    action_dir, workspace = Path(action_dir).resolve(), Path(workspace).resolve()
    action = yaml.safe_load((action_dir / "action.yml").read_text())
    runs = action.get("runs") or {}
    if runs.get("using") != "composite":
        raise ValueError("only composite actions are supported")
    with tempfile.TemporaryDirectory(prefix="action-harness-") as tmp:
        tmp = Path(tmp)
        runner_temp = Path(runner_temp) if runner_temp is not None else tmp / "runner_temp"
        runner_temp.mkdir(parents=True, exist_ok=True)
        summary_path = tmp / "step_summary.md"
        summary_path.write_text("")
        ctx = Context(resolve_inputs(action, inputs),
                      github={"action_path": str(action_dir), "workspace": str(workspace)},
                      runner={"temp": str(runner_temp), "os": "Linux"})
        # The interpreter running the tests plays the runner's `python` (setup-python is not run).
        path_prepend: List[str] = [str(Path(sys.executable).parent)]
        extra_env: Dict[str, str] = {}
        steps: List[StepRun] = []
        returncode = 0
        for index, step in enumerate(runs.get("steps") or []):
            sid = step.get("id")
            record = StepRun(name=ctx.substitute(step.get("name", f"step {index}")), id=sid)
            steps.append(record)
            if not ctx.condition(step.get("if")):
                record.skipped, record.reason = True, f"if: {step.get('if')}"
                continue
            if "uses" in step:
                record.skipped, record.reason = True, f"uses: {step['uses']} (not run by the harness)"
                continue
            if step.get("shell") != "bash":
                raise ValueError(f"step {record.name!r}: composite run steps need shell: bash")
            files = {k: tmp / f"{index}_{k.lower()}" for k in ("GITHUB_OUTPUT", "GITHUB_PATH", "GITHUB_ENV")}
            for f in files.values():
                f.write_text("")
            step_summary = tmp / f"{index}_summary"
            step_summary.write_text("")
            script = tmp / f"{index}_script.sh"
            script.write_text(step["run"])
            step_env = dict(os.environ)
            step_env.update(env or {})
            step_env.update(extra_env)
            step_env.update({
                "GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_ACTION_PATH": str(action_dir),
                "GITHUB_WORKSPACE": str(workspace), "RUNNER_TEMP": str(runner_temp),
                "GITHUB_STEP_SUMMARY": str(step_summary), **{k: str(v) for k, v in files.items()},
                "PATH": os.pathsep.join(path_prepend + [step_env.get("PATH", "")]),
            })
            for key, value in (step.get("env") or {}).items():
                step_env[key] = ctx.substitute(value)
            cwd = workspace / ctx.substitute(step.get("working-directory", "."))
            proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=str(cwd),
                                  env=step_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
            record.returncode, record.stdout, record.stderr = proc.returncode, proc.stdout, proc.stderr
            record.outputs = parse_output_file(files["GITHUB_OUTPUT"].read_text())
            with summary_path.open("a") as fh:
                fh.write(step_summary.read_text())
            path_prepend = [p for p in reversed(files["GITHUB_PATH"].read_text().splitlines()) if p] + path_prepend
            extra_env.update(parse_output_file(files["GITHUB_ENV"].read_text()))
            if sid:
                ctx.steps[sid] = record.outputs
            if proc.returncode != 0:
                ctx.failed = True
                returncode = returncode or proc.returncode
        declared = action.get("outputs") or {}
        outputs = {name: ctx.substitute((spec or {}).get("value", "")) for name, spec in declared.items()}
        return ActionRun(returncode=returncode, outputs=outputs, summary=summary_path.read_text(), steps=steps)
