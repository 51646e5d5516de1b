"""Real models and data that stopped real jobs (issue 13): a blind metric and blind first samples.

    python benchmarks/bench_realdata.py [--wheels DIR] [--work DIR] [--json out.json]

Cases (pretrained ONNX models shipped in PyPI wheels; nothing is downloaded):

* ``vad``: silero VAD (``silero_vad/data/silero_vad.onnx``): inputs ``input`` [1,512], recurrent
  ``state`` [2,1,128] and the int64 scalar ``sr`` (16000); outputs the speech probability
  ``output`` [1,1] and the next state ``stateN``. The test set is 4 quiet clips (faint noise and
  hum): the probability stays under 0.01 (max_rel skips it). Run: ``auto-quant --metric cosine
  --rate 0.001``. Held out: 4 other quiet clips.
* ``vad_prob``: the same with the probability as the only output, so max_rel skips every output.
  Beware: cosine on a one-value output only compares signs (its distance is 0 whenever they
  agree), so this budget cannot fail; the row shows the job runs, not that the model is good.
* ``det``: the PP-OCRv4 text detector (``rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx``),
  8 ``skimage.data`` images at 320x320 (BGR, ImageNet mean/std); the first samples hold no text,
  so their sigmoid map stays under 0.01 and max_rel skips them. Run: default ``auto-quant``
  (max_rel, rate 0.05). Held out: 8 other images and crops, two of them with text.
* ``det_cosine``: the same with ``--metric cosine`` (rate 0.05).

Test sets are written by ``mnnq testdir make`` (references: onnxruntime on the ONNX file), the jobs
run as a user runs them (``python -m mnnq`` in a child). Per case: the exit code (0 met, 1 missed,
never 2), the written model's error on the test set, its error on the held-out set (``mnnq
validate`` in the memory mode auto-quant chose) and the size against the float model.
``--wheels DIR``: a folder holding the extracted wheels (``DIR/silero_vad/...``,
``DIR/rapidocr_onnxruntime/...``); default: the installed packages. Needs scikit-image.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

MODELS = {
    "vad": ("silero_vad", "data/silero_vad.onnx"),
    "vad_prob": ("silero_vad", "data/silero_vad.onnx"),
    "det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "det_cosine": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
}
RUNS = {"vad": ("cosine", 0.001), "vad_prob": ("cosine", 0.001), "det": ("max_rel", 0.05), "det_cosine": ("cosine", 0.05)}
DET_TESTSET = ["astronaut", "chelsea", "rocket", "text", "coffee", "hubble_deep_field", "page", "coins"]
# (image, crop as fractions y0, y1, x0, x1, mirrored)
DET_HELDOUT = [("camera", (0, 1, 0, 1), False), ("moon", (0, 1, 0, 1), False), ("brick", (0, 1, 0, 1), False),
               ("gravel", (0, 1, 0, 1), False), ("coffee", (0, 1, 0, 1), True), ("page", (0, 1, 0, 0.5), False),
               ("page", (0, 1, 0.5, 1), False), ("clock", (0, 1, 0, 1), False)]
DET_PREPROCESSING = ["--format", "BGR", "--mean", "123.675", "116.28", "103.53",
                     "--normal", "0.017125", "0.017507", "0.017429", "--width", "320", "--height", "320"]


@dataclass
class Row:
    case: str
    command: str
    exit: int
    error: Optional[float] = None
    heldout: Optional[float] = None
    heldout_exit: Optional[int] = None
    size_ratio: Optional[float] = None
    memory_mode: str = ""
    seconds: float = 0.0
    message: str = ""


def model_path(case: str, wheels: Optional[Path]) -> Optional[Path]:
    package, rel = MODELS[case]
    if wheels is not None:
        path = wheels / package / rel
    else:
        spec = importlib.util.find_spec(package)  # located, not imported
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def mnnq(args: Sequence[object], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnnq", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def error_line(proc: subprocess.CompletedProcess) -> str:
    return next((ln for ln in proc.stderr.splitlines() if "error:" in ln), "")


# ------------------------------------------------------------------------------------ test sets

def quiet_clips(seed: int, count: int) -> np.ndarray:
    """``count`` quiet 512-sample clips at 16 kHz: faint noise and a faint hum -> [count, 1, 512]."""
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000.0
    clips = [0.002 * rng.standard_normal(512) + 0.003 * np.sin(2 * np.pi * rng.uniform(50, 300) * t + rng.uniform(0, 6))
             for _ in range(count)]
    return np.asarray(clips, dtype=np.float32)[:, None, :]


def vad_testset(model: Path, out: Path, seed: int, work: Path, prob_only: bool) -> subprocess.CompletedProcess:
    """4 quiet clips, zero state, sr 16000 (one scalar for every sample); ``prob_only``: only
    ``output`` is kept as a reference."""
    arrays = {"input": quiet_clips(seed, 4), "state": np.zeros((4, 2, 1, 128), np.float32),
              "sr": np.array(16000, np.int64)}
    flags = []
    for name, array in arrays.items():
        np.save(work / f"{out.name}-{name}.npy", array)
        flags += ["--npy", f"{name}={work / f'{out.name}-{name}.npy'}"]
    proc = mnnq(["testdir", "make", "--model", model, "--out", out, "--samples", 4, *flags], work)
    if proc.returncode == 0 and prob_only:
        for doc in sorted(out.glob("*/input.json")):  # the probability alone
            spec = json.loads(doc.read_text())
            spec["outputs"] = ["output"]
            doc.write_text(json.dumps(spec, indent=1) + "\n")
    return proc


def det_images(folder: Path, held_out: bool) -> Path:
    from skimage import data
    from skimage.io import imsave

    folder.mkdir(parents=True, exist_ok=True)
    chosen = DET_HELDOUT if held_out else [(n, (0, 1, 0, 1), False) for n in DET_TESTSET]
    for i, (name, (y0, y1, x0, x1), mirror) in enumerate(chosen):
        img = getattr(data, name)()
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        img = img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]
        imsave(folder / f"{i}_{name}.png", np.ascontiguousarray(img[:, ::-1] if mirror else img).astype(np.uint8),
               check_contrast=False)
    return folder


def det_testset(model: Path, out: Path, held_out: bool, work: Path) -> subprocess.CompletedProcess:
    images = det_images(work / f"{out.name}-images", held_out)
    return mnnq(["testdir", "make", "--model", model, "--out", out, "--images", images, *DET_PREPROCESSING], work)


# ------------------------------------------------------------------------------------ runs

def run_case(case: str, model: Path, work: Path) -> Row:
    metric, rate = RUNS[case]
    testset, heldout = work / "testset", work / "heldout"
    for target, held in ((testset, False), (heldout, True)):
        made = vad_testset(model, target, 1 if held else 0, work, case == "vad_prob") if case.startswith("vad") \
            else det_testset(model, target, held, work)
        if made.returncode != 0:
            return Row(case, "testdir make", made.returncode, message=error_line(made))
    flags = ["--metric", metric, "--rate", rate] if metric != "max_rel" else []
    command = "auto-quant " + (" ".join(map(str, flags)) or "(defaults: max_rel, rate 0.05)")
    started = time.monotonic()
    report = work / "report.json"
    proc = mnnq(["auto-quant", "--model", model, "--quant_model", work / "q.mnn", "--test_dir", testset,
                 "--report-json", report, *flags], work)
    row = Row(case, command, proc.returncode, seconds=time.monotonic() - started, message=error_line(proc))
    if proc.returncode not in (0, 1):
        return row
    doc = json.loads(report.read_text())
    row.error, row.memory_mode = doc["errors"][metric], doc["memory_mode"]
    row.size_ratio = doc["size_after_bytes"] / doc["size_before_bytes"]
    gate = work / "heldout.json"
    held = mnnq(["validate", "--model", work / "q.mnn", "--test-dir", heldout, "--rate", rate, "--metric", metric,
                 "--memory-mode", row.memory_mode, "--report-json", gate], work)
    row.heldout_exit = held.returncode
    if gate.is_file():
        row.heldout = json.loads(gate.read_text())["models"][0]["error"]
    return row


def fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4g}"


def table(rows: List[Row]) -> str:
    lines = ["| case | command | exit | test set | held-out (validate exit) | size | memory mode | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        held = f"{fmt(r.heldout)} ({r.heldout_exit})" if r.heldout_exit is not None else "-"
        size = "-" if r.size_ratio is None else f"{r.size_ratio:.2f}x"
        lines.append(f"| {r.case} | {r.command} | {r.exit} | {fmt(r.error)} | {held} | {size} | "
                     f"{r.memory_mode or '-'} | {r.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", choices=[[], *MODELS], help="default: all")
    ap.add_argument("--wheels", type=Path, help="folder of extracted wheels (default: installed packages)")
    ap.add_argument("--work", type=Path, help="keep the test sets and models here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-realdata-") as tmp:
        for case in args.cases or list(MODELS):
            model = model_path(case, args.wheels)
            if model is None:
                print(f"{case}: skipped, model not found ({'/'.join(MODELS[case])})", flush=True)
                continue
            work = (args.work or Path(tmp)) / case
            work.mkdir(parents=True, exist_ok=True)
            rows.append(run_case(case, model, work))
            r = rows[-1]
            print(f"{case}: exit {r.exit}, {r.command}: test {fmt(r.error)}, held-out {fmt(r.heldout)} "
                  f"({r.seconds:.1f} s){' ' + r.message if r.message else ''}", flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0 if rows and all(r.exit in (0, 1) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
