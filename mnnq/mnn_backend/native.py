"""Run MNN's native tools (``_tools.mnnconvert`` / ``_tools.mnnquant``) in a child process.

The native tools print from C, always return True and can kill their process, so each call
runs in a fresh interpreter with a temporary working directory (the converter drops
``.Error.mnn`` / ``.error/`` there on a failed check); stdout and stderr are captured and a
signal death becomes a :class:`NativeFailure` carrying the tail of the output.

A corrupt model can also make the converter allocate without bound (it reads a garbage
length and tries to honour it): probes of files a user gave run with :func:`probe_limits`,
an address-space cap (the allocation fails, the child aborts) and a timeout.

Test hook (fault injection): with ``MNNQ_FAULT_INJECT=<how>:<tool>[:<text>]`` in the
environment, a child about to run ``<tool>`` (``mnnconvert``, ``mnnquant``, ``runtime`` for
:mod:`mnnq.mnn_backend.isolated`'s model runner, or ``*``) kills itself instead, after printing
one line; ``<how>`` is ``segv``, ``abort``, ``kill`` (SIGSEGV / SIGABRT / SIGKILL) or ``hang``
(sleeps until killed); with ``<text>``, only calls whose arguments contain it. Only the child
processes read it; mnnq's tests use it to prove crashes are contained.

How a child starts: a fresh interpreter pays ~0.1-0.25 s of imports (Python, numpy, MNN,
``_tools``) per call. So, once started (:func:`start_child_server`, done by the CLI before
anything else), a *child server* -- a fork of this process taken before MNN ran anything,
which then imports MNN and ``_tools`` -- forks each child instead: milliseconds per call. MNN's
thread pool is created the first time a model runs and a fork does not copy its threads (a
fork of a process that ran a model hangs in the pool), which is why the children come from
that early fork and never from this process. Each child gets this process's current
environment, its own working directory and rlimits, stdin from ``/dev/null`` and
stdout/stderr captured into a file; it runs the same ``python -c``/``-m`` code a fresh
interpreter would and leaves with ``os._exit``. Without a server (not started, or it died),
a child is a new interpreter, as with ``fresh=True``.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence

from mnnq.errors import NativeFailure

FAULT_ENV = "MNNQ_FAULT_INJECT"

# Kept standalone (no mnnq import) so the child starts fast; executed in the child and here.
FAULT_CODE = '''
def inject_fault(tool, argv):
    """Kill this process as MNNQ_FAULT_INJECT asks (see mnnq.mnn_backend.native)."""
    import os, signal, sys, time
    spec = os.environ.get("MNNQ_FAULT_INJECT", "")
    if not spec:
        return
    how, _, rest = spec.partition(":")
    which, _, text = rest.partition(":")
    if which not in ("*", tool) or (text and not any(text in str(a) for a in argv)):
        return
    print(f"mnnq fault injection: {how} in {tool}", flush=True)
    sys.stderr.flush()
    if how == "hang":
        while True:
            time.sleep(60)
    sig = {"segv": signal.SIGSEGV, "abort": signal.SIGABRT, "kill": signal.SIGKILL}.get(how)
    if sig is not None:
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
'''
_namespace: dict = {}
exec(FAULT_CODE, _namespace)  # noqa: S102 - our own constant
inject_fault = _namespace["inject_fault"]

_CHILD = FAULT_CODE + (
    "import sys\n"
    "inject_fault(sys.argv[1], sys.argv[2:])\n"
    "import _tools\n"
    "tool = getattr(_tools, sys.argv[1])\n"
    "tool(sys.argv[2:])\n"
)

TAIL_LINES = 12


@dataclass(frozen=True)
class Limits:
    """Resource limits for a child: ``memory`` bytes of address space (None: unlimited) and
    ``timeout`` seconds (None: none)."""

    memory: Optional[int] = None
    timeout: Optional[float] = None


def probe_limits(path: Path) -> Limits:
    """Limits for reading a model a user gave: generous for the file's size, but a garbage
    length in a corrupt file fails fast instead of eating the machine's memory."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    return Limits(memory=(4 << 30) + 32 * size, timeout=120.0 + 4.0 * size / (1 << 20))


