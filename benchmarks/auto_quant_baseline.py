"""Baseline (a) of bench_autoquant.py: MNN's ``tools/converter/tools/auto_quant.py``, run as it runs.

Two ways, both spending one converter process per trial, as ``os.popen`` does in auto_quant.py:

- ``replay_auto_quant``: its algorithm re-implemented step for step (not copied) from the upstream
  script: a params template from a first conversion; the 1x1 conv layers in **file order** (its
  ``sortconv`` comparator returns a bool, never a negative number, so ``functools.cmp_to_key``
  sorts nothing); ``findBestBits`` (block 64 for all layers, then each 1x1 layer at 4 bits, rolled
  back to 8 when the rate goes over), ``findBestBlock`` (256, 128, 64, 32, then a bisection of the
  1x1 layers between twice the valid block and the valid block), memory mode Normal when still
  over, ``skipMoreOps`` (1x1 layers from the last, float when that lowers the rate, else back to
  **8** bits); each trial one ``mnnconvert`` command through ``/bin/sh`` with its exact flags
  (``--weightQuantBits=8 --weightQuantAsymmetric=0 --hqq --thredhold 0.001
  --alignDenormalizedValue 0 --testconfig .tmp.json``, memory 2 then 0: with asymmetric off the
  converter prints "Disable Hqq currently" and converts without HQQ) and the rate read by its
  ``getRate`` (0.0 when no TESTERROR line appears; a TESTERROR line without ``absMaxV:`` makes
  auto_quant.py crash, and the replay stops the same way). The model left on disk is whatever
  the last converter run wrote, as with auto_quant.py.
- ``run_auto_quant_script``: the script itself (a user's copy, ``AUTO_QUANT_PY``) in a temporary
  working directory, with ``mnnconvert`` on ``PATH`` being :func:`write_shim`'s shim.

The shim is a tiny Python script that calls ``_tools.mnnconvert(sys.argv)`` in a fresh
interpreter; it never imports ``MNN.tools`` (whose import installs packages and sends usage logs).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

SHIM_LOG_ENV = "MNNQ_BENCH_SHIM_LOG"
SHIM = """#!{python}
# mnnconvert for auto_quant.py: MNN's converter extension, without MNN.tools' console-script wrapper.
import os
import sys

import _tools

if os.environ.get("{log_env}"):
    with open(os.environ["{log_env}"], "a") as log:
        log.write("run\\n")
_tools.mnnconvert(sys.argv)
"""


def write_shim(folder: Path) -> Path:
    """Write an executable ``mnnconvert`` into ``folder`` (put it first on PATH); return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "mnnconvert"
    shim.write_text(SHIM.format(python=sys.executable, log_env=SHIM_LOG_ENV))
    shim.chmod(0o755)
    return folder


