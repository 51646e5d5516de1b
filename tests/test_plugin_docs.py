"""docs/plugins.md documents every hook and record field, and its examples run; the hookspecs'
docstring examples run too (exec'd, registered on a fresh manager, each record exercised)."""
import dataclasses
import inspect
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from mnnq import records
from mnnq.hookspecs import MnnqSpecs
from mnnq.plugin import Layer, LayerSetting
from mnnq.plugin_manager import KINDS, MnnqPluginManager
from mnnq.testing import search_context

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
HOOKS = sorted(name for name, _ in inspect.getmembers(MnnqSpecs, inspect.isfunction) if name.startswith("mnnq_"))
RECORDS = [records.WeightMethod, records.FeatureMethod, records.SearchStrategy, records.Metric]


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading line, up to the next heading of the same or a higher
    level (lines inside fenced code blocks are not headings)."""
    lines, fenced, start, level = text.splitlines(keepends=True), False, None, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        found = None if fenced else re.match(r"(#+) (.*?)\s*$", line)
        if found and start is None and found.group(2) == heading:
            start, level = i + 1, len(found.group(1))
        elif found and start is not None and len(found.group(1)) <= level:
            return "".join(lines[start:i])
    assert start is not None, f"docs/plugins.md has no heading '{heading}'"
    return "".join(lines[start:])


def python_blocks(text: str):
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def run_as_module(code: str, name: str) -> types.ModuleType:
    """Exec ``code`` as a module registered in sys.modules (so it can register itself)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(code, f"<{name}>", "exec"), module.__dict__)
    finally:
        sys.modules.pop(name, None)
    return module


def test_the_spec_has_the_four_hooks_the_manager_knows():
    assert HOOKS == sorted(KINDS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_with_an_example(hook):
    body = section(guide(), f"`{hook}`")
    record = KINDS[hook][0].__name__
    assert "**Parameters:**" in body and "**Returns:**" in body, f"{hook}: say what it takes and returns"
    assert record in body, f"{hook}: name the record it yields ({record})"
    blocks = python_blocks(body)
    assert blocks and any(f"def {hook}" in b for b in blocks), f"{hook}: add a runnable example"


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_record_field_is_documented(record):
    body = section(guide(), record.__name__)
    for f in dataclasses.fields(record):
        assert f"| `{f.name}` |" in body, f"docs/plugins.md: {record.__name__}.{f.name} is not in its field table"


def test_the_guide_examples_run():
    blocks = [b for b in python_blocks(guide()) if "def test_" not in b]
    assert len(blocks) >= 5
    for i, code in enumerate(blocks):
        run_as_module(code, f"mnnq_docs_example_{i}")


def test_the_guide_test_example_passes(tmp_path):
    tests = [b for b in python_blocks(guide()) if "def test_" in b]
    assert tests, "docs/plugins.md: the 'Testing a plugin' section needs a test file"
    for i, code in enumerate(tests):
        (tmp_path / f"test_docs_example_{i}.py").write_text(code)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "mnnq.testing.fixtures", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


# --- the hookspec docstrings -------------------------------------------------------------------

def docstring_example(hook: str) -> str:
    doc = inspect.getdoc(getattr(MnnqSpecs, hook))
    assert doc and "Example::" in doc, f"{hook}: its docstring needs an 'Example::' block"
    return textwrap.dedent(doc.split("Example::", 1)[1]).strip("\n") + "\n"


def exercise(hook: str, record) -> None:
    """Use the record the way mnnq does, on tiny inputs."""
    rng = np.random.default_rng(0)
    if hook == "mnnq_weight_methods":
        w = rng.standard_normal((4, 16, 3, 3)).astype(np.float32)
        assert record.quantize_dequantize(w, 8, -1).shape == w.shape
        assert record.underflows(w, 8, -1) in (True, False)
    elif hook == "mnnq_feature_methods":
        observer = record.make_observer()
        for _ in range(3):
            observer.update(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
        scale, zero_point = observer.finish(8, 127)
        assert scale > 0 and isinstance(zero_point, int)
    elif hook == "mnnq_search_strategies":
        layers = {n: Layer(n, "conv", 16, 16, (1, 1)) for n in ("a", "b")}
        toy = search_context(layers, lambda s, mode: 0.0, target=1.0, settings={n: LayerSetting(4) for n in layers})
        record.run(toy.ctx)
        assert toy.ctx.trials, "the example strategy measured nothing"
    elif hook == "mnnq_metrics":
        ref = rng.standard_normal(10)
        assert record.per_output(ref, ref + 0.1) > 0
    else:  # pragma: no cover
        raise AssertionError(f"no exercise for {hook}")


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_docstring_example_runs(hook):
    module = run_as_module(docstring_example(hook), f"mnnq_hookspec_example_{hook}")
    pm = MnnqPluginManager()
    pm.register(module, name=f"example-{hook}")
    found = {"mnnq_weight_methods": pm.weight_methods, "mnnq_feature_methods": pm.feature_methods,
             "mnnq_search_strategies": pm.search_strategies, "mnnq_metrics": pm.metrics}[hook]()
    assert not pm.failures, pm.failures
    assert len(found) == 1, f"{hook}: the example should yield one record"
    record = next(iter(found.values()))
    assert isinstance(record, KINDS[hook][0])
    exercise(hook, record)


def test_a_failing_plugin_is_reported_as_documented(tiny_convnet, tmp_path):
    """'When a plugin fails': skipped, one warning line naming it, the command still works."""
    from mnnq import hookimpl
    from mnnq.testing import plugins_installed, run_cli

    class Broken:
        @hookimpl
        def mnnq_metrics(self):
            raise RuntimeError("boom")

    with plugins_installed({"acme_broken": Broken()}):
        run = run_cli(["validate", "--model", tiny_convnet.model, "--test-dir", tiny_convnet.test_dir, "--rate", "0.1"])
    assert run.code == 0, run.out + run.err
    assert "warning: plugin 'acme_broken' skipped: mnnq_metrics raised RuntimeError: boom" in run.err
