"""The project config: which quantized models the gate keeps within budget.

``mnnq.yaml`` (or ``mnnq.yml``, or a ``[tool.mnnq]`` table in ``pyproject.toml``)::

    defaults:               # optional, for every model
      metric: max_rel
      rate: 0.05
      memory_mode: normal
    models:
      - name: digits                 # default: the quantized file's stem
        float: digits.mnn            # float source (needed by jobs and per-layer errors)
        quantized: digits.q.mnn      # the file under test
        test_dir: testset            # MNN test dir, or a folder of test dirs
        metric: max_rel
        rate: 0.05
        memory_mode: normal          # runtime memory mode to measure in (normal | low)
        job:                         # how `mnnq check --rebuild` rewrites `quantized`
          auto-quant: {hqq: 1, select_bits: 1}
          # or: quantize: {config: calib.json}
          # or: apply: {params: digits.q.mnn.json, hqq: true}

Paths are relative to the config file. Keys may be spelled with ``_`` or ``-``. Unknown keys
are errors, so a typo never silently falls back to a default. Every error is one line
``<file>:<line>: <key path>: <what is wrong and what to write instead>``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mnnq.errors import BadInput

CONFIG_NAMES = ("mnnq.yaml", "mnnq.yml")
PYPROJECT = "pyproject.toml"
MEMORY_MODES = ("normal", "low")
DEFAULT_METRIC = "max_rel"
DEFAULT_MEMORY_MODE = "normal"

TOP_KEYS = ("models", "defaults")
DEFAULT_KEYS = ("metric", "rate", "memory_mode")
MODEL_KEYS = ("name", "float", "quantized", "test_dir", "metric", "rate", "memory_mode", "job")
JOB_KINDS = ("auto-quant", "quantize", "apply")

# auto-quant flags a job may set (model, quant_model and test_dir come from the model entry).
AUTO_QUANT_OPTIONS = {
    "rate": "number", "metric": "str", "select_bits": "01", "select_block": "01", "hqq": "01",
    "weight_method": "str", "strategy": "strs", "evaluator": "str", "memory_mode": "str",
    "time_budget": "number", "fp16_float_weights": "01",
}
APPLY_OPTIONS = {"params": "path", "hqq": "bool", "fp16_float_weights": "bool"}


@dataclass(frozen=True)
class Job:
    """How to (re)write a model's quantized file: ``kind`` is one of :data:`JOB_KINDS`,
    ``options`` the validated settings (paths resolved)."""

    kind: str
    options: Dict[str, Any]

    def files(self) -> List[Path]:
        """Input files the job reads besides the float model (a params or calibration config)."""
        return [v for k, v in self.options.items() if isinstance(v, Path)]


@dataclass
class ModelSpec:
    """One model the gate checks. ``line`` is where its entry starts in the config (1-based)."""

    name: str
    quantized: Path
    test_dir: Path
    rate: float
    metric: str = DEFAULT_METRIC
    memory_mode: str = DEFAULT_MEMORY_MODE
    float_model: Optional[Path] = None
    job: Optional[Job] = None
    config: Optional[Path] = None
    line: Optional[int] = None

    def files(self) -> List[Path]:
        return [p for p in (self.quantized, self.float_model) if p is not None] + (self.job.files() if self.job else [])


@dataclass
class ProjectConfig:
    path: Path
    models: List[ModelSpec] = field(default_factory=list)


class _Where:
    """Formats ``<file>:<line>: <key path>: message`` for config errors."""

    def __init__(self, path: Path, lines: Dict[Tuple, int]):
        self.path = path
        self.lines = lines

    def error(self, key_path: Tuple, message: str) -> BadInput:
        line = None
        for n in range(len(key_path), -1, -1):
            line = self.lines.get(tuple(key_path[:n]))
            if line is not None:
                break
        loc = f"{self.path}:{line}" if line else f"{self.path}"
        return BadInput(f"{loc}: {_key_text(key_path)}: {message}")


def _key_text(key_path: Tuple) -> str:
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _norm(key: Any) -> Any:
    return key.replace("-", "_") if isinstance(key, str) else key


# ----------------------------------------------------------------------------------------
# Finding and reading the file


def find_config(start: Path) -> Path:
    """The nearest ``mnnq.yaml`` / ``mnnq.yml`` / ``pyproject.toml`` with ``[tool.mnnq]`` in
    ``start`` or its parents (stopping at the git root)."""
    start = Path(start).resolve()
    for directory in (start, *start.parents):
        for name in CONFIG_NAMES:
            if (directory / name).is_file():
                return directory / name
        pyproject = directory / PYPROJECT
        if pyproject.is_file() and re.search(r"^\s*\[+\s*tool\.mnnq[\].]", _read_text(pyproject), re.M):
            return pyproject
        if (directory / ".git").exists():
            break
    raise BadInput(f"no {CONFIG_NAMES[0]} (or [tool.mnnq] in {PYPROJECT}) in {start} or its parents; "
                   "write one or give --config")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read config {path}: {exc.__class__.__name__}: {exc}") from None


def _load_yaml(path: Path, text: str) -> Tuple[Any, Dict[Tuple, int]]:
    import yaml

    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{loc}: not valid YAML ({problem})") from None
    lines: Dict[Tuple, int] = {}
    if isinstance(root, yaml.MappingNode):
        for knode, vnode in root.value:
            key = _norm(knode.value)
            lines[(key,)] = knode.start_mark.line + 1
            if key == "models" and isinstance(vnode, yaml.SequenceNode):
                for i, item in enumerate(vnode.value):
                    lines[("models", i)] = item.start_mark.line + 1
                    if isinstance(item, yaml.MappingNode):
                        for k, _ in item.value:
                            lines[("models", i, _norm(k.value))] = k.start_mark.line + 1
            elif key == "defaults" and isinstance(vnode, yaml.MappingNode):
                for k, _ in vnode.value:
                    lines[("defaults", _norm(k.value))] = k.start_mark.line + 1
    return data, lines


def _load_toml(path: Path, text: str) -> Tuple[Any, Dict[Tuple, int]]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise BadInput(f"{path}: reading [tool.mnnq] needs Python >= 3.11 or the tomli package; "
                           "pip install tomli, or use mnnq.yaml") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML ({exc})") from None
    tool = doc.get("tool", {})
    if not isinstance(tool, dict) or "mnnq" not in tool:
        raise BadInput(f"{path}: has no [tool.mnnq] table; add one or use mnnq.yaml")
    lines: Dict[Tuple, int] = {}
    index = 0
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if re.match(r"^\[\[\s*tool\.mnnq\.models\s*\]\]", stripped):
            lines[("models", index)] = n
            index += 1
        elif re.match(r"^\[\s*tool\.mnnq\s*\]", stripped):
            lines[()] = n
        elif re.match(r"^\[\s*tool\.mnnq\.defaults\s*\]", stripped):
            lines[("defaults",)] = n
    return tool["mnnq"], lines


def load_config(path: Path) -> ProjectConfig:
    """Read and validate a project config; raise :class:`BadInput` naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"config not found: {path}")
    if not path.is_file():
        raise BadInput(f"config is not a file: {path}")
    text = _read_text(path)
    if path.suffix == ".toml":
        data, lines = _load_toml(path, text)
    elif path.suffix in (".yaml", ".yml"):
        data, lines = _load_yaml(path, text)
    else:
        raise BadInput(f"config {path}: unknown format; use mnnq.yaml or pyproject.toml with [tool.mnnq]")
    return parse_config(data, path, lines)


