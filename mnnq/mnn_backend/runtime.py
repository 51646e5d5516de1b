"""Run MNN models in-process with the pip runtime.

Inputs are numpy arrays in NCHW (as MNN test dirs store them); outputs come back as NCHW
float64/int arrays keyed by output name.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np

from mnnq.errors import BadInput

MEMORY_MODES = ("normal", "low", "high")


def _mnn():
    # Imported lazily: importing MNN prints a CPU-feature line and costs ~0.2 s.
    import MNN.expr as F  # noqa: N812
    import MNN.nn as nn

    return F, nn


def _memory_mode(F, name: str):
    return {"normal": F.MemoryMode.Normal, "low": F.MemoryMode.Low, "high": F.MemoryMode.High}[name]


def numpy_dtype_of(F, dtype) -> np.dtype:
    text = str(dtype).rsplit(".", 1)[-1]
    return {"float": np.float32, "double": np.float64, "int": np.int32, "int64": np.int64,
            "uint8": np.uint8, "int8": np.int8}.get(text, np.float32)


def to_input_var(F, array: np.ndarray, like) -> object:
    """A const Var holding ``array`` (NCHW) in the dtype and layout that input ``like`` wants."""
    want = numpy_dtype_of(F, like.dtype)
    arr = np.ascontiguousarray(array.astype(want, copy=False))
    mnn_dtype = F.float if np.issubdtype(want, np.floating) else F.int
    if want == np.int64:
        arr = arr.astype(np.int32)
    var = F.const(arr, list(arr.shape), F.NCHW, mnn_dtype)
    fmt = like.data_format
    if arr.ndim == 4 and fmt != F.NCHW:
        var = F.convert(var, fmt)
    return var


def input_vars(F, inputs: Mapping[str, np.ndarray], names: Sequence[str], likes: Sequence[object]) -> List[object]:
    """The feeds for a module's ``forward``: ``inputs[name]`` for each input name, in the dtype
    and layout of the module's matching input var; BadInput names a missing input."""
    feeds: List[object] = []
    for name, like in zip(names, likes):
        if name not in inputs:
            raise BadInput(f"no data for model input '{name}'")
        feeds.append(to_input_var(F, np.asarray(inputs[name]), like))
    return feeds


def read_output(F, var) -> np.ndarray:
    if var.data_format != F.NCHW and len(var.shape) == 4:
        var = F.convert(var, F.NCHW)
    return np.array(var.read(), copy=True)


# Interpreter::HintMode WINOGRAD_MEMORY_LEVEL: 0 = fewer Winograd unit candidates.
WINOGRAD_MEMORY_LEVEL = 3
_quick_runtimes: Dict[int, object] = {}


def quick_init_runtime(threads: int = 1):
    """A CPU runtime (memory and precision mode normal) whose models start running fast: with
    ``WINOGRAD_MEMORY_LEVEL`` 0 the first forward after a load transforms far fewer Winograd
    weights (measured on a YOLOv8n: about 34 ms of CPU instead of 56-64 ms for load plus first
    run, later runs ~10% slower). Float outputs differ from the default kernels only by float
    rounding; it is for models loaded once per trial (the in-process simulation), never for the
    model a user ships or the measurement of a written file."""
    if threads not in _quick_runtimes:
        _, nn = _mnn()
        runtime = nn.create_runtime_manager(({"backend": "CPU", "numThread": int(threads)},))
        runtime.set_hint(WINOGRAD_MEMORY_LEVEL, 0)
        _quick_runtimes[threads] = runtime
    return _quick_runtimes[threads]


class LoadedModel:
    """An MNN model file loaded for inference.

    ``run(inputs)`` takes ``{input_name: array}`` and returns ``{output_name: array}``.
    ``quick_init``: load it on :func:`quick_init_runtime` (memory mode normal only).
    """

    def __init__(self, path: Path, input_names: Sequence[str], output_names: Sequence[str],
                 memory_mode: str = "normal", threads: int = 1, quick_init: bool = False):
        F, nn = _mnn()
        self.path = Path(path)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        if not self.path.is_file():
            raise BadInput(f"model not found: {self.path}")
        if quick_init and memory_mode != "normal":
            raise ValueError("quick_init loads in memory mode normal only")
        try:
            self._module = nn.load_module_from_file(
                str(self.path), self.input_names, self.output_names,
                memory_mode=_memory_mode(F, memory_mode), thread_num=threads,
                runtime_manager=quick_init_runtime(threads) if quick_init else None,
            )
        except (SystemError, RuntimeError, TypeError, ValueError):
            self._module = None
        if self._module is None:
            raise BadInput(f"MNN runtime could not load {self.path} with inputs {self.input_names} and outputs "
                           f"{self.output_names}; check the file is an MNN model and the tensor names exist")
        self._inputs = list(self._module.get_info()["inputs"])

    def run(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        F, _ = _mnn()
        outs = self.forward_vars(self.feeds(inputs))
        return {name: read_output(F, v) for name, v in zip(self.output_names, outs)}

    def feeds(self, inputs: Mapping[str, np.ndarray]) -> List[object]:
        """``inputs`` as the vars :meth:`forward_vars` takes."""
        F, _ = _mnn()
        return input_vars(F, inputs, self.input_names, self._inputs)

    def forward_vars(self, feeds: Sequence[object]) -> List[object]:
        """The output vars for input vars ``feeds`` (one per input name, in order), in MNN's
        own layouts; they stay valid through later runs."""
        try:
            outs = self._module.forward(list(feeds))
        except (SystemError, RuntimeError, TypeError, ValueError):
            outs = []
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        if len(outs) != len(self.output_names):
            raise BadInput(f"MNN runtime could not run {self.path} on these inputs (it returned "
                           f"{len(outs)} of {len(self.output_names)} outputs); check input shapes and output names")
        return list(outs)


def model_io_names(path: Path) -> tuple:
    """(input names, output names) the model file declares."""
    F, nn = _mnn()
    module = nn.load_module_from_file(str(path), [], [])
    info = module.get_info()
    return list(info.get("inputNames", [])), list(info.get("outputNames", []))


@contextlib.contextmanager
def quiet_native_stdout():
    """Silence what MNN prints on fd 1 (e.g. at import) inside the ``with`` block."""
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)
