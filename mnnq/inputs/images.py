"""Images as model inputs, preprocessed with quantized.out's config keys.

Keys (flags of ``mnnq testdir make`` or a YAML/JSON file, e.g. the quantized.out config itself):
``format`` (colour order the model wants: RGB/BGR/RGBA/BGRA/GRAY, default BGR), ``mean`` and
``normal`` (per channel, ``dst = (src - mean[c]) * normal[c]``, defaults 0 and 1), ``width`` /
``height`` (resize target, default the model's input size), ``center_crop_h`` / ``center_crop_w``
(fraction kept, centred, default 1), ``path`` (the image folder, relative to the current directory
as quantized.out reads it) and ``used_image_num``. Other quantized.out keys are accepted and ignored.

Decoding is ``MNN.cv.imread`` (JPEG, PNG, BMP, ...; no PIL); the crop, bilinear resize, colour
conversion and normalisation are MNN's own ``CVImageProcess`` set up as quantized.out sets it up
(RGBA source bitmap, the crop's corner pixels mapped onto the output's corners), so a test set made
from a folder matches what quantized.out / ``mnnq quantize`` compute from the same folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from mnnq.errors import BadInput
from mnnq.mnn_backend.isolated import check_images_decodable

FORMATS = {"RGB": 3, "BGR": 3, "RGBA": 4, "BGRA": 4, "GRAY": 1}
KEYS = ("path", "format", "mean", "normal", "width", "height", "center_crop_h", "center_crop_w",
        "used_image_num", "used_sample_num")
# Keys of a quantized.out config that only matter to calibration: accepted and ignored here.
CALIBRATION_KEYS = ("input_type", "feature_quantize_method", "weight_quantize_method", "quant_bits",
                    "feature_clamp_value", "weight_clamp_value", "batch_size", "skip_quant_op_names",
                    "debug", "inputs", "winogradOpt")


def check_channel_values(key: str, count: int, fmt: str, where: str, given: bool = True) -> None:
    """The rule for ``mean`` / ``normal`` (``count`` values) under ``format`` ``fmt``.

    quantized.out (``tools/quantization/calibration.cpp``) copies the list into a ``float[4]``
    and its colour conversion reads the first ``channels`` entries (3 for RGB/BGR, 4 for
    RGBA/BGRA, 1 for GRAY); entries it lacks keep 0 / 1. So a list shorter than the channel
    count silently leaves channels unnormalised: refused. A longer one, up to 4 values (as
    ``[0, 0, 0, 0]`` for a 3-channel format, the ``float[4]`` defaults), works the same in
    quantized.out, which ignores the extra entries: accepted. More than 4 would overrun
    quantized.out's array: refused by the callers' parsers.
    """
    channels = FORMATS[fmt]
    if count < channels:
        default = "" if given else " (the default)"
        raise BadInput(f"{where} key '{key}': format {fmt}{default} has {channels} channel(s), so '{key}' needs "
                       f"{channels} values (one per channel), got {count}")


@dataclass(frozen=True)
class ImageConfig:
    format: str = "BGR"
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    normal: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    width: Optional[int] = None
    height: Optional[int] = None
    center_crop_h: float = 1.0
    center_crop_w: float = 1.0
    path: Optional[Path] = None
    used_image_num: int = 0
    given: Tuple[str, ...] = field(default=(), compare=False)  # keys set by the user

    @property
    def channels(self) -> int:
        return FORMATS[self.format]

    def as_dict(self) -> Dict[str, Any]:
        return {"format": self.format, "mean": list(self.mean[: self.channels]),
                "normal": list(self.normal[: self.channels]), "width": self.width, "height": self.height,
                "center_crop_h": self.center_crop_h, "center_crop_w": self.center_crop_w}


def read_config(path: Path) -> Dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml`` / ``.json`` preprocessing (or quantized.out) config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read image config {path}: {exc.__class__.__name__}") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        if is_yaml:
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / ValueError
        raise BadInput(f"image config {path} is not valid {'YAML' if is_yaml else 'JSON'}: "
                       f"{' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"image config {path} must hold a mapping of keys (format, mean, normal, width, height)")
    return doc


def _number(key: str, v: Any, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise BadInput(f"image config key '{key}': expected a number, got {v!r}")
    if integer:
        if float(v) != int(v) or v <= 0:
            raise BadInput(f"image config key '{key}': expected a positive integer, got {v!r}")
        return int(v)
    return float(v)


def make_config(doc: Dict[str, Any], where: str = "image config") -> ImageConfig:
    """Check ``doc`` (config keys -> values; ``None`` values are ignored) into an ImageConfig."""
    unknown = [k for k in doc if k not in KEYS and k not in CALIBRATION_KEYS]
    if unknown:
        raise BadInput(f"{where}: unknown key '{unknown[0]}'; accepted: {', '.join(KEYS)}")
    kw: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    given = tuple(k for k, v in doc.items() if v is not None and k in KEYS)
    for key in given:
        v = doc[key]
        if key == "format":
            if not isinstance(v, str) or v.upper() not in FORMATS:
                raise BadInput(f"{where} key 'format': expected one of {', '.join(FORMATS)}, got {v!r}")
            kw["format"] = v.upper()
        elif key in ("mean", "normal"):
            values = v if isinstance(v, (list, tuple)) else [v]
            if not 1 <= len(values) <= 4:
                raise BadInput(f"{where} key '{key}': expected 1..4 numbers (one per channel), got {v!r}")
            fill = 0.0 if key == "mean" else 1.0
            nums = [_number(key, x) for x in values]
            kw[key] = tuple(nums + [fill] * (4 - len(nums)))
            counts[key] = len(nums)
        elif key in ("width", "height"):
            kw[key] = _number(key, v, integer=True)
        elif key in ("center_crop_h", "center_crop_w"):
            f = _number(key, v)
            if not 0 < f <= 1:
                raise BadInput(f"{where} key '{key}': expected a fraction in (0, 1], got {v!r}")
            kw[key] = f
        elif key in ("used_image_num", "used_sample_num"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"{where} key '{key}': expected a count >= 0, got {v!r}")
            kw["used_image_num"] = v
        elif key == "path":
            kw["path"] = Path(str(v)).expanduser()
    fmt = kw.get("format", ImageConfig.format)
    for key, count in counts.items():
        check_channel_values(key, count, fmt, where, given="format" in kw)
    return ImageConfig(**kw, given=given)


def merged_config(file: Optional[Path], flags: Dict[str, Any]) -> ImageConfig:
    """The config file's keys (if any), overridden by the flags that were given."""
    doc = read_config(file) if file else {}
    where = f"image config {file}" if file else "image flags"
    merged = {**doc, **{k: v for k, v in flags.items() if v is not None}}
    return make_config(merged, where)


