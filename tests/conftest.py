import os

import pytest

# MNN prints a CPU-feature line on import; keep test output readable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Before any test imports MNN: in-process native calls fork from the child server, as in the CLI.
from mnnq.mnn_backend.native import start_child_server  # noqa: E402

start_child_server()


@pytest.fixture
def pm():
    """A fresh plugin manager with every installed plugin loaded."""
    from mnnq.plugin_manager import get_plugin_manager

    return get_plugin_manager()


# mnnq's own fixtures for plugin authors (tiny_model, tiny_convnet, mnnq_install, ...) are
# used by the project's tests too.
pytest_plugins = ["mnnq.testing.fixtures"]


@pytest.fixture(scope="session")
def gate_model_files(tmp_path_factory):
    """The gate tests' models (good / bad / corrupt / ... from ``test_gate_validate.gate_models``),
    built once per session: each costs converter runs, and the tests only read or copy them."""
    from test_gate_validate import gate_models

    return gate_models(tmp_path_factory.mktemp("gate-models"))
