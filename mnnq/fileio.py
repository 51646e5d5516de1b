"""Output files are written atomically: a temporary file in the destination folder, then
a rename. A failed or interrupted run leaves the previous file or none, never a torn one."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from mnnq.errors import BadInput


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_in(dst: Path):
    """A temporary file beside ``dst`` with the permissions a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=str(dst.parent or "."))
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


def atomic_write_bytes(dst: Path, data: bytes) -> None:
    dst = Path(dst)
    fd, tmp = _tmp_in(dst)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(dst: Path, text: str) -> None:
    atomic_write_bytes(dst, text.encode("utf-8"))


def atomic_copy(src: Path, dst: Path) -> None:
    dst = Path(dst)
    fd, tmp = _tmp_in(dst)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(dst: Path, sources: Iterable[Path], flag: str) -> Path:
    """Refuse an output that would overwrite a source, or that cannot be written."""
    dst = Path(dst)
    if dst.exists() and dst.is_dir():
        raise BadInput(f"{flag} {dst} is a folder; give a file path")
    for src in sources:
        if src is not None and Path(src).exists() and dst.exists() and os.path.samefile(src, dst):
            raise BadInput(f"{flag} {dst} is the input file {src}; write to a new path (sources are never overwritten)")
        if src is not None and Path(src).resolve() == dst.resolve():
            raise BadInput(f"{flag} {dst} is the input file {src}; write to a new path (sources are never overwritten)")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"{flag} folder does not exist: {parent}; create it first")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"{flag} folder is not writable: {parent}")
    return dst
