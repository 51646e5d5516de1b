"""Output files are written atomically: a temporary file in the destination folder, then
a rename. A failed or interrupted run leaves the previous file or none, never a torn one.

:class:`OutputSet` does the same for several files that belong together (a model, its params
file, its report): all are staged first and renamed into place together at the end, so an
interrupted run never leaves a new model beside an old params file.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, List, Tuple

from mnnq.errors import BadInput


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_in(dst: Path):
    """A temporary file beside ``dst`` with the permissions a plain ``open`` would give."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=str(dst.parent or "."))
    except OSError as exc:
        raise BadInput(f"cannot write {dst}: {exc.strerror or exc}") from None
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


def _failed(dst: Path, exc: OSError) -> BadInput:
    return BadInput(f"cannot write {dst}: {exc.strerror or exc}; the previous file (if any) is unchanged")


def _stage(dst: Path, fill) -> Path:
    """A temporary file beside ``dst`` filled by ``fill(fd, tmp)``; removed again if that fails."""
    fd, tmp = _tmp_in(dst)
    try:
        fill(fd, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _failed(dst, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _stage_bytes(dst: Path, data: bytes) -> Path:
    def fill(fd: int, tmp: Path) -> None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return _stage(dst, fill)


def _stage_copy(src: Path, dst: Path) -> Path:
    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        shutil.copyfile(src, tmp)

    return _stage(dst, fill)


def atomic_write_bytes(dst: Path, data: bytes) -> None:
    with OutputSet() as outputs:
        outputs.write_bytes(Path(dst), data)


def atomic_write_text(dst: Path, text: str) -> None:
    atomic_write_bytes(dst, text.encode("utf-8"))


def atomic_copy(src: Path, dst: Path) -> None:
    with OutputSet() as outputs:
        outputs.copy(Path(src), Path(dst))


class OutputSet:
    """Files staged beside their destinations, renamed into place together on success::

        with OutputSet() as outputs:
            outputs.copy(work / "final.mnn", quant_model)
            outputs.write_text(params_path, text)
        # clean exit: every file renamed into place; an exception or Ctrl-C: staged files removed

    The renames run with Ctrl-C deferred, so an interrupt cannot land between them (it is
    dropped: by then the run is complete).
    """

    def __init__(self) -> None:
        self.staged: List[Tuple[Path, Path]] = []

    def __enter__(self) -> "OutputSet":
        return self

    def copy(self, src: Path, dst: Path) -> None:
        self.staged.append((_stage_copy(Path(src), Path(dst)), Path(dst)))

    def write_bytes(self, dst: Path, data: bytes) -> None:
        self.staged.append((_stage_bytes(Path(dst), data), Path(dst)))

    def write_text(self, dst: Path, text: str) -> None:
        self.write_bytes(dst, text.encode("utf-8"))

    def discard(self) -> None:
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)
        self.staged = []

    def commit(self) -> None:
        """Rename every staged file into place. If a rename fails, the files already renamed
        are put back as they were (from hard-linked backups), so the set changes as a whole."""
        previous = signal.getsignal(signal.SIGINT)
        defer = threading.current_thread() is threading.main_thread() and previous is not None
        if defer:
            signal.signal(signal.SIGINT, lambda *_: None)
        backups: List[Tuple[Path, Path]] = []
        replaced: List[Path] = []
        try:
            for _, dst in self.staged:
                if dst.exists():
                    backup = dst.with_name(f".{dst.name}.{os.getpid()}.prev")
                    try:
                        os.link(dst, backup)
                    except OSError:
                        shutil.copy2(dst, backup)
                    backups.append((backup, dst))
            for tmp, dst in self.staged:
                os.replace(tmp, dst)
                replaced.append(dst)
        except OSError as exc:
            saved = {dst: backup for backup, dst in backups}
            for dst in replaced:
                if dst in saved:
                    os.replace(saved[dst], dst)
                else:
                    dst.unlink(missing_ok=True)
            failed = next(dst for _, dst in self.staged if dst not in replaced)
            self.discard()
            raise _failed(failed, exc) from None
        finally:
            for backup, _ in backups:
                backup.unlink(missing_ok=True)
            if defer:
                signal.signal(signal.SIGINT, previous)
        self.staged = []

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def check_output_path(dst: Path, sources: Iterable[Path], flag: str) -> Path:
    """Refuse an output that would overwrite a source, or that cannot be written."""
    dst = Path(dst)
    if dst.exists() and dst.is_dir():
        raise BadInput(f"{flag} {dst} is a folder; give a file path")
    for src in (Path(s) for s in sources if s is not None):
        same_file = src.exists() and dst.exists() and os.path.samefile(src, dst)  # hard links too
        if same_file or src.resolve() == dst.resolve():
            raise BadInput(f"{flag} {dst} is the input file {src}; write to a new path (sources are never overwritten)")
    check_writable_folder(dst.parent if str(dst.parent) else Path("."), flag)
    return dst


def check_writable_folder(parent: Path, flag: str) -> None:
    """The folder exists and a file can be created in it (BadInput naming ``flag`` if not)."""
    if not parent.is_dir():
        raise BadInput(f"{flag} folder does not exist: {parent}; create it first")
    # os.access is no proof (root passes it, yet read-only mounts and /proc refuse): try it.
    try:
        fd, probe = tempfile.mkstemp(prefix=".mnnq-", suffix=".probe", dir=str(parent))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"{flag} folder is not writable: {parent} ({exc.strerror or exc})") from None
