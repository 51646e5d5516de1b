"""Test sets in MNN's test-dir format, single or multi-sample.

A test dir holds ``input.json`` = ``{"inputs": [{"name", "shape"} | {"name", "value"}],
"outputs": [names]}`` and one whitespace-separated text file per tensor. An input is read
from ``<name>.txt`` (or ``input<i>.txt`` / ``input_<i>.txt`` / ``input.txt``, the names MNN's
docs use); an output from ``<name>.txt``, then ``<index>.txt``, then ``output<i>.txt`` /
``output.txt``. A *multi-sample* set is a folder whose sub-folders are each such a test dir
(the layout quantized.out's ``input_type: sequence`` uses); they must agree on the names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.errors import BadInput

INPUT_JSON = "input.json"
# A "value" input is materialised as an array: refuse shapes no model input has (a typo there
# would otherwise allocate until the machine runs out of memory).
MAX_CONSTANT_ELEMENTS = 1 << 26


@dataclass
class Sample:
    """One test case: input arrays (shaped when the test dir gives a shape, else flat)
    and flat reference arrays keyed by output name."""

    name: str
    directory: Path
    inputs: Dict[str, np.ndarray]
    references: Dict[str, np.ndarray]


@dataclass
class TestSet:
    root: Path
    input_names: List[str]
    output_names: List[str]
    samples: List[Sample] = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return len(self.samples) > 1 or (self.samples and self.samples[0].directory != self.root)


# The largest magnitude a float32 holds. MNN feeds inputs and produces outputs as float32: a
# value past it (e.g. 1e60, finite as float64) would become inf when cast.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def outside_float32(values: np.ndarray) -> np.ndarray:
    """Where ``values`` is not a finite float32: NaN, Inf, or beyond :data:`FLOAT32_MAX` (a
    boolean mask of the same shape)."""
    return ~(np.abs(values) <= FLOAT32_MAX)  # NaN fails the comparison too


def token_line(text: str, index: int) -> int:
    """The 1-based line number of the ``index``-th whitespace-separated token of ``text``."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        seen += len(line.split())
        if seen > index:
            return number
    return max(1, len(text.splitlines()))