# ----------------------------------------------------------------------------------------
# Validation


def parse_config(data: Any, path: Path, lines: Optional[Dict[Tuple, int]] = None) -> ProjectConfig:
    where = _Where(path, lines or {})
    base = path.parent
    if data is None:
        raise where.error((), "the config is empty; list the models under 'models:'")
    data = _mapping(data, (), where)
    _known(data, TOP_KEYS, (), where)
    defaults = _mapping(data.get("defaults", {}) or {}, ("defaults",), where)
    _known(defaults, DEFAULT_KEYS, ("defaults",), where)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise where.error(("models",), "needs a non-empty list of models "
                                       "(each with quantized, test_dir and rate)")
    config = ProjectConfig(path)
    names: Dict[str, int] = {}
    for i, entry in enumerate(models):
        spec = _model(entry, i, defaults, base, where)
        if spec.name in names:
            first = names[spec.name]
            raise where.error(("models", i, "name"),
                              f"'{spec.name}' is already the name of models[{first}]; give each model a unique name")
        names[spec.name] = i
        spec.config = path
        spec.line = where.lines.get(("models", i))
        config.models.append(spec)
    return config


def _mapping(value: Any, key_path: Tuple, where: _Where) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(key_path, f"expected a mapping of keys to values, got {type(value).__name__}")
    out: Dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise where.error(key_path, f"key {k!r} is not a string")
        out[_norm(k)] = v
    return out


def _known(mapping: Dict[str, Any], allowed, key_path: Tuple, where: _Where) -> None:
    for key in mapping:
        if key not in allowed:
            raise where.error(key_path + (key,), f"unknown key; expected one of {', '.join(allowed)}")


