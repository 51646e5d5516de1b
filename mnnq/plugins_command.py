"""``mnnq plugins``: list the loaded plugins by kind (and warn about those that failed to load)."""
from __future__ import annotations

import argparse

from rich.console import Console

from mnnq.cli_args import report_plugin_failures
from mnnq.errors import EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("plugins", help="list loaded plugins by kind")


def run(args, out: Console, err: Console) -> int:
    from rich.table import Table

    from mnnq.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    table = Table(title="mnnq plugins", title_justify="left")
    for col in ("kind", "name", "plugin", "summary"):
        table.add_column(col, overflow="fold")
    for row in pm.listing():
        table.add_row(*row)
    out.print(table)
    report_plugin_failures(pm, err)
    return EXIT_OK
