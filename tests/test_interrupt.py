"""Ctrl-C (SIGINT) during a long auto-quant search stops it cleanly: exit 130, one line saying where
it stopped (strategy, trial count, best error so far), no output at all, sources untouched, no
temporary folder left and no child process (converter, --jobs worker) left running.

The search is made long by a test strategy plugin ("stall") that keeps proposing trials and
creates a sentinel file once a few have finished; the test then sends SIGINT to mnnq. With the
exact evaluator, the converter child of the next trial hangs (fault injection), so the interrupt
lands while a converter runs: it must be killed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnnq.testing import file_digests, process_alive

DRIVER = r'''
import os
import signal
import sys
from pathlib import Path

from mnnq.cli import main
from mnnq.hookspecs import hookimpl
from mnnq.layers import LayerSetting
from mnnq.records import SearchStrategy
from mnnq.testing.builders import plugins_installed

SENTINEL = Path(sys.argv[1])


def stall(ctx):
    """Propose trials for ever (in batches, so --jobs workers get them); after three, say so."""
    names = sorted(ctx.layers)
    i = 0
    while True:
        batch = [({**ctx.settings, name: LayerSetting(2 + (i + k) % 7, -1)}, f"stall {i}.{k}")
                 for k, name in enumerate(names[:2])]
        ctx.measure_many(batch)
        i += 1
        if i == 3:
            if os.environ.get("STALL_HANG"):  # from now on every converter child hangs until killed
                os.environ["MNNQ_FAULT_INJECT"] = "hang:mnnconvert"
            SENTINEL.write_text(str(len(ctx.trials)))


class Stall:
    @hookimpl
    def mnnq_search_strategies(self):
        yield SearchStrategy(name="stall", summary="a search that never ends (tests)", run=stall, order=1)


if __name__ == "__main__":  # --jobs workers are spawned: they import this file again
    # As a terminal's foreground job: a test runner started as a background job of a shell
    # (`pytest &`, parallel CI steps) hands SIGINT down as ignored, and Python keeps it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with plugins_installed({"stall": Stall()}):
        sys.exit(main(sys.argv[2:]))
'''


def children_of(pid: int) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants_of(pid: int) -> list:
    """Children, grandchildren, ...: native children are forked by mnnq's child server."""
    found, queue = [], [pid]
    while queue:
        kids = children_of(queue.pop())
        found += kids
        queue += kids
    return found


def wait_until(proc: subprocess.Popen, condition, failure: str, seconds: float = 60) -> None:
    """Poll ``condition`` while mnnq runs; a loaded machine only makes this take longer."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


@pytest.mark.parametrize("extra", [["--evaluator", "exact"], ["--jobs", "2"]], ids=["exact-evaluator", "jobs"])
def test_sigint_mid_search_stops_cleanly(tiny_convnet, tmp_path, extra):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    sentinel, out, tmp = tmp_path / "searching", tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    sources = file_digests(tiny_convnet.directory)
    env = dict(os.environ, TMPDIR=str(tmp), COLUMNS="200", STALL_HANG="1" if "exact" in extra else "")
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(sentinel), "auto-quant", "--model", str(tiny_convnet.model), "--quant_model",
         str(out / "q.mnn"), "--test_dir", str(tiny_convnet.test_dir), "--rate", "0.1", "--strategy", "stall",
         # no HQQ: under CPU load, the converter's HQQ step (a 4-thread pool whose threads spin on
         # sched_yield) takes minutes instead of milliseconds per conversion
         "--hqq", "0",
         "--report_json", str(out / "r.json"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        wait_until(proc, sentinel.exists, "the search never got going")
        if "--jobs" in extra:
            wait_until(proc, lambda: len(children_of(proc.pid)) == 1 and len(descendants_of(proc.pid)) >= 2,
                       "no child server with a worker forked by it")
        else:  # the next trial's converter is forked by the child server and hangs
            wait_until(proc, lambda: len(descendants_of(proc.pid)) > len(children_of(proc.pid)),
                       "no converter child")
            grandchildren = [pid for pid in descendants_of(proc.pid) if pid not in children_of(proc.pid)]
            assert len(children_of(proc.pid)) == 1 and len(grandchildren) == 1, \
                "the child server and, forked by it, a (hanging) converter child"
        children = descendants_of(proc.pid)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    match = re.fullmatch(r"mnnq: interrupted while searching \(strategy stall\), after (\d+) trials; best max_rel so "
                         r"far ([0-9.e+-]+) \(rate 0\.1\); nothing was written", lines[0])
    assert match, lines[0]
    assert int(match.group(1)) >= int(sentinel.read_text()) >= 6
    assert "Traceback" not in stdout + stderr
    assert list(out.iterdir()) == [], "no q.mnn, q.mnn.json or report"
    assert list(tmp.iterdir()) == [], "temporary folders removed"
    assert file_digests(tiny_convnet.directory) == sources
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if process_alive(pid)], "child processes must not outlive mnnq"
