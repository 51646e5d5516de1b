"""quantized.out's calibration config (JSON, or YAML with the same keys), parsed and checked.

Keys, meanings and defaults follow MNN's ``tools/quantization/calibration.cpp``:

==========================  ==================================================  ==========
key                         meaning                                             default
==========================  ==================================================  ==========
path                        image folder, or folder of test-dir sub-folders     (required)
input_type                  ``image`` or ``sequence``                           image
format                      RGB / BGR / RGBA / BGRA / GRAY (image colour order) BGR
mean, normal                per channel: ``dst = (src - mean[c]) * normal[c]``  0 / 1
                            (a value per channel of ``format``; up to 4, the
                            extra ones ignored as quantized.out ignores them)
width, height               resize target of each image                         (required
                                                                                for images)
center_crop_h, center_crop_w  fraction of the image kept, centred               1.0
used_image_num              how many samples (0 = all); alias used_sample_num  0
feature_quantize_method     feature-method plugin (KL, ADMM, EMA, ...)          KL
weight_quantize_method      weight-method plugin with channel scales            MAX_ABS
quant_bits                  weight bits (activations stay 8-bit)                8
feature_clamp_value         activation clamp C, 1..127                          127
weight_clamp_value          weight clamp, 1..127 (capped at 2**(bits-1)-1)      127
batch_size                  samples per EMA batch                               32
skip_quant_op_names         op names kept float                                 []
debug                       per-layer cosine / overflow table                   false
inputs                      ``[{name, shape, value}]`` input shapes / constants  []
winogradOpt                 accepted for compatibility, no effect               -
==========================  ==================================================  ==========

Every problem raises :class:`BadInput` with one line naming the key and what it accepts.
An unknown key is a warning, unless it looks like a misspelt known key (then an error).
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mnnq.errors import BadInput
from mnnq.inputs.images import FORMATS, check_channel_values
INPUT_TYPES = ("image", "sequence")
KNOWN_KEYS = (
    "path", "input_type", "format", "mean", "normal", "width", "height", "center_crop_h",
    "center_crop_w", "used_image_num", "used_sample_num", "feature_quantize_method",
    "weight_quantize_method", "quant_bits", "feature_clamp_value", "weight_clamp_value",
    "batch_size", "skip_quant_op_names", "debug", "inputs", "winogradOpt",
)


@dataclass(frozen=True)
class InputSpec:
    """One ``inputs`` entry: a model input's shape and/or constant value."""

    name: str
    shape: Optional[List[int]] = None
    value: Optional[float] = None


@dataclass
class QuantizeConfig:
    path: Path
    input_type: str = "image"
    format: str = "BGR"
    mean: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    normal: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    width: Optional[int] = None
    height: Optional[int] = None
    center_crop_h: float = 1.0
    center_crop_w: float = 1.0
    used_sample_num: int = 0
    feature_quantize_method: str = "KL"
    weight_quantize_method: str = "MAX_ABS"
    quant_bits: int = 8
    feature_clamp_value: int = 127
    weight_clamp_value: int = 127
    batch_size: int = 32
    batch_size_set: bool = False
    skip_quant_op_names: List[str] = field(default_factory=list)
    debug: bool = False
    inputs: List[InputSpec] = field(default_factory=list)
    source: Optional[Path] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return FORMATS[self.format]

    @property
    def weight_clamp(self) -> int:
        """The weight clamp actually used: ``weight_clamp_value`` capped by ``quant_bits``."""
        return min(self.weight_clamp_value, (1 << (self.quant_bits - 1)) - 1)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "path": str(self.path), "input_type": self.input_type, "format": self.format,
            "mean": self.mean, "normal": self.normal, "width": self.width, "height": self.height,
            "center_crop_h": self.center_crop_h, "center_crop_w": self.center_crop_w,
            "used_sample_num": self.used_sample_num, "feature_quantize_method": self.feature_quantize_method,
            "weight_quantize_method": self.weight_quantize_method, "quant_bits": self.quant_bits,
            "feature_clamp_value": self.feature_clamp_value, "weight_clamp_value": self.weight_clamp_value,
            "batch_size": self.batch_size, "skip_quant_op_names": self.skip_quant_op_names, "debug": self.debug,
            "inputs": [{k: v for k, v in vars(s).items() if v is not None} for s in self.inputs],
        }


# ------------------------------------------------------------------------------------ readers

