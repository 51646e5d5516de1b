"""Model sources: every ``--model`` may be an ONNX or TFLite file, converted once to float MNN.

``resolve_model(path)`` returns a ``.mnn`` path unchanged and converts ``.onnx`` / ``.tflite``
with MNN's converter (default flags, as ``mnnq convert -f ONNX`` would) into a cache keyed by
the file's SHA-256 and the MNN version:
``<cache>/converted/<sha256>-mnn<version>/model.mnn`` (+ ``source.json`` naming the source).
``<cache>`` is ``$MNNQ_CACHE`` when set, else ``~/.cache/mnnq``. Entries are written into a
temporary folder and renamed into place, so concurrent runs never see a half-written model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

from mnnq.errors import BadInput, NativeFailure

# Suffix -> the converter's -f value, for files that resolve_model converts.
SOURCE_FORMATS = {".onnx": "ONNX", ".tflite": "TFLITE"}
CACHE_ENV = "MNNQ_CACHE"
MODEL_NAME = "model.mnn"


def cache_root() -> Path:
    """mnnq's cache root: ``$MNNQ_CACHE`` or ``~/.cache/mnnq``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "mnnq"


def mnn_version() -> str:
    try:
        return metadata.version("MNN")
    except metadata.PackageNotFoundError:  # pragma: no cover - MNN is a hard dependency
        return "unknown"


def source_format(path: Path) -> Optional[str]:
    """The converter's ``-f`` value for a convertible source, ``None`` for ``.mnn``;
    BadInput for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mnn":
        return None
    if suffix in SOURCE_FORMATS:
        return SOURCE_FORMATS[suffix]
    raise BadInput(f"model {path}: unknown model type '{suffix or '(no suffix)'}'; give a .mnn, .onnx or "
                   "a .tflite file (convert other formats first with 'mnnq convert -f TF|CAFFE ...')")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model(path: Path, cache: Optional[Path] = None) -> Path:
    """The float ``.mnn`` for ``path``: ``path`` itself when it is ``.mnn`` (not checked here),
    else the cached conversion of the ONNX / TFLite file (converted on first use).

    ``cache`` overrides the cache root (the folder that holds ``converted/``).
    """
    path = Path(path)
    fmt = source_format(path)
    if fmt is None:
        return path
    if not path.is_file():
        raise BadInput(f"model not found: {path}")
    folder = Path(cache or cache_root()).expanduser() / "converted" / f"{file_sha256(path)}-mnn{mnn_version()}"
    model = folder / MODEL_NAME
    if model.is_file():
        return model
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name[:16]}-", dir=folder.parent))
    try:
        _convert(path, fmt, work / MODEL_NAME)
        (work / "source.json").write_text(json.dumps(
            {"source": str(path.resolve()), "format": fmt, "sha256": folder.name.split("-")[0],
             "mnn": mnn_version()}, indent=1) + "\n")
        try:
            os.replace(work, folder)
        except OSError:
            if not model.is_file():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model


def _convert(src: Path, fmt: str, dst: Path) -> None:
    from mnnq.mnn_backend.converter import convert

    try:
        convert(src, dst, fmt, what=f"converting {src.name}")
    except NativeFailure as exc:
        last = exc.tail.strip().splitlines()[-1] if exc.tail.strip() else str(exc)
        raise BadInput(f"cannot convert {src} to MNN ({last.strip()}); run 'mnnq convert -f {fmt} --modelFile "
                       f"{src} --MNNModel model.mnn' to see the converter's output, then pass the .mnn") from None