def _string(value: Any, key_path: Tuple, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(key_path, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _path(value: Any, key_path: Tuple, where: _Where, base: Path) -> Path:
    text = _string(value, key_path, where)
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _rate(value: Any, key_path: Tuple, where: _Where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise where.error(key_path, f"expected a positive number (e.g. 0.05), got {value!r}")
    return float(value)


def _choice(value: Any, choices, key_path: Tuple, where: _Where) -> str:
    if value not in choices:
        raise where.error(key_path, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _model(entry: Any, i: int, defaults: Dict[str, Any], base: Path, where: _Where) -> ModelSpec:
    kp = ("models", i)
    entry = _mapping(entry, kp, where)
    _known(entry, MODEL_KEYS, kp, where)
    for required in ("quantized", "test_dir"):
        if required not in entry:
            raise where.error(kp + (required,), f"missing; every model needs {required}")
    quantized = _path(entry["quantized"], kp + ("quantized",), where, base)
    test_dir = _path(entry["test_dir"], kp + ("test_dir",), where, base)
    if "rate" in entry:
        rate = _rate(entry["rate"], kp + ("rate",), where)
    elif "rate" in defaults:
        rate = _rate(defaults["rate"], ("defaults", "rate"), where)
    else:
        raise where.error(kp + ("rate",), "missing; give the error budget (e.g. rate: 0.05) here or under defaults")
    metric_kp = kp + ("metric",) if "metric" in entry else ("defaults", "metric")
    metric = _string(entry.get("metric", defaults.get("metric", DEFAULT_METRIC)), metric_kp, where)
    mode_kp = kp + ("memory_mode",) if "memory_mode" in entry else ("defaults", "memory_mode")
    memory_mode = _choice(entry.get("memory_mode", defaults.get("memory_mode", DEFAULT_MEMORY_MODE)),
                          MEMORY_MODES, mode_kp, where)
    float_model = _path(entry["float"], kp + ("float",), where, base) if "float" in entry else None
    name = _string(entry["name"], kp + ("name",), where) if "name" in entry else quantized.stem
    job = None
    if "job" in entry:
        if float_model is None:
            raise where.error(kp + ("job",), "a job rebuilds the quantized file from the float model; add float:")
        job = _job(entry["job"], kp + ("job",), where, base)
    return ModelSpec(name=name, quantized=quantized, test_dir=test_dir, rate=rate, metric=metric,
                     memory_mode=memory_mode, float_model=float_model, job=job)


def _job(value: Any, kp: Tuple, where: _Where, base: Path) -> Job:
    if not isinstance(value, dict) or len(value) != 1:
        raise where.error(kp, f"expected exactly one of {', '.join(JOB_KINDS)} mapping to its options, "
                              "e.g. job: {auto-quant: {hqq: 1}}")
    (raw_kind, raw_options), = value.items()
    kind = raw_kind.replace("_", "-") if isinstance(raw_kind, str) else raw_kind
    if kind not in JOB_KINDS:
        raise where.error(kp + (raw_kind,), f"unknown job; expected one of {', '.join(JOB_KINDS)}")
    kp = kp + (kind,)
    options = _mapping(raw_options if raw_options is not None else {}, kp, where)
    if kind == "auto-quant":
        return Job(kind, {k: _option(k, v, AUTO_QUANT_OPTIONS, kp, where, base) for k, v in options.items()})
    if kind == "apply":
        if "params" not in options:
            raise where.error(kp + ("params",), "missing; give the compression params JSON (e.g. q.mnn.json)")
        return Job(kind, {k: _option(k, v, APPLY_OPTIONS, kp, where, base) for k, v in options.items()})
    # quantize: `config` is required; other keys are mnnq.quantize()'s options (checked there at rebuild).
    if "config" not in options:
        raise where.error(kp + ("config",), "missing; give quantized.out's JSON (or YAML) config")
    out: Dict[str, Any] = {"config": _path(options["config"], kp + ("config",), where, base)}
    for k, v in options.items():
        if k == "config":
            continue
        if isinstance(v, (dict, list)) or v is None:
            raise where.error(kp + (k,), f"expected a single value for the flag --{k.replace('_', '-')}, got {v!r}")
        out[k] = v
    return Job(kind, out)


def _option(key: str, value: Any, spec: Dict[str, str], kp: Tuple, where: _Where, base: Path) -> Any:
    if key not in spec:
        raise where.error(kp + (key,), f"unknown option; expected one of {', '.join(spec)}")
    kind = spec[key]
    key_path = kp + (key,)
    if kind == "number":
        return _rate(value, key_path, where)
    if kind == "str":
        return _string(value, key_path, where)
    if kind == "path":
        return _path(value, key_path, where, base)
    if kind == "bool":
        if not isinstance(value, bool):
            raise where.error(key_path, f"expected true or false, got {value!r}")
        return value
    if kind == "01":
        if isinstance(value, bool):
            return int(value)
        if value not in (0, 1):
            raise where.error(key_path, f"expected 0 or 1, got {value!r}")
        return int(value)
    # strs: a name or a list of names
    values = value if isinstance(value, list) else [value]
    return [_string(v, key_path, where) for v in values]