def read_config_file(path: Path) -> Dict[str, Any]:
    """The raw mapping in a ``.json`` / ``.yaml`` / ``.yml`` file (JSON is tried for others)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read config file {path}: {exc.__class__.__name__}") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise BadInput(f"config {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BadInput(f"config {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"config {path} must hold a mapping of keys (e.g. {{\"path\": ..., \"width\": ...}}), "
                       f"got {type(doc).__name__}")
    return doc


# ------------------------------------------------------------------------------------ checks

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(doc, key, lo, hi, what) -> int:
    v = doc[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v) or not lo <= v <= hi:
        raise BadInput(f"config key '{key}': expected {what}, got {v!r}")
    return v


def _num(doc, key, lo, hi, what) -> float:
    v = doc[key]
    if not _is_num(v) or not lo < v <= hi:
        raise BadInput(f"config key '{key}': expected {what}, got {v!r}")
    return float(v)


def _str(doc, key, choices: Sequence[str]) -> str:
    v = doc[key]
    accepted = ", ".join(choices)
    if not isinstance(v, str):
        raise BadInput(f"config key '{key}': expected one of {accepted}, got {v!r}")
    for c in choices:
        if v == c or v.lower() == c.lower():
            return c
    raise BadInput(f"config key '{key}': unknown value {v!r}; accepted: {accepted}")


def _floats(doc, key, n_max=4) -> List[float]:
    v = doc[key]
    if not isinstance(v, list) or not 1 <= len(v) <= n_max or not all(_is_num(x) for x in v):
        raise BadInput(f"config key '{key}': expected a list of 1..{n_max} numbers (one per channel), got {v!r}")
    return [float(x) for x in v]


def _bool(doc, key) -> bool:
    v = doc[key]
    if not isinstance(v, bool):
        raise BadInput(f"config key '{key}': expected true or false, got {v!r}")
    return v


def _inputs(doc) -> List[InputSpec]:
    v = doc["inputs"]
    if not isinstance(v, list):
        raise BadInput(f"config key 'inputs': expected a list of {{\"name\", \"shape\"}} objects, got {v!r}")
    specs = []
    for i, entry in enumerate(v):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise BadInput(f"config key 'inputs[{i}]': expected an object with a \"name\" string, got {entry!r}")
        shape = entry.get("shape")
        if shape is not None and (not isinstance(shape, list) or not shape
                                  or not all(_is_int(d) and d > 0 for d in shape)):
            raise BadInput(f"config key 'inputs[{i}].shape': expected a list of positive integers, got {shape!r}")
        value = entry.get("value")
        if value is not None and not _is_num(value):
            raise BadInput(f"config key 'inputs[{i}].value': expected a number, got {value!r}")
        specs.append(InputSpec(entry["name"], shape, None if value is None else float(value)))
    return specs


def _unknown_keys(doc: Dict[str, Any], source: str) -> List[str]:
    warnings = []
    for key in doc:
        if key in KNOWN_KEYS:
            continue
        close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.8)
        if close:
            raise BadInput(f"config key '{key}' is not a quantized.out key; did you mean '{close[0]}'?")
        warnings.append(f"config {source}: unknown key '{key}' ignored (known keys: {', '.join(KNOWN_KEYS)})")
    return warnings


def parse_config(doc: Dict[str, Any], source: Optional[Path] = None,
                 feature_methods: Sequence[str] = ("KL", "ADMM", "EMA"),
                 weight_methods: Sequence[str] = ("MAX_ABS", "ADMM"),
                 base_dir: Optional[Path] = None) -> QuantizeConfig:
    """Check ``doc`` (the raw mapping) and return the config. ``feature_methods`` and
    ``weight_methods`` are the plugin names accepted; ``path`` is resolved against the current
    folder, then against ``base_dir`` (the config file's folder)."""
    where = str(source) if source else "config"
    warnings = _unknown_keys(doc, where)
    cfg = QuantizeConfig(path=_samples_path(doc, base_dir), source=source, warnings=warnings)
    _read_preprocessing(doc, cfg)
    _read_methods(doc, cfg, feature_methods, weight_methods)
    _read_rest(doc, cfg)
    if cfg.input_type == "image":
        for key in ("width", "height"):
            if getattr(cfg, key) is None and not _image_shape_given(cfg):
                raise BadInput(f"config key '{key}' is missing: image input needs the resize target "
                               "(width and height in pixels)")
    return cfg


def _samples_path(doc: Dict[str, Any], base_dir: Optional[Path]) -> Path:
    if "path" not in doc:
        raise BadInput("config key 'path' is missing: give the folder of calibration images "
                       "(or of test-dir sub-folders with input_type: sequence)")
    if not isinstance(doc["path"], str) or not doc["path"]:
        raise BadInput(f"config key 'path': expected a folder path string, got {doc['path']!r}")
    path = Path(doc["path"]).expanduser()
    if not path.exists() and base_dir is not None and not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise BadInput(f"config key 'path': folder not found: {doc['path']}")
    if not path.is_dir():
        raise BadInput(f"config key 'path': {doc['path']} is not a folder (give the folder holding the samples)")
    return path


def _read_preprocessing(doc: Dict[str, Any], cfg: QuantizeConfig) -> None:
    """input_type, format, mean, normal, width, height, center crops, sample count."""
    if "input_type" in doc:
        cfg.input_type = _str(doc, "input_type", INPUT_TYPES)
    if "format" in doc:
        cfg.format = _str(doc, "format", tuple(FORMATS))
    for key in ("mean", "normal"):
        if key in doc:
            given = _floats(doc, key)
            if cfg.input_type == "image":  # a sequence config has no colour channels to match
                check_channel_values(key, len(given), cfg.format, "config", given="format" in doc)
            setattr(cfg, key, given + getattr(cfg, key)[len(given):])
    for key in ("width", "height"):
        if key in doc:
            setattr(cfg, key, _int(doc, key, 1, 1 << 16, "a positive integer (pixels)"))
    for key in ("center_crop_h", "center_crop_w"):
        if key in doc:
            setattr(cfg, key, _num(doc, key, 0.0, 1.0, "a fraction in (0, 1]"))
    for key in ("used_image_num", "used_sample_num"):
        if key in doc:
            cfg.used_sample_num = _int(doc, key, 0, 1 << 31, "a count >= 0 (0 = all samples)")


def _read_methods(doc: Dict[str, Any], cfg: QuantizeConfig, feature_methods: Sequence[str],
                  weight_methods: Sequence[str]) -> None:
    if "feature_quantize_method" in doc:
        cfg.feature_quantize_method = _str(doc, "feature_quantize_method", tuple(feature_methods))
    elif cfg.feature_quantize_method not in feature_methods:
        raise BadInput(f"config key 'feature_quantize_method': the default {cfg.feature_quantize_method} is not "
                       f"loaded; accepted: {', '.join(feature_methods)}")
    if "weight_quantize_method" in doc:
        cfg.weight_quantize_method = _str(doc, "weight_quantize_method", tuple(weight_methods))
    elif cfg.weight_quantize_method not in weight_methods:
        raise BadInput(f"config key 'weight_quantize_method': the default {cfg.weight_quantize_method} is not "
                       f"loaded; accepted: {', '.join(weight_methods)}")


def _read_rest(doc: Dict[str, Any], cfg: QuantizeConfig) -> None:
    """Bits, clamps, batch size, ops to skip, debug, inputs."""
    if "quant_bits" in doc:
        cfg.quant_bits = _int(doc, "quant_bits", 2, 8, "an integer 2..8")
    for key in ("feature_clamp_value", "weight_clamp_value"):
        if key in doc:
            setattr(cfg, key, _int(doc, key, 1, 127, "an integer 1..127"))
    if "batch_size" in doc:
        cfg.batch_size = _int(doc, "batch_size", 1, 1 << 20, "a positive integer")
        cfg.batch_size_set = True
    if "skip_quant_op_names" in doc:
        v = doc["skip_quant_op_names"]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadInput(f"config key 'skip_quant_op_names': expected a list of op names, got {v!r}")
        cfg.skip_quant_op_names = list(v)
    if "debug" in doc:
        cfg.debug = _bool(doc, "debug")
    if "winogradOpt" in doc:
        _bool(doc, "winogradOpt")
    if "inputs" in doc:
        cfg.inputs = _inputs(doc)


def _image_shape_given(cfg: QuantizeConfig) -> bool:
    return bool(cfg.inputs) and cfg.inputs[0].shape is not None and len(cfg.inputs[0].shape) == 4


def load_config(path: Path, feature_methods: Sequence[str], weight_methods: Sequence[str]) -> QuantizeConfig:
    path = Path(path)
    doc = read_config_file(path)
    return parse_config(doc, source=path, feature_methods=feature_methods, weight_methods=weight_methods,
                        base_dir=path.resolve().parent)
