"""Reports of gate results for machines and people.

- :func:`report_dict` — the ``--report-json`` document (non-finite numbers as ``"inf"``/``"nan"``);
- :func:`summary_markdown` — ``--summary-md``: pass/fail, error vs rate and size per model,
  ready for ``$GITHUB_STEP_SUMMARY``;
- :func:`annotations` / :func:`emit_annotations` — ``::error file=...::`` workflow commands,
  capped (``MNNQ_MAX_ANNOTATIONS``, default 10), printed only when ``GITHUB_ACTIONS=true``;
- :func:`renderables` — rich tables and error bars (per output, per layer) for the terminal,
  and :func:`save_svg` to export the same picture.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import IO, List, Optional, Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mnnq.version import __version__
from mnnq.errors import EXIT_BAD_INPUT, EXIT_MISSED, EXIT_OK
from mnnq.fileio import atomic_write_text
from mnnq.gate.runner import GateResult

MAX_ANNOTATIONS_ENV = "MNNQ_MAX_ANNOTATIONS"
DEFAULT_MAX_ANNOTATIONS = 10
MAX_TABLE_ROWS = 24
MAX_BAR_ROWS = 40
BAR_WIDTH = 30
LABEL_WIDTH = 28
STATUS_WORDS = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold red"}
STATUS_MD = {"pass": "✅ pass", "fail": "❌ over budget", "error": "⛔ could not measure"}


# ---------------------------------------------------------------------------------------------
# Verdict


def exit_code(results: Sequence[GateResult], error: Optional[str] = None) -> int:
    """2 when anything could not be measured, else 1 when any model is over budget, else 0."""
    if error or any(r.status == "error" for r in results):
        return EXIT_BAD_INPUT
    if any(r.status == "fail" for r in results):
        return EXIT_MISSED
    return EXIT_OK


def overall_status(results: Sequence[GateResult], error: Optional[str] = None) -> str:
    return {EXIT_OK: "pass", EXIT_MISSED: "fail", EXIT_BAD_INPUT: "error"}[exit_code(results, error)]


def worst_result(results: Sequence[GateResult]) -> Optional[GateResult]:
    """The model furthest from its budget: one that could not be measured, else the largest error / rate."""
    if not results:
        return None
    for r in results:
        if r.status == "error":
            return r
    return max(results, key=lambda r: (r.error if r.error is not None else math.inf) / r.target.rate)


def counts(results: Sequence[GateResult]) -> str:
    n = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "error")}
    return (f"{len(results)} model{'s' if len(results) != 1 else ''}: {n['pass']} passed, "
            f"{n['fail']} over budget, {n['error']} could not be measured")


# ---------------------------------------------------------------------------------------------
# JSON


def _num(v: Optional[float]):
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _str(p) -> Optional[str]:
    return None if p is None else str(p)


def result_dict(r: GateResult) -> dict:
    t = r.target
    return {
        "name": t.name,
        "status": r.status,
        "passed": r.passed,
        "message": r.message,
        "model": str(t.model),
        "test_dir": str(t.test_dir),
        "float_model": _str(t.float_model),
        "metric": t.metric,
        "rate": t.rate,
        "memory_mode": t.memory_mode,
        "error": _num(r.error),
        "errors": {k: _num(v) for k, v in r.errors.items()},
        "samples": r.samples,
        "size_bytes": r.size_bytes,
        "float_size_bytes": r.float_size_bytes,
        "size_ratio": (r.size_bytes / r.float_size_bytes) if r.size_bytes and r.float_size_bytes else None,
        "nonfinite": list(r.nonfinite),
        "per_output": {k: _num(v) for k, v in r.per_output().items()},
        "outputs": [{"sample": d.sample, "output": d.output, "abs_max": _num(d.abs_max), "diff_max": _num(d.diff_max),
                     "errors": {k: _num(v) for k, v in d.values.items()}} for d in r.details],
        "layers": [{"name": l.name, "tensor": l.tensor, "kind": l.kind, "error": _num(l.error)} for l in r.layers],
        "notes": list(r.notes),
        "rebuild": r.rebuild,
        "config": _str(t.source),
        "line": t.line,
        "wall_time_s": r.seconds,
    }


def report_dict(command: str, results: Sequence[GateResult], error: Optional[str] = None,
                config: Optional[Path] = None) -> dict:
    worst = worst_result(results)
    return {
        "mnnq_version": __version__,
        "command": command,
        "status": overall_status(results, error),
        "exit_code": exit_code(results, error),
        "passed": exit_code(results, error) == EXIT_OK,
        "error": error,
        "config": _str(config),
        "summary": counts(results),
        "worst_model": worst.target.name if worst else None,
        "worst_error": _num(worst.error) if worst else None,
        "models": [result_dict(r) for r in results],
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "NaN/Inf"
    return f"{v:.4g}"


def fmt_size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def _vs_float(r: GateResult) -> str:
    if not r.size_bytes or not r.float_size_bytes:
        return "-"
    return f"{r.size_bytes / r.float_size_bytes:.2f}x of {fmt_size(r.float_size_bytes)}"


def summary_markdown(command: str, results: Sequence[GateResult], error: Optional[str] = None,
                     config: Optional[Path] = None) -> str:
    status = overall_status(results, error)
    head = {"pass": "✅ passed", "fail": "❌ over budget", "error": "⛔ could not measure"}[status]
    lines = [f"## mnnq {command}: {head}", ""]
    if config is not None:
        lines += [f"Config: `{display_path(config)}`", ""]
    if error:
        lines += [f"**Error:** {_md(error)}", ""]
    if results:
        lines += [counts(results), "",
                  "| model | result | error | rate | metric | size | vs float |",
                  "|---|---|---:|---:|---|---:|---|"]
        for r in results:
            lines.append(f"| `{_md(r.target.name)}` | {STATUS_MD[r.status]} | {_fmt(r.error)} | {r.target.rate:g} | "
                         f"{_md(r.target.metric)} | {fmt_size(r.size_bytes)} | {_vs_float(r)} |")
        lines.append("")
    elif not error:
        lines += ["No model to check.", ""]
    for r in results:
        if r.status == "pass":
            continue
        lines += [f"### `{_md(r.target.name)}`: {STATUS_MD[r.status]}", "", _md(r.message), "",
                  f"Model `{display_path(r.target.model)}`, test set `{display_path(r.target.test_dir)}`"
                  f" ({r.samples} samples, memory mode {r.target.memory_mode}).", ""]
        per_output = r.per_output()
        if per_output:
            lines += [f"| output | worst {_md(r.target.metric)} | rate |", "|---|---:|---:|"]
            lines += [f"| `{_md(o)}` | {_fmt(v)} | {r.target.rate:g} |" for o, v in per_output.items()]
            lines.append("")
        if r.layers:
            lines += ["<details><summary>per-layer error against the float model</summary>", "",
                      f"| layer | kind | {_md(r.target.metric)} |", "|---|---|---:|"]
            lines += [f"| `{_md(l.name)}` | {l.kind} | {_fmt(l.error)} |" for l in r.layers]
            lines += ["", "</details>", ""]
        for note in r.notes:
            lines += [f"> {_md(note)}", ""]
    lines.append(f"<sub>mnnq {__version__}</sub>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# GitHub annotations


def display_path(path) -> str:
    """``path`` relative to ``$GITHUB_WORKSPACE`` (or the current folder) when inside it."""
    p = Path(path)
    base = Path(os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(p)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(file: Optional[Path], line: Optional[int], title: str, message: str, level: str = "error") -> str:
    props = []
    if file is not None:
        props.append(f"file={_escape_prop(display_path(file))}")
        if line:
            props.append(f"line={int(line)}")
    props.append(f"title={_escape_prop(title)}")
    return f"::{level} {','.join(props)}::{_escape_data(message)}"


def max_annotations() -> int:
    try:
        return max(0, int(os.environ.get(MAX_ANNOTATIONS_ENV, DEFAULT_MAX_ANNOTATIONS)))
    except ValueError:
        return DEFAULT_MAX_ANNOTATIONS


def annotations(results: Sequence[GateResult], error: Optional[str] = None, error_file: Optional[Path] = None,
                limit: Optional[int] = None) -> List[str]:
    """``::error`` lines for every model over budget or not measurable (and a config error),
    at most ``limit``; a final ``::warning`` says how many were left out."""
    limit = max_annotations() if limit is None else limit
    items = []
    if error:
        items.append(_command(error_file, None, "mnnq: cannot check", error))
    for r in results:
        if r.status == "pass":
            continue
        t = r.target
        title = f"mnnq: {t.name} {'over budget' if r.status == 'fail' else 'could not be measured'}"
        file, line = (t.source, t.line) if t.source is not None else (t.model, None)
        items.append(_command(file, line, title, f"{t.name} ({display_path(t.model)}): {r.message}"))
    if len(items) > limit:
        left = len(items) - limit
        items = items[:limit] + [_command(None, None, "mnnq", f"{left} more failure(s) not annotated; "
                                                             "see the job log or summary", level="warning")]
    return items


def emit_annotations(stream: IO[str], results: Sequence[GateResult], error: Optional[str] = None,
                     error_file: Optional[Path] = None) -> None:
    """Print the annotations on ``stream`` (raw lines: rich would wrap them) under GitHub Actions."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in annotations(results, error, error_file):
        stream.write(line + "\n")
    stream.flush()


