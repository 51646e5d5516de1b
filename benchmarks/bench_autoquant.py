"""auto-quant benchmark: MNN's auto_quant.py vs `mnnq auto-quant` (default flags), in the same run.

    python benchmarks/bench_autoquant.py [NAME ...] [--rate 0.05] [--repeat 1] [--json out.json]
                                         [--baseline auto|replay|script]

NAME: digits and the models of benchmarks/pretrained.py (default: all of them).

(a)  auto_quant.py on the first sample of the test set (a one-sample MNN test dir, as it takes one):
     ``replay`` re-runs its algorithm step for step, one converter process per trial (see
     auto_quant_baseline.py); ``script`` runs a copy of the script itself, pointed at by the
     environment variable AUTO_QUANT_PY (``auto``: script when AUTO_QUANT_PY is set, else replay).
(b1) ``mnnq auto-quant`` with default flags on the same one-sample test dir;
(b8) the same on the whole 8-sample test set.
Every side runs as a user runs it: a separate process, start-up included; ``--repeat`` runs
each one that many times and keeps the median wall time. The file each side wrote is then
re-measured (max_rel, under the runtime memory mode it was tuned for) on its one-sample test
dir, on the 8-sample test set and on the 8 held-out samples.

Targets (issue 12), checked on every (b) row against (a) of the same model:
- where (a) meets the rate (re-measured on its own sample), (b) meets it with a file <= 0.7x and
  a wall time <= 0.5x of (a)'s; where (a) misses, (b) meets it (both wall times still shown);
- (b8) takes <= 1.5x the wall time of (b1);
- per trial after a weight change, mnnq spends <= 1.5x (model load + one forward): read from the
  report's timing breakdown (``report["timing"]["per_fast_trial_s"]``: means over the simulated trials), else "n/a".
Beside each (b) wall time: its no-search floor, ``mnnq apply`` writing the same answer from the
params file and re-measuring it (start-up, listing, conversion, measurement): what a run would
take if its search cost nothing. A table of cost against model size and layer count follows.
Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.auto_quant_baseline import (  # noqa: E402
    BaselineRun, replay_auto_quant, run_auto_quant_script, write_shim)

SIZE_TARGET, TIME_TARGET, SAMPLES_TARGET, TRIAL_TARGET = 0.7, 0.5, 1.5, 1.5
ALL_MODELS = ["digits", "mtcnn_rnet", "mtcnn_onet", "silero_vad", "ppocr_cls", "efficientnet_lite0", "yolov8n_320",
              "ppocr_det", "ppocr_rec", "crnn_lstm", "minilm_l6"]


@dataclass
class Case:
    name: str
    float_mnn: Path
    testset: Path            # 8 samples
    one: Path                # its first sample: a one-sample test dir
    heldout: Path
    layers: int = 0
    layers_1x1: int = 0


@dataclass
class Outcome:
    side: str                # a, b1, b8
    seconds: float
    trials: int
    size: int
    claimed: float
    memory_mode: str
    exit_code: int = 0
    note: str = ""
    errors: Dict[str, float] = field(default_factory=dict)   # one / testset / heldout -> re-measured max_rel
    per_trial_s: Optional[float] = None                       # from the report's timing breakdown
    floor_s: Optional[float] = None                           # (b): `mnnq apply` of its answer, no search
    crashed: bool = False                                     # (a) stopped with an exception

    def tuned_error(self) -> float:
        return self.errors.get("testset" if self.side == "b8" else "one", float("nan"))

    def meets(self, rate: float) -> bool:
        return self.exit_code in (0, 1) and not self.crashed and self.tuned_error() <= rate


# ---------------------------------------------------------------------------------- cases

def digits_heldout(model: Path, directory: Path, count: int = 8) -> Path:
    """Held-out digits: the last ``count`` images of scikit-learn's digits, not in the test set."""
    from sklearn.datasets import load_digits

    from mnnq.testing import reference_outputs, write_multi_testdir

    images = load_digits().images[-count:].astype("float32") / 16.0
    samples = [({"input": img.reshape(1, 1, 8, 8)},
                reference_outputs(model, {"input": img.reshape(1, 1, 8, 8)}, ["logits"])) for img in images]
    write_multi_testdir(directory, samples)
    return directory