@dataclass
class NativeRun:
    tool: str
    argv: List[str]
    returncode: int
    output: str

    @property
    def crashed(self) -> bool:
        return crashed(self.returncode)

    def tail(self, lines: int = TAIL_LINES) -> str:
        return output_tail(self.output, lines)

    def crash_text(self) -> str:
        return exit_text(self.returncode)


def output_tail(output: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a child's output, without MNN's CPU-feature line."""
    kept = [ln for ln in output.splitlines() if ln.strip() and "device supports" not in ln]
    return "\n".join(kept[-lines:])


def crashed(code: int) -> bool:
    """A child's return code says a signal ended it: negative, or above 128 (128 + the
    signal's number, as a shell reports it; see :func:`exit_text`)."""
    return code < 0 or code > 128


def exit_text(code: int) -> str:
    """``killed by SIGSEGV`` / ``exit status 3`` for a child's return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit status {code}"


def _preexec(limits: Optional[Limits]):
    if limits is None or limits.memory is None:
        return None
    memory = int(limits.memory)

    def apply() -> None:  # runs in the child between fork and exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return apply


# ------------------------------------------------------------------------------ forked children


def _flush_c_stdio() -> None:
    import ctypes

    ctypes.CDLL(None).fflush(None)


def _address_space() -> int:
    """This process's current virtual size in bytes (a fork starts with all of it)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _run_python_args(args: Sequence[str]) -> None:
    """Run ``python <args>`` (``-c CODE ...`` or ``-m MODULE ...``) in this (forked) process."""
    import runpy
    import warnings

    if args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - our own code
    elif args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": the server imported it
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        raise ValueError(f"a forked child runs -c or -m, not {args[0]!r}")


def _forked_child(args: Sequence[str], cwd: Optional[str], limits: Optional[Limits], env: dict,
                  out_fd: int) -> None:
    """The body of a forked child; never returns."""
    code = 70
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        if limits is not None and limits.memory is not None:
            import resource

            cap = _address_space() + int(limits.memory)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        _run_python_args(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like an interpreter would, then exit
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            _flush_c_stdio()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


# Imported by the server before it serves (MNN prints a CPU line on import: silenced).
SERVER_PRELOAD = ("numpy", "_tools", "MNN.expr", "MNN.nn", "mnnq.mnn_backend.child_run", "mnnq.testset",
                  "mnnq.mnn_backend.runtime")
_MESSAGE = 1 << 20
# A request (code, arguments, environment) above this goes to a fresh interpreter instead: a
# socket-pair datagram cannot exceed the socket buffer (~200 kB by default).
REQUEST_LIMIT = 64 << 10


def _send(sock: socket.socket, obj) -> None:
    sock.sendall(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _kill_children(pids: set) -> None:
    """SIGKILL and reap the server's children that are still running."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _server_main(sock: socket.socket) -> None:
    """The child server: preload, then fork a child per request and report each exit. When the
    parent is gone (its end of the socket closed: it exited, was killed, or was interrupted
    between this fork and its read of the pid, so it could not kill the child itself), the
    children still running are killed: none outlives mnnq."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)
    try:
        for name in SERVER_PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a child importing it will report the error
                pass
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    running: set = set()
    try:
        _serve(sock, wake_r, wake_w, running)
    finally:
        _kill_children(running)


def _serve(sock: socket.socket, wake_r: int, wake_w: int, running: set) -> None:
    """The server's loop; returns when the parent is gone. ``running``: the children not yet reaped."""
    import select

    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            running.discard(pid)
            _send(sock, ("exit", pid, os.waitstatus_to_exitcode(status)))
        if sock in ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MESSAGE, 1)
            except ConnectionResetError:  # the parent left with replies unread
                return
            if not data:
                return  # the parent is gone
            args, cwd, limits, env = pickle.loads(data)
            pid = os.fork()
            if pid == 0:
                sock.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_r)
                os.close(wake_w)
                _forked_child(args, cwd, limits, env, fds[0])
            running.add(pid)
            for fd in fds:
                os.close(fd)
            _send(sock, ("started", pid))


class _ChildServer:
    """This process's end of the child server. Threads may share it: a lock covers each request
    (send, then read up to its "started" reply) and each read of one reply; exits read by one
    thread are kept for the thread waiting for them."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        _flush_c_stdio()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                _server_main(theirs)
            except BaseException:  # noqa: BLE001 - the parent sees the server gone
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.owner = os.getpid()  # a fork of this process must not talk on the same socket
        self.sock = ours
        self.exits: dict = {}
        self.lock = threading.Lock()

    def _receive(self):
        data = self.sock.recv(_MESSAGE)
        if not data:
            raise ConnectionError("mnnq's child server is gone")
        return pickle.loads(data)

    def spawn(self, args: List[str], cwd: Optional[str], limits: Optional[Limits], out_fd: int) -> Optional[int]:
        """The forked child's pid, or None when the request is too large to send."""
        request = pickle.dumps((args, cwd, limits, dict(os.environ)), protocol=pickle.HIGHEST_PROTOCOL)
        if len(request) > REQUEST_LIMIT:
            return None
        with self.lock:
            socket.send_fds(self.sock, [request], [out_fd])
            while True:
                message = self._receive()
                if message[0] == "started":
                    return message[1]
                self.exits[message[1]] = message[2]

    def wait(self, pid: int, timeout: Optional[float]) -> Optional[int]:
        """The child's return code, or None when ``timeout`` seconds passed first."""
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            with self.lock:
                if pid in self.exits:
                    return self.exits.pop(pid)
                if left is not None and left <= 0:
                    return None
                # hold the lock for one short read at a time: other threads share the socket
                if select.select([self.sock], [], [], 0.05 if left is None else min(left, 0.05))[0]:
                    message = self._receive()
                    if message[0] == "exit":
                        self.exits[message[1]] = message[2]


_server: Optional[_ChildServer] = None


def start_child_server() -> bool:
    """Start the child server (see the module docstring) if this process can: it must be the
    main thread of a process that has not imported MNN yet (so no MNN thread pool exists).
    Returns whether a server is running."""
    global _server
    if _server is not None:
        return True
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds") or "_mnncengine" in sys.modules \
            or threading.current_thread() is not threading.main_thread():
        return False
    try:
        _server = _ChildServer()
    except OSError:  # no SOCK_SEQPACKET socket pairs here (e.g. macOS): fresh interpreters
        return False
    import atexit

    atexit.register(_server.sock.close)  # the server leaves when its socket closes
    return True


def _server_spawn(args: List[str], cwd: Optional[str], limits: Optional[Limits], out_fd: int) -> Optional[int]:
    global _server
    if _server is not None and _server.owner != os.getpid():
        _server = None  # this process is a fork of the one that started the server
    if _server is None and not start_child_server():
        return None
    try:
        return _server.spawn(args, cwd, limits, out_fd)
    except (OSError, ConnectionError, EOFError, pickle.PickleError):
        _server = None  # it died: fresh interpreters from now on
        return None
    except BaseException:
        _server = None  # interrupted mid-request: its replies can no longer be matched
        raise


class Child:
    """A started child process; :meth:`result` waits for it (see :func:`start_python`)."""

    def __init__(self, args: List[str], what: str, timeout: Optional[float], output: IO[bytes],
                 pid: Optional[int] = None, popen: Optional[subprocess.Popen] = None,
                 server: Optional[_ChildServer] = None):
        self.args, self.what, self.timeout, self._output = args, what, timeout, output
        self._pid, self._popen, self._server = pid, popen, server
        self._result: Optional[subprocess.CompletedProcess] = None

    @property
    def pid(self) -> Optional[int]:
        return self._popen.pid if self._popen is not None else self._pid

    def _read_output(self) -> bytes:
        self._output.seek(0)
        data = self._output.read()
        self._output.close()
        return data

    def kill(self) -> None:
        """Stop the child now (its result is then a signal death)."""
        if self._result is not None:
            return
        try:
            if self._popen is not None:
                self._popen.kill()
            else:
                os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def result(self) -> subprocess.CompletedProcess:
        """Wait for the child: ``returncode`` and ``stdout`` (stdout and stderr together). A
        timeout kills the child and raises NativeFailure; Ctrl-C kills it before propagating."""
        if self._result is not None:
            return self._result
        try:
            if self._popen is not None:
                try:
                    code: Optional[int] = self._popen.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    code = None
            else:
                code = self._server.wait(self._pid, self.timeout)
        except (ConnectionError, EOFError) as exc:  # the child server died under us
            self.kill()
            raise NativeFailure(f"{self.what}: mnnq's child server stopped ({exc}); run the command again",
                                tail=output_tail(self._read_output().decode("utf-8", "replace"))) from None
        except BaseException:
            self.kill()
            self._reap()
            raise
        if code is None:
            self.kill()
            self._reap()
            raise NativeFailure(f"{self.what} did not finish within {self.timeout:.0f} s (killed)",
                                tail=output_tail(self._read_output().decode("utf-8", "replace")))
        self._result = subprocess.CompletedProcess(self.args, code, self._read_output())
        return self._result

    def _reap(self) -> None:
        try:
            if self._popen is not None:
                self._popen.wait()
            else:
                self._server.wait(self._pid, 5.0)
        except (OSError, ConnectionError, EOFError):
            pass


class ChildJob:
    """A child working in a temporary folder of its own, for callers that start it, do other
    work, then wait: subclasses read their result from the folder; :meth:`cancel` stops the
    child and drops the folder when the result is not wanted."""

    def __init__(self, prefix: str, start: Callable[[Path], Child]):
        self._work = tempfile.TemporaryDirectory(prefix=prefix)
        try:
            self._child = start(self.work)
        except BaseException:
            self._work.cleanup()
            raise

    @property
    def work(self) -> Path:
        return Path(self._work.name)

    def cancel(self) -> None:
        try:
            self._child.kill()
            self._child.result()
        finally:
            self._work.cleanup()


def start_python(args: Sequence[str], what: str, cwd: Optional[str] = None, limits: Optional[Limits] = None,
                 fresh: bool = False) -> Child:
    """Start ``python <args>`` (``-c CODE ...`` or ``-m MODULE ...``) as a child: forked by the
    child server when there is one (unless ``fresh``), else a new interpreter."""
    args = [str(a) for a in args]
    timeout = limits.timeout if limits is not None else None
    output = tempfile.TemporaryFile(prefix="mnnq-child-")
    pid = None if fresh else _server_spawn(args, cwd, limits, output.fileno())
    if pid is not None:
        return Child(args, what, timeout, output, pid=pid, server=_server)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    popen = subprocess.Popen([sys.executable, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                             stderr=subprocess.STDOUT, env=env, preexec_fn=_preexec(limits))
    return Child(args, what, timeout, output, popen=popen)


def run_python(args: Sequence[str], what: str, cwd: Optional[str] = None, limits: Optional[Limits] = None,
               fresh: bool = False) -> subprocess.CompletedProcess:
    """:func:`start_python` and wait for the result."""
    return start_python(args, what, cwd, limits, fresh).result()


def start_tool(tool: str, argv: Sequence[str], cwd: str, limits: Optional[Limits] = None,
               fresh: bool = False) -> Child:
    """Start ``_tools.<tool>(argv)`` in a child working in ``cwd``."""
    return start_python(["-c", _CHILD, tool, *argv], f"MNN {tool}", cwd=cwd, limits=limits, fresh=fresh)


def tool_result(tool: str, argv: Sequence[str], child: Child) -> NativeRun:
    """Wait for a :func:`start_tool` child; never raises for tool failures."""
    proc = child.result()
    return NativeRun(tool, list(argv), proc.returncode, proc.stdout.decode("utf-8", "replace"))


def run_tool(tool: str, argv: Sequence[str], cwd: Optional[str] = None, timeout: Optional[float] = None,
             limits: Optional[Limits] = None, fresh: bool = False) -> NativeRun:
    """Run ``_tools.<tool>(argv)`` in a child; never raises for tool failures, only when the
    child cannot be started or runs out of time (``timeout`` or ``limits``). ``fresh`` starts
    a new interpreter even where a fork would do (one process launch per call, as MNN's own
    scripts pay)."""
    if timeout is not None:
        limits = Limits(limits.memory if limits else None, timeout)
    own_tmp = None
    if cwd is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="mnnq-native-")
        cwd = own_tmp.name
    try:
        return tool_result(tool, argv, start_tool(tool, argv, cwd, limits, fresh))
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