# ---------------------------------------------------------------------------------------------
# Terminal and SVG


def _label(text: str) -> str:
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 1] + "…"


def error_bar(value: Optional[float], rate: float, scale: float, ok_style: str = "green",
              over_style: str = "red", width: int = BAR_WIDTH) -> Text:
    """``value`` as a bar of ``width`` cells on ``[0, scale]`` with a ``│`` at ``rate``; cells
    past the rate take ``over_style``. ``None`` (metric skips it) and NaN/Inf are spelled out."""
    text = Text()
    if value is None:
        return text.append("(skipped by the metric)", style="dim")
    rate_pos = min(width - 1, int(round(rate / scale * width)))
    if not math.isfinite(value):
        return text.append("█" * width, style=over_style).append(" NaN/Inf", style=over_style)
    filled = min(width, int(math.ceil(value / scale * width))) if value > 0 else 0
    for i in range(width):
        if i < filled:
            text.append("█", style=ok_style if i < rate_pos else over_style)
        elif i == rate_pos:
            text.append("│", style="bold")
        else:
            text.append("·", style="dim")
    text.append(f" {value:.4g}", style=ok_style if value <= rate else over_style)
    return text


def _bars(title: str, rows: Sequence[tuple], rate: float, ok_style: str, over_style: str,
          label_width: int = LABEL_WIDTH) -> Table:
    finite = [v for _, v in rows if v is not None and math.isfinite(v)]
    scale = max([rate * 1.5, *finite]) or 1.0
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1))
    table.add_column(no_wrap=True, width=label_width)
    table.add_column(no_wrap=True)
    shown = list(rows)[:MAX_BAR_ROWS]
    for label, value in shown:
        table.add_row(_label(label), error_bar(value, rate, scale, ok_style, over_style))
    if len(rows) > len(shown):
        table.add_row(f"... {len(rows) - len(shown)} more", Text("(see --report-json)", style="dim"))
    return table