def load_case(name: str, scratch: Path) -> Case:
    """The model, its test sets and layer counts (a pretrained model's from its info.json)."""
    from benchmarks.pretrained import layer_counts, prepare

    if name == "digits":
        d = ROOT / "examples" / "digits"
        return Case(name, d / "digits.mnn", d / "testset", d / "testset" / "000",
                    digits_heldout(d / "digits.mnn", scratch / "digits-heldout"), *layer_counts(d / "digits.mnn"))
    p = prepare(name)
    return Case(name, p.float_mnn, p.testset, p.testset / "000", p.heldout,
                p.info["quantizable_layers"], p.info["quantizable_1x1_layers"])


# ---------------------------------------------------------------------------------- runs

def run_a(case: Case, rate: float, work: Path, shim_dir: Path, script: Optional[Path]) -> Outcome:
    if script is not None:
        got: BaselineRun = run_auto_quant_script(script, case.float_mnn, case.one, rate, work, shim_dir)
    else:
        got = replay_auto_quant(case.float_mnn, case.one, rate, work, shim_dir)
    size = got.model.stat().st_size if got.model.is_file() else 0
    return Outcome("a", got.seconds, got.trials, size, got.claimed, got.memory_mode,
                   exit_code=got.exit_code, note=got.crashed, crashed=bool(got.crashed))


def mnnq_command() -> List[str]:
    exe = Path(sys.executable).parent / "mnnq"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mnnq"]


@dataclass
class MnnqRun:
    """One ``mnnq auto-quant`` process: its arguments after the command, exit code, wall time,
    last non-blank output line (MNN's CPU-feature line left out), and its JSON report (None when
    it wrote none)."""
    argv: List[str]
    exit_code: int
    seconds: float
    last_line: str
    report: Optional[dict]


