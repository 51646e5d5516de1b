"""The package's entry points, as pip installed them (skipped when the package is not installed)."""
from importlib import metadata

import pytest


@pytest.fixture(autouse=True)
def installed():
    try:
        metadata.distribution("mnnq-plugin-example")
    except metadata.PackageNotFoundError:
        pytest.skip("mnnq-plugin-example is not installed (pip install -e .)")


def test_entry_points_register_all_three_plugins(mnnq_pm):
    assert "percentile" in mnnq_pm.feature_methods()
    assert "snr_db" in mnnq_pm.metrics()
    assert mnnq_pm.owner_of("mnnq_search_strategies", "margin") == "example_margin"
    assert mnnq_pm.owner_of("mnnq_feature_methods", "percentile") == "example_percentile"
    assert mnnq_pm.owner_of("mnnq_metrics", "snr_db") == "example_snr"
    assert not [f for f in mnnq_pm.failures if f.plugin.startswith("example_")]


def test_blocking_by_entry_point_name(monkeypatch):
    from mnnq.plugin_manager import get_plugin_manager

    monkeypatch.setenv("MNNQ_DISABLE_PLUGINS", "example_snr")
    pm = get_plugin_manager()
    assert "snr_db" not in pm.metrics() and "percentile" in pm.feature_methods()
