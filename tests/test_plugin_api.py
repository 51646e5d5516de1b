"""mnnq.plugin is the one public module for plugin authors, and the host keeps its promises:
built-ins import only from it, the engine names no plugin, hooks go through pluggy's call path,
and what a strategy is given is exactly the documented SearchContext."""
import ast
from pathlib import Path

import pytest

import mnnq.plugin
from mnnq.autoquant.context import CONTRACT, Search
from mnnq.contracts import SearchContext
from mnnq.plugin import Layer, Metric, hookimpl
from mnnq.plugin_manager import MnnqPluginManager
from mnnq.testing import search_context

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_MODULES = sorted((ROOT / "plugins").glob("*.py")) + sorted(
    (ROOT / "examples" / "mnnq-plugin-example" / "src" / "mnnq_plugin_example").glob("*.py"))


def mnnq_imports(path: Path):
    """``(line, module)`` of every import of an mnnq module in ``path`` (function-level too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mnnq":
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mnnq":
                    yield node.lineno, alias.name


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plugins_import_only_mnnq_plugin(path):
    wrong = [f"{path.name}:{line} imports {module}" for line, module in mnnq_imports(path) if module != "mnnq.plugin"]
    assert not wrong, "plugins must import only from mnnq.plugin: " + "; ".join(wrong)


def test_every_public_name_is_exported():
    missing = [n for n in mnnq.plugin.__all__ if not hasattr(mnnq.plugin, n)]
    assert not missing


def test_the_engine_names_no_plugin(pm):
    """Removing a built-in's name from the auto-quant engine changes nothing: there is none."""
    names = set()
    for records in (pm.search_strategies(), pm.weight_methods(), pm.feature_methods()):
        names |= set(records)
    for preset_members in pm.search_strategies().values():
        names |= set(preset_members.presets)
    found = []
    for path in sorted((ROOT / "mnnq" / "autoquant").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_view_a_strategy_gets_has_the_whole_contract_and_nothing_else():
    toy = search_context({"a": Layer("a", "conv", 16, 16, (1, 1))}, lambda s, mode: 0.0, target=0.1)
    assert isinstance(toy.search, Search)
    members = {n for n in vars(SearchContext) if not n.startswith("_")} | set(SearchContext.__annotations__)
    assert members == CONTRACT
    missing = [m for m in sorted(CONTRACT) if not hasattr(toy.ctx, m)]
    assert not missing, missing
    assert set(dir(toy.ctx)) == CONTRACT


def test_hooks_are_called_through_pluggy():
    """Hook calls go through pluggy's call path: its monitoring sees them and wrappers apply."""

    class Plain:
        @hookimpl
        def mnnq_metrics(self):
            yield Metric(name="plain", summary="s", per_output=lambda r, o: 0.0)

    class Renaming:
        @hookimpl(wrapper=True)
        def mnnq_metrics(self):
            records = yield
            return [[Metric(name=m.name + "-wrapped", summary=m.summary, per_output=m.per_output)
                     for m in batch] for batch in records]

    pm = MnnqPluginManager()
    pm.register(Plain(), name="plain")
    pm.register(Renaming(), name="renaming")
    seen = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name), lambda *a: None)
    try:
        assert set(pm.metrics()) == {"plain-wrapped"}
    finally:
        undo()
    assert seen and set(seen) == {"mnnq_metrics"}
    assert pm.owner_of("mnnq_metrics", "plain-wrapped") == "plain"