def run_mnnq_auto_quant(model: Path, testdir: Path, rate: float, work: Path, extra: Sequence[str] = ()) -> MnnqRun:
    """``mnnq auto-quant`` with default flags (and ``extra``) writing ``work/q.mnn``, as a user
    runs it (a new process)."""
    from mnnq.mnn_backend.native import output_tail

    report = work / "report.json"
    argv = ["auto-quant", "--model", str(model), "--quant_model", str(work / "q.mnn"),
            "--test_dir", str(testdir), "--rate", str(rate), "--report_json", str(report), *extra]
    started = time.monotonic()
    run = subprocess.run([*mnnq_command(), *argv], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    seconds = time.monotonic() - started
    return MnnqRun(argv, run.returncode, seconds, output_tail(run.stdout, 1),
                   json.loads(report.read_text()) if report.is_file() else None)


def run_b(case: Case, testdir: Path, side: str, rate: float, work: Path) -> Outcome:
    """``mnnq auto-quant`` with default flags, as a user runs it (a new process), then its
    no-search floor (:func:`no_search_seconds`)."""
    run = run_mnnq_auto_quant(case.float_mnn, testdir, rate, work)
    if run.exit_code not in (0, 1) or run.report is None:
        return Outcome(side, run.seconds, 0, 0, float("nan"), "normal", run.exit_code,
                       f"exit {run.exit_code}: {run.last_line}")
    data = run.report
    return Outcome(side, run.seconds, int(data["trials"]), int(data["size_after_bytes"]),
                   float(data["errors"][data["metric"]]), data["memory_mode"], run.exit_code,
                   per_trial_s=per_trial_seconds(data), floor_s=no_search_seconds(case, testdir, data, work))


def no_search_seconds(case: Case, testdir: Path, report: dict, work: Path) -> float:
    """Wall time of ``mnnq apply`` writing the same answer from its params file and re-measuring
    it on the same test dir: start-up, layer listing, the conversion (and the fp16 one when the
    run made it) and the measurement, with no search at all. No search, however fast, makes a
    run shorter than this."""
    argv = ["apply", str(case.float_mnn), str(work / "floor.mnn"), "--params", str(work / "q.mnn.json"),
            "--test_dir", str(testdir), "--memory_mode", report["memory_mode"]]
    argv += ["--hqq"] if report.get("weight_method") == "hqq" else []
    halved = any(note.startswith("float weights stored as fp16") for note in report.get("notes", []))
    argv += ["--fp16_float_weights"] if halved else []
    started = time.monotonic()
    run = subprocess.run([*mnnq_command(), *argv], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    seconds = time.monotonic() - started
    if run.returncode != 0 or (work / "floor.mnn").read_bytes() != (work / "q.mnn").read_bytes():
        raise SystemExit(f"error: `mnnq apply` did not rewrite the ({report['quant_model']}) answer: {run.stdout[-400:]}")
    return seconds


def per_trial_seconds(report: dict) -> Optional[float]:
    """Seconds per simulated trial after a weight change, one sample: weight quantization + swap
    + load (means over the search's simulated trials) + one forward, from the report's
    ``timing["per_fast_trial_s"]``; None when the search ran no simulated trial."""
    per = (report.get("timing") or {}).get("per_fast_trial_s")
    if not isinstance(per, dict):
        return None
    return sum(float(per.get(p) or 0.0) for p in ("weight_quant", "swap", "load")) + float(per["forward_per_sample"])


def repeated(runner, repeat: int, tmp: Path, label: str) -> tuple:
    """Run ``runner(work)`` ``repeat`` times in fresh folders; the last outcome with the median wall time
    (and the median no-search floor)."""
    runs = []
    for i in range(repeat):
        work = tmp / f"{label}{i}"
        work.mkdir()
        runs.append((runner(work), work))
    outcome, work = runs[-1]
    outcome.seconds = statistics.median(o.seconds for o, _ in runs)
    if all(o.floor_s is not None for o, _ in runs):
        outcome.floor_s = statistics.median(o.floor_s for o, _ in runs)
    if len({o.size for o, _ in runs}) > 1:
        outcome.note += f" (repeats wrote sizes {sorted({o.size for o, _ in runs})})"
    return outcome, work / "q.mnn"


# ---------------------------------------------------------------------------------- measuring

def remeasure(model: Path, testset_dir: Path, memory_mode: str, metric_name: str = "max_rel") -> float:
    """The ``metric_name`` error of ``model`` on ``testset_dir`` (nan when the metric counts no output there)."""
    from mnnq.errors import BadInput
    from mnnq.measure import compare
    from mnnq.mnn_backend.runtime import LoadedModel
    from mnnq.plugin_manager import get_plugin_manager
    from mnnq.testset import load_testset

    ts = load_testset(testset_dir)
    loaded = LoadedModel(model, ts.input_names, ts.output_names, memory_mode=memory_mode)
    metric = {metric_name: get_plugin_manager().metrics()[metric_name]}
    try:
        return compare(ts, [loaded.run(s.inputs) for s in ts.samples], metric, metric_name).errors[metric_name]
    except BadInput:
        return float("nan")


def measure_all(outcome: Outcome, model: Path, case: Case) -> None:
    if not model.is_file() or outcome.size == 0:
        return
    for key, folder in (("one", case.one), ("testset", case.testset), ("heldout", case.heldout)):
        outcome.errors[key] = remeasure(model, folder, outcome.memory_mode)


def load_and_forward_s(case: Case, repeat: int = 5) -> float:
    """Median seconds to load the float model and run one forward on the first sample, in this process."""
    from mnnq.mnn_backend.runtime import LoadedModel
    from mnnq.testset import load_testset

    ts = load_testset(case.one)
    laps = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        LoadedModel(case.float_mnn, ts.input_names, ts.output_names).run(ts.samples[0].inputs)
        laps.append(time.perf_counter() - started)
    return statistics.median(laps[1:])


# ---------------------------------------------------------------------------------- verdicts

def _err(v: Optional[float]) -> str:
    return "-" if v is None or v != v else f"{v:.4f}"


def budget_verdict(a: Outcome, b: Outcome, rate: float) -> tuple:
    """(met, text) for one (b) row against (a): issue 12's size / time targets, or 'meets' where (a) misses."""
    b_text = (f"({b.side}) {'meets' if b.meets(rate) else 'MISSES'} {_err(b.tuned_error())}"
              + (f" [{b.note}]" if b.note else ""))
    times = f"time {b.seconds:.1f} s vs {a.seconds:.1f} s = {b.seconds / a.seconds:.2f}x"
    if b.floor_s is not None:
        times += f" (no-search floor {b.floor_s:.1f} s = {b.floor_s / a.seconds:.2f}x)"
    if a.meets(rate):
        size = b.size / a.size if a.size else float("inf")
        ok = b.meets(rate) and size <= SIZE_TARGET and b.seconds / a.seconds <= TIME_TARGET
        return ok, (f"(a) meets {_err(a.tuned_error())}; {b_text}, size {size:.2f}x (<= {SIZE_TARGET}), "
                    f"{times} (<= {TIME_TARGET})")
    a_text = (f"(a) misses: claimed {_err(a.claimed)}, re-measured {_err(a.tuned_error())} on its sample, "
              f"{_err(a.errors.get('testset'))} on the 8-sample set") + (
        f" [{a.note}]" if a.note else "")
    size = f", size {b.size / a.size:.2f}x" if a.size and b.size else ""
    return b.meets(rate), f"{a_text}; {b_text}{size}, {times}"


def samples_verdict(b1: Outcome, b8: Outcome) -> tuple:
    if b1.exit_code not in (0, 1) or b8.exit_code not in (0, 1):
        return None, f"(b1) exit {b1.exit_code}, (b8) exit {b8.exit_code} ({b8.seconds:.1f} s vs {b1.seconds:.1f} s)"
    ratio = b8.seconds / b1.seconds
    return ratio <= SAMPLES_TARGET, f"8 samples {b8.seconds:.1f} s vs 1 sample {b1.seconds:.1f} s = {ratio:.2f}x (<= {SAMPLES_TARGET})"


def trial_verdict(b: Outcome, base_s: float) -> tuple:
    if b.per_trial_s is None:
        return None, f"per trial ({b.side}): n/a (no breakdown in report); load + one forward {base_s * 1000:.1f} ms"
    ratio = b.per_trial_s / base_s
    return ratio <= TRIAL_TARGET, (f"per trial ({b.side}) {b.per_trial_s * 1000:.0f} ms vs load + one forward "
                                   f"{base_s * 1000:.0f} ms = {ratio:.2f}x (<= {TRIAL_TARGET})")


def verdicts(name: str, runs: Dict[str, Outcome], base_s: float, rate: float) -> List[str]:
    a, b1, b8 = runs["a"], runs["b1"], runs["b8"]
    checks = [("b1 vs a", budget_verdict(a, b1, rate)), ("b8 vs a", budget_verdict(a, b8, rate)),
              ("b8 vs b1", samples_verdict(b1, b8)), ("trial", trial_verdict(b1, base_s))]
    word = {True: "met", False: "NOT met", None: "n/a"}
    return [f"{name} {label}: {word[ok]}: {text}" for label, (ok, text) in checks]


# ---------------------------------------------------------------------------------- tables

def results_table(rows: Dict[str, Dict[str, Outcome]], rate: float):
    from rich.table import Table
    table = Table(title=f"auto-quant, rate {rate} (max_rel re-measured on the written files)")
    for col in ("model", "run", "exit", "wall s", "trials", "size MB", "claimed", "own test", "8-sample", "held-out",
                "meets", "memory"):
        table.add_column(col, justify="right")
    for name, runs in rows.items():
        for side in ("a", "b1", "b8"):
            o = runs[side]
            table.add_row(name, side, str(o.exit_code), f"{o.seconds:.1f}", str(o.trials), f"{o.size / 2**20:.3f}",
                          _err(o.claimed), _err(o.errors.get("one")), _err(o.errors.get("testset")),
                          _err(o.errors.get("heldout")), "yes" if o.meets(rate) else "NO", o.memory_mode)
    return table


def cost_table(rows: Dict[str, Dict[str, Outcome]], cases: Dict[str, Case], base: Dict[str, float]):
    from rich.table import Table
    table = Table(title="cost against model size and layer count")
    for col in ("model", "float MB", "layers (1x1)", "load+fwd ms", "(a) trials", "(a) s", "(a) s/trial",
                "(b1) trials", "(b1) s", "(b1) s/trial", "(b1) floor s", "(b8) trials", "(b8) s", "(b8) s/trial",
                "(b8) floor s"):
        table.add_column(col, justify="right")
    for name, runs in rows.items():
        case = cases[name]
        cells = [name, f"{case.float_mnn.stat().st_size / 2**20:.2f}", f"{case.layers} ({case.layers_1x1})",
                 f"{base[name] * 1000:.1f}"]
        for side in ("a", "b1", "b8"):
            o = runs[side]
            cells += [str(o.trials), f"{o.seconds:.1f}", f"{o.seconds / o.trials:.3f}" if o.trials else "-"]
            if side != "a":
                cells.append("-" if o.floor_s is None else f"{o.floor_s:.1f}")
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------------------------- main

def bench_model(name: str, args, shim_dir: Path, script: Optional[Path], tmp: Path) -> tuple:
    case = load_case(name, tmp)
    sides = {"a": lambda w: run_a(case, args.rate, w, shim_dir, script),
             "b1": lambda w: run_b(case, case.one, "b1", args.rate, w),
             "b8": lambda w: run_b(case, case.testset, "b8", args.rate, w)}
    runs = {}
    for side, runner in sides.items():
        outcome, model = repeated(runner, args.repeat, tmp, f"{name}-{side}-")
        measure_all(outcome, model, case)
        runs[side] = outcome
        print(f"{name} ({side}): {outcome.seconds:.1f} s, {outcome.trials} trials, {outcome.size / 2**20:.3f} MB, "
              f"errors {', '.join(f'{k} {_err(v)}' for k, v in outcome.errors.items())}"
              + (f" [{outcome.note}]" if outcome.note else ""), flush=True)
    return case, runs, load_and_forward_s(case)


def baseline_script(choice: str) -> Optional[Path]:
    import os
    path = os.environ.get("AUTO_QUANT_PY")
    if choice == "replay" or (choice == "auto" and not path):
        return None
    if not path or not Path(path).is_file():
        raise SystemExit(f"error: --baseline script needs AUTO_QUANT_PY pointing at a copy of MNN's auto_quant.py "
                         f"(got {path!r})")
    return Path(path).resolve()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=ALL_MODELS, metavar="NAME")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side per model (median wall time)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    parser.add_argument("--baseline", choices=("auto", "replay", "script"), default="auto",
                        help="(a): the replay, or $AUTO_QUANT_PY itself (auto: the script when it is set)")
    args = parser.parse_args(argv)
    from rich.console import Console
    script = baseline_script(args.baseline)
    print(f"(a) = {'the script ' + str(script) if script else 'the replay of auto_quant.py'}", flush=True)
    rows, cases, base, lines = {}, {}, {}, []
    with tempfile.TemporaryDirectory(prefix="bench-autoquant-") as tmp:
        shim_dir = write_shim(Path(tmp) / "bin")
        for name in args.models:
            model_tmp = Path(tmp) / name
            model_tmp.mkdir()
            cases[name], rows[name], base[name] = bench_model(name, args, shim_dir, script, model_tmp)
            lines += verdicts(name, rows[name], base[name], args.rate)
            shutil.rmtree(model_tmp, ignore_errors=True)
    console = Console(width=200)
    console.print(results_table(rows, args.rate))
    console.print(cost_table(rows, cases, base))
    for line in lines:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "rate": args.rate, "baseline": str(script) if script else "replay", "repeat": args.repeat,
            "models": {n: {"float_bytes": cases[n].float_mnn.stat().st_size, "layers": cases[n].layers,
                           "layers_1x1": cases[n].layers_1x1, "load_forward_s": base[n],
                           **{k: asdict(v) for k, v in r.items()}} for n, r in rows.items()},
            "verdicts": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
