"""Input samples for a test set: from images, ``.npy`` / ``.npz`` files, or seeded random data.

Each source yields, per model input, a list of arrays (one per sample) in NCHW as MNN test dirs
store them. A source that gives one sample is repeated for every sample; otherwise the counts
must agree. Shapes: a ``--shape NAME=1,3,224,224`` override, else the data's own shape
(images: ``[1, C, height, width]``; arrays: their shape), else the model's declared shape, which
must then be fully static. Integer inputs get integer data (random: integers within the range).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mnnq.errors import BadInput
from mnnq.testset import FLOAT32_MAX, outside_float32


@dataclass
class ModelInput:
    """One model input: ``shape`` as declared (``-1`` / ``0`` for a dynamic dim, ``None`` unknown)."""

    name: str
    shape: Optional[List[int]]
    integer: bool

    @property
    def dtype(self) -> str:
        return "int32" if self.integer else "float32"

    @property
    def static(self) -> bool:
        return self.shape is not None and all(d > 0 for d in self.shape)


@dataclass
class InputData:
    """The samples of one input and where they came from (recorded in mnnq-testset.json)."""

    name: str
    arrays: List[np.ndarray]
    source: str                         # "images" | "npy" | "random"
    detail: Dict[str, object] = field(default_factory=dict)


def model_inputs(mnn_path: Path) -> Tuple[List[ModelInput], List[str]]:
    """(inputs, output names) the float MNN model declares."""
    import MNN.nn as nn

    from mnnq.mnn_backend.isolated import probe_runtime

    probe_runtime(mnn_path)  # in a child: a file the runtime crashes on never reaches this process

    try:
        module = nn.load_module_from_file(str(mnn_path), [], [])
    except Exception:  # MNN raises SystemError on a file it cannot parse
        module = None
    if module is None:
        raise BadInput(f"MNN runtime could not load {mnn_path}; check the file is an MNN model "
                       "(convert ONNX/TFLite with 'mnnq convert' or pass the .onnx/.tflite file)")
    info = module.get_info()
    inputs = []
    for name, var in zip(info.get("inputNames", []), info.get("inputs", [])):
        shape = [int(d) for d in var.shape] if var.shape is not None else None
        kind = str(var.dtype).rsplit(".", 1)[-1]
        inputs.append(ModelInput(name, shape or None, kind in ("int", "int64", "uint8", "int8")))
    if not inputs:
        raise BadInput(f"model {mnn_path} declares no inputs")
    return inputs, list(info.get("outputNames", []))


# ------------------------------------------------------------------------------ shapes

def parse_shapes(values: Sequence[str], inputs: Sequence[ModelInput]) -> Dict[str, List[int]]:
    """``["x=1,3,224,224", ...]`` (or ``1,3,224,224`` for a one-input model) -> {name: shape}."""
    names = [i.name for i in inputs]
    out: Dict[str, List[int]] = {}
    for text in values:
        name, eq, dims = text.rpartition("=")
        if not eq:
            if len(inputs) != 1:
                raise BadInput(f"--shape {text}: name the input (NAME=1,3,224,224); the model has {', '.join(names)}")
            name = names[0]
        if name not in names:
            raise BadInput(f"--shape {text}: the model has no input '{name}' (inputs: {', '.join(names)})")
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise BadInput(f"--shape {text}: expected NAME=d0,d1,... with positive integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise BadInput(f"--shape {text}: expected NAME=d0,d1,... with positive integers")
        declared = next(i for i in inputs if i.name == name).shape
        _check_fits(name, shape, declared, f"--shape {text}")
        out[name] = shape
    return out


def _check_fits(name: str, shape: Sequence[int], declared: Optional[Sequence[int]], what: str) -> None:
    if declared is None:
        return
    ok = len(shape) == len(declared) and all(d <= 0 or d == s for s, d in zip(shape, declared))
    if not ok:
        raise BadInput(f"{what}: shape {list(shape)} does not fit input '{name}' declared as {list(declared)} "
                       "(-1 is a free dimension)")


def static_shape(inp: ModelInput, shapes: Dict[str, List[int]]) -> List[int]:
    if inp.name in shapes:
        return shapes[inp.name]
    if not inp.static:
        example = ",".join(str(d if d > 0 else 224) for d in (inp.shape or [1, 3, 224, 224]))
        raise BadInput(f"input '{inp.name}' has dynamic dimensions {inp.shape}: give its size with "
                       f"--shape {inp.name}={example}")
    return list(inp.shape)


# ------------------------------------------------------------------------------ arrays

def _as_input_dtype(arr: np.ndarray, inp: ModelInput, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise BadInput(f"{where}: dtype {arr.dtype} is not numeric")
    if inp.integer:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise BadInput(f"{where}: input '{inp.name}' is an integer input but the array holds "
                               "non-integer values")
        return arr.astype(np.int64)
    if not np.all(np.isfinite(arr)):
        raise BadInput(f"{where}: the array holds NaN or Inf")
    # finite as float64, inf as float32 (integers and narrower floats always fit)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and np.any(outside_float32(arr)):
        raise BadInput(f"{where}: input '{inp.name}' holds values beyond float32's range (|x| <= {FLOAT32_MAX:.4g})")
    return arr.astype(np.float32)


def split_samples(arr: np.ndarray, inp: ModelInput, shape: Optional[List[int]], where: str) -> List[np.ndarray]:
    """One array -> the samples it holds: the input's shape itself, a stack of such (an extra
    leading axis), or several batch-1 samples stacked along the batch axis."""
    target = shape or (inp.shape if inp.shape else None)
    if target is None:
        return [arr]
    rank = len(target)
    if arr.ndim == rank + 1:
        samples = [arr[i] for i in range(arr.shape[0])]
    elif arr.ndim == rank and target[0] == 1 and arr.shape[0] > 1:
        samples = [arr[i:i + 1] for i in range(arr.shape[0])]
    elif arr.ndim == rank:
        samples = [arr]
    else:
        raise BadInput(f"{where}: shape {list(arr.shape)} does not fit input '{inp.name}' {list(target)} "
                       f"(give one sample of that shape, or a stack of them)")
    for s in samples:
        _check_fits(inp.name, s.shape, target, where)
    return samples


def npy_inputs(values: Sequence[str], inputs: Sequence[ModelInput], shapes: Dict[str, List[int]],
               taken: Sequence[str]) -> Dict[str, InputData]:
    """``--npy [NAME=]FILE.npy`` / ``--npy FILE.npz`` (keys = input names) -> per-input data."""
    by_name = {i.name: i for i in inputs}
    free = [i.name for i in inputs if i.name not in taken]
    out: Dict[str, InputData] = {}
    for text in values:
        name, eq, file = text.partition("=")
        if not eq or (Path(text).exists() and not Path(file).exists()):
            name, file = "", text
        path = Path(file).expanduser()
        if not path.is_file():
            raise BadInput(f"--npy {text}: file not found: {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise BadInput(f"--npy {path}: not a .npy/.npz file ({exc.__class__.__name__}: {exc})") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
            if name:
                raise BadInput(f"--npy {text}: an .npz names its inputs by its keys; drop '{name}='")
            if len(arrays) == 1 and len(free) == 1 and next(iter(arrays)) not in by_name:
                arrays = {free[0]: next(iter(arrays.values()))}
        else:
            if not name:
                if len(free) != 1:
                    raise BadInput(f"--npy {path}: the model has inputs {', '.join(free)}; say which one "
                                   f"this array feeds with --npy NAME={path} (or use an .npz keyed by input name)")
                name = free[0]
            arrays = {name: loaded}
        for key, arr in arrays.items():
            if key not in by_name:
                raise BadInput(f"--npy {path}: the model has no input '{key}' (inputs: {', '.join(by_name)})")
            if key in taken:
                raise BadInput(f"--npy {path}: input '{key}' is already fed by --images")
            where = f"--npy {path}" + (f" [{key}]" if path.suffix == ".npz" else "")
            inp = by_name[key]
            samples = [_as_input_dtype(s, inp, where) for s in split_samples(arr, inp, shapes.get(key), where)]
            data = out.setdefault(key, InputData(key, [], "npy", {"files": []}))
            data.arrays.extend(samples)
            data.detail["files"].append(str(path.resolve()))
    return out


def random_inputs(inputs: Sequence[ModelInput], shapes: Dict[str, List[int]], count: int, seed: int,
                  default_range: Optional[Tuple[float, float]], ranges: Dict[str, Tuple[float, float]]
                  ) -> Dict[str, InputData]:
    """Seeded uniform data: floats in ``[lo, hi)`` (default ``[0, 1)``), integers in ``[lo, hi]``
    (a range is required for integer inputs: the valid ids are the model's business)."""
    rng = np.random.default_rng(seed)
    out: Dict[str, InputData] = {}
    plan = []
    for inp in inputs:
        lo, hi = ranges.get(inp.name) or default_range or ((0.0, 1.0) if not inp.integer else (None, None))
        if lo is None:
            raise BadInput(f"input '{inp.name}' takes integers (e.g. token ids): give their range with "
                           f"--range LO HI or --input-range {inp.name}=LO,HI")
        if inp.integer:
            lo_i, hi_i = int(np.ceil(lo)), int(np.floor(hi))
            if lo_i > hi_i:
                raise BadInput(f"input '{inp.name}': the range {lo}..{hi} holds no integer")
            lo, hi = lo_i, hi_i
        elif not lo < hi:
            raise BadInput(f"input '{inp.name}': the range {lo}..{hi} is empty; give LO < HI")
        plan.append((inp, static_shape(inp, shapes), lo, hi))
    for inp, shape, lo, hi in plan:
        out[inp.name] = InputData(inp.name, [], "random", {
            "seed": seed, "range": [lo, hi],
            "distribution": "uniform integers, both ends included" if inp.integer else "uniform [lo, hi)"})
    for _ in range(count):
        for inp, shape, lo, hi in plan:
            arr = (rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64) if inp.integer
                   else rng.uniform(lo, hi, size=shape).astype(np.float32))
            out[inp.name].arrays.append(arr)
    return out


