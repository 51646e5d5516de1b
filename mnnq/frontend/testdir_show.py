"""``mnnq testdir show``: what a test set holds, and what is wrong with it.

Reads the same layouts as :mod:`mnnq.testset` (single test dir, or sub-folders each holding one)
but tolerates what that reader rejects, so it can report it. Problems (exit 1): NaN/Inf values,
a file whose value count does not match its shape or the other samples, a missing or non-numeric
file, samples naming different tensors, an output whose max |ref| is under max_rel's 0.01 floor in
every sample (max_rel skips it: a test that can never fail), and with ``--model`` names or sizes
the model does not have. Notes (exit 0): some samples under the floor, random inputs (from
``mnnq-testset.json``), constant inputs, a single sample.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from mnnq.errors import BadInput
from mnnq.frontend.testdir_make import ABS_MAX_FLOOR, METADATA
from mnnq.testset import INPUT_JSON, input_file, output_file, outside_float32, token_line


@dataclass
class Tensor:
    name: str
    role: str                          # "input" | "output"
    path: Optional[Path]
    shape: Optional[List[int]]         # from input.json (inputs only)
    values: Optional[np.ndarray]       # None when missing or unreadable
    integer: bool = False
    problem: Optional[str] = None


@dataclass
class SampleView:
    directory: Path
    tensors: List[Tensor]


@dataclass
class ShowResult:
    root: Path
    samples: List[SampleView]
    metadata: Optional[dict]
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _parse_values(path: Path):
    """(values, all-integer?, problem)."""
    try:
        tokens = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        return None, False, f"cannot read {path} ({exc.__class__.__name__})"
    if not tokens:
        return None, False, f"{path} is empty"
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        return None, False, f"{path} holds a non-number ({bad!r})"
    integer = all(t.lstrip("+-").isdigit() for t in tokens[:1000])
    return values, integer, None


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _read_json(directory: Path) -> dict:
    path = directory / INPUT_JSON
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc.__class__.__name__}: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not isinstance(doc.get("outputs"), list):
        raise BadInput(f'{path} needs "inputs" (list of {{"name", "shape"}}) and "outputs" (list of names)')
    return doc


def read_sample(directory: Path) -> SampleView:
    doc = _read_json(directory)
    tensors: List[Tensor] = []
    entries = doc["inputs"]
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise BadInput(f'{directory / INPUT_JSON}: inputs[{i}] needs a "name" string')
        shape = entry.get("shape")
        shape = shape if isinstance(shape, list) and all(isinstance(d, int) for d in shape) else None
        if "value" in entry and shape is not None:
            tensors.append(Tensor(name, "input", None, shape, np.full(int(np.prod(shape)), float(entry["value"]))))
            continue
        path = input_file(directory, name, i, len(entries))
        tensors.append(_tensor(name, "input", path, shape, directory))
    outputs = doc["outputs"]
    for i, name in enumerate(outputs):
        if not isinstance(name, str) or not name:
            raise BadInput(f'{directory / INPUT_JSON}: outputs[{i}] must be a name')
        path = output_file(directory, name, i, len(outputs))
        tensors.append(_tensor(name, "output", path, None, directory))
    return SampleView(directory, tensors)


def _tensor(name, role, path, shape, directory) -> Tensor:
    if path is None:
        return Tensor(name, role, None, shape, None, problem=f"{directory.name}: no file for {role} '{name}' "
                                                               f"(expected {name}.txt)")
    values, integer, problem = _parse_values(path)
    return Tensor(name, role, path, shape, values, integer, problem)


def read_testset(path: Path) -> ShowResult:
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"test dir not found: {root}" if not root.exists() else f"test dir is not a folder: {root}")
    if (root / INPUT_JSON).is_file():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / INPUT_JSON).is_file())
        if not folders:
            raise BadInput(f"{root} has no {INPUT_JSON} and no sub-folders holding one: not an MNN test set")
    metadata = None
    meta_path = root / METADATA
    if meta_path.is_file():
        try:
            metadata = json.loads(meta_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            metadata = None
    return ShowResult(root, [read_sample(f) for f in folders], metadata)


def inspect(result: ShowResult, model: Optional[Path] = None) -> ShowResult:
    """Fill ``result.problems`` / ``result.notes``."""
    problems, notes = result.problems, result.notes
    first = result.samples[0]
    names = [(t.role, t.name) for t in first.tensors]
    sizes: Dict[str, int] = {}
    for sample in result.samples:
        here = [(t.role, t.name) for t in sample.tensors]
        if here != names:
            problems.append(f"{sample.directory.name}: names other tensors than {first.directory.name} "
                            f"({', '.join(n for _, n in here)} vs {', '.join(n for _, n in names)})")
            continue
        for t in sample.tensors:
            where = f"{_rel(result.root, t.path or sample.directory)}"
            if t.problem:
                problems.append(t.problem)
                continue
            if not np.all(np.isfinite(t.values)):
                bad = int(np.sum(~np.isfinite(t.values)))
                problems.append(f"{where}: {bad} of {t.values.size} values are NaN or Inf")
            elif (over := np.flatnonzero(outside_float32(t.values))).size:
                line = token_line(t.path.read_text(), int(over[0])) if t.path else "?"
                problems.append(f"{where}: {over.size} of {t.values.size} values are beyond float32's range (first at "
                                f"line {line}); MNN would read them as inf")
            if t.shape is not None and t.values.size != int(np.prod(t.shape)):
                problems.append(f"{where}: {t.values.size} values but shape {t.shape} needs {int(np.prod(t.shape))}")
            key = f"{t.role} {t.name}"
            if sizes.setdefault(key, t.values.size) != t.values.size:
                problems.append(f"{where}: {t.values.size} values, other samples have {sizes[key]}")
    for role, name in names:
        if role != "output":
            continue
        maxima = [_abs_max(s, name) for s in result.samples]
        maxima = [m for m in maxima if m is not None]
        under = sum(m <= ABS_MAX_FLOOR for m in maxima)
        if maxima and under == len(maxima):
            problems.append(f"output '{name}': max|ref| <= {max(maxima):.3g} in every sample, under max_rel's "
                            f"{ABS_MAX_FLOOR} floor: max_rel skips it, so this test can never fail "
                            "(use --metric cosine, or inputs that drive this output)")
        elif under:
            notes.append(f"output '{name}' is under max_rel's {ABS_MAX_FLOOR} floor in {under} of "
                         f"{len(maxima)} samples (max_rel skips those)")
    for t in first.tensors:
        if t.role == "input" and t.values is not None and t.values.size > 1 and np.all(t.values == t.values[0]):
            notes.append(f"input '{t.name}' is constant ({t.values[0]:g}) in {first.directory.name}")
    meta = result.metadata or {}
    if meta.get("random_inputs"):
        random_names = [i["name"] for i in meta.get("inputs", []) if i.get("source") == "random"]
        how = "the fallback: no images or arrays were given" if meta.get("random_fallback") else "--random"
        notes.append(f"inputs {', '.join(random_names)} are seeded RANDOM data ({how}); an error budget met on "
                     "them says little about real inputs")
    if len(result.samples) == 1:
        notes.append("a single sample: a budget met on one input may not hold on others")
    if model is not None:
        _check_model(result, model)
    return result


def _abs_max(sample: SampleView, name: str) -> Optional[float]:
    t = next((t for t in sample.tensors if t.role == "output" and t.name == name), None)
    if t is None or t.values is None or not np.all(np.isfinite(t.values)):
        return None
    return float(np.max(np.abs(t.values)))


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _check_model(result: ShowResult, model: Path) -> None:
    """Names and sizes against the model; runs the first sample through it."""
    from mnnq.inputs.feeds import model_inputs
    from mnnq.inputs.references import max_rel
    from mnnq.inputs.sources import resolve_model
    from mnnq.mnn_backend.runtime import LoadedModel

    mnn_path = resolve_model(model)
    if not mnn_path.is_file():
        raise BadInput(f"model not found: {model}")
    inputs, outputs = model_inputs(mnn_path)
    sample = result.samples[0]
    have_in = {t.name: t for t in sample.tensors if t.role == "input"}
    have_out = {t.name: t for t in sample.tensors if t.role == "output"}
    missing = [i.name for i in inputs if i.name not in have_in]
    extra = [n for n in have_in if n not in {i.name for i in inputs}]
    unknown_out = [n for n in have_out if n not in outputs]
    for what, names in (("model inputs with no data", missing), ("inputs the model does not have", extra),
                        ("outputs the model does not have", unknown_out)):
        if names:
            result.problems.append(f"{what}: {', '.join(names)} (model {model})")
    if missing or extra or unknown_out or any(t.values is None or t.shape is None for t in have_in.values()):
        return
    feeds = {n: t.values.reshape(t.shape) for n, t in have_in.items()}
    try:
        got = LoadedModel(mnn_path, list(feeds), list(have_out)).run(feeds)
    except BadInput as exc:
        result.problems.append(f"the model cannot run sample {sample.directory.name}: {exc}")
        return
    errors = []
    for name, t in have_out.items():
        if t.values is not None and got[name].size != t.values.size:
            result.problems.append(f"output '{name}': the reference has {t.values.size} values, the model gives "
                                   f"{got[name].size}")
        elif t.values is not None and np.all(np.isfinite(t.values)):
            err = max_rel(t.values, got[name])
            if err is not None:
                errors.append(f"{name} {err:.2e}")
    if errors:
        result.notes.append(f"the model on sample {sample.directory.name}: max|out-ref|/max|ref| "
                            + ", ".join(errors))
