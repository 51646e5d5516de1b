"""Builders for tests of mnnq and of mnnq plugins: a tiny model with its own test set, calibration
configs, a plugin manager with extra plugins, an in-process CLI runner, and file digests (to check
that a run left its sources or earlier outputs byte-identical).

Everything here works without pytest (:mod:`mnnq.testing.fixtures` wraps it as fixtures)::

    from mnnq.testing.builders import run_cli, tiny_model

    tm = tiny_model("/tmp/work", "convnet")          # float .mnn + 4-sample test set
    run = run_cli(["auto-quant", "--model", str(tm.model), "--quant-model", "/tmp/work/q.mnn",
                   "--test-dir", str(tm.test_dir), "--rate", "0.1"])
    assert run.code == 0, run.err
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mnnq.testing.models import (
    build_convnet,
    build_int_input,
    build_matmul_mlp,
    build_lstm,
    build_shared_matmul,
    build_tiny_weight,
    build_two_input,
    reference_outputs,
    write_multi_testdir,
)

PathLike = Union[str, os.PathLike]

# name -> builder(directory, seed) -> float .mnn path (see mnnq.testing.models for the graphs)
MODELS: Dict[str, Callable[[Path, int], Path]] = {
    "convnet": build_convnet,        # x [1,3,16,16] -> 4 convs (one depthwise) -> fc -> y [1,10]
    "two_input": build_two_input,    # a, b [1,3,8,8] -> out [1,8]
    "matmul_mlp": build_matmul_mlp,  # x [1,64] -> 2 MatMuls -> y [1,10]
    "tiny_weight": build_tiny_weight,  # convnet + a layer MNN's 8-bit encoder would zero
    "int_input": build_int_input,    # ids int32 [1,6] (0..15) + x [1,4,1,6] -> y [1,16,1,6]
    "lstm": build_lstm,              # x [6,1,16] -> 2 ONNX LSTMs (While loops with convs in MNN) -> y [6,1,1,32]
    "shared_matmul": build_shared_matmul,  # x [1,3,1,6] -> 2 convs -> unrolled cell, Gemm weights shared -> y [1,64]
}

# Integer inputs get values in [0, INT_INPUT_HIGH): the int_input model's embedding has 16 rows.
INT_INPUT_HIGH = 16


@dataclass(frozen=True)
class TinyModel:
    """A float model and a multi-sample test set of its own outputs.

    ``model``: the float ``.mnn``; ``test_dir``: a folder of test dirs ``000/``, ``001/``, ...
    (usable as ``--test-dir`` and as quantized.out's ``input_type: sequence`` calibration set);
    ``inputs``: ``{name: (shape, numpy dtype)}`` of the model's inputs.
    """

    name: str
    directory: Path
    model: Path
    test_dir: Path
    inputs: Mapping[str, Tuple[Tuple[int, ...], np.dtype]]

    def calibration_config(self, path: Optional[PathLike] = None, **keys) -> Path:
        """Write a ``mnnq quantize`` config calibrating on this model's test set; ``keys`` are
        quantized.out config keys (e.g. ``feature_quantize_method="KL"``). Default path:
        ``<directory>/calibration.json``."""
        return write_calibration_config(path or self.directory / "calibration.json", self.test_dir, **keys)


def model_inputs(model: PathLike) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """``{input name: (shape, numpy dtype)}`` as the model file declares them (float32 / int32)."""
    import MNN.nn as nn

    info = nn.load_module_from_file(str(model), [], []).get_info()
    out = {}
    for name, var in zip(info["inputNames"], info["inputs"]):
        is_int = str(var.dtype).rsplit(".", 1)[-1].startswith(("int", "uint"))
        out[name] = (tuple(int(d) for d in var.shape), np.dtype(np.int32 if is_int else np.float32))
    return out


def random_inputs(inputs: Mapping[str, Tuple[Sequence[int], np.dtype]],
                  rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One sample: standard-normal floats, integers in ``[0, INT_INPUT_HIGH)``."""
    feeds = {}
    for name, (shape, dtype) in inputs.items():
        if np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, INT_INPUT_HIGH, size=shape).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def make_testset(model: PathLike, directory: PathLike, samples: int = 4, seed: int = 0) -> Path:
    """Write ``samples`` test dirs into ``directory`` (``000/``, ...): random inputs shaped from the
    model and the float model's own outputs as references. Returns ``directory``."""
    rng = np.random.default_rng(seed)
    spec = model_inputs(model)
    cases = []
    for _ in range(samples):
        feeds = random_inputs(spec, rng)
        cases.append((feeds, reference_outputs(Path(model), feeds)))
    write_multi_testdir(Path(directory), cases)
    return Path(directory)