def list_images(folder: Path, limit: int = 0,
                none_readable: Optional[Callable[[int], str]] = None) -> Tuple[List[Path], List[str]]:
    """(readable images sorted by name, at most ``limit`` when > 0; names of skipped files).
    Every chosen image is first decoded in a child. ``none_readable(skipped count)`` gives the
    BadInput message when no file is readable (default: the ``--images`` one)."""
    import MNN.cv as cv

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"--images {folder}: not a folder of images")
    chosen: List[Path] = []
    skipped: List[str] = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if limit and len(chosen) >= limit:
            break
        # MNN.cv.imread crashes on a file it cannot decode: ask first.
        if cv.haveImageReader(str(p)):
            chosen.append(p)
        else:
            skipped.append(p.name)
    if not chosen:
        if none_readable is not None:
            raise BadInput(none_readable(len(skipped)))
        extra = f" ({len(skipped)} files it cannot decode)" if skipped else ""
        raise BadInput(f"--images {folder}: no readable images{extra}; put JPEG/PNG/BMP files there")
    check_images_decodable(chosen)  # in a child: a damaged file must not crash this process
    return chosen, skipped


def read_bgr(path: Path) -> np.ndarray:
    """``[H, W, 3]`` BGR uint8 (MNN.cv.imread's layout; grey images come back with 3 channels)."""
    import MNN.cv as cv

    arr = np.array(cv.imread(str(path)).read(), dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.size == 0:
        raise BadInput(f"cannot decode image {path}; remove it from the folder")
    return arr


def preprocess(bgr: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """``[H, W, 3]`` BGR uint8 -> ``[1, C, height, width]`` float32 as quantized.out makes it."""
    import MNN

    if cfg.width is None or cfg.height is None:
        raise BadInput("image inputs need a size: give --width and --height")
    h, w = bgr.shape[:2]
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = bgr[..., ::-1]
    rgba[..., 3] = 255
    crop_h, crop_w = int(h * cfg.center_crop_h), int(w * cfg.center_crop_w)
    if crop_h <= 0 or crop_w <= 0:
        raise BadInput(f"a centre crop of {cfg.center_crop_h} x {cfg.center_crop_w} keeps no pixel of a "
                       f"{w}x{h} image; raise center_crop_h / center_crop_w")
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    bottom, right = top + crop_h - 1, left + crop_w - 1        # inclusive corner pixels
    process = MNN.CVImageProcess({
        "sourceFormat": MNN.CV_ImageFormat_RGBA,
        "destFormat": getattr(MNN, f"CV_ImageFormat_{cfg.format}"),
        "mean": tuple(cfg.mean), "normal": tuple(cfg.normal),
        "filterType": MNN.CV_Filter_BILINEAL,
    })
    matrix = MNN.CVMatrix()
    out_w, out_h = cfg.width - 1, cfg.height - 1
    matrix.setPolyToPoly([0, 0, 0, out_h, out_w, 0, out_w, out_h],
                         [left, top, left, bottom, right, top, right, bottom])
    process.setMatrix(matrix)
    shape = (1, cfg.channels, cfg.height, cfg.width)
    tensor = MNN.Tensor(shape, MNN.Halide_Type_Float, np.zeros(shape, dtype=np.float32),
                        MNN.Tensor_DimensionType_Caffe)
    flat = np.ascontiguousarray(rgba).reshape(-1)
    needed = int(np.prod(shape))
    if flat.size < needed:
        # The binding refuses a source buffer smaller than the destination tensor (an image smaller
        # than the input, e.g. 150x150 RGBA into 3x224x224); zeros past the last row are never read.
        flat = np.concatenate([flat, np.zeros(needed - flat.size, dtype=np.uint8)])
    process.convert(flat, w, h, 0, tensor)
    return np.array(tensor.getNumpyData(), dtype=np.float32).reshape(shape)


def with_model_size(cfg: ImageConfig, name: str, declared: Optional[List[int]]) -> ImageConfig:
    """Fill width/height from the model's fixed input size and check channels and size agree."""
    if declared is None or len(declared) != 4:
        if cfg.width is None or cfg.height is None:
            raise BadInput(f"input '{name}' has no fixed 4-D shape: give the image size with --width and --height")
        return cfg
    _, c, h, w = declared
    if c > 0 and c != cfg.channels:
        want = {1: "GRAY", 3: "RGB or BGR", 4: "RGBA or BGRA"}.get(c, f"a {c}-channel format")
        raise BadInput(f"--format {cfg.format} gives {cfg.channels} channel(s) but input '{name}' takes {c}; "
                       f"use {want}")
    for key, model_dim, value in (("height", h, cfg.height), ("width", w, cfg.width)):
        if value is None and model_dim <= 0:
            raise BadInput(f"input '{name}' has a dynamic {key} ({declared}): give --{key}")
        if value is not None and model_dim > 0 and value != model_dim:
            raise BadInput(f"--{key} {value} does not match input '{name}' {declared}; use {model_dim} or leave it out")
    return replace(cfg, height=cfg.height or h, width=cfg.width or w)
