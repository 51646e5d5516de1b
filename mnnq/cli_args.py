"""What the command modules share: flag spellings, argparse types, and the plugin manager with
its load warnings. It sits below the commands (``mnnq.cli`` only assembles them), so a command
module never imports ``mnnq.cli``.
"""
from __future__ import annotations

import argparse
import math
from typing import List, Optional

from rich.console import Console


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
