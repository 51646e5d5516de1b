"""What the command modules share: flag spellings, argparse types, the plugin manager with its
load warnings, and what a failure prints. It sits below the commands (``mnnq.cli`` only
assembles them), so a command module never imports ``mnnq.cli``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import List, Optional

from rich.console import Console

from mnnq.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, BadInput, Interrupted, MnnqError, NativeFailure

# When the command line was imported: a command's start, for auto-quant's timing breakdown.
COMMAND_STARTED = time.monotonic()


def add_flag(parser, *names, **kw):
    """Add a flag under its underscore spelling (auto_quant.py's ``--quant_model``) and its
    hyphenated one (``--quant-model``); every command uses this."""
    spellings: List[str] = []
    for name in names:
        for alt in (name, "--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
            if alt not in spellings:
                spellings.append(alt)
    return parser.add_argument(*spellings, **kw)


def arg_type(convert, expected: str, valid=None, unparsed: Optional[str] = None):
    """An argparse ``type``: ``convert(text)``, then ``valid(value)`` when given. Either failing is
    the usage error ``expected <what>, got 'text'`` (``unparsed`` names what a text that does not
    convert should have been, default ``expected``)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsed or expected}, got {text!r}") from None
        if valid is not None and not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


int01 = arg_type(int, "0 or 1", lambda v: v >= 0)
positive_float = arg_type(float, "a positive finite number", lambda v: 0 < v < math.inf, unparsed="a number")
positive_int = arg_type(int, "a positive integer", lambda v: v > 0)
number = arg_type(float, "a number")


def name_list(value, what: str) -> Optional[List[str]]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (names given to a flag or option)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    try:
        return [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    except TypeError:
        raise BadInput(f"{what}: expected a name, a comma-separated string or a list of names, got {value!r}") from None



def _zero_one_auto(text: str):
    if text == "auto":
        return "auto"
    if text in ("0", "1"):
        return text == "1"
    raise ValueError(text)


zero_one_auto = arg_type(_zero_one_auto, "0, 1 or auto")
jobs_count = arg_type(lambda text: text if text == "auto" else int(text), "a positive integer or auto",
                      lambda v: v == "auto" or v > 0)


def plugin_manager(err: Console):
    """A manager with the installed plugins loaded; those that failed to load (or whose hook
    raised) are warned about on ``err``. Every command but ``plugins`` starts with this."""
    from mnnq.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    report_plugin_failures(pm, err)
    return pm


def report_plugin_failures(pm, err: Console) -> None:
    for failure in pm.failures:
        err.print(f"warning: plugin '{failure.plugin}' skipped: {failure.error}", highlight=False, markup=False)


# What a command may raise that is the user's to act on, not a bug: report_failure handles these.
FAILURES = (MnnqError, KeyboardInterrupt, OSError)


def failure_text(exc: BaseException) -> str:
    """One line saying what failed: an :class:`MnnqError`'s message, or what the file system
    refused (an ``OSError``: disk full, permissions, ...; nothing was written)."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}; nothing was written"
    else:
        text = str(exc)
    return " ".join(text.split())  # never wrapped, whatever the terminal width


def report_failure(exc: BaseException) -> int:
    """Print what a failed command prints on stderr (``mnnq: error: <one line>``, plus a native
    failure's last output lines) and return its exit code. ``exc`` is one of :data:`FAILURES`."""
    if isinstance(exc, Interrupted):
        print(f"mnnq: {failure_text(exc)}", file=sys.stderr, flush=True)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print("mnnq: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"mnnq: error: {failure_text(exc)}", file=sys.stderr, flush=True)
    if isinstance(exc, NativeFailure) and exc.tail:
        print("native output (last lines):\n" + exc.tail, file=sys.stderr)
    return exc.exit_code if isinstance(exc, MnnqError) else EXIT_BAD_INPUT
