"""Terminal and JSON reports for auto-quant and apply."""
from __future__ import annotations

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
        "notes": result.notes,
        "layers": [
            {"name": r.name, "kind": r.kind, "shape": r.shape, "bits": r.bits, "block": r.block, "reason": r.reason}
            for r in result.layers
        ],
        "trial_log": [
            {"index": t.index, "note": t.note, "error": t.error, "evaluator": t.evaluator,
             "memory_mode": t.memory_mode, "seconds": t.seconds, "accepted": t.accepted, "quick": t.quick}
            for t in result.trials
        ],
    }


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
    summary.add_row("outputs", f"{result.quant_model}, {result.params_path}")
    console.print(summary)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if not result.met:
        console.print(f"[red]MISSED[/red]: the best-effort model was written but its {result.metric} error "
                      f"{result.errors[result.metric]:.6f} exceeds the rate {result.rate}")

