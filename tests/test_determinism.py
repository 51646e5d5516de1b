"""Deterministic: the same inputs and flags give byte-identical models, identical params files and
identical report numbers, run after run (separate processes, different hash seeds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnnq.testing import file_sha256

TIMING_KEYS = {"wall_time_s", "seconds", "timing"}


def mnnq(argv, seed: int):
    env = dict(os.environ, PYTHONHASHSEED=str(seed), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "mnnq", *[str(a) for a in argv]], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc


def numbers(report: Path, folder: Path) -> dict:
    """The report without timings, with the run's own folder replaced (runs write to different folders)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in TIMING_KEYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace(str(folder), "<out>")
        return value

    return clean(json.loads(report.read_text()))


@pytest.mark.parametrize("evaluator", ["fast", "exact"])
def test_auto_quant_twice_gives_the_same_model_params_and_numbers(tiny_convnet, tmp_path, evaluator):
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"run{seed}"
        out.mkdir()
        mnnq(["auto-quant", "--model", tiny_convnet.model, "--quant_model", out / "q.mnn", "--test_dir",
              tiny_convnet.test_dir, "--evaluator", evaluator, "--report_json", out / "r.json"], seed)
        runs.append(out)
    a, b = runs
    assert file_sha256(a / "q.mnn") == file_sha256(b / "q.mnn")
    assert (a / "q.mnn.json").read_bytes() == (b / "q.mnn.json").read_bytes()
    ra, rb = numbers(a / "r.json", a), numbers(b / "r.json", b)
    assert ra["errors"] == rb["errors"] and ra["trial_log"] == rb["trial_log"]
    assert ra == rb


def test_apply_twice_gives_the_same_model_and_numbers(tiny_convnet, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    mnnq(["auto-quant", "--model", tiny_convnet.model, "--quant_model", src / "q.mnn", "--test_dir",
          tiny_convnet.test_dir], 0)
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"apply{seed}"
        out.mkdir()
        mnnq(["apply", tiny_convnet.model, out / "q.mnn", "--params", src / "q.mnn.json", "--hqq", "--test_dir",
              tiny_convnet.test_dir, "--report_json", out / "r.json"], seed)
        runs.append(out)
    a, b = runs
    assert file_sha256(a / "q.mnn") == file_sha256(b / "q.mnn") == file_sha256(src / "q.mnn")
    assert numbers(a / "r.json", a) == numbers(b / "r.json", b)
