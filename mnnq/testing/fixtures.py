"""pytest fixtures for testing mnnq plugins (and mnnq itself).

Load them in your ``conftest.py`` with either line::

    pytest_plugins = ["mnnq.testing.fixtures"]      # in the root conftest.py
    from mnnq.testing.fixtures import *             # noqa: F401,F403  (anywhere)

Fixtures:

* ``mnnq_pm``: a fresh plugin manager with every installed plugin loaded (one per test, nothing
  leaks between tests); register fakes on it with ``mnnq_pm.register(obj, name=...)``.
* ``mnnq_empty_pm``: a fresh manager with no plugin loaded (test one plugin in isolation).
* ``mnnq_install``: ``mnnq_install(plugin, name)`` makes a not-installed plugin visible to every
  plugin manager the test creates, the CLI's and the Python API's included; undone after the test.
* ``tiny_model``: ``tiny_model("convnet")`` -> :class:`~mnnq.testing.builders.TinyModel`, a small
  real float model with a 4-sample test set of its own outputs, built once per session and kind.
* ``tiny_convnet``: ``tiny_model("convnet")``.
* ``mnnq_cli``: ``mnnq_cli("plugins")`` runs the CLI in-process -> ``CliRun(code, out, err)``.

Tests must not modify the tiny models in place: they are shared by the whole session. Write
outputs to ``tmp_path``.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest

from mnnq.plugin_manager import MnnqPluginManager, get_plugin_manager
from mnnq.testing.builders import CliRun, TinyModel, plugins_installed, run_cli
from mnnq.testing.builders import tiny_model as _build_tiny_model


@pytest.fixture
def mnnq_pm() -> MnnqPluginManager:
    """A fresh plugin manager with every installed plugin loaded."""
    return get_plugin_manager()


@pytest.fixture
def mnnq_empty_pm() -> MnnqPluginManager:
    """A fresh plugin manager with no plugin loaded (``MNNQ_DISABLE_PLUGINS`` still applies)."""
    return MnnqPluginManager()


@pytest.fixture
def mnnq_install() -> Callable[[object, str], None]:
    """``mnnq_install(plugin, name)``: every plugin manager created until the end of the test
    registers ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name``."""
    extra: Dict[str, object] = {}

    def install(plugin: object, name: str) -> None:
        if name in extra:
            raise ValueError(f"a plugin named {name!r} is already installed for this test")
        extra[name] = plugin

    with plugins_installed(extra):
        yield install


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[..., TinyModel]:
    """``tiny_model(kind="convnet", samples=4, seed=0)`` -> a shared :class:`TinyModel` (built once)."""
    built: Dict[Tuple[str, int, int], TinyModel] = {}

    def get(kind: str = "convnet", samples: int = 4, seed: int = 0) -> TinyModel:
        key = (kind, samples, seed)
        if key not in built:
            built[key] = _build_tiny_model(tmp_path_factory.mktemp(f"mnnq-{kind}"), kind, samples, seed)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_convnet(tiny_model) -> TinyModel:
    """The convnet (x [1,3,16,16] -> y [1,10], five quantizable layers) with 4 test samples."""
    return tiny_model("convnet")


@pytest.fixture
def mnnq_cli(monkeypatch) -> Callable[..., CliRun]:
    """``mnnq_cli("auto-quant", "--model", path, ...)`` -> ``CliRun(code, out, err)``; paths may
    be ``Path`` objects. Runs in-process, so ``mnnq_install``-ed plugins are visible."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv) -> CliRun:
        return run_cli([str(a) for a in argv])

    return run


__all__ = ["mnnq_pm", "mnnq_empty_pm", "mnnq_install", "tiny_model", "tiny_convnet", "mnnq_cli"]
