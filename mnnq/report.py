"""Terminal and JSON reports for auto-quant and apply."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

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


def _fmt_err(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.6f}"


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
        summary.add_row(f"error {name}", f"{_fmt_err(value)} (written model, memory mode {result.memory_mode})")
    if result.simulated_error is not None:
        summary.add_row("simulated", f"{_fmt_err(result.simulated_error)} ({result.metric}, in-process search)")
    summary.add_row("float model", ", ".join(f"{k} {_fmt_err(v)}" for k, v in result.float_errors.items()))
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

