"""``mnnq testdir make``: write an MNN test set from real data, with reference outputs.

One sample gives MNN's single test dir (``input.json`` + ``<name>.txt`` per tensor, what
``--testdir`` of the converter and auto_quant.py read); several give the multi-sample form
(``000/``, ``001/``, ... each such a test dir). ``mnnq-testset.json`` at the top records where the
inputs came from (images and their preprocessing, array files, or seeded random data, the
fallback), which model computed the references, and per output how many samples sit under
max_rel's 0.01 floor. The folder is written beside its destination and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mnnq.version import __version__
from mnnq.errors import BadInput
from mnnq.fileio import check_writable_folder
from mnnq.inputs import feeds as F
from mnnq.inputs import images as I
from mnnq.inputs.references import MnnReference, check_outputs, choose, make_reference, max_rel
from mnnq.inputs.sources import file_sha256, mnn_version, resolve_model

METADATA = "mnnq-testset.json"
FORMAT = "mnnq-testset/1"
ABS_MAX_FLOOR = 0.01  # max_rel (auto_quant.py's rate) skips an output whose max |ref| <= this


@dataclass
class MakeOptions:
    model: Path
    out: Path
    samples: Optional[int] = None
    images: Optional[Path] = None
    image_config: Optional[Path] = None
    image_flags: Dict[str, Any] = field(default_factory=dict)
    image_input: Optional[str] = None
    npy: Sequence[str] = ()
    random: bool = False
    seed: int = 0
    range: Optional[Tuple[float, float]] = None
    input_ranges: Sequence[str] = ()
    shapes: Sequence[str] = ()
    reference: str = "auto"
    force: bool = False


@dataclass
class MakeResult:
    out: Path
    metadata: Dict[str, Any]
    notes: List[str]


def looks_like_testset(folder: Path) -> bool:
    return ((folder / "input.json").is_file() or (folder / METADATA).is_file()
            or any((p / "input.json").is_file() for p in folder.iterdir() if p.is_dir()))


def _check_out(out: Path, force: bool, model: Path) -> None:
    check_writable_folder(out.parent if str(out.parent) else Path("."), "--out")
    if out.exists():
        if not out.is_dir():
            raise BadInput(f"--out {out} is a file; give a folder path")
        if model.resolve().is_relative_to(out.resolve()):
            raise BadInput(f"--out {out} holds the model {model}; write the test set elsewhere")
        if any(out.iterdir()) and not force:
            raise BadInput(f"--out {out} is not empty; give a new folder (or --force to replace a test set)")
        if any(out.iterdir()) and not looks_like_testset(out):
            raise BadInput(f"--out {out} is not empty and holds no test set; --force only replaces a test set")


def _image_data(opts: MakeOptions, inputs: List[F.ModelInput], shapes, notes: List[str]) -> Dict[str, F.InputData]:
    cfg = I.merged_config(opts.image_config, opts.image_flags)
    folder = opts.images or cfg.path
    if folder is None:
        if opts.image_config or any(v is not None for v in opts.image_flags.values()):
            raise BadInput("image preprocessing was given but no images: add --images FOLDER "
                           "(or a 'path' key in the image config)")
        return {}
    by_name = {i.name: i for i in inputs}
    name = opts.image_input or inputs[0].name
    if name not in by_name:
        raise BadInput(f"--image-input {name}: the model has no such input (inputs: {', '.join(by_name)})")
    inp = by_name[name]
    if inp.integer:
        raise BadInput(f"input '{name}' takes integers, not images; pick the image input with --image-input")
    cfg = I.with_model_size(cfg, name, shapes.get(name) or inp.shape)
    files, skipped = I.list_images(Path(folder), opts.samples or cfg.used_image_num)
    if skipped:
        notes.append(f"skipped {len(skipped)} file(s) in {folder} that MNN.cv cannot decode: "
                     + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    arrays = [I.preprocess(I.read_bgr(f), cfg) for f in files]
    detail = {"folder": str(Path(folder).resolve()), "files": [f.name for f in files], "skipped": skipped,
              "preprocessing": cfg.as_dict()}
    return {name: F.InputData(name, arrays, "images", detail)}


def gather_inputs(opts: MakeOptions, inputs: List[F.ModelInput], notes: List[str]
                  ) -> Tuple[Dict[str, F.InputData], int, bool]:
    """(per-input data, sample count, whether random data was the fallback)."""
    shapes = F.parse_shapes(opts.shapes, inputs)
    data = _image_data(opts, inputs, shapes, notes)
    data.update(F.npy_inputs(opts.npy, inputs, shapes, taken=list(data)))
    count = F.sample_count(data, opts.samples) if data else (opts.samples or 1)
    remaining = [i for i in inputs if i.name not in data]
    fallback = False
    if remaining:
        if data and not opts.random:
            names = ", ".join(i.name for i in remaining)
            raise BadInput(f"input(s) {names} get no data: add --npy NAME=FILE.npy for each, or --random "
                           "for seeded random data")
        fallback = not opts.random
        data.update(F.random_inputs(remaining, shapes, count, opts.seed, opts.range,
                                    F.parse_ranges(opts.input_ranges, inputs)))
    elif opts.random:
        notes.append("--random was given but every input already has data; no random data was used")
    return data, count, fallback


def make_testdir(opts: MakeOptions) -> MakeResult:
    notes: List[str] = []
    source = Path(opts.model)
    mnn_path = resolve_model(source)
    if not mnn_path.is_file():
        raise BadInput(f"model not found: {source}")
    out = Path(opts.out)
    _check_out(out, opts.force, source)
    inputs, output_names = F.model_inputs(mnn_path)
    kind = choose(opts.reference, source)
    data, count, fallback = gather_inputs(opts, inputs, notes)
    samples = F.assemble(inputs, data, count)
    input_names = [i.name for i in inputs]
    reference = make_reference(kind, source, mnn_path, input_names, output_names)
    float_model = MnnReference(mnn_path, input_names, output_names) if kind == "onnxruntime" else None
    pairs, stats = _reference_outputs(samples, reference, float_model, output_names)
    metadata = {
        "format": FORMAT,
        "created_by": f"mnnq {__version__}",
        "model": {"path": str(source.resolve()), "sha256": file_sha256(source), "float_mnn": str(mnn_path.resolve())},
        "reference": {"kind": kind, "version": reference.version()},
        "layout": "single" if count == 1 else "multi",
        "samples": count,
        "random_inputs": any(d.source == "random" for d in data.values()),
        "random_fallback": fallback,
        "inputs": [{
            "name": inp.name, "dtype": inp.dtype, "declared_shape": inp.shape,
            "shape": list(samples[0][inp.name].shape), "source": data[inp.name].source,
            "min": float(min(np.min(s[inp.name]) for s in samples)),
            "max": float(max(np.max(s[inp.name]) for s in samples)),
            **data[inp.name].detail} for inp in inputs],
        "outputs": [{
            "name": n, "shape": list(pairs[0][1][n].shape),
            "min": float(min(np.min(p[1][n]) for p in pairs)), "max": float(max(np.max(p[1][n]) for p in pairs)),
            "abs_max": [min(stats.abs_max[n]), max(stats.abs_max[n])],
            "samples_under_floor": stats.under_floor[n]} for n in output_names],
        "conversion_error": stats.conversion or None,
        "mnn_version": mnn_version(),
    }
    notes += _floor_notes(stats, output_names, count)
    _write(out, pairs, metadata)
    return MakeResult(out, metadata, notes)


@dataclass
class _OutputStats:
    conversion: Dict[str, float]        # output -> max_rel of the float MNN model against onnxruntime
    under_floor: Dict[str, int]         # output -> samples whose max |ref| is under max_rel's floor
    abs_max: Dict[str, List[float]]     # output -> max |ref| per sample


def _reference_outputs(samples, reference, float_model, output_names):
    """``(pairs of (inputs, references) per sample, their statistics)``; with ``float_model``
    (references from onnxruntime), also how far the float MNN model is from them."""
    pairs = []
    stats = _OutputStats({}, {n: 0 for n in output_names}, {n: [] for n in output_names})
    for i, feed in enumerate(samples):
        refs = reference.run(feed)
        check_outputs(i, refs, output_names)
        if float_model is not None:
            got = float_model.run(feed)
            for n in output_names:
                if got[n].size != refs[n].size:
                    raise BadInput(f"output '{n}': the float MNN model gives {got[n].size} values, onnxruntime "
                                   f"{refs[n].size}; use --reference mnn")
                err = max_rel(refs[n], got[n])
                if err is not None:
                    stats.conversion[n] = max(stats.conversion.get(n, 0.0), err)
        for n in output_names:
            m = float(np.max(np.abs(refs[n])))
            stats.abs_max[n].append(m)
            stats.under_floor[n] += m <= ABS_MAX_FLOOR
        pairs.append((feed, {n: refs[n] for n in output_names}))
    return pairs, stats


def _floor_notes(stats: _OutputStats, output_names, count: int) -> List[str]:
    notes = []
    for n in output_names:
        if stats.under_floor[n] == count:
            notes.append(f"output '{n}' stays under max_rel's {ABS_MAX_FLOOR} floor in every sample "
                         f"(max|ref| <= {max(stats.abs_max[n]):.3g}): max_rel skips it, so it can never fail; "
                         "use --metric cosine, or inputs that drive it")
        elif stats.under_floor[n]:
            notes.append(f"output '{n}' stays under max_rel's {ABS_MAX_FLOOR} floor in {stats.under_floor[n]} of "
                         f"{count} samples (max_rel skips those)")
    return notes


def _write(out: Path, pairs, metadata: Dict[str, Any]) -> None:
    from mnnq.testset import write_multi_testdir, write_testdir

    parent = out.parent if str(out.parent) else Path(".")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".mnnq-tmp", dir=parent))
    try:
        if len(pairs) == 1:
            write_testdir(work, *pairs[0])
        else:
            write_multi_testdir(work, pairs)
        (work / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.mnnq-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
