"""Run MNN's native tools (``_tools.mnnconvert`` / ``_tools.mnnquant``) in a child process.

The native tools print from C, always return True and can kill their process, so each call
runs in a fresh interpreter with a temporary working directory (the converter drops
``.Error.mnn`` / ``.error/`` there on a failed check); stdout and stderr are captured and a
signal death becomes a :class:`NativeFailure` carrying the tail of the output.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

from mnnq.errors import NativeFailure

_CHILD = (
    "import sys\n"
    "import _tools\n"
    "tool = getattr(_tools, sys.argv[1])\n"
    "tool(sys.argv[2:])\n"
)

TAIL_LINES = 12


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
        kept = [ln for ln in self.output.splitlines() if ln.strip() and "device supports" not in ln]
        return "\n".join(kept[-lines:])

    def crash_text(self) -> str:
        code = self.returncode
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


def run_tool(tool: str, argv: Sequence[str], cwd: Optional[str] = None, timeout: Optional[float] = None) -> NativeRun:
    """Run ``_tools.<tool>(argv)`` in a child interpreter; never raises for tool failures,
    only when the child cannot be started or times out."""
    own_tmp = None
    if cwd is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="mnnq-native-")
        cwd = own_tmp.name
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, tool, *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.output or b"").decode("utf-8", "replace")
        raise NativeFailure(f"MNN {tool} did not finish within {timeout:.0f} s", tail=out[-2000:]) from None
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    return NativeRun(tool, list(argv), proc.returncode, proc.stdout.decode("utf-8", "replace"))