def tiny_model(directory: PathLike, kind: str = "convnet", samples: int = 4, seed: int = 0) -> TinyModel:
    """Build the ``kind`` model (a key of :data:`MODELS`) into ``directory`` with a ``samples``-sample
    test set in ``<directory>/testset``. Takes about a second (one ONNX -> MNN conversion)."""
    if kind not in MODELS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of {', '.join(MODELS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = MODELS[kind](directory, seed)
    test_dir = make_testset(model, directory / "testset", samples=samples, seed=seed + 1)
    return TinyModel(kind, directory, model, test_dir, model_inputs(model))


def write_calibration_config(path: PathLike, samples_dir: PathLike, **keys) -> Path:
    """Write a quantized.out / ``mnnq quantize`` JSON config that calibrates on a folder of test
    dirs (``input_type: sequence``); ``keys`` add or override config keys. Returns the path."""
    doc = {"path": str(samples_dir), "input_type": "sequence", **keys}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def file_sha256(path: PathLike) -> str:
    """The SHA-256 hex digest of one file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_digests(*folders: PathLike) -> Dict[str, str]:
    """``{path: sha256 hex}`` of every file under ``folders`` (recursively, hidden files included;
    keys are ``str(path)`` as found under the folder given). Take it before and after a run and
    compare, to check the run changed nothing there::

        before = file_digests(tm.directory)
        ...
        assert file_digests(tm.directory) == before
    """
    out: Dict[str, str] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                out[str(path)] = file_sha256(path)
    return out


# ---------------------------------------------------------------------------------------------
# plugins and the CLI


@contextlib.contextmanager
def plugins_installed(plugins: Mapping[str, object]) -> Iterator[None]:
    """Within the block, every plugin manager that loads entry points (the CLI's, the Python API's,
    :func:`mnnq.plugin_manager.get_plugin_manager`) also registers ``plugins`` (``{entry-point name:
    plugin module or object}``), as if a package declared them. Blocking by name still applies."""
    from mnnq.plugin_manager import MnnqPluginManager

    original = MnnqPluginManager.load_entrypoints

    def load_entrypoints(self) -> None:
        original(self)
        for name, plugin in plugins.items():
            if not self.is_blocked(name) and self.get_plugin(name) is None:
                self.register(plugin, name=name)

    MnnqPluginManager.load_entrypoints = load_entrypoints
    try:
        yield
    finally:
        MnnqPluginManager.load_entrypoints = original


@dataclass(frozen=True)
class CliRun:
    """What ``mnnq`` printed and returned: exit ``code``, ``out`` (stdout) and ``err`` (stderr).
    Unpacks as ``code, out, err = run_cli(...)``."""

    code: int
    out: str
    err: str

    def __iter__(self) -> Iterator[Union[int, str]]:
        return iter((self.code, self.out, self.err))


def run_cli(argv: Sequence[str], columns: int = 200) -> CliRun:
    """Run ``mnnq <argv>`` in-process (``mnnq.cli.main``) and capture its output. Usage errors
    (argparse's exit 2) are returned, not raised. ``columns`` widens rich's tables."""
    from mnnq.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return CliRun(int(code), out.getvalue(), err.getvalue())


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, does not; Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


__all__: List[str] = [
    "MODELS", "TinyModel", "CliRun", "model_inputs", "random_inputs", "make_testset", "tiny_model",
    "write_calibration_config", "file_sha256", "file_digests", "plugins_installed", "process_alive", "run_cli",
]
