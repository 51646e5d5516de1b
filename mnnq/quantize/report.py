"""Terminal summary and JSON report of a quantize run."""
from __future__ import annotations

import math
from typing import List, Optional

from rich.console import Console
from rich.table import Table

from mnnq.measure import error_text
from mnnq.quantize.engine import LayerReport, QuantizeResult
from mnnq.report import MB, SVG_MARGINS, print_weights, svg_frame


def _r(v: Optional[float], digits: int = 6) -> Optional[float]:
    return None if v is None else round(float(v), digits)


def debug_rows(result: QuantizeResult) -> List[LayerReport]:
    """Layers with measurements, worst output cosine first."""
    rows = [r for r in result.layers if r.cos_out is not None]
    return sorted(rows, key=lambda r: (r.cos_out, r.name))


def result_dict(result: QuantizeResult) -> dict:
    layers = []
    for r in result.layers:
        entry = {
            "name": r.name, "kind": r.kind, "shape": r.shape, "status": r.status, "reason": r.reason,
            "input": {"tensor": r.input, "scale": r.input_params[0], "zero_point": r.input_params[1]},
            "output": {"tensor": r.output, "scale": r.output_params[0], "zero_point": r.output_params[1]},
        }
        if r.cos_out is not None:
            entry.update({"cosine_in": _r(r.cos_in), "cosine_out": _r(r.cos_out), "min_cosine_out": _r(r.min_cos_out),
                          "cosine_drop": _r(r.drop), "overflow_in": _r(r.overflow_in),
                          "overflow_out": _r(r.overflow_out)})
        layers.append(entry)
    out = {
        "status": result.status,
        "met": result.met,
        "model": str(result.model),
        "quant_model": str(result.out),
        "params": str(result.params_path),
        "feature_quantize_method": result.feature_method,
        "weight_quantize_method": result.weight_method,
        "config": result.config.as_dict(),
        "calibration_samples": result.samples,
        "measured_samples": result.eval_samples,
        "metric": result.metric,
        "rate": result.rate,
        "errors": {k: _r(v, 8) for k, v in result.errors.items()},
        "output_cosine": {"mean": _r(result.output_cosine[0], 8), "min": _r(result.output_cosine[1], 8)},
        "layers_int8": sum(1 for r in result.layers if r.status == "int8"),
        "layers_float": [r.name for r in result.kept_float] + [n for n, _ in result.other_float],
        "other_float_ops": [{"name": n, "reason": why} for n, why in result.other_float],
        "rounds": result.rounds,
        "tradeoff": _tradeoff_json(result.tradeoff),
        "size_before_bytes": result.size_before,
        "size_after_bytes": result.size_after,
        "wall_time_s": round(result.seconds, 3),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "notes": result.notes,
        "weights": result.weights.as_dict() if result.weights is not None else None,
        "layers": layers,
    }
    if result.debug:
        out["debug"] = [{"layer": r.name, "tensor": r.output, "cosine": _r(r.cos_out), "min_cosine": _r(r.min_cos_out),
                         "overflow_ratio": _r(r.overflow_out), "input_cosine": _r(r.cos_in),
                         "input_overflow_ratio": _r(r.overflow_in), "status": r.status}
                        for r in debug_rows(result)]
    return out


def _tradeoff_json(tradeoff: Optional[dict]) -> Optional[dict]:
    """The fallback's curve with its errors and cosines rounded as the report's own."""
    if tradeoff is None:
        return None
    points = [dict(p, error=_r(p["error"], 8), errors={k: _r(v, 8) for k, v in p["errors"].items()},
                   output_cosine={k: _r(v, 8) for k, v in p["output_cosine"].items()}) for p in tradeoff["points"]]
    ranking = [dict(r, alone_error=_r(r["alone_error"], 8)) for r in tradeoff["ranking"]]
    return dict(tradeoff, points=points, ranking=ranking)


