"""Real data that trips metric checks (issue 13): does `mnnq auto-quant` measure it or refuse it?

    python benchmarks/bench_realdata.py [--json out.json]

Cases, each `mnnq auto-quant` with default flags except the ones shown, run as a user runs it:
- silero_vad, ``--metric cosine --rate 0.001`` on ``quiet/``: 8 steps of room tone, only the
  ``output`` probability listed, every reference < 0.01 (max_rel, which the user did not choose,
  counts nothing there); cosine of a one-value output says little, so the held-out error is
  measured on ``heldout/`` (speech and quiet, ``output`` and the recurrent ``stateN``);
- silero_vad, ``--metric cosine --rate 0.001`` on ``testset/`` (speech and quiet, both outputs);
- ppocr_det, max_rel 0.05, on its 8-sample ``testset/``: samples 0-6 have no text (max |ref| <=
  0.01: max_rel skips them), sample 7 is a page.
For each: exit code (0 met, 1 missed, 2 refused), the error the report gives for the written
model, the written model re-measured on the held-out samples with the same metric, and wall time.
The models come from benchmarks/pretrained.py. Exit 2 is printed with mnnq's message, as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_autoquant import remeasure, run_mnnq_auto_quant  # noqa: E402

# (label, model, test split, metric, rate)
CASES = [
    ("silero_vad quiet, cosine", "silero_vad", "quiet", "cosine", 0.001),
    ("silero_vad speech+quiet, cosine", "silero_vad", "testset", "cosine", 0.001),
    ("ppocr_det blind-first, max_rel", "ppocr_det", "testset", "max_rel", 0.05),
]


@dataclass
class Result:
    case: str
    command: str
    exit_code: int
    seconds: float
    written_error: Optional[float] = None
    heldout_error: Optional[float] = None
    message: str = ""


def run_case(label: str, name: str, split: str, metric: str, rate: float, work: Path) -> Result:
    from benchmarks.pretrained import prepare

    model = prepare(name)
    run = run_mnnq_auto_quant(model.float_mnn, model.split(split), rate, work, ["--metric", metric] if metric != "max_rel" else [])
    shown = [a.replace(str(work), "WORK").replace(str(Path.home()), "~") for a in run.argv]
    result = Result(label, "mnnq " + " ".join(shown), run.exit_code, run.seconds)
    data = run.report
    if data is None:
        result.message = run.last_line.strip()
        return result
    result.written_error = data["errors"][metric]
    result.heldout_error = remeasure(work / "q.mnn", model.heldout, data["memory_mode"], metric)
    result.message = f"{data['status']}, {data['size_before_mb']:.2f} -> {data['size_after_mb']:.2f} MB, {data['trials']} trials"
    return result


def show(results: List[Result]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="real data (issue 13): exit 0 met / 1 missed / 2 refused")
    for col in ("case", "exit", "wall s", "written error", "held-out error", "message"):
        table.add_column(col, overflow="fold")
    for r in results:
        fmt = (lambda v: "-" if v is None or v != v else f"{v:.6f}")
        table.add_row(r.case, str(r.exit_code), f"{r.seconds:.1f}", fmt(r.written_error), fmt(r.heldout_error), escape(r.message))
    Console(width=200).print(table)
    for r in results:
        print(f"{r.case}: {r.command}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-realdata-") as tmp:
        for i, case in enumerate(CASES):
            work = Path(tmp) / str(i)
            work.mkdir()
            results.append(run_case(*case, work))
            print(f"{results[-1].case}: exit {results[-1].exit_code}", flush=True)
    show(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
