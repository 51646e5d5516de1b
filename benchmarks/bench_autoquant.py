"""auto-quant benchmark: auto_quant.py's way of working vs mnnq's default, in the same run.

    python benchmarks/bench_autoquant.py [digits] [efficientnet_lite0] [mtcnn_onet] [mtcnn_rnet]
                                         [--rate 0.05] [--repeat 3] [--json out.json]

(a) "auto_quant.py": its algorithm executed the way auto_quant.py executes it: every trial is
    one converter run with ``--testdir`` on a single test dir (the first sample), its rate read
    from the printed TESTERROR lines, only 1x1 convolutions searched, auto_quant.py's flags
    (``--weightQuantAsymmetric=0 --hqq``, test config memory mode low then normal).
(b) "mnnq": ``mnnq auto-quant`` with default flags on the whole multi-sample test set, in this
    process, its native children forked by mnnq's child server (started first, as the CLI does).

Each side runs ``--repeat`` times (the same search each time) and the median wall time is
reported. Both written models are then run on the whole test set and on held-out samples
(max_rel). The table ends with the ratios b/a; one line per model then says whether (b) reaches
the targets: where (a) meets the budget on the test set, (b) meets it too with a file <= 0.8x
and a wall time <= 0.5x of (a)'s; where (a) misses, (b) meets it. Real pretrained models come
from benchmarks/pretrained.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mnnq.autoquant.engine import AutoQuantOptions, run_auto_quant  # noqa: E402
from mnnq.measure import compare  # noqa: E402
from mnnq.mnn_backend.native import run_tool, start_child_server  # noqa: E402
from mnnq.mnn_backend.runtime import LoadedModel  # noqa: E402
from mnnq.plugin_manager import get_plugin_manager  # noqa: E402
from mnnq.testset import load_testset  # noqa: E402


@dataclass
class Case:
    name: str
    float_mnn: Path
    testset: Path
    heldout: Optional[Path]


@dataclass
class Outcome:
    seconds: float
    trials: int
    size: int
    claimed: float
    memory_mode: str
    test_error: float = float("nan")
    heldout_error: float = float("nan")


def digits_heldout(model: Path, directory: Path, count: int = 32) -> Path:
    """Held-out digits: the last ``count`` images of scikit-learn's digits, not in the test set."""
    from sklearn.datasets import load_digits

    from mnnq.testing import reference_outputs, write_multi_testdir

    images = load_digits().images[-count:].astype("float32") / 16.0
    samples = []
    for img in images:
        inputs = {"input": img.reshape(1, 1, 8, 8)}
        samples.append((inputs, reference_outputs(model, inputs, ["logits"])))
    write_multi_testdir(directory, samples)
    return directory


def load_case(name: str, scratch: Path) -> Case:
    if name == "digits":
        d = ROOT / "examples" / "digits"
        return Case(name, d / "digits.mnn", d / "testset", digits_heldout(d / "digits.mnn", scratch / "digits-heldout"))
    from benchmarks.pretrained import prepare

    p = prepare(name)
    return Case(name, p.float_mnn, p.testset, p.heldout)


# ---------------------------------------------------------------------------------------------
# (a) auto_quant.py's algorithm, one converter process per trial


