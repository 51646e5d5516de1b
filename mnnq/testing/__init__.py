"""Tiny real models and MNN test dirs, for mnnq's own tests and for plugin authors' tests.

:mod:`mnnq.testing.models` builds small ONNX models and converts them to MNN;
:mod:`mnnq.testing.builders` adds a model-plus-test-set builder (``tiny_model``), calibration
configs, ``plugins_installed``, an in-process CLI runner and file digests; :mod:`mnnq.testing.fixtures` wraps
them as pytest fixtures (``pytest_plugins = ["mnnq.testing.fixtures"]``).
"""

from mnnq.testing.builders import (
    MODELS,
    CliRun,
    TinyModel,
    file_digests,
    file_sha256,
    make_testset,
    model_inputs,
    plugins_installed,
    process_alive,
    random_inputs,
    run_cli,
    tiny_model,
    write_calibration_config,
)
from mnnq.testing.search import ToySearch, manager_with, search_context
from mnnq.testing.models import (
    OnnxGraph,
    build_convnet,
    build_int_input,
    build_matmul_mlp,
    build_quiet_recurrent,
    build_tiny_weight,
    build_two_input,
    export_and_convert,
    reference_outputs,
    write_multi_testdir,
    write_testdir,
)

__all__ = [
    "ToySearch",
    "manager_with",
    "search_context",
    "MODELS",
    "CliRun",
    "OnnxGraph",
    "TinyModel",
    "build_convnet",
    "build_int_input",
    "build_matmul_mlp",
    "build_quiet_recurrent",
    "build_tiny_weight",
    "build_two_input",
    "export_and_convert",
    "file_digests",
    "file_sha256",
    "make_testset",
    "model_inputs",
    "plugins_installed",
    "process_alive",
    "random_inputs",
    "reference_outputs",
    "run_cli",
    "tiny_model",
    "write_calibration_config",
    "write_multi_testdir",
    "write_testdir",
]
