"""mnnq's child server: native children are forks of an early copy of mnnq, not new interpreters.

Each case runs in its own interpreter (the test session has its own server), starting a server
or not, then checks who the children's parent is, what they see, and what happens when the
server is gone or a child hangs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from mnnq.testing import process_alive

PRELUDE = """
import json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
from mnnq.mnn_backend import native
from mnnq.mnn_backend.native import Limits, run_python, run_tool, start_child_server
def child_parent():
    proc = run_python(["-c", "import os; print(os.getppid())"], "a probe child")
    assert proc.returncode == 0, proc.stdout
    return int(proc.stdout.split()[-1])
"""


def run_script(body: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_children_fork_from_the_server_see_the_current_environment_and_survive_its_death():
    out = run_script("""
        started = start_child_server()
        server = native._server.pid
        forked = child_parent()
        os.environ["MNNQ_TEST_VALUE"] = "set after the server started"
        seen = run_python(["-c", "import os; print(os.environ['MNNQ_TEST_VALUE'])"], "env").stdout.decode()
        version = run_tool("mnnconvert", ["mnnconvert", "--version"])
        with ThreadPoolExecutor(4) as pool:  # threads share the server
            echoed = list(pool.map(lambda i: run_python(["-c", f"print({i} * 7)"], "echo").stdout.decode().split()[-1],
                                   range(8)))
        import signal, time
        os.kill(server, signal.SIGKILL)
        time.sleep(0.2)
        after = child_parent()
        print(json.dumps(dict(started=started, server=server, forked=forked, seen=seen.strip(), me=os.getpid(),
                              version=version.returncode, echoed=echoed, after=after,
                              server_left=native._server is None)))
    """)
    assert out["started"] and out["forked"] == out["server"] != out["me"]
    assert out["seen"] == "set after the server started"
    assert out["version"] == 0
    assert out["echoed"] == [str(i * 7) for i in range(8)]
    # the server was killed: the next child is a new interpreter started by this process
    assert out["after"] == out["me"] and out["server_left"]


def test_no_server_once_mnn_ran_in_this_process():
    out = run_script("""
        import MNN.expr  # its thread pool could exist from now on: a fork would hang in it
        print(json.dumps(dict(started=start_child_server(), parent=child_parent(), me=os.getpid())))
    """)
    assert out == {"started": False, "parent": out["me"], "me": out["me"]}


def test_a_hanging_forked_child_is_killed_at_its_timeout():
    out = run_script("""
        import time
        start_child_server()
        started = time.monotonic()
        try:
            run_python(["-c", "import time; print('waiting', flush=True); time.sleep(60)"], "a sleeper",
                       limits=Limits(timeout=1.0))
            failure = None
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc} | {getattr(exc, 'tail', '')}"
        print(json.dumps(dict(failure=failure, seconds=time.monotonic() - started, parent=child_parent(),
                              server=native._server.pid)))
    """)
    assert out["failure"].startswith("NativeFailure: a sleeper did not finish within 1 s (killed)")
    assert "waiting" in out["failure"]
    assert out["seconds"] < 30
    assert out["parent"] == out["server"]  # the server still serves after a kill


def test_a_fork_of_mnnq_does_not_share_its_server():
    out = run_script("""
        import tempfile
        start_child_server()
        server = native._server.pid
        note = tempfile.mktemp()
        pid = os.fork()
        if pid == 0:  # e.g. an application's multiprocessing worker
            code = 1
            try:
                with open(note, "w") as fh:
                    fh.write(str(child_parent()))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        theirs = int(open(note).read())
        print(json.dumps(dict(status=status, theirs=theirs, server=server, ours=child_parent(), fork=pid)))
    """)
    assert out["status"] == 0
    assert out["theirs"] != out["server"]  # the fork started its own server (or a fresh interpreter)
    assert out["ours"] == out["server"]    # and the original process still uses its own


def test_a_request_too_large_for_the_socket_goes_to_a_fresh_interpreter():
    out = run_script("""
        start_child_server()
        server = native._server.pid
        many = [f"/some/calibration/image-{i:06d}.png" for i in range(20000)]  # ~0.7 MB of arguments
        proc = run_python(["-c", "import os, sys; print(os.getppid(), len(sys.argv) - 1)", *many], "many args")
        parent, count = proc.stdout.decode().split()
        print(json.dumps(dict(parent=int(parent), count=int(count), me=os.getpid(), server=server,
                              still=child_parent())))
    """)
    assert out["count"] == 20000 and out["parent"] == out["me"]  # a new interpreter took it
    assert out["still"] == out["server"]                          # and the server still serves


def test_a_child_forked_while_mnnq_is_interrupted_does_not_outlive_it(tmp_path):
    """Ctrl-C between the server's fork and mnnq's read of the pid: mnnq cannot kill that child
    itself, so the server kills it when mnnq's end of the socket closes."""
    out = run_script(f"""
        import time
        start_child_server()
        def interrupted(self):
            raise KeyboardInterrupt  # lands while mnnq waits for the "started" reply
        native._ChildServer._receive = interrupted
        note = {str(tmp_path / "pid")!r}
        try:
            run_python(["-c", f"import os, time; open({{note!r}}, 'w').write(str(os.getpid())); time.sleep(600)"],
                       "a sleeper")
        except KeyboardInterrupt:
            pass
        while not os.path.exists(note) or not open(note).read():
            time.sleep(0.02)
        print(json.dumps(dict(child=int(open(note).read()), server=native._server)))
    """)
    assert out["server"] is None  # mnnq stopped using the server whose replies it lost
    deadline = time.monotonic() + 30
    while process_alive(out["child"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(out["child"]), "the sleeper outlived mnnq"
