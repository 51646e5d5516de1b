"""``mnnq auto-quant``: search per-layer weight bits and blocks under an error budget, a drop-in
for MNN's ``auto_quant.py`` (same flags, underscore or hyphen spelling).

Exit codes: 0 written within ``--rate``, 1 written but the budget missed (marked MISSED), 2 bad
input (nothing written).
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from mnnq.cli_args import (COMMAND_STARTED, add_flag, int01, jobs_count, name_list, plugin_manager, positive_float,
                            zero_one_auto)
from mnnq.errors import EXIT_MISSED, EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    aq = subparsers.add_parser("auto-quant", help="search per-layer weight bits/blocks under an error budget "
                                                  "(drop-in for MNN's auto_quant.py)")
    add_flag(aq, "--model", required=True, help="float .mnn model")
    add_flag(aq, "--quant_model", required=True, help="quantized model to write (params go to <quant_model>.json)")
    add_flag(aq, "--test_dir", required=True, help="MNN test dir, or a folder of test dirs (multi-sample)")
    add_flag(aq, "--rate", type=positive_float, default=0.05, help="error budget (default 0.05)")
    add_search_flags(aq)
    add_flag(aq, "--report_json", default=None, help="also write the report as JSON to this path")
    add_flag(aq, "--fp16_float_weights", type=zero_one_auto, default="auto",
             help="store the weights MNN cannot quantize (shared MatMul weights, embedding tables, constants) "
                  "as fp16 when the re-measured model still meets the rate: 1, 0, or auto (default: when they "
                  "are at least a quarter of the file)")
    return aq


def add_search_flags(aq: argparse.ArgumentParser) -> None:
    """The flags that shape the search (auto-quant and tradeoff share them)."""
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
    add_flag(aq, "--jobs", type=jobs_count, default="auto",
             help="processes for simulated trials (default auto: one per usable CPU, at most 4)")


@contextlib.contextmanager
def trial_progress(err: Console) -> Iterator[Callable]:
    """A transient spinner on ``err`` (when it is a terminal) naming the latest trial; yields the
    ``on_trial(trial)`` callback for the engine."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("auto-quant: preparing", total=None)

        def on_trial(trial):
            progress.update(task, description=f"trial {trial.index}: {trial.note[:60]} -> {trial.error:.5f}")

        yield on_trial


def search_options(args, quant_model: Path, rate: float, **more):
    """:class:`AutoQuantOptions` from the parsed search flags."""
    from mnnq.autoquant.options import AutoQuantOptions

    return AutoQuantOptions(
        model=Path(args.model), quant_model=Path(quant_model), test_dir=Path(args.test_dir), rate=rate,
        select_bits=bool(args.select_bits), select_block=bool(args.select_block), hqq=bool(args.hqq),
        metric=args.metric, weight_method=args.weight_method,
        strategies=name_list(args.strategy, "--strategy") if args.strategy else None,
        evaluator=args.evaluator, memory_mode=args.memory_mode, time_budget=args.time_budget, jobs=args.jobs,
        **more)


def run(args, out: Console, err: Console) -> int:
    from mnnq.autoquant.engine import run_auto_quant
    from mnnq.report import print_autoquant

    pm = plugin_manager(err)
    opts = search_options(args, Path(args.quant_model), args.rate,
                          report_json=Path(args.report_json) if args.report_json else None,
                          fp16_float_weights=args.fp16_float_weights)
    with trial_progress(err) as on_trial:
        result = run_auto_quant(opts, pm, on_trial=on_trial, started=COMMAND_STARTED)
    print_autoquant(result, out)  # --report-json was written with the model (all or nothing)
    return EXIT_OK if result.met else EXIT_MISSED
