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
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

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
        return self.returncode < 0 or self.returncode > 128

    def tail(self, lines: int = TAIL_LINES) -> str:
        return output_tail(self.output, lines)

    def crash_text(self) -> str:
        return exit_text(self.returncode)


def output_tail(output: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a child's output, without MNN's CPU-feature line."""
    kept = [ln for ln in output.splitlines() if ln.strip() and "device supports" not in ln]
    return "\n".join(kept[-lines:])


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


def run_child(argv: Sequence[str], what: str, cwd: Optional[str] = None, limits: Optional[Limits] = None,
              env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run ``argv`` (stdout and stderr captured together); a timeout becomes a NativeFailure.
    An interrupt (Ctrl-C) kills the child before it propagates."""
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", "1")
    timeout = limits.timeout if limits is not None else None
    try:
        return subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, env=env, preexec_fn=_preexec(limits))
    except subprocess.TimeoutExpired as exc:
        out = (exc.output or b"").decode("utf-8", "replace")
        raise NativeFailure(f"{what} did not finish within {timeout:.0f} s (killed)", tail=output_tail(out)) from None


def run_tool(tool: str, argv: Sequence[str], cwd: Optional[str] = None, timeout: Optional[float] = None,
             limits: Optional[Limits] = None) -> NativeRun:
    """Run ``_tools.<tool>(argv)`` in a child interpreter; never raises for tool failures,
    only when the child cannot be started or runs out of time (``timeout`` or ``limits``)."""
    if timeout is not None:
        limits = Limits(limits.memory if limits else None, timeout)
    own_tmp = None
    if cwd is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="mnnq-native-")
        cwd = own_tmp.name
    try:
        proc = run_child([sys.executable, "-c", _CHILD, tool, *argv], f"MNN {tool}", cwd=cwd, limits=limits)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    return NativeRun(tool, list(argv), proc.returncode, proc.stdout.decode("utf-8", "replace"))
