"""``mnnq tradeoff``: the size / error curve of a model, one point per rate, from one screening.

    mnnq tradeoff --model float.mnn --test_dir testset --rates 0.01,0.02,0.05,0.1 --out curve/

Writes ``curve/q-<rate>.mnn`` and ``curve/q-<rate>.mnn.json`` per rate (``mnnq apply`` rebuilds
any of them from its params), ``curve/tradeoff.json`` and ``curve/tradeoff.svg``. Takes
auto-quant's search flags. Exit codes: 0 every point within its rate, 1 a point missed (all are
still written and marked), 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mnnq.autoquant.command import add_search_flags, search_options, trial_progress
from mnnq.cli_args import add_flag, arg_type, plugin_manager
from mnnq.errors import EXIT_MISSED, EXIT_OK


def _rates(text: str):
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(text)
    return values


rate_list = arg_type(_rates, "comma-separated positive rates", lambda vs: all(0 < v < float("inf") for v in vs))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tradeoff", help="size / error curve: one auto-quant point per rate, from one screening")
    add_flag(p, "--model", required=True, help="float .mnn model")
    add_flag(p, "--test_dir", required=True, help="MNN test dir, or a folder of test dirs (multi-sample)")
    add_flag(p, "--rates", type=rate_list, default=[0.01, 0.02, 0.05, 0.1],
             help="error budgets, comma-separated (default 0.01,0.02,0.05,0.1)")
    add_flag(p, "--out", required=True, help="new or empty folder for the models, params, tradeoff.json and .svg")
    add_search_flags(p)
    return p


def run(args, out: Console, err: Console) -> int:
    from mnnq.autoquant.tradeoff import curve_dict, run_tradeoff
    from mnnq.report import print_tradeoff

    pm = plugin_manager(err)
    opts = search_options(args, Path(args.out) / "q.mnn", max(args.rates))
    with trial_progress(err) as on_trial:
        curve = run_tradeoff(opts, args.rates, Path(args.out), pm, on_trial=on_trial)
    print_tradeoff(curve_dict(curve), str(curve.out), out)
    return EXIT_OK if curve.met else EXIT_MISSED
