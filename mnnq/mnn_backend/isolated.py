"""The MNN runtime on a user's model, in a child process, before mnnq uses it in-process.

The converter accepts some damaged files that the MNN runtime cannot load or even crashes on,
and a runtime crash in-process would kill mnnq with no report. So a model a user gave is
first used here, in a child:

- :func:`run_isolated` runs it on a whole test set (``python -m mnnq.mnn_backend.child_run``) and returns
  the outputs;
- :func:`probe_runtime` loads it and, when its input shapes are static, runs it once on zeros
  (when there is no test set).

A crash becomes a :class:`~mnnq.errors.NativeFailure` naming the signal (with the child's last
output lines), an unloadable file or a test set that does not fit the model a
:class:`~mnnq.errors.BadInput`. Only then does mnnq load the file in-process.
"""
from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mnnq.errors import BadInput, NativeFailure
from mnnq.mnn_backend import child_run
from mnnq.mnn_backend.native import FAULT_CODE, Child, ChildJob, Limits, exit_text, output_tail, run_python, start_python

EXIT_REPORTED = 3  # the child wrote a one-line reason

_PROBE_CHILD = FAULT_CODE + """
import json, sys
inject_fault("runtime", sys.argv[1:])
import numpy as np
import MNN.expr as F
import MNN.nn as nn
path = sys.argv[1]
try:
    info = nn.load_module_from_file(path, [], []).get_info()
except Exception:
    sys.exit(3)
ins, outs = list(info.get("inputNames", [])), list(info.get("outputNames", []))
shapes = [[int(d) for d in v.shape] for v in info.get("inputs", [])]
ran = False
if ins and outs and len(shapes) == len(ins) and all(s and min(s) > 0 for s in shapes):
    try:
        module = nn.load_module_from_file(path, ins, outs)
        feeds = []
        for var, shape in zip(module.get_info()["inputs"], shapes):
            integer = str(var.dtype).rsplit(".", 1)[-1].startswith(("int", "uint"))
            x = F.const(np.zeros(shape, np.int32 if integer else np.float32), shape, F.NCHW,
                        F.int if integer else F.float)
            feeds.append(F.convert(x, var.data_format) if len(shape) == 4 and var.data_format != F.NCHW else x)
        for out in module.forward(feeds):
            out.read()
        ran = True
    except Exception:
        sys.exit(4)
print("MNNQ-IO " + json.dumps([ins, outs, ran]), flush=True)
"""


def probe_runtime(model: Path, timeout: Optional[float] = None) -> Tuple[List[str], List[str]]:
    """Load ``model`` with the MNN runtime in a child and, when its input shapes are static,
    run it once on zeros; return its (input names, output names). BadInput when the runtime
    rejects the file, NativeFailure when it crashes on it."""
    model = Path(model).resolve()
    with tempfile.TemporaryDirectory(prefix="mnnq-isolated-") as work:
        proc = run_python(["-c", _PROBE_CHILD, str(model)], f"loading {model}", cwd=work,
                          limits=Limits(timeout=timeout))
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode == EXIT_REPORTED:
        raise BadInput(f"MNN runtime could not load {model}; the file is corrupt or not an MNN model")
    if proc.returncode == EXIT_REPORTED + 1:
        raise BadInput(f"MNN runtime could not run {model} on zero inputs of its declared shapes; the file is corrupt")
    line = next((ln for ln in output.splitlines() if ln.startswith("MNNQ-IO ")), None)
    if proc.returncode != 0 or line is None:
        raise NativeFailure(f"MNN runtime crashed ({exit_text(proc.returncode)}) while loading {model}; "
                            "the file is corrupt", tail=output_tail(output))
    inputs, outputs, _ran = json.loads(line[len("MNNQ-IO "):])
    return inputs, outputs


