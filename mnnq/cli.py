"""mnnq's command line: ``auto-quant``, ``apply`` and ``plugins`` here; ``quantize``, ``validate``,
``check``, ``convert`` and ``testdir`` in the modules listed in COMMAND_MODULES.

Exit codes: 0 ok / within budget, 1 budget missed (outputs written and marked), 2 bad input
or usage (nothing written), 130 interrupted.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console

from mnnq import __version__
from mnnq.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MISSED, EXIT_OK, Interrupted, MnnqError, NativeFailure


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnnq", description="Quantize MNN models to an error budget, prove it, and keep it proven in CI.")
    parser.add_argument("--version", action="version", version=f"mnnq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    aq = sub.add_parser("auto-quant", help="search per-layer weight bits/blocks under an error budget "
                                           "(drop-in for MNN's auto_quant.py)")
    add_flag(aq, "--model", required=True, help="float .mnn model")
    add_flag(aq, "--quant_model", required=True, help="quantized model to write (params go to <quant_model>.json)")
    add_flag(aq, "--test_dir", required=True, help="MNN test dir, or a folder of test dirs (multi-sample)")
    add_flag(aq, "--rate", type=positive_float, default=0.05, help="error budget (default 0.05)")
    add_flag(aq, "--select_bits", type=int01, default=1, help="try 4 bits per layer (default 1)")
    add_flag(aq, "--select_block", type=int01, default=1, help="search block sizes (default 1)")
    add_flag(aq, "--hqq", type=int01, default=1, help="use HQQ (the converter's --hqq) (default 1)")
    add_flag(aq, "--metric", default="max_rel", help="error metric plugin (default max_rel, auto_quant.py's rate)")
    add_flag(aq, "--weight_method", default=None, help="weight method plugin (default: hqq if --hqq 1 else max_abs)")
    add_flag(aq, "--strategy", action="append", default=None,
          help="search strategy plugin to run, in order; repeat or comma-separate (default: the default pipeline)")
    add_flag(aq, "--evaluator", default="auto", choices=("auto", "fast", "exact"),
          help="trial evaluator: fast (in-process simulation), exact (convert + run), auto (fast when possible)")
    add_flag(aq, "--memory_mode", default="auto", choices=("auto", "low", "normal"),
          help="runtime memory mode to meet the budget in; auto = low, falling back to normal like auto_quant.py")
    add_flag(aq, "--time_budget", type=positive_float, default=None,
          help="stop searching after this many seconds and keep the best configuration so far")
    add_flag(aq, "--jobs", type=int, default=1, help="run simulated trials in this many processes (default 1)")
    add_flag(aq, "--report_json", default=None, help="also write the report as JSON to this path")

    ap = sub.add_parser("apply", help="write a weight-quantized model from a (hand-edited) params file")
    ap.add_argument("model", help="float .mnn model")
    ap.add_argument("out", help="quantized .mnn to write")
    add_flag(ap, "--params", required=True, help="compression params JSON (e.g. the q.mnn.json auto-quant wrote)")
    add_flag(ap, "--hqq", action="store_true", help="use HQQ (as auto-quant does by default)")
    add_flag(ap, "--test_dir", default=None, help="re-measure the written model on this test set")
    add_flag(ap, "--rate", type=positive_float, default=None, help="with --test-dir: exit 1 when the error exceeds it")
    add_flag(ap, "--metric", default="max_rel", help="error metric plugin (default max_rel)")
    add_flag(ap, "--memory_mode", default="normal", choices=("low", "normal"), help="runtime memory mode to measure in")
    add_flag(ap, "--report_json", default=None, help="also write the report as JSON to this path")

    sub.add_parser("plugins", help="list loaded plugins by kind")
    for module in _command_modules():
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


# Commands that live in their own modules expose add_parser(subparsers) and run(args, out, err).
COMMAND_MODULES = {
    "quantize": "mnnq.quantize.command",
    "validate": "mnnq.gate.validate_command",
    "check": "mnnq.gate.check_command",
    "convert": "mnnq.frontend.convert_command",
    "testdir": "mnnq.frontend.testdir_command",
}


def _command_modules():
    import importlib

    modules = []
    for dotted in COMMAND_MODULES.values():
        try:
            modules.append(importlib.import_module(dotted))
        except ModuleNotFoundError as exc:
            if exc.name and dotted.startswith(exc.name):
                continue  # not built yet
            raise
    return modules


def cmd_auto_quant(args, out: Console, err: Console) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mnnq.api import _names
    from mnnq.autoquant.engine import AutoQuantOptions, run_auto_quant
    from mnnq.report import print_autoquant

    pm = plugin_manager(err)
    strategies = _names(args.strategy, "--strategy") if args.strategy else None
    opts = AutoQuantOptions(
        model=Path(args.model), quant_model=Path(args.quant_model), test_dir=Path(args.test_dir), rate=args.rate,
        select_bits=bool(args.select_bits), select_block=bool(args.select_block), hqq=bool(args.hqq),
        metric=args.metric, weight_method=args.weight_method, strategies=strategies,
        evaluator=args.evaluator, memory_mode=args.memory_mode, time_budget=args.time_budget, jobs=args.jobs,
        report_json=Path(args.report_json) if args.report_json else None,
    )
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("auto-quant: preparing", total=None)

        def on_trial(trial):
            progress.update(task, description=f"trial {trial.index}: {trial.note[:60]} -> {trial.error:.5f}")

        result = run_auto_quant(opts, pm, on_trial=on_trial)
    print_autoquant(result, out)  # --report-json was written with the model (all or nothing)
    return EXIT_OK if result.met else EXIT_MISSED


def cmd_apply(args, out: Console, err: Console) -> int:
    from mnnq.apply import apply_params

    pm = plugin_manager(err)
    result = apply_params(Path(args.model), Path(args.out), Path(args.params), hqq=args.hqq,
                          test_dir=Path(args.test_dir) if args.test_dir else None, metric=args.metric,
                          rate=args.rate, memory_mode=args.memory_mode, pm=pm,
                          report_json=Path(args.report_json) if args.report_json else None)
    out.print(f"wrote {result['out']} ({result['size_after_bytes']} bytes, {result['layers']} layers from "
              f"{args.params})", highlight=False)
    if result.get("errors") is not None:
        from mnnq.measure import error_text

        errs = ", ".join(f"{k} {error_text(v)}" for k, v in result["errors"].items())
        out.print(f"measured on {args.test_dir}: {errs}", highlight=False)
    if result.get("met") is False:
        out.print(f"[red]MISSED[/red]: {args.metric} {result['errors'][args.metric]:.6f} > rate {args.rate}")
        return EXIT_MISSED
    return EXIT_OK


def cmd_plugins(args, out: Console, err: Console) -> int:
    from rich.table import Table

    from mnnq.plugin_manager import KINDS, get_plugin_manager

    pm = get_plugin_manager()
    table = Table(title="mnnq plugins", title_justify="left")
    for col in ("kind", "name", "plugin", "summary"):
        table.add_column(col, overflow="fold")
    for hook_name, (_, kind) in KINDS.items():
        for name, record in sorted(pm._collect(hook_name).items()):
            table.add_row(kind, name, pm.owner_of(hook_name, name), record.summary)
    out.print(table)
    _report_plugin_failures(pm, err)
    return EXIT_OK


def plugin_manager(err: Console):
    """A manager with the installed plugins loaded; those that failed to load (or whose hook
    raised) are warned about on ``err``. Every command but ``plugins`` starts with this."""
    from mnnq.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    _report_plugin_failures(pm, err)
    return pm


def _report_plugin_failures(pm, err: Console) -> None:
    for failure in pm.failures:
        err.print(f"warning: plugin '{failure.plugin}' skipped: {failure.error}", highlight=False, markup=False)


COMMANDS = {"auto-quant": cmd_auto_quant, "apply": cmd_apply, "plugins": cmd_plugins}


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
    handler = COMMANDS.get(args.command)
    if handler is None:
        import importlib

        handler = importlib.import_module(COMMAND_MODULES[args.command]).run
    from mnnq.plugin_manager import DISABLE_ENV

    saved = os.environ.get(DISABLE_ENV)
    if args.disable_plugins:
        # Every plugin manager of this run (and its worker processes) reads the variable.
        os.environ[DISABLE_ENV] = ",".join(n for n in (saved, args.disable_plugins) if n)
    try:
        return handler(args, out, err)
    except Interrupted as exc:
        print(f"mnnq: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return exc.exit_code
    except NativeFailure as exc:
        _error_line(exc)
        if exc.tail:
            print("native output (last lines):\n" + exc.tail, file=sys.stderr)
        return exc.exit_code
    except MnnqError as exc:
        _error_line(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnnq: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the file system refused (disk full, permissions, ...): nothing was written
        where = f" ({exc.filename})" if exc.filename else ""
        _error_line(Exception(f"{exc.strerror or exc}{where}; nothing was written"))
        return EXIT_BAD_INPUT
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


def _error_line(exc: Exception) -> None:
    """The one line a failure gets: never wrapped, whatever the terminal width."""
    text = " ".join(str(exc).split())
    print(f"mnnq: error: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
