"""Outputs are written atomically and together: a run that fails or is interrupted while writing
leaves the previous outputs (model, params, report) exactly as they were, or none, never a torn
file or a new model beside an old params file; sources are never modified."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest

import mnnq.fileio as fileio
from mnnq.testing import file_digests, run_cli


def auto_quant(tm, out: Path, rate: str):
    return run_cli(["auto-quant", "--model", tm.model, "--quant_model", out / "q.mnn", "--test_dir", tm.test_dir,
                    "--rate", rate, "--report_json", out / "r.json"])


@pytest.fixture
def previous(tiny_convnet, tmp_path):
    """An output folder holding a finished run's q.mnn, q.mnn.json and r.json."""
    out = tmp_path / "out"
    out.mkdir()
    run = auto_quant(tiny_convnet, out, "0.1")
    assert run.code == 0, run.err
    assert sorted(p.name for p in out.iterdir()) == ["q.mnn", "q.mnn.json", "r.json"]
    return out


def test_a_failed_copy_keeps_the_previous_outputs(tiny_convnet, previous, monkeypatch):
    sources, before = file_digests(tiny_convnet.directory), file_digests(previous)
    real = shutil.copyfile

    def disk_full(src, dst, *args, **kwargs):
        if Path(dst).parent != previous:  # the converter's own copies into temporary folders
            return real(src, dst, *args, **kwargs)
        Path(dst).write_bytes(Path(src).read_bytes()[:100])  # a torn write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.shutil, "copyfile", disk_full)
    run = auto_quant(tiny_convnet, previous, "0.02")  # another rate: other outputs, had they been written
    monkeypatch.setattr(fileio.shutil, "copyfile", real)
    assert run.code == 2, run.out + run.err
    assert f"mnnq: error: cannot write {previous / 'q.mnn'}: No space left on device; the previous file (if any) " \
           "is unchanged" in run.err
    assert file_digests(previous) == before, "previous outputs intact, no temporary file left"
    assert file_digests(tiny_convnet.directory) == sources


def test_a_failed_rename_puts_back_the_outputs_already_renamed(tiny_convnet, previous, monkeypatch):
    """The model is renamed into place, then renaming the params file fails: the model is put back."""
    sources, before = file_digests(tiny_convnet.directory), file_digests(previous)
    real = os.replace

    def failing(src, dst, *args, **kwargs):
        if Path(dst) == previous / "q.mnn.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "replace", failing)
    run = auto_quant(tiny_convnet, previous, "0.02")
    monkeypatch.setattr(fileio.os, "replace", real)
    assert run.code == 2, run.out + run.err
    assert f"cannot write {previous / 'q.mnn.json'}: Input/output error" in run.err
    assert file_digests(previous) == before
    assert file_digests(tiny_convnet.directory) == sources


def test_an_interrupt_while_writing_leaves_nothing(tiny_convnet, tmp_path, monkeypatch):
    """Ctrl-C after the model is staged, while the params file is: no output, exit 130."""
    sources = file_digests(tiny_convnet.directory)
    out = tmp_path / "fresh"
    out.mkdir()
    real = os.fsync

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "fsync", interrupted)
    run = auto_quant(tiny_convnet, out, "0.1")
    monkeypatch.setattr(fileio.os, "fsync", real)
    assert run.code == 130, run.out + run.err
    assert "mnnq: interrupted while writing the outputs, after" in run.err and "nothing was written" in run.err
    assert list(out.iterdir()) == []
    assert file_digests(tiny_convnet.directory) == sources


def test_apply_keeps_the_previous_output_when_the_copy_fails(tiny_convnet, previous, monkeypatch):
    sources, before = file_digests(tiny_convnet.directory), file_digests(previous)
    params = previous / "q.mnn.json"
    target = previous / "applied.mnn"
    run = run_cli(["apply", tiny_convnet.model, target, "--params", params])
    assert run.code == 0, run.err
    before = file_digests(previous)

    real = shutil.copyfile

    def disk_full(src, dst, *args, **kwargs):
        if Path(dst).parent != previous:
            return real(src, dst, *args, **kwargs)
        Path(dst).write_bytes(b"torn")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.shutil, "copyfile", disk_full)
    run = run_cli(["apply", tiny_convnet.model, target, "--params", params, "--hqq"])
    assert run.code == 2
    assert "cannot write" in run.err and "No space left on device" in run.err
    assert file_digests(previous) == before
    assert file_digests(tiny_convnet.directory) == sources


def test_output_set_removes_what_it_staged_on_an_exception(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError):
        with fileio.OutputSet() as outputs:
            outputs.write_text(tmp_path / "a", "new a")
            outputs.write_text(tmp_path / "b", "new b")
            raise RuntimeError("boom")
    assert file_digests(tmp_path) == {str(tmp_path / "a"): hashlib.sha256(b"old a").hexdigest()}
    with fileio.OutputSet() as outputs:
        outputs.write_text(tmp_path / "a", "new a")
        outputs.write_text(tmp_path / "b", "new b")
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