class IsolatedRun(ChildJob):
    """A model running on a test set in a child (see :func:`start_isolated`)."""

    def __init__(self, model: Path, test_dir: Path, memory_mode: str, timeout: Optional[float], shown: str,
                 testset=None):
        self.model, self.test_dir, self.shown = model, test_dir, shown

        def start(work: Path) -> Child:
            self._files = {k: str(work / k) for k in ("outputs", "layers", "error", "layers_error")}
            request = {"model": str(model), "test_dir": str(test_dir), "memory_mode": memory_mode,
                       "float_model": None, "layer_tensors": [], **self._files}
            if testset is not None:  # already parsed here: the child reads the arrays, not the text
                request["testset"] = str(work / "testset")
                with open(request["testset"], "wb") as fh:
                    pickle.dump(testset, fh, protocol=pickle.HIGHEST_PROTOCOL)
            (work / "request.json").write_text(json.dumps(request))
            return start_python(["-m", child_run.__name__, str(work / "request.json")],
                                f"running {model} on {test_dir}", cwd=str(work), limits=Limits(timeout=timeout))

        super().__init__("mnnq-isolated-", start)

    def result(self) -> List[Dict[str, np.ndarray]]:
        """Wait for the outputs; BadInput / NativeFailure as :func:`run_isolated` says."""
        try:
            proc = self._child.result()
            files = self._files
            if Path(files["error"]).is_file():
                raise BadInput(Path(files["error"]).read_text().strip().replace(str(self.model), self.shown))
            if proc.returncode != 0 or not Path(files["outputs"]).is_file():
                raise NativeFailure(
                    f"MNN runtime crashed ({exit_text(proc.returncode)}) while running {self.shown} on "
                    f"{self.test_dir}; the file is corrupt or the test inputs do not fit the model",
                    tail=output_tail(proc.stdout.decode("utf-8", "replace")))
            with open(files["outputs"], "rb") as fh:
                return pickle.load(fh)
        finally:
            self._work.cleanup()


def start_isolated(model: Path, test_dir: Path, memory_mode: str = "normal", timeout: Optional[float] = None,
                   name: Optional[str] = None, testset=None) -> IsolatedRun:
    """Start running ``model`` on the test set in ``test_dir`` in a child; ``.result()`` waits.
    ``name`` replaces the model's path in messages (for a temporary file the user never sees);
    ``testset``: that test set as the caller already loaded it (the child then skips parsing)."""
    model, test_dir = Path(model).resolve(), Path(test_dir).resolve()
    return IsolatedRun(model, test_dir, memory_mode, timeout, name or str(model), testset)


def run_isolated(model: Path, test_dir: Path, memory_mode: str = "normal", timeout: Optional[float] = None,
                 name: Optional[str] = None, testset=None) -> List[Dict[str, np.ndarray]]:
    """``[{output name: array}, ...]``, one dict per sample of the test set in ``test_dir``,
    computed by ``model`` in a child process. ``name`` replaces the model's path in messages
    (for a temporary file the user never sees)."""
    return start_isolated(model, test_dir, memory_mode, timeout, name, testset).result()


_IMAGES_CHILD = FAULT_CODE + """
import sys
inject_fault("runtime", sys.argv[1:])
import MNN.cv as cv
for i, path in enumerate(sys.argv[1:]):
    print("MNNQ-IMG %d" % i, flush=True)
    if cv.haveImageReader(path):
        cv.imread(path).read()
print("MNNQ-IMG done", flush=True)
"""


def check_images_decodable(paths: List[Path], timeout: Optional[float] = None) -> None:
    """Decode every image in a child first: MNN's decoder crashes on some damaged files (a PNG
    cut after its header passes ``haveImageReader``). BadInput names the first such image."""
    if not paths:
        return
    with tempfile.TemporaryDirectory(prefix="mnnq-isolated-") as work:
        proc = run_python(["-c", _IMAGES_CHILD, *[str(Path(p).resolve()) for p in paths]],
                          f"decoding {len(paths)} images", cwd=work, limits=Limits(timeout=timeout))
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode == 0 and "MNNQ-IMG done" in output:
        return
    started = [ln.split()[1] for ln in output.splitlines() if ln.startswith("MNNQ-IMG ") and ln.split()[1].isdigit()]
    if not started:
        raise NativeFailure(f"MNN's image decoder crashed ({exit_text(proc.returncode)}) before reading any image",
                            tail=output_tail(output))
    bad = Path(paths[int(started[-1])])
    raise BadInput(f"image {bad} cannot be decoded (MNN's image decoder crashed on it, "
                   f"{exit_text(proc.returncode)}); remove it or save it again")