def parse_ranges(values: Sequence[str], inputs: Sequence[ModelInput]) -> Dict[str, Tuple[float, float]]:
    """``["ids=0,15", ...]`` -> {name: (lo, hi)}."""
    names = [i.name for i in inputs]
    out: Dict[str, Tuple[float, float]] = {}
    for text in values:
        name, eq, rest = text.rpartition("=")
        if not eq or name not in names:
            raise BadInput(f"--input-range {text}: expected NAME=LO,HI with NAME one of {', '.join(names)}")
        try:
            lo, hi = (float(v) for v in rest.split(","))
        except ValueError:
            raise BadInput(f"--input-range {text}: expected NAME=LO,HI with two numbers") from None
        out[name] = (lo, hi)
    return out


def sample_count(data: Dict[str, InputData], limit: Optional[int]) -> int:
    """The number of samples the sources agree on (a single sample is repeated), capped by ``limit``."""
    counts = {name: len(d.arrays) for name, d in data.items()}
    many = {n: c for n, c in counts.items() if c > 1}
    if len(set(many.values())) > 1:
        listing = ", ".join(f"'{n}' {c}" for n, c in many.items())
        raise BadInput(f"the inputs have different numbers of samples ({listing}); give the same number for "
                       "each input (or one, repeated)")
    count = next(iter(many.values()), 1)
    if limit:
        count = min(count, limit) if many else count
    return count


def assemble(inputs: Sequence[ModelInput], data: Dict[str, InputData], count: int) -> List[Dict[str, np.ndarray]]:
    """Per-sample feeds in model input order; a one-sample source is repeated."""
    samples = []
    for i in range(count):
        feeds = {}
        for inp in inputs:
            arrays = data[inp.name].arrays
            feeds[inp.name] = arrays[i] if len(arrays) > 1 else arrays[0]
        samples.append(feeds)
    return samples