class AutoQuantPy:
    """auto_quant.py's search: a params template, 1x1 layers smallest first, trials by converter."""

    def __init__(self, model: Path, testdir: Path, work: Path):
        self.model, self.testdir, self.work = model, testdir, work
        self.params = work / "q.mnn.json"
        self.dst = work / "q.mnn"
        self.config = work / "test.json"
        self.trials = 0
        self.layers: List[dict] = []

    def set_memory(self, memory: int) -> None:
        self.config.write_text(json.dumps({"backend": 0, "mode": 4, "memory": memory, "precision": 1,
                                           "hints": [5, 1]}))

    def test(self) -> float:
        """One trial: convert with the params file and the converter's own test; parse the rate."""
        self.trials += 1
        if self.layers:
            self.params.write_text(json.dumps(self.doc, indent=4))
        run = run_tool("mnnconvert", [
            "mnnconvert", "-f", "MNN", "--modelFile", str(self.model), "--MNNModel", str(self.dst),
            "--weightQuantBits=8", "--weightQuantAsymmetric=0", "--compressionParamsFile", str(self.params),
            "--testdir", str(self.testdir), "--thredhold", "0.001", "--testconfig", str(self.config),
            "--alignDenormalizedValue", "0", "--hqq"], cwd=str(self.work), fresh=True)  # a process launch per trial
        rate = 0.0
        for line in run.output.splitlines():
            if "TESTERROR" in line and "absMaxV:" in line:
                a, d = line.split("absMaxV:")[1].replace(" ", "").split("-DiffMax")
                if float(a) > 0.01:
                    rate = max(rate, float(d) / float(a))
        return rate

    def load_layers(self) -> None:
        self.doc = json.loads(self.params.read_text())
        entries = self.doc["algo"][0]["quantParams"]["layer"]
        self.all_layers = [e for e in entries if "conv" in e]
        ones = [e for e in self.all_layers if e["conv"]["kernelSize"][0] * e["conv"]["kernelSize"][1] == 1]
        size = lambda e: e["conv"]["inputChannel"] * e["conv"]["outputChannel"]  # noqa: E731
        self.layers = sorted(ones, key=size)

    def set_block(self, block: int) -> None:
        for e in self.all_layers:
            e["weight"][0]["blockSize"] = block

    def set_split_block(self, count: int, large: int, small: int) -> None:
        for i, e in enumerate(self.layers):
            e["weight"][0]["blockSize"] = large if i < count else small

    def run(self, target: float) -> float:
        self.set_memory(2)
        self.test()  # writes the template
        self.load_layers()
        # bits
        self.set_block(64)
        rate = self.test()
        if rate <= target:
            tested = False
            for e in self.layers:
                e["weight"][0]["bits"] = 4
                rate = self.test()
                tested = True
                if rate > target:
                    e["weight"][0]["bits"] = 8
                    tested = False
            if not tested:
                rate = self.test()
        # blocks
        valid, best_block, best_rate = 0, 256, 1.0
        for block in (256, 128, 64, 32):
            self.set_block(block)
            rate = self.test()
            if rate < best_rate:
                best_rate, best_block = rate, block
            if rate < target:
                valid = block
                break
        if valid and valid < 256 and rate < target:
            lo, pos, hi = 0, len(self.layers) // 2, len(self.layers)
            while lo < pos < hi:
                self.set_split_block(pos, valid * 2, valid)
                rate = self.test()
                if rate < target:
                    lo = pos
                else:
                    hi = pos
                pos = (lo + hi + 1) // 2
            if lo != pos:
                self.set_split_block(lo, valid * 2, valid)
                rate = self.test()
        elif not valid:
            self.set_block(best_block)
            rate = self.test()
        # memory mode, then skipping layers
        self.memory = "low"
        if rate > target:
            self.set_memory(0)
            self.memory = "normal"
            rate = self.test()
        if rate > target:
            for e in reversed(self.layers):
                keep = e["weight"][0]["bits"]
                e["weight"][0]["bits"] = 0
                new = self.test()
                if new < rate:
                    rate = new
                else:
                    e["weight"][0]["bits"] = keep
                if rate <= target:
                    break
        return rate


def run_a(case: Case, rate: float, work: Path) -> Tuple[Outcome, Path]:
    first = sorted(p for p in case.testset.iterdir() if (p / "input.json").is_file())[0]
    started = time.monotonic()
    search = AutoQuantPy(case.float_mnn, first, work)
    claimed = search.run(rate)
    seconds = time.monotonic() - started
    return Outcome(seconds, search.trials, search.dst.stat().st_size, claimed, search.memory), search.dst


def run_b(case: Case, rate: float, work: Path, pm) -> Tuple[Outcome, Path]:
    started = time.monotonic()
    result = run_auto_quant(AutoQuantOptions(case.float_mnn, work / "q.mnn", case.testset, rate=rate), pm)
    seconds = time.monotonic() - started
    return Outcome(seconds, len(result.trials), result.size_after, result.errors["max_rel"],
                   result.memory_mode), result.quant_model