def shim_env(shim_dir: Path, log: Optional[Path] = None) -> dict:
    env = dict(os.environ, PATH=f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    if log is not None:
        env[SHIM_LOG_ENV] = str(log)
    return env


@dataclass
class BaselineRun:
    seconds: float
    trials: int
    model: Path            # the file auto_quant.py leaves (the last converter run's)
    claimed: float         # the rate it printed last
    memory_mode: str       # "low" (test config memory 2) or "normal" (0)
    crashed: str = ""      # why auto_quant.py stopped with an exception, if it did
    exit_code: int = 0     # the script's (1 for an uncaught exception, as the replay reports a crash)


class AutoQuantCrash(RuntimeError):
    """auto_quant.py would stop here with an uncaught exception."""


def get_rate(output: str) -> float:
    """auto_quant.py's getRate: max over TESTERROR lines of DiffMax / absMaxV where absMaxV > 0.01, else 0.0."""
    rate = 0.0
    for line in (x for x in output.split("\n") if "TESTERROR" in x):
        parts = line.split("absMaxV:")
        if len(parts) < 2:
            raise AutoQuantCrash(f"IndexError in getRate on the converter line {line.strip()!r}")
        maxv, diffmax = (float(v) for v in parts[1].replace(" ", "").split("-DiffMax"))
        if maxv > 0.01 and diffmax / maxv > rate:
            rate = diffmax / maxv
    return rate


class _Replay:
    """auto_quant.py's state: the params JSON, the 1x1 / other conv layers, the test config."""

    def __init__(self, model: Path, dstmodel: Path, testdir: Path, work: Path, env: dict):
        self.model, self.dstmodel, self.testdir, self.work, self.env = model, dstmodel, testdir, work, env
        self.dstjson = Path(f"{dstmodel}.json")
        self.trials, self.memory = 0, 2
        self.conv_1x1: List[dict] = []
        self.conv_other: List[dict] = []

    def init_dynamic_quant_json(self, memory: int) -> None:
        self.memory = memory
        (self.work / ".tmp.json").write_text(json.dumps(
            {"backend": 0, "mode": 4, "memory": memory, "precision": 1, "hints": [5, 1]}))

    def test(self) -> float:
        cmd = (f"mnnconvert -f MNN --modelFile {self.model} --MNNModel {self.dstmodel}"
               " --weightQuantBits=8 --weightQuantAsymmetric=0 "
               f" --compressionParamsFile {self.dstjson} --testdir {self.testdir} --thredhold 0.001"
               " --testconfig .tmp.json --alignDenormalizedValue 0 --hqq ")
        self.trials += 1
        run = subprocess.run(cmd, shell=True, cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        return get_rate(run.stdout.decode(errors="replace"))

    def read_layers(self) -> None:
        """QuantInfo: the first typed algo's layers (if it is QUANTIZE) that have an opName and a conv,
        split by kernel size, in file order."""
        self.compress = json.loads(self.dstjson.read_text())
        for algo in self.compress["algo"]:
            if "type" not in algo:
                continue
            if algo["type"] == "QUANTIZE":
                for layer in algo.get("quantParams", {}).get("layer", []):
                    if "opName" in layer and "conv" in layer:
                        k = layer["conv"]["kernelSize"]
                        (self.conv_1x1 if k[0] * k[1] == 1 else self.conv_other).append(layer)
            break

    def update(self) -> None:
        self.dstjson.write_text(json.dumps(self.compress, indent=4))

    def set_block(self, block: int) -> None:
        for c in self.conv_1x1 + self.conv_other:
            c["weight"][0]["blockSize"] = block

    def set_multi_block(self, separate: int, block0: int, block1: int) -> None:
        if separate >= len(self.conv_1x1):
            return
        for i, c in enumerate(self.conv_1x1):
            c["weight"][0]["blockSize"] = block0 if i < separate else block1

    def set_bits(self, pos: int, bits: int) -> None:
        if pos < len(self.conv_1x1):
            self.conv_1x1[pos]["weight"][0]["bits"] = bits


def _find_best_bits(q: _Replay, target: float) -> float:
    q.set_block(64)
    q.update()
    rate = q.test()
    if rate > target:
        return rate
    tested = False
    for i in range(len(q.conv_1x1)):
        q.set_bits(i, 4)
        q.update()
        rate = q.test()
        tested = True
        if rate > target:
            q.set_bits(i, 8)
            tested = False
    if not tested:
        q.update()
        rate = q.test()
    return rate


def _bisect_blocks(q: _Replay, target: float, valid: int, rate: float) -> float:
    sta, pos, fin = 0, len(q.conv_1x1) // 2, len(q.conv_1x1)
    while sta < pos < fin:
        q.set_multi_block(pos, valid * 2, valid)
        q.update()
        rate = q.test()
        if rate < target:
            sta = pos
        else:
            fin = pos
        pos = (sta + fin + 1) // 2
    if sta != pos:
        q.set_multi_block(sta, valid * 2, valid)
        q.update()
        rate = q.test()
    return rate


def _find_best_block(q: _Replay, target: float) -> float:
    valid, best_block, best_rate, rate = 0, 256, 1.0, 1.0
    for block in (256, 128, 64, 32):
        q.set_block(block)
        q.update()
        rate = q.test()
        if rate < best_rate:
            best_rate, best_block = rate, block
        if rate < target:
            valid = block
            break
    if valid < 256 and rate < target:
        return _bisect_blocks(q, target, valid, rate)
    q.set_block(best_block)
    q.update()
    return q.test()


def _skip_more_ops(q: _Replay, target: float, current: float) -> float:
    if not q.conv_1x1:
        raise AutoQuantCrash("UnboundLocalError in skipMoreOps: the model has no 1x1 conv layer")
    for il in range(len(q.conv_1x1)):
        i = len(q.conv_1x1) - il - 1
        q.set_bits(i, 0)
        q.update()
        rate = q.test()
        if rate < current:
            current = rate
        else:
            q.set_bits(i, 8)
        if rate <= target:
            break
    return rate


def replay_auto_quant(model: Path, testdir: Path, rate: float, work: Path, shim_dir: Path) -> BaselineRun:
    """auto_quant.py's mainFunction with its defaults (select_bits 1, select_block 1, hqq 1), run
    in ``work`` (writes ``q.mnn``, ``q.mnn.json`` and ``.tmp.json`` there)."""
    started = time.monotonic()
    q = _Replay(Path(model).resolve(), work / "q.mnn", Path(testdir).resolve(), work, shim_env(shim_dir))
    q.init_dynamic_quant_json(2)
    q.dstjson.unlink(missing_ok=True)
    crashed, claimed = "", float("nan")
    try:
        claimed = q.test()
        q.read_layers()
        claimed = _find_best_bits(q, rate)
        claimed = _find_best_block(q, rate)
        if claimed > rate:
            q.init_dynamic_quant_json(0)
            claimed = q.test()
        if claimed > rate:
            claimed = _skip_more_ops(q, rate, claimed)
        if not q.dstmodel.is_file():
            raise AutoQuantCrash(f"FileNotFoundError: the converter wrote no {q.dstmodel}")
    except AutoQuantCrash as exc:
        crashed = str(exc)
    return BaselineRun(time.monotonic() - started, q.trials, q.dstmodel, claimed,
                       "low" if q.memory == 2 else "normal", crashed, 1 if crashed else 0)


def run_auto_quant_script(script: Path, model: Path, testdir: Path, rate: float, work: Path,
                          shim_dir: Path) -> BaselineRun:
    """Run the auto_quant.py at ``script`` with its defaults in ``work``; trials are counted by the shim."""
    log = work / ".shim-runs"
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(script), "--model", str(Path(model).resolve()),
                          "--quant_model", str(work / "q.mnn"), "--test_dir", str(Path(testdir).resolve()),
                          "--rate", str(rate)], cwd=work, env=shim_env(shim_dir, log),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    trials = len(log.read_text().splitlines()) if log.is_file() else 0
    rates = re.findall(r"^rate=([0-9.eE+-]+|nan|inf)", run.stdout, re.M)
    memories = re.findall(r"memory=\s*(\d+)", run.stdout)
    crashed = ""
    if run.returncode != 0:
        crashed = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    return BaselineRun(seconds, trials, work / "q.mnn", float(rates[-1]) if rates else float("nan"),
                       "low" if (memories or ["2"])[-1] == "2" else "normal", crashed, run.returncode)