def _sample_table(r: GateResult, metric_names: Sequence[str]) -> Table:
    rows = list(r.details)
    metric = r.target.metric
    caption = None
    if len(rows) > MAX_TABLE_ROWS:
        rows = sorted(rows, key=lambda d: -(d.values.get(metric) if d.values.get(metric) is not None else -1))
        caption = f"the {MAX_TABLE_ROWS} worst of {len(r.details)} rows; all are in --report-json"
        rows = rows[:MAX_TABLE_ROWS]
    table = Table(title=f"errors per output and sample ({r.samples} samples)", title_justify="left",
                  caption=caption, caption_justify="left")
    for col in ("sample", "output"):
        table.add_column(col, overflow="fold")
    table.add_column("max|ref|", justify="right")
    table.add_column("max|diff|", justify="right")
    for m in metric_names:
        table.add_column(m + (" (gate)" if m == metric else ""), justify="right")
    for d in rows:
        gate_value = d.values.get(metric)
        over = gate_value is not None and (not math.isfinite(gate_value) or gate_value > r.target.rate)
        table.add_row(d.sample, d.output, _fmt(d.abs_max), _fmt(d.diff_max),
                      *[_fmt(d.values.get(m)) for m in metric_names], style="red" if over else None)
    return table


def verdict(r: GateResult) -> Text:
    t = r.target
    text = Text()
    text.append(STATUS_WORDS[r.status], style=STATUS_STYLE[r.status])
    text.append(f" {t.name}: {r.message}")
    if r.size_bytes is not None:
        text.append(f" · {fmt_size(r.size_bytes)}", style="dim")
        if r.float_size_bytes:
            text.append(f" ({r.size_bytes / r.float_size_bytes:.2f}x of the float model)", style="dim")
    return text