def read_values(path: Path, what: str) -> np.ndarray:
    """A whitespace-separated text file as a flat float64 array. Fails on junk, NaN, Inf and on
    values beyond float32's range, naming the file and line: inputs are fed as float32, and a
    reference beyond it is one no MNN model (float32 outputs) can produce, i.e. broken test data
    whose errors would mean nothing."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {what} file {path}: {exc.__class__.__name__}") from None
    tokens = text.split()
    try:
        values = np.array([float(tok) for tok in tokens], dtype=np.float64)
    except ValueError as exc:
        raise BadInput(f"{what} file {path} holds a non-number ({exc}); write one number per value") from None
    if values.size == 0:
        raise BadInput(f"{what} file {path} is empty")
    bad = np.flatnonzero(outside_float32(values))
    if bad.size:
        index = int(bad[0])
        line = token_line(text, index)
        if not np.isfinite(values[index]):
            raise BadInput(f"{what} file {path} contains NaN or Inf at line {line} ({tokens[index]}); "
                           "regenerate the test data")
        raise BadInput(f"{what} file {path} holds {tokens[index]} at line {line}, beyond float32's range "
                       f"(|x| <= {FLOAT32_MAX:.4g}): MNN would read it as inf; regenerate the test data")
    return values


def _first_existing(directory: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def input_file(directory: Path, name: str, index: int, count: int) -> Optional[Path]:
    """The file holding input ``name`` (the ``index``-th of ``count``) in a test dir, if any:
    ``<name>.txt``, ``input<i>.txt``, ``input_<i>.txt``, or ``input.txt`` for a lone input."""
    return _first_existing(directory, [f"{name}.txt", f"input{index}.txt", f"input_{index}.txt"]
                           + (["input.txt"] if count == 1 else []))


def output_file(directory: Path, name: str, index: int, count: int) -> Optional[Path]:
    """The reference file of output ``name`` (the ``index``-th of ``count``), if any: ``<name>.txt``,
    ``<i>.txt``, ``output<i>.txt``, ``output_<i>.txt``, or ``output.txt`` for a lone output."""
    return _first_existing(directory, [f"{name}.txt", f"{index}.txt", f"output{index}.txt", f"output_{index}.txt"]
                           + (["output.txt"] if count == 1 else []))


def _parse_input_json(directory: Path) -> dict:
    path = directory / INPUT_JSON
    if not path.is_file():
        raise BadInput(f"test dir {directory} has no {INPUT_JSON}; write one as MNN's testdir format requires")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadInput(f'{path} needs a non-empty "inputs" list of {{"name", "shape"}} objects')
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
        raise BadInput(f'{path} needs a non-empty "outputs" list of output names')
    for i, entry in enumerate(doc["inputs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise BadInput(f'{path}: inputs[{i}] needs a "name" string')
        shape = entry.get("shape")
        if shape is not None and (not isinstance(shape, list)
                                  or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise BadInput(f'{path}: inputs[{i}] "shape" must be a list of positive integers, got {shape!r}')
        if "value" in entry and (isinstance(entry["value"], bool) or not isinstance(entry["value"], (int, float))
                                 or not abs(entry["value"]) <= FLOAT32_MAX):
            raise BadInput(f'{path}: inputs[{i}] "value" must be a number within float32\'s range, '
                           f'got {entry["value"]!r}')
    return doc


def load_sample(directory: Path, name: Optional[str] = None) -> Sample:
    directory = Path(directory)
    doc = _parse_input_json(directory)
    entries = doc["inputs"]
    inputs: Dict[str, np.ndarray] = {}
    for i, entry in enumerate(entries):
        iname, shape = entry["name"], entry.get("shape")
        if "value" in entry:
            if shape is None:
                raise BadInput(f'{directory / INPUT_JSON}: input "{iname}" has a "value" but no "shape"')
            count = int(np.prod([int(d) for d in shape], dtype=object))
            if count > MAX_CONSTANT_ELEMENTS:
                raise BadInput(f'{directory / INPUT_JSON}: input "{iname}" shape {shape} holds {count} values '
                               f"(more than {MAX_CONSTANT_ELEMENTS}); check the shape")
            inputs[iname] = np.full(shape, float(entry["value"]))
            continue
        path = input_file(directory, iname, i, len(entries))
        if path is None:
            raise BadInput(f"test dir {directory} has no data for input '{iname}' (expected {iname}.txt)")
        values = read_values(path, f"input '{iname}'")
        if shape is not None:
            expected = int(np.prod(shape))
            if values.size != expected:
                raise BadInput(f"input file {path} has {values.size} values but shape {shape} needs {expected}")
            values = values.reshape(shape)
        inputs[iname] = values
    references: Dict[str, np.ndarray] = {}
    outputs = doc["outputs"]
    for i, oname in enumerate(outputs):
        path = output_file(directory, oname, i, len(outputs))
        if path is None:
            raise BadInput(f"test dir {directory} has no reference for output '{oname}' (expected {oname}.txt or {i}.txt)")
        references[oname] = read_values(path, f"reference '{oname}'")
    return Sample(name or directory.name, directory, inputs, references)


def load_testset(path: Path) -> TestSet:
    """Read a single test dir, or a folder of test dirs (multi-sample)."""
    root = Path(path)
    if not root.exists():
        raise BadInput(f"test dir not found: {root}")
    if not root.is_dir():
        raise BadInput(f"test dir is not a folder: {root}")
    if (root / INPUT_JSON).is_file():
        sample = load_sample(root, name=root.name)
        samples = [sample]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        subdirs = [p for p in folders if (p / INPUT_JSON).is_file()]
        if not subdirs:
            raise BadInput(f"test dir {root} has no {INPUT_JSON} and no sub-folders holding one")
        # A folder with tensor files but no input.json is a sample that lost it: leaving it out
        # silently would shrink the test set (other folders, e.g. notes/, are ignored).
        strays = [p for p in folders if p not in subdirs and any(p.glob("*.txt"))]
        if strays:
            raise BadInput(f"sample folder {strays[0]} has data files but no {INPUT_JSON}; add it, or move the "
                           f"folder out of the multi-sample test set {root}")
        samples = [load_sample(d) for d in subdirs]
    first = samples[0]
    input_names, output_names = list(first.inputs), list(first.references)
    for s in samples[1:]:
        if list(s.inputs) != input_names or list(s.references) != output_names:
            raise BadInput(f"sample {s.directory} names other tensors than {first.directory}; "
                           "all samples of a test set must share inputs and outputs")
    return TestSet(root, input_names, output_names, samples)


# -- writing ------------------------------------------------------------------------------

def _write_tensor(path: Path, value: np.ndarray) -> None:
    flat = np.asarray(value).reshape(-1)
    if np.issubdtype(flat.dtype, np.integer):
        text = "\n".join(str(int(v)) for v in flat)
    else:
        text = "\n".join(f"{float(v):.9g}" for v in flat)  # 9 digits round-trip float32
    path.write_text(text + "\n")


def write_testdir(directory: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Path:
    """Write an MNN test dir: ``input.json`` plus ``<name>.txt`` per input and output tensor."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {
        "inputs": [{"name": name, "shape": [int(d) for d in np.shape(v)]} for name, v in inputs.items()],
        "outputs": list(outputs),
    }
    (directory / "input.json").write_text(json.dumps(spec, indent=1) + "\n")
    for name, value in {**inputs, **outputs}.items():
        _write_tensor(directory / f"{name}.txt", value)
    return directory


def write_multi_testdir(directory: Path, samples: Sequence[Tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]) -> List[Path]:
    """Write one test dir per ``(inputs, outputs)`` sample into ``000/``, ``001/``, ..."""
    return [write_testdir(Path(directory) / f"{i:03d}", ins, outs) for i, (ins, outs) in enumerate(samples)]