def max_rel(model: Path, testset_dir: Optional[Path], memory_mode: str, pm) -> float:
    if testset_dir is None:
        return float("nan")
    ts = load_testset(testset_dir)
    loaded = LoadedModel(model, ts.input_names, ts.output_names, memory_mode=memory_mode)
    return compare(ts, [loaded.run(s.inputs) for s in ts.samples], {"max_rel": pm.metrics()["max_rel"]}, "max_rel").errors["max_rel"]


# Issue targets: where (a) meets the budget, (b) meets it too with a file <= 0.8x and a wall time
# <= 0.5x of (a)'s; where (a) misses, (b) meets it.
SIZE_TARGET, TIME_TARGET = 0.8, 0.5


def target_verdict(name: str, a: Outcome, b: Outcome, rate: float) -> str:
    """One line: does (b) reach the targets against (a) on this model?"""
    b_meets = b.test_error <= rate
    if a.test_error <= rate:
        size, speed = b.size / a.size, b.seconds / a.seconds
        ok = b_meets and size <= SIZE_TARGET and speed <= TIME_TARGET
        why = (f"(a) meets; (b) {'meets' if b_meets else 'MISSES'}, size {size:.2f}x (<= {SIZE_TARGET}), "
               f"time {speed:.2f}x (<= {TIME_TARGET})")
    else:
        ok = b_meets
        why = (f"(a) misses ({a.test_error:.4f}); (b) {'meets' if b_meets else 'MISSES'} ({b.test_error:.4f}); "
               f"for information: size {b.size / a.size:.2f}x, time {b.seconds / a.seconds:.2f}x")
    return f"{name}: targets {'met' if ok else 'NOT met'}: {why}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["digits", "efficientnet_lite0", "mtcnn_onet", "mtcnn_rnet"])
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per model (median wall time)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    start_child_server()  # before this process imports MNN, as the CLI does
    console = Console()
    pm = get_plugin_manager()
    rows: Dict[str, Dict[str, Outcome]] = {}
    for name in args.models:
        rows[name] = {}
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            case = load_case(name, Path(tmp))
            for label, runner in (("a", lambda w: run_a(case, args.rate, w)), ("b", lambda w: run_b(case, args.rate, w, pm))):
                runs = []
                for i in range(args.repeat):  # same search each time: the median wall time is kept
                    work = Path(tmp) / f"{label}{i}"
                    work.mkdir()
                    runs.append(runner(work))
                outcome, model = runs[-1]
                sizes = {o.size for o, _ in runs}
                if len(sizes) > 1:
                    console.print(f"{name} ({label}): the repeats wrote files of different sizes {sorted(sizes)}")
                outcome.seconds = statistics.median(o.seconds for o, _ in runs)
                outcome.test_error = max_rel(model, case.testset, outcome.memory_mode, pm)
                outcome.heldout_error = max_rel(model, case.heldout, outcome.memory_mode, pm)
                rows[name][label] = outcome
                console.print(f"{name} ({label}): {outcome}", highlight=False)

    table = Table(title=f"auto-quant, rate {args.rate} (max_rel): (a) auto_quant.py's way, (b) mnnq default")
    for col in ("model", "run", "wall s", "trials", "size MB", "claimed", "test set", "held-out", "meets (test set)"):
        table.add_column(col, justify="right")
    for name, runs in rows.items():
        for label in ("a", "b"):
            o = runs[label]
            table.add_row(name, label, f"{o.seconds:.1f}", str(o.trials), f"{o.size / 2**20:.3f}", f"{o.claimed:.4f}",
                          f"{o.test_error:.4f}", f"{o.heldout_error:.4f}", "yes" if o.test_error <= args.rate else "NO")
        a, b = runs["a"], runs["b"]
        table.add_row(name, "b/a", f"{b.seconds / a.seconds:.2f}", f"{b.trials / max(a.trials, 1):.2f}",
                      f"{b.size / a.size:.2f}", "", "", "", "")
    console.print(table)
    verdicts = [target_verdict(name, runs["a"], runs["b"], args.rate) for name, runs in rows.items()]
    for line in verdicts:
        console.print(line, highlight=False)
    if args.json:
        args.json.write_text(json.dumps({n: {k: vars(v) for k, v in r.items()} for n, r in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