def _f(v: Optional[float], fmt: str = "{:.5f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_debug(result: QuantizeResult, console: Console, limit: int = 80) -> None:
    rows = debug_rows(result)
    if not rows:
        return
    table = Table(title=f"per-layer INT8 vs float on {result.eval_samples} calibration samples (worst first)",
                  title_justify="left")
    for col in ("layer", "kind", "status", "cos out", "min cos", "cos in", "drop", "overflow out", "overflow in"):
        table.add_column(col, overflow="fold")
    for r in rows[:limit]:
        table.add_row(r.name, r.kind, r.status, _f(r.cos_out), _f(r.min_cos_out), _f(r.cos_in), _f(r.drop),
                      _f(r.overflow_out, "{:.4f}"), _f(r.overflow_in, "{:.4f}"))
    console.print(table)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more layers in --report-json", highlight=False)


def print_tradeoff(tradeoff: dict, samples: int, console: Console) -> None:
    """The fallback's points measured on every sample (and the chosen one), one row each; the
    candidates stopped at their first sample over the rate are counted below the table."""
    metric = tradeoff["metric"]
    table = Table(title=f"trade-off: layers INT8 against {metric} ({tradeoff['layers']} INT8-able convs; "
                        "every measured point is in --report-json)", title_justify="left")
    for col in ("round", "stage", "INT8", "float", metric, "cos mean", "cos min", "holds"):
        table.add_column(col, overflow="fold")
    shown = [p for p in tradeoff["points"] if p["complete"] or p["chosen"]]
    for p in shown:
        table.add_row(str(p["round"]), p["stage"] + (" (chosen)" if p["chosen"] else ""), str(p["layers_int8"]),
                      str(p["layers_float"]), _f(p["error"], "{:.5f}"), _f(p["output_cosine"]["mean"]),
                      _f(p["output_cosine"]["min"]), "yes" if p["holds"] else "no")
    console.print(table)
    stopped = len(tradeoff["points"]) - len(shown)
    if stopped:
        console.print(f"{stopped} more candidates went over the rate at one of their first samples (of {samples}) "
                      "and were not measured further", highlight=False)


def print_result(result: QuantizeResult, console: Console) -> None:
    if result.debug:
        print_debug(result, console)
    if result.tradeoff is not None:
        print_tradeoff(result.tradeoff, result.eval_samples, console)
    kept = result.kept_float
    if kept:
        table = Table(title="layers kept float", title_justify="left")
        for col in ("layer", "kind", "shape", "reason"):
            table.add_column(col, overflow="fold")
        for r in kept:
            table.add_row(r.name, r.kind, r.shape, r.reason)
        console.print(table)
    summary = Table(title=f"mnnq quantize: {result.out}", title_justify="left", show_header=False)
    summary.add_column("key")
    summary.add_column("value", overflow="fold")
    summary.add_row("methods", f"features {result.feature_method}, weights {result.weight_method} "
                               f"({result.config.quant_bits} bits)")
    int8 = len(result.layers) - len(kept)
    summary.add_row("layers", f"{int8} INT8, {len(kept)} kept float"
                              + (f", {len(result.other_float)} other conv ops float" if result.other_float else ""))
    summary.add_row("size", f"{result.size_before / MB:.3f} MB -> {result.size_after / MB:.3f} MB "
                            f"({result.size_after / max(result.size_before, 1):.1%})")
    summary.add_row("samples", f"{result.samples} calibration, {result.eval_samples} measured")
    errs = ", ".join(f"{k} {error_text(v)}" for k, v in sorted(result.errors.items()))
    summary.add_row("error vs float", f"{errs}; output cosine mean {result.output_cosine[0]:.6f}, "
                                      f"min {result.output_cosine[1]:.6f}")
    if result.rate is not None:
        summary.add_row("budget", f"{result.metric} <= {result.rate} ({result.rounds} candidates measured)")
    summary.add_row("params", str(result.params_path))
    summary.add_row("wall time", f"{result.seconds:.2f} s")
    console.print(summary)
    if result.weights is not None:
        print_weights(result.weights, console)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if result.rate is not None:
        if result.met:
            console.print(f"[green]MET[/green]: {result.metric} {_f(result.errors.get(result.metric), '{:.6f}')} "
                          f"<= rate {result.rate}")
        else:
            console.print(f"[red]MISSED[/red]: the best-effort model was written but its {result.metric} error "
                          f"{_f(result.errors.get(result.metric), '{:.6f}')} exceeds rate {result.rate}")


def tradeoff_svg(tradeoff: dict, title: str, width: int = 560, height: int = 360) -> str:
    """The fallback's points: layers INT8 (x) against the metric (y, log scale); filled: measured
    on every sample (green: holds), open: stopped at a sample over the rate (a lower bound);
    the rate as a dashed line, the chosen point ringed."""
    left, right, top, bottom = SVG_MARGINS
    points = [p for p in tradeoff["points"] if p["error"] is not None and math.isfinite(p["error"])]
    values = [p["error"] for p in points if p["error"] > 0] + ([tradeoff["rate"]] if tradeoff["rate"] else [])
    lo = math.log10(min(values, default=1e-6)) - 0.2
    hi = math.log10(max(values, default=1.0)) + 0.2

    def x(v: float) -> float:
        return left + (width - left - right) * v / max(tradeoff["layers"], 1)

    def y(v: float) -> float:
        v = min(max(math.log10(max(v, 10 ** lo)), lo), hi)
        return height - bottom - (height - top - bottom) * (v - lo) / (hi - lo)

    metric = tradeoff["metric"]
    parts = svg_frame(width, height, f"layers INT8 against {metric}: {title}",
                      f"layers INT8 (of {tradeoff['layers']})", f"{metric} error (log scale)")
    for i in range(5):
        xv = round(tradeoff["layers"] * i / 4)
        parts.append(f'<text x="{x(xv):.1f}" y="{height - bottom + 16}" text-anchor="middle">{xv}</text>')
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        parts.append(f'<text x="{left - 6}" y="{y(10 ** e) + 4:.1f}" text-anchor="end">1e{e}</text>')
    if tradeoff["rate"]:
        parts.append(f'<line x1="{left}" y1="{y(tradeoff["rate"]):.1f}" x2="{width - right}" y2="{y(tradeoff["rate"]):.1f}" '
                     f'stroke="#999" stroke-dasharray="4,3"/><text x="{width - right}" y="{y(tradeoff["rate"]) - 4:.1f}" '
                     f'text-anchor="end">rate {tradeoff["rate"]:g}</text>')
    for p in sorted(points, key=lambda p: p["complete"]):
        colour = "#228833" if p["holds"] else "#cc3311"
        fill = colour if p["complete"] else "none"
        cx, cy = x(p["layers_int8"]), y(p["error"])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{4 if p["complete"] else 3}" fill="{fill}" '
                     f'stroke="{colour}"/>')
        if p["chosen"]:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="black"/>'
                         f'<text x="{cx + 10:.1f}" y="{cy - 8:.1f}">chosen: {p["layers_int8"]} INT8</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
