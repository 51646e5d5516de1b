"""Terminal and JSON reports for auto-quant and apply."""
from __future__ import annotations

import html
from typing import List

from rich.console import Console
from rich.table import Table

from mnnq.measure import error_text

MB = 1024.0 * 1024.0


def autoquant_dict(result) -> dict:
    """Everything the terminal report shows, as JSON-ready data."""
    return {
        "status": result.status,
        "met": result.met,
        "model": str(result.model),
        "quant_model": str(result.quant_model),
        "params": str(result.params_path),
        "rate": result.rate,
        "metric": result.metric,
        "errors": result.errors,
        "float_model_errors": result.float_errors,
        "simulated_error": result.simulated_error,
        "memory_mode": result.memory_mode,
        "weight_method": result.method,
        "evaluator": result.evaluator,
        "strategies": result.strategies,
        "size_before_mb": result.size_before / MB,
        "size_after_mb": result.size_after / MB,
        "size_before_bytes": result.size_before,
        "size_after_bytes": result.size_after,
        "trials": len(result.trials),
        "wall_time_s": result.seconds,
        "stopped_early": result.stopped_early,
        "timing": result.timing,
        "notes": result.notes,
        "weights": result.weights.as_dict() if result.weights is not None else None,
        "layers": [
            {"name": r.name, "kind": r.kind, "shape": r.shape, "bits": r.bits, "block": r.block, "reason": r.reason}
            for r in result.layers
        ],
        "trial_log": [
            {"index": t.index, "note": t.note, "error": t.error, "evaluator": t.evaluator,
             "memory_mode": t.memory_mode, "seconds": t.seconds, "accepted": t.accepted, "quick": t.quick,
             "stage": t.stage}
            for t in result.trials
        ],
    }


def weights_line(account) -> str:
    """One line: where the written file's bytes are (quantized weights, float weights, the rest)."""
    q_ops = sum(q.ops for q in account.quantized)
    line = (f"{account.quantized_bytes / MB:.3f} MB quantized in {q_ops} op{'s' if q_ops != 1 else ''}, "
            f"{account.float_bytes / MB:.3f} MB float ({account.share(account.float_bytes):.1%} of the file), "
            f"{account.other_bytes / MB:.3f} MB graph and other data")
    if account.external_bytes:
        line += f"; {account.external_bytes / MB:.3f} MB float outside the file"
    return line


def print_weights(account, console: Console, max_rows: int = 8, min_share: float = 0.01) -> None:
    """The weights left unquantized, per op kind and reason, when they are at least ``min_share``
    of the file; each reason that matters is spelled out once below the table."""
    console.print(f"weights: {weights_line(account)}", highlight=False, markup=False)
    rows = [f for f in account.float if f.external or account.share(f.bytes) >= min_share]
    if not rows:
        return
    table = Table(title=f"weights left float: {account.headline()}", title_justify="left")
    for col in ("kind", "reason", "ops", "tensors", "MB", "of file"):
        table.add_column(col, overflow="fold")
    for f in rows[:max_rows]:
        table.add_row(f.kind, f.reason + ("" if f.dtype == "float32" else f" ({f.dtype})"), str(f.ops),
                      str(f.tensors), f"{f.bytes / MB:.3f}", "outside" if f.external else f"{account.share(f.bytes):.1%}")
    if len(rows) > max_rows:
        table.add_row(f"... {len(rows) - max_rows} more (see --report-json)", "", "", "", "", "")
    console.print(table)
    seen = set()
    for f in rows[:max_rows]:
        if f.why and f.reason not in seen:
            seen.add(f.reason)
            console.print(f"  {f.kind}, {f.reason}: {f.why}", highlight=False, markup=False)


def print_autoquant(result, console: Console, max_layers: int = 60) -> None:
    table = Table(title=f"mnnq auto-quant: {result.quant_model}", title_justify="left")
    for col in ("layer", "kind", "shape", "bits", "block", "note"):
        table.add_column(col, overflow="fold")
    rows = result.layers
    for r in rows[:max_layers]:
        table.add_row(r.name, r.kind, r.shape, "float" if r.bits == 0 else str(r.bits),
                      "-" if r.bits == 0 else ("channel" if r.block <= 0 else str(r.block)), r.reason)
    if len(rows) > max_layers:
        table.add_row(f"... {len(rows) - max_layers} more (see --report-json)", "", "", "", "", "")
    console.print(table)

    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    colour = "green" if result.met else "red"
    summary.add_row("status", f"[{colour}]{result.status}[/{colour}] ({result.metric} {result.errors[result.metric]:.6f}"
                    f" {'<=' if result.met else '>'} rate {result.rate})")
    for name, value in result.errors.items():
        summary.add_row(f"error {name}", f"{error_text(value)} (written model, memory mode {result.memory_mode})")
    if result.simulated_error is not None:
        summary.add_row("simulated", f"{error_text(result.simulated_error)} ({result.metric}, in-process search)")
    summary.add_row("float model", ", ".join(f"{k} {error_text(v)}" for k, v in result.float_errors.items()))
    summary.add_row("size", f"{result.size_before / MB:.3f} MB -> {result.size_after / MB:.3f} MB "
                    f"({result.size_after / max(result.size_before, 1):.2f}x)")
    summary.add_row("method", f"{result.method}; strategies {', '.join(result.strategies) or 'none'}")
    summary.add_row("trials", f"{len(result.trials)} ({result.evaluator} evaluator), wall time {result.seconds:.1f} s")
    phases = (result.timing or {}).get("phases_s") or {}
    if phases:
        summary.add_row("time", ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()))
    summary.add_row("outputs", f"{result.quant_model}, {result.params_path}")
    console.print(summary)
    if result.weights is not None:
        print_weights(result.weights, console)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if not result.met:
        console.print(f"[red]MISSED[/red]: the best-effort model was written but its {result.metric} error "
                      f"{result.errors[result.metric]:.6f} exceeds the rate {result.rate}")



