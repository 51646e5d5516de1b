"""The plugin host: discovery through entry points, duplicates, failures, blocking."""
import subprocess
import sys

import pytest

from mnnq import hookimpl
from mnnq.errors import PluginError
from mnnq.plugin_manager import MnnqPluginManager, get_plugin_manager
from mnnq.records import Metric, SearchStrategy


def test_builtins_are_loaded_through_entry_points(pm):
    assert {"max_rel", "cosine"} <= set(pm.metrics())
    assert {"select-bits", "select-block", "memory-mode", "skip-layers"} <= set(pm.search_strategies())
    assert pm.owner_of("mnnq_metrics", "max_rel") == "metric_max_rel"
    assert not [f for f in pm.failures if f.plugin.startswith(("metric_", "strategy_"))]


def test_third_party_plugin_adds_records(pm):
    class SnrPlugin:
        @hookimpl
        def mnnq_metrics(self):
            yield Metric(name="max_abs", summary="max |diff|", per_output=lambda r, a: float(abs(a - r).max()))

    pm.register(SnrPlugin(), name="third-party")
    assert "max_abs" in pm.metrics()
    assert pm.owner_of("mnnq_metrics", "max_abs") == "third-party"
    pm.unregister(name="third-party")
    assert "max_abs" not in pm.metrics()


def test_duplicate_names_name_both_plugins(pm):
    class Clash:
        @hookimpl
        def mnnq_metrics(self):
            yield Metric(name="max_rel", summary="again", per_output=lambda r, a: 0.0)

    pm.register(Clash(), name="clash")
    with pytest.raises(PluginError, match="max_rel.*metric_max_rel.*clash|max_rel.*clash.*metric_max_rel"):
        pm.metrics()


def test_a_raising_plugin_is_reported_and_skipped(pm):
    class Broken:
        @hookimpl
        def mnnq_search_strategies(self):
            raise RuntimeError("boom")
            yield  # pragma: no cover

    pm.register(Broken(), name="broken")
    assert "select-bits" in pm.search_strategies()
    assert any(f.plugin == "broken" and "boom" in f.error for f in pm.failures)


def test_wrong_record_type_is_reported(pm):
    class Wrong:
        @hookimpl
        def mnnq_metrics(self):
            yield SearchStrategy(name="x", summary="not a metric", run=lambda ctx: None)

    pm.register(Wrong(), name="wrong")
    assert "x" not in pm.metrics()
    assert any(f.plugin == "wrong" for f in pm.failures)


def test_unknown_name_lists_alternatives(pm):
    with pytest.raises(PluginError, match="unknown metric 'nope'; available: .*cosine.*max_rel"):
        pm.metric("nope")


def test_disable_by_environment(monkeypatch):
    monkeypatch.setenv("MNNQ_DISABLE_PLUGINS", "metric_cosine, strategy_skip_layers")
    pm = get_plugin_manager()
    assert "cosine" not in pm.metrics()
    assert "skip-layers" not in pm.search_strategies()
    assert "max_rel" in pm.metrics()


def test_fresh_manager_without_loading_is_empty():
    assert MnnqPluginManager().metrics() == {}


def test_plugins_command_lists_every_kind():
    out = subprocess.run([sys.executable, "-m", "mnnq", "plugins"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for text in ("metric", "search strategy", "max_rel", "select-block", "auto_quant.py's rate"):
        assert text in out.stdout
