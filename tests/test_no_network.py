"""No network: running mnnq imports no ``MNN.tools`` (whose wrapper pip-installs a logging SDK and
sends usage logs) and opens no socket, in its own process or in any child it starts.

Every Python process of the run loads a ``sitecustomize`` (from PYTHONPATH, which the converter,
runtime and worker children inherit) that installs an audit hook recording socket events and,
at exit, whether ``MNN.tools`` (or the logging SDK) was imported; the test reads the log.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


SITECUSTOMIZE = r'''
import atexit, json, os, sys

_LOG = os.environ["MNNQ_AUDIT_LOG"]
_WATCHED = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "socket.bind", "socket.sendto", "socket.sendmsg", "urllib.Request", "http.client.connect")


def _write(record):
    record["pid"] = os.getpid()
    with open(_LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _hook(event, args):
    if event in _WATCHED:
        import socket
        if event.startswith("socket.") and getattr(args[0], "family", None) == socket.AF_UNIX:
            return  # a local socket pair (mnnq's child server), not the network
        _write({"event": event, "args": repr(args)[:300]})
    elif event == "import" and (args[0] == "MNN.tools" or str(args[0]).startswith(("MNN.tools.", "aliyun"))):
        _write({"event": "exit", "modules": [args[0]]})


sys.addaudithook(_hook)
_write({"event": "start", "argv": sys.argv[:3]})
# forked children (mnnq's child server and what it forks) keep this hook; record them too
os.register_at_fork(after_in_child=lambda: _write({"event": "start", "argv": ["fork"]}))


@atexit.register
def _at_exit():
    bad = sorted(m for m in sys.modules if m == "MNN.tools" or m.startswith(("MNN.tools.", "aliyun")))
    _write({"event": "exit", "modules": bad})
'''


def audited(argv, tmp_path: Path, name: str):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / f"{name}.jsonl"
    env = dict(os.environ, MNNQ_AUDIT_LOG=str(log), COLUMNS="200",
               PYTHONPATH=os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-m", "mnnq", *[str(a) for a in argv]], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def check(records, min_processes: int):
    starts = [r for r in records if r["event"] == "start"]
    exits = [r for r in records if r["event"] == "exit"]
    assert len(starts) >= min_processes, f"the hook did not reach the child processes: {starts}"
    assert [r for r in records if r["event"] not in ("start", "exit")] == [], "network activity"
    assert exits and all(r["modules"] == [] for r in exits), f"MNN.tools imported: {exits}"


def test_auto_quant_and_validate_open_no_socket(tiny_convnet, tmp_path):
    out = tmp_path / "q.mnn"
    records = audited(["auto-quant", "--model", tiny_convnet.model, "--quant_model", out, "--test_dir",
                       tiny_convnet.test_dir, "--rate", "0.1"], tmp_path, "auto-quant")
    # mnnq itself, its child server, the converter children (template, final write) and the runtime child
    check(records, min_processes=5)
    assert sum(r.get("argv", [None])[0] == "fork" for r in records) >= 4, "forked children were audited"
    records = audited(["validate", "--model", out, "--test-dir", tiny_convnet.test_dir, "--rate", "0.1"], tmp_path,
                      "validate")
    check(records, min_processes=3)  # mnnq, the converter probe, the gate's runtime child


def test_jobs_workers_open_no_socket(tiny_convnet, tmp_path):
    records = audited(["auto-quant", "--model", tiny_convnet.model, "--quant_model", tmp_path / "q.mnn", "--test_dir",
                       tiny_convnet.test_dir, "--rate", "0.1", "--jobs", "2", "--strategy", "sensitivity"], tmp_path,
                      "jobs")
    check(records, min_processes=5)


def test_plugins_opens_no_socket(tmp_path):
    check(audited(["plugins"], tmp_path, "plugins"), min_processes=1)


def test_quantize_opens_no_socket(tiny_convnet, tmp_path):
    config = tiny_convnet.calibration_config(tmp_path / "calib.json")
    check(audited(["quantize", tiny_convnet.model, tmp_path / "int8.mnn", config], tmp_path, "quantize"),
          min_processes=2)


def test_the_hook_sees_sockets_and_mnn_tools(tmp_path):
    """Control: the audit catches a lookup and a (faked) MNN.tools import in a child process."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "control.jsonl"
    env = dict(os.environ, MNNQ_AUDIT_LOG=str(log), PYTHONPATH=str(hook))
    code = ("import socket, subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', \"import sys; sys.modules['MNN.tools'] = sys\"], check=True)\n"
            "try:\n    socket.getaddrinfo('localhost', 80)\nexcept OSError:\n    pass\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["event"] == "socket.getaddrinfo" for r in records)
    assert any(r["event"] == "exit" and r["modules"] == ["MNN.tools"] for r in records)
    with pytest.raises(AssertionError):
        check(records, min_processes=2)
