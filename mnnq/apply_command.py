"""``mnnq apply``: write a weight-quantized model from a (hand-edited) params file, optionally
re-measured on a test set (:mod:`mnnq.apply` does the work).

Exit codes: 0 written (and within ``--rate``), 1 written but ``--rate`` missed, 2 bad input
(nothing written).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from rich.console import Console

from mnnq.cli_args import add_flag, plugin_manager, positive_float
from mnnq.errors import EXIT_MISSED, EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    ap = subparsers.add_parser("apply", help="write a weight-quantized model from a (hand-edited) params file")
    ap.add_argument("model", help="float .mnn model")
    ap.add_argument("out", help="quantized .mnn to write")
    add_flag(ap, "--params", required=True, help="compression params JSON (e.g. the q.mnn.json auto-quant wrote)")
    add_flag(ap, "--hqq", action="store_true", help="use HQQ (as auto-quant does by default)")
    add_flag(ap, "--test_dir", default=None, help="re-measure the written model on this test set")
    add_flag(ap, "--rate", type=positive_float, default=None, help="with --test-dir: exit 1 when the error exceeds it")
    add_flag(ap, "--metric", default="max_rel", help="error metric plugin (default max_rel)")
    add_flag(ap, "--memory_mode", default="normal", choices=("low", "normal"), help="runtime memory mode to measure in")
    add_flag(ap, "--report_json", default=None, help="also write the report as JSON to this path")
    add_flag(ap, "--fp16_float_weights", action="store_true",
             help="store the weights left float as fp16 (as auto-quant --fp16-float-weights 1 did)")
    return ap


def run(args, out: Console, err: Console) -> int:
    from mnnq.apply import apply_params

    pm = plugin_manager(err)
    result = apply_params(Path(args.model), Path(args.out), Path(args.params), hqq=args.hqq,
                          test_dir=Path(args.test_dir) if args.test_dir else None, metric=args.metric,
                          rate=args.rate, memory_mode=args.memory_mode, pm=pm,
                          report_json=Path(args.report_json) if args.report_json else None,
                          fp16_float_weights=args.fp16_float_weights)
    return print_applied(result, out, args.params, args.test_dir, args.metric, args.rate)


def print_applied(result: dict, out: Console, params: str, test_dir: Optional[str] = None,
                  metric: str = "max_rel", rate: Optional[float] = None) -> int:
    """Print what was written (``result`` is :func:`mnnq.apply.apply_params`'s) and, with a test
    dir, what it measured; return the exit code."""
    out.print(f"wrote {result['out']} ({result['size_after_bytes']} bytes, {result['layers']} layers from "
              f"{params})", highlight=False)
    if result.get("errors") is not None:
        from mnnq.measure import error_text

        errs = ", ".join(f"{k} {error_text(v)}" for k, v in result["errors"].items())
        out.print(f"measured on {test_dir}: {errs}", highlight=False)
    if result.get("met") is False:
        out.print(f"[red]MISSED[/red]: {metric} {result['errors'][metric]:.6f} > rate {rate}")
        return EXIT_MISSED
    return EXIT_OK
