"""Tiny real models and MNN test dirs, for mnnq's own tests and for plugin authors' tests."""

from mnnq.testing.models import (
    OnnxGraph,
    build_convnet,
    build_int_input,
    build_matmul_mlp,
    build_tiny_weight,
    build_two_input,
    export_and_convert,
    reference_outputs,
    write_multi_testdir,
    write_testdir,
)

__all__ = [
    "OnnxGraph",
    "build_convnet",
    "build_int_input",
    "build_matmul_mlp",
    "build_tiny_weight",
    "build_two_input",
    "export_and_convert",
    "reference_outputs",
    "write_multi_testdir",
    "write_testdir",
]