def tradeoff_table(data: dict) -> Table:
    """The curve (``mnnq.autoquant.tradeoff.curve_dict``) as a table, one row per rate."""
    table = Table(title=f"mnnq tradeoff: {data['model']}", title_justify="left")
    for col in ("rate", "status", data["metric"], "simulated", "size MB", "size", "trials (new)", "model"):
        table.add_column(col, overflow="fold")
    for p in data["points"]:
        simulated = "-" if p["simulated_error"] is None else f"{p['simulated_error']:.5f}"
        table.add_row(f"{p['rate']:g}", p["status"], f"{p['error']:.5f}", simulated, f"{p['size_bytes'] / MB:.3f}",
                      f"{p['size_ratio']:.2f}x", f"{p['trials']} ({p['new_trials']})", p["model"])
    return table


def print_tradeoff(data: dict, out: str, console: Console) -> None:
    """The curve (``mnnq.autoquant.tradeoff.curve_dict``) written to folder ``out``."""
    console.print(tradeoff_table(data))
    console.print(f"float model {data['size_before_bytes'] / MB:.3f} MB; wall time {data['wall_time_s']:.1f} s; "
                  f"written to {out} (tradeoff.json, tradeoff.svg, q-<rate>.mnn and .mnn.json; "
                  "`mnnq apply` rebuilds a point from its params)", highlight=False)
    for note in data["notes"]:
        console.print(f"note: {note}", highlight=False)


# The plot area's distance from the edges of a report SVG: left, right, top, bottom (pixels).
SVG_MARGINS = (70, 20, 40, 50)


def svg_frame(width: int, height: int, title: str, x_label: str, y_label: str) -> List[str]:
    """The opening lines of a report plot (SVG): the ``<svg>`` element, the title, both axes
    (inside :data:`SVG_MARGINS`) and their labels; the texts are escaped here."""
    left, right, top, bottom = SVG_MARGINS
    middle = (top + height - bottom) / 2
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            'font-size="12">',
            f'<text x="{left}" y="20" font-size="14">{html.escape(title)}</text>',
            f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
            f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">{html.escape(x_label)}</text>',
            f'<text x="16" y="{middle}" transform="rotate(-90 16 {middle})" text-anchor="middle">'
            f'{html.escape(y_label)}</text>']


def tradeoff_svg(data: dict, width: int = 560, height: int = 360) -> str:
    """Size of the written model against its measured error, one point per rate (SVG)."""
    left, right, top, bottom = SVG_MARGINS
    points = sorted(data["points"], key=lambda p: p["error"])
    errors = [p["error"] for p in points] + [p["rate"] for p in points]
    sizes = [p["size_ratio"] for p in points]
    x_max = max(errors + [1e-12]) * 1.1
    y_max = max(sizes + [1e-12]) * 1.1

    def x(v: float) -> float:
        return left + (width - left - right) * v / x_max

    def y(v: float) -> float:
        return height - bottom - (height - top - bottom) * v / y_max

    parts = svg_frame(width, height, f"size against {data['metric']}: {data['model']}",
                      f"{data['metric']} of the written model", "size / float size")
    for i in range(5):
        xv, yv = x_max * i / 4, y_max * i / 4
        parts.append(f'<text x="{x(xv):.1f}" y="{height - bottom + 16}" text-anchor="middle">{xv:.3g}</text>')
        parts.append(f'<text x="{left - 6}" y="{y(yv) + 4:.1f}" text-anchor="end">{yv:.2f}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(p['error']):.1f},{y(p['size_ratio']):.1f}" for i, p in enumerate(points))
    if path:
        parts.append(f'<path d="{path}" fill="none" stroke="#4477aa" stroke-width="2"/>')
    for p in points:
        colour = "#228833" if p["met"] else "#cc3311"
        parts.append(f'<circle cx="{x(p["error"]):.1f}" cy="{y(p["size_ratio"]):.1f}" r="4" fill="{colour}"/>')
        parts.append(f'<line x1="{x(p["rate"]):.1f}" y1="{y(p["size_ratio"]) - 8:.1f}" x2="{x(p["rate"]):.1f}" '
                     f'y2="{y(p["size_ratio"]) + 8:.1f}" stroke="#999" stroke-dasharray="2,2"/>')
        parts.append(f'<text x="{x(p["error"]) + 6:.1f}" y="{y(p["size_ratio"]) - 6:.1f}">rate {p["rate"]:g}: '
                     f'{p["size_ratio"]:.2f}x</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
