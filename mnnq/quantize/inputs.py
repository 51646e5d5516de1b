"""Calibration samples, read exactly as quantized.out reads them.

``input_type: image`` -- every readable image in ``path`` (sorted by name; the first
``used_image_num``), decoded with ``MNN.cv.imread`` into the RGBA bitmap quantized.out gets from
stb_image, then MNN's own ImageProcess with quantized.out's settings: a centred crop of
``int(H * center_crop_h)`` x ``int(W * center_crop_w)`` pixels whose corner pixels are mapped
onto the output's corners, bilinear sampling, the colour conversion to ``format``, and
``dst = (src - mean[c]) * normal[c]`` into an NCHW float tensor ``[1, C, height, width]``.
(``MNN.cv.imread`` drops an alpha channel, so RGBA/BGRA get alpha 255.) The image feeds the
model's first input; other inputs need a constant (``inputs: [{name, shape, value}]``).

``input_type: sequence`` -- every sub-folder of ``path`` holding an ``input.json`` is one
sample, an MNN test dir with ``<input name>.txt`` per model input (``path`` itself may be one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from mnnq.errors import BadInput
from mnnq.inputs.feeds import ModelInput
from mnnq.inputs.images import ImageConfig, list_images, read_bgr
from mnnq.inputs.images import preprocess as preprocess_image
from mnnq.quantize.config import InputSpec, QuantizeConfig
from mnnq.testset import input_file, read_values

Feeds = Dict[str, np.ndarray]


@dataclass
class Samples:
    """Calibration samples, loaded one at a time (nothing is kept in memory)."""

    names: List[str]
    loader: Callable[[int], Feeds]
    kind: str
    skipped: List[str]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Feeds:
        return self.loader(index)


# ------------------------------------------------------------------------------- images

def image_config(cfg: QuantizeConfig, width: int, height: int) -> ImageConfig:
    """The preprocessing keys of ``cfg`` as :mod:`mnnq.inputs.images` takes them."""
    return ImageConfig(format=cfg.format, mean=tuple(cfg.mean), normal=tuple(cfg.normal), width=width,
                       height=height, center_crop_h=cfg.center_crop_h, center_crop_w=cfg.center_crop_w)


def preprocess(bgr: np.ndarray, cfg: QuantizeConfig, width: int, height: int) -> np.ndarray:
    """A decoded image (``[H, W, 3]`` BGR uint8) -> ``[1, C, height, width]`` float32, exactly as
    quantized.out makes it. One implementation serves ``mnnq quantize`` and ``mnnq testdir
    make``: :func:`mnnq.inputs.images.preprocess` (MNN's own ImageProcess)."""
    return preprocess_image(bgr, image_config(cfg, width, height))


def _readable(path: Path) -> bool:
    import MNN.cv as cv  # MNN.cv.imread crashes on a file it cannot decode: ask first

    return bool(cv.haveImageReader(str(path)))


def read_image(path: Path) -> np.ndarray:
    """``[H, W, 3]`` BGR uint8 of an image file."""
    if not _readable(path):
        raise BadInput(f"cannot decode image {path}; remove it from the calibration folder")
    return read_bgr(path)


def image_samples(cfg: QuantizeConfig, inputs: Sequence[ModelInput]) -> Samples:
    first = inputs[0]
    spec = _spec(cfg, first.name)
    channels = cfg.channels
    if spec is not None and spec.shape is not None:
        if len(spec.shape) != 4:
            raise BadInput(f"config key 'inputs': image input '{first.name}' needs a 4-D shape [1, C, H, W], "
                           f"got {spec.shape}")
        shape = list(spec.shape)
    else:
        shape = [1, channels, cfg.height, cfg.width]
    height, width = cfg.height or shape[2], cfg.width or shape[3]
    if shape[1] != channels:
        raise BadInput(f"config key 'format': {cfg.format} gives {channels} channel(s) but input "
                       f"'{first.name}' takes {shape[1]}")
    declared = first.shape
    if declared and len(declared) == 4 and declared[1] > 0 and declared[1] != channels:
        raise BadInput(f"config key 'format': {cfg.format} gives {channels} channel(s) but the model's "
                       f"input '{first.name}' has {declared[1]}; use "
                       f"{'GRAY' if declared[1] == 1 else 'RGB or BGR' if declared[1] == 3 else 'RGBA or BGRA'}")
    constants = _constants(cfg, inputs[1:], "image input feeds only the model's first input")

    def none_readable(unreadable: int) -> str:
        extra = f" ({unreadable} unreadable files)" if unreadable else ""
        return (f"config key 'path': no readable images in {cfg.path}{extra}; "
                "put JPEG/PNG/BMP files there (or use input_type: sequence for test dirs)")

    chosen, skipped = list_images(cfg.path, cfg.used_sample_num, none_readable)
    prep = image_config(cfg, width, height)

    def load(i: int) -> Feeds:
        return {first.name: preprocess_image(read_image(chosen[i]), prep), **constants}

    return Samples([p.name for p in chosen], load, "image", skipped)


# ------------------------------------------------------------------------------- sequences

def _spec(cfg: QuantizeConfig, name: str) -> Optional[InputSpec]:
    return next((s for s in cfg.inputs if s.name == name), None)


def _constants(cfg: QuantizeConfig, inputs: Sequence[ModelInput], why: str) -> Feeds:
    out: Feeds = {}
    for inp in inputs:
        spec = _spec(cfg, inp.name)
        if spec is None or spec.value is None or spec.shape is None:
            raise BadInput(f"config key 'inputs': model input '{inp.name}' gets no data ({why}); "
                           f"add {{\"name\": \"{inp.name}\", \"shape\": [...], \"value\": 0}} "
                           "or use input_type: sequence")
        out[inp.name] = np.full(spec.shape, spec.value, dtype=np.float32)
    return out


def _read_sequence_sample(folder: Path, cfg: QuantizeConfig, inputs: Sequence[ModelInput]) -> Feeds:
    doc_path = folder / "input.json"
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"sample {doc_path} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    entries = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise BadInput(f'sample {doc_path} needs an "inputs" list of {{"name", "shape"}} objects')
    shapes = {e.get("name"): e.get("shape") for e in entries if isinstance(e, dict)}
    feeds: Feeds = {}
    for i, inp in enumerate(inputs):
        spec = _spec(cfg, inp.name)
        # the first shape given; [] is one too (a scalar input, e.g. a sample rate)
        shape = next((s for s in (shapes.get(inp.name), spec.shape if spec else None, inp.shape) if s is not None),
                     None)
        path = input_file(folder, inp.name, i, len(inputs))
        if path is None:
            if spec is not None and spec.value is not None and spec.shape is not None:
                feeds[inp.name] = np.full(spec.shape, spec.value, dtype=np.float32)
                continue
            raise BadInput(f"sample {folder} has no data for model input '{inp.name}' (expected {inp.name}.txt)")
        values = read_values(path, f"input '{inp.name}'")
        if not isinstance(shape, (list, tuple)) or any((not isinstance(d, int)) or d <= 0 for d in shape):
            raise BadInput(f"sample {folder}: no shape for input '{inp.name}'; add \"shape\" to its input.json")
        if values.size != int(np.prod(shape)):
            raise BadInput(f"sample {path} has {values.size} values but shape {shape} needs {int(np.prod(shape))}")
        feeds[inp.name] = values.reshape(shape).astype(np.float32)
    return feeds


def sequence_samples(cfg: QuantizeConfig, inputs: Sequence[ModelInput]) -> Samples:
    root = cfg.path
    if (root / "input.json").is_file():
        folders = [root]
        skipped: List[str] = []
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [p for p in subdirs if (p / "input.json").is_file()]
        skipped = [p.name for p in subdirs if not (p / "input.json").is_file()]
    if cfg.used_sample_num:
        folders = folders[: cfg.used_sample_num]
    if not folders:
        raise BadInput(f"config key 'path': {root} holds no sample sub-folders with an input.json "
                       "(input_type: sequence wants one MNN test dir per sample)")
    _read_sequence_sample(folders[0], cfg, inputs)   # fail early on a malformed first sample
    return Samples([p.name for p in folders], lambda i: _read_sequence_sample(folders[i], cfg, inputs),
                   "sequence", skipped)


def make_samples(cfg: QuantizeConfig, inputs: Sequence[ModelInput]) -> Samples:
    if cfg.input_type == "sequence":
        return sequence_samples(cfg, inputs)
    return image_samples(cfg, inputs)
