"""mnnq's command line: assembles the commands (each a module with ``add_parser(subparsers)`` and
``run(args, out, err)``) and maps failures onto exit codes. Only the entry points
(``mnnq/__main__.py``, the ``mnnq`` console script) import this module.

Exit codes: 0 ok / within budget, 1 budget missed (outputs written and marked), 2 bad input
or usage (nothing written), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from rich.console import Console

from mnnq import apply_command, plugins_command
from mnnq.autoquant import command as auto_quant_command
from mnnq.autoquant import tradeoff_command
from mnnq.cli_args import FAILURES, report_failure
from mnnq.errors import EXIT_BAD_INPUT
from mnnq.frontend import convert_command, testdir_command
from mnnq.gate import check_command, validate_command
from mnnq.quantize import command as quantize_command
from mnnq.version import __version__

# In ``mnnq --help`` order. The modules import what they run lazily: `mnnq --help` never loads MNN.
COMMANDS = {
    "auto-quant": auto_quant_command,
    "tradeoff": tradeoff_command,
    "apply": apply_command,
    "plugins": plugins_command,
    "quantize": quantize_command,
    "validate": validate_command,
    "check": check_command,
    "convert": convert_command,
    "testdir": testdir_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnnq", description="Quantize MNN models to an error budget, prove it, and keep it proven in CI.")
    parser.add_argument("--version", action="version", version=f"mnnq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    _add_disable_plugins(parser, None)
    for command in {id(p): p for p in sub.choices.values()}.values():
        if "-" in command.prefix_chars:  # not `convert`, which passes every token to MNNConvert
            _add_disable_plugins(command, argparse.SUPPRESS)  # SUPPRESS: keeps a value given before the command
    return parser


def _add_disable_plugins(parser, default) -> None:
    parser.add_argument("--disable-plugins", "--disable_plugins", dest="disable_plugins", metavar="NAME,...",
                        default=default, help="block plugins by entry-point name (see `mnnq plugins`) for this run, "
                                              "in addition to $MNNQ_DISABLE_PLUGINS")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.command != "plugins":
        from mnnq.mnn_backend.native import start_child_server

        start_child_server()  # before MNN is imported here: native children fork from it
        _import_mnn_quietly()
    handler = COMMANDS[args.command].run
    from mnnq.plugin_manager import DISABLE_ENV

    saved = os.environ.get(DISABLE_ENV)
    if args.disable_plugins:
        # Every plugin manager of this run (and its worker processes) reads the variable.
        os.environ[DISABLE_ENV] = ",".join(n for n in (saved, args.disable_plugins) if n)
    try:
        return handler(args, out, err)
    except FAILURES as exc:
        return report_failure(exc)
    finally:
        if saved is None:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = saved


def _import_mnn_quietly() -> None:
    """Import MNN with fd 1 silenced: it prints a CPU-feature line on import, which would
    otherwise land in the middle of mnnq's reports (and of anything parsing them)."""
    if "MNN" in sys.modules:
        return
    from mnnq.mnn_backend.runtime import quiet_native_stdout

    sys.stdout.flush()
    with quiet_native_stdout():
        import MNN  # noqa: F401


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