def result_renderables(r: GateResult, detailed: bool) -> list:
    """What the terminal (and SVG) show for one model; ``detailed`` adds the per-sample table."""
    t = r.target
    samples = f"{r.samples} sample{'s' if r.samples != 1 else ''}, " if r.samples else ""
    parts: list = [Text(f"{t.name}: {display_path(t.model)} on {display_path(t.test_dir)} "
                        f"({samples}metric {t.metric}, rate {t.rate:g}, memory mode {t.memory_mode})",
                        style="bold")]
    if r.details and (detailed or r.status != "pass"):
        parts.append(_sample_table(r, list(r.errors) or [t.metric]))
    per_output = r.per_output()
    width = min(LABEL_WIDTH, max([len(n) for n in per_output] + [len(l.name) for l in r.layers] + [6]))
    if per_output:
        parts.append(_bars(f"{t.metric} per output (│ = rate {t.rate:g})", list(per_output.items()), t.rate,
                           "green", "red", width))
    if r.layers:
        parts.append(_bars(f"{t.metric} per layer against the float model (│ = rate {t.rate:g})",
                           [(l.name, l.error) for l in r.layers], t.rate, "cyan", "yellow", width))
    for note in r.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    parts.append(verdict(r))
    return parts


def summary_table(results: Sequence[GateResult]) -> Table:
    table = Table(title="mnnq check", title_justify="left")
    for col in ("model", "result", "error", "rate", "metric", "size", "vs float"):
        table.add_column(col, justify="right" if col in ("error", "rate", "size") else "left", overflow="fold")
    for r in results:
        table.add_row(r.target.name, Text(STATUS_WORDS[r.status], style=STATUS_STYLE[r.status]), _fmt(r.error),
                      f"{r.target.rate:g}", r.target.metric, fmt_size(r.size_bytes), _vs_float(r))
    return table


def renderables(results: Sequence[GateResult], detailed: bool = False, summary: bool = True) -> list:
    parts: list = []
    for r in results:
        parts.extend(result_renderables(r, detailed))
        parts.append(Text(""))
    if summary and results:
        parts.append(summary_table(results))
        parts.append(Text(counts(results)))
    return parts


def print_renderables(console: Console, parts: Sequence) -> None:
    for part in parts:
        console.print(part)


def save_svg(path: Path, parts: Sequence, title: str, width: int = 110) -> None:
    """Export the report as an SVG picture (rich's recording console), written atomically."""
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(Group(*parts))
    atomic_write_text(Path(path), console.export_svg(title=title))


# ---------------------------------------------------------------------------------------------
# Everything a command prints and writes at the end


def deliver(command: str, results: Sequence[GateResult], out: Console, err: Console, *,
            report_json: Optional[Path] = None, summary_md: Optional[Path] = None, svg: Optional[Path] = None,
            error: Optional[str] = None, error_file: Optional[Path] = None, config: Optional[Path] = None,
            detailed: bool = False) -> int:
    """Print the terminal report, GitHub annotations (under Actions) and write the requested
    files; return the exit code."""
    import json

    parts = renderables(results, detailed=detailed, summary=command == "check")
    print_renderables(out, parts)
    if error:
        err.print(f"mnnq: error: {' '.join(error.split())}", highlight=False, markup=False, soft_wrap=True)
    for r in results:  # one greppable line per model that could not be measured
        if r.status == "error":
            err.print(f"mnnq: error: {r.target.name}: {' '.join(r.message.split())}", highlight=False, markup=False,
                      soft_wrap=True)
    emit_annotations(out.file, results, error, error_file)
    if report_json is not None:
        doc = report_dict(command, results, error, config)
        atomic_write_text(Path(report_json), json.dumps(doc, indent=2) + "\n")
    if summary_md is not None:
        atomic_write_text(Path(summary_md), summary_markdown(command, results, error, config))
    if svg is not None:
        picture = list(parts) + ([Text(f"mnnq: error: {error}", style="bold red")] if error else [])
        save_svg(Path(svg), picture, title=f"mnnq {command}")
    return exit_code(results, error)
