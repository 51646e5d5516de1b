"""``mnnq quantize float.mnn int8.mnn config.json|yaml``: offline full-INT8 quantization, a drop-in
for MNN's ``quantized.out`` (same config keys and defaults) that checks the result.

Exit codes: 0 written (and within ``--rate``), 1 written but ``--rate`` missed (marked MISSED),
2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console

from mnnq.cli_args import arg_type, plugin_manager, positive_int
from mnnq.errors import EXIT_MISSED, EXIT_OK

non_negative_float = arg_type(float, "a finite number >= 0", lambda v: 0 <= v < math.inf, unparsed="a number")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize", help="full INT8 with calibrated activations (drop-in for MNN's quantized.out)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="float .mnn model")
    p.add_argument("out", help="INT8 .mnn to write (its params go to <out>.json)")
    p.add_argument("config", help="quantized.out calibration config (.json, or .yaml/.yml with the same keys)")
    p.add_argument("--debug", action="store_true",
                   help="per-layer cosine / overflow table of the INT8 model vs float (as config debug: true)")
    p.add_argument("--rate", type=non_negative_float, default=None,
                   help="error budget: when every layer INT8 misses it, rank the layers and keep the fewest "
                        "float that bring the --metric error to at most this (exit 1 if none does); the "
                        "report shows the trade-off measured on the way")
    p.add_argument("--metric", default="max_rel", help="error metric plugin for --rate (default max_rel)")
    p.add_argument("--eval-samples", "--eval_samples", type=positive_int, default=None,
                   help="calibration samples the INT8 model is measured on (default 64, spread evenly)")
    p.add_argument("--bias-correction", "--bias_correction", nargs="?", const="on", default="auto",
                   choices=("auto", "on", "off", "1", "0"),
                   help="correct each INT8 conv's bias for the mean shift of its rounded weights: on (also the "
                        "bare flag), off, or auto (default): for models with depthwise convs, measured with and "
                        "without on the calibration samples, the better kept")
    p.add_argument("--report-json", "--report_json", default=None, help="also write the report as JSON here")
    p.add_argument("--svg", default=None,
                   help="with --rate: also draw the trade-off (layers INT8 against the metric) as SVG here")
    return p


@contextlib.contextmanager
def stage_progress(err: Console) -> Iterator[Callable[[str, int, int], None]]:
    """Transient progress bars on ``err`` (when it is a terminal), one per stage; yields the
    ``on_progress(stage, done, total)`` callback for the engine."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        tasks = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        yield on_progress


def finish(result, report_json: Optional[Path], out: Console, svg: Optional[Path] = None) -> int:
    """Print the report of a finished job (a ``QuantizeResult``), write it as JSON to
    ``report_json`` and the trade-off to ``svg`` when given, and return the exit code."""
    from mnnq.fileio import atomic_write_text
    from mnnq.quantize.report import print_result, result_dict, tradeoff_svg

    print_result(result, out)
    if report_json:
        atomic_write_text(report_json, json.dumps(result_dict(result), indent=2) + "\n")
    if svg:
        if result.tradeoff is None:
            out.print(f"note: no trade-off to draw in {svg}: every layer INT8 met the budget", highlight=False)
        else:
            atomic_write_text(svg, tradeoff_svg(result.tradeoff, Path(result.model).name))
    return EXIT_OK if result.met else EXIT_MISSED


def run(args, out: Console, err: Console) -> int:
    from mnnq.fileio import check_output_path
    from mnnq.quantize.engine import EVAL_SAMPLES, QuantizeOptions, prepare, run_job

    pm = plugin_manager(err)
    opts = QuantizeOptions(
        model=Path(args.model), out=Path(args.out), config=Path(args.config), debug=args.debug,
        rate=args.rate, metric=args.metric, eval_samples=args.eval_samples or EVAL_SAMPLES,
        report_json=Path(args.report_json) if args.report_json else None, bias_correction=args.bias_correction,
    )
    svg = Path(args.svg) if args.svg else None
    started = time.perf_counter()
    job = prepare(opts, pm)
    if svg is not None:
        check_output_path(svg, [opts.model, opts.config, opts.out, Path(str(opts.out) + ".json"), opts.report_json],
                          "--svg")
    with stage_progress(err) as on_progress:
        result = run_job(job, on_progress, started)
    return finish(result, opts.report_json, out, svg)
