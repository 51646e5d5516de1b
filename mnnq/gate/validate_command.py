"""``mnnq validate``: measure one quantized model on a test set against an error budget.

Exit 0 within budget, 1 over it, 2 when it cannot be measured (model missing, corrupt or
crashing, an output missing, a size mismatch, NaN/Inf, a missing or malformed test dir).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mnnq.cli_args import add_flag, plugin_manager, positive_float
from mnnq.fileio import check_output_path
from mnnq.inputs.sources import resolve_model


def add_report_flags(parser) -> None:
    add_flag(parser, "--report-json", default=None, help="also write the report as JSON to this path")
    add_flag(parser, "--summary-md", default=None,
             help="also write a Markdown summary (pass/fail, error vs rate, size) to this path, "
                  "e.g. $GITHUB_STEP_SUMMARY")
    add_flag(parser, "--svg", default=None, help="also save the terminal report (tables and error bars) as an SVG")


def report_paths(args, sources) -> dict:
    """The report files asked for, checked before anything is measured."""
    paths = {}
    for key, flag in (("report_json", "--report-json"), ("summary_md", "--summary-md"), ("svg", "--svg")):
        value = getattr(args, key, None)
        if value:
            paths[key] = check_output_path(Path(value), [Path(s) for s in sources if s], flag)
    return paths


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "validate", help="measure a quantized model on a test set; exit 1 over the rate, 2 if it cannot be measured",
        description="Measure one quantized model on a test set against an error budget: exit 0 within it, "
                    "1 over it, 2 when the model cannot be measured.")
    add_flag(p, "--model", required=True, help="quantized .mnn model to measure")
    add_flag(p, "--test-dir", required=True, help="MNN test dir, or a folder of test dirs (multi-sample)")
    add_flag(p, "--rate", type=positive_float, required=True, help="error budget: fail when the error exceeds it")
    add_flag(p, "--metric", default="max_rel", help="error metric plugin (default max_rel, auto_quant.py's rate)")
    add_flag(p, "--memory-mode", default="normal", choices=("normal", "low"),
             help="runtime memory mode to measure in (default normal)")
    add_flag(p, "--float-model", default=None,
             help="the float source: adds per-layer errors against it and the size ratio")
    add_flag(p, "--name", default=None, help="name shown in reports (default: the model file's stem)")
    add_report_flags(p)
    return p


def run(args, out: Console, err: Console) -> int:
    from mnnq.gate.reports import deliver
    from mnnq.gate.runner import GateTarget, measure

    model = Path(args.model)
    paths = report_paths(args, [model, args.float_model])
    pm = plugin_manager(err)
    target = GateTarget(name=args.name or model.stem, model=model, test_dir=Path(args.test_dir), rate=args.rate,
                        metric=args.metric, memory_mode=args.memory_mode,
                        float_model=resolve_model(Path(args.float_model)) if args.float_model else None)
    result = measure(target, pm, layers=target.float_model is not None)
    return deliver("validate", [result], out, err, detailed=True, **paths)

