"""Benchmark ``mnnq quantize`` against MNN's native calibration (``quantized.out``).

    python benchmarks/bench_quantize.py [--models digits,efficientnet_lite0] [--cache DIR]
                                        [--methods KL,ADMM,EMA] [--inputs sequence,image] [--json OUT]
    python benchmarks/bench_quantize.py --model-path float.mnn --calib DIR --heldout DIR

For every model, input kind (``sequence``: test-dir samples; ``image``: the same samples written
as PNG files and read back through the config's preprocessing) and feature method, both tools
get the same config: the native one as ``_tools.mnnquant(["quantized.out", src, dst, cfg])``
in a child process (a crash is reported as such), mnnq as ``python -m mnnq quantize`` in a
child process. Reported: wall time of each and their ratio, the INT8 model's output cosine
similarity against the float model over held-out inputs (mean and min over samples; the worst
output per sample) and the file size.

Models: ``digits`` (examples/digits, calibrated on 100 scikit-learn digits, measured on 300
others), ``efficientnet_lite0`` and ``mtcnn_onet`` (benchmarks/pretrained.py: its ``testset``
calibrates, its ``heldout`` measures; needs the cached model or the extras to build it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mnnq.mnn_backend.native import run_tool  # noqa: E402
from mnnq.mnn_backend.runtime import LoadedModel, model_io_names  # noqa: E402
from mnnq.quantize.calibrate import cosine  # noqa: E402
from mnnq.testing.models import write_multi_testdir  # noqa: E402
from mnnq.testset import load_testset  # noqa: E402

# How each pretrained model's test-set tensors were normalised: x = (rgb - mean) / std.
NORMALISATION = {
    "efficientnet_lite0": ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    "mtcnn_onet": ([127.5] * 3, [128.0] * 3),
    "mtcnn_rnet": ([127.5] * 3, [128.0] * 3),
}


@dataclass
class Case:
    """A model with calibration samples (``calib``: folder of test dirs) and held-out inputs."""

    name: str
    float_mnn: Path
    calib: Path
    heldout: List[Dict[str, np.ndarray]]
    image: Optional[dict] = None     # {"folder", "format", "mean", "normal", "width", "height"}


@dataclass
class Row:
    model: str
    inputs: str
    method: str
    tool: str
    status: str
    seconds: float
    cosine_mean: Optional[float] = None
    cosine_min: Optional[float] = None
    size_bytes: Optional[int] = None
    note: str = ""


# ----------------------------------------------------------------------------------- cases

def _write_pngs(folder: Path, images: Sequence[np.ndarray]) -> None:
    """``images``: ``[H, W, 3]`` RGB uint8 each -> ``000.png`` ... (MNN.cv writes BGR order)."""
    import MNN.cv as cv
    import MNN.expr as F

    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(images):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        cv.imwrite(str(folder / f"{i:03d}.png"), F.const(bgr.reshape(-1), list(bgr.shape), F.NHWC, F.uint8))


def digits_case(work: Path, n_calib: int = 100, n_heldout: int = 300) -> Case:
    from sklearn.datasets import load_digits

    images = load_digits().images                                   # [N, 8, 8] in 0..16
    x = (images / 16.0).astype(np.float32)[:, None, None]           # [N, 1, 1, 8, 8]
    calib = work / "digits_calib"
    write_multi_testdir(calib, [({"input": x[i]}, {"logits": np.zeros(10, np.float32)}) for i in range(n_calib)])
    pixels = (images[:n_calib] * 15).astype(np.uint8)               # 0..240; normal 1/240 gives x back
    _write_pngs(work / "digits_png", [np.repeat(p[..., None], 3, axis=2) for p in pixels])
    heldout = [{"input": x[-1 - i]} for i in range(n_heldout)]
    return Case("digits", ROOT / "examples" / "digits" / "digits.mnn", calib, heldout,
                {"folder": work / "digits_png", "format": "GRAY", "mean": [0.0], "normal": [1.0 / 240],
                 "width": 8, "height": 8})


def pretrained_case(name: str, work: Path, cache: Optional[Path]) -> Case:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pretrained import prepare

    got = prepare(name, cache)
    held = [s.inputs for s in load_testset(got.heldout).samples]
    case = Case(name, got.float_mnn, got.testset, [{k: v.astype(np.float32) for k, v in h.items()} for h in held])
    if name in NORMALISATION:
        mean, std = NORMALISATION[name]
        images = []
        for sample in load_testset(got.testset).samples:
            chw = sample.inputs["input"][0]
            rgb = chw.transpose(1, 2, 0) * np.array(std) + np.array(mean)
            images.append(np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8))
        _write_pngs(work / f"{name}_png", images)
        case.image = {"folder": work / f"{name}_png", "format": "RGB", "mean": mean,
                      "normal": [1.0 / v for v in std], "width": images[0].shape[1], "height": images[0].shape[0]}
    return case


def path_case(model: Path, calib: Path, heldout: Path) -> Case:
    held = [{k: v.astype(np.float32) for k, v in s.inputs.items()} for s in load_testset(heldout).samples]
    return Case(model.stem, model, calib, held)


# ----------------------------------------------------------------------------------- runs

def config_for(case: Case, inputs: str, method: str) -> dict:
    if inputs == "sequence":
        return {"path": str(case.calib), "input_type": "sequence", "feature_quantize_method": method,
                "weight_quantize_method": "MAX_ABS"}
    img = case.image
    return {"path": str(img["folder"]), "input_type": "image", "format": img["format"], "mean": img["mean"],
            "normal": img["normal"], "width": img["width"], "height": img["height"],
            "feature_quantize_method": method, "weight_quantize_method": "MAX_ABS"}


def float_outputs(float_mnn: Path, heldout: List[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
    """The float model's outputs on every held-out input (computed once per case)."""
    ref = LoadedModel(float_mnn, list(heldout[0]), model_io_names(float_mnn)[1])
    return [ref.run(feeds) for feeds in heldout]


def heldout_cosine(quant_mnn: Path, heldout: List[Dict[str, np.ndarray]],
                   references: List[Dict[str, np.ndarray]]) -> Tuple[float, float]:
    out_names = list(references[0])
    got = LoadedModel(quant_mnn, list(heldout[0]), out_names)
    per_sample = []
    for feeds, a in zip(heldout, references):
        b = got.run(feeds)
        worst = 1.0
        for n in out_names:
            if not np.all(np.isfinite(b[n])):
                worst = 0.0
                continue
            worst = min(worst, cosine(a[n], b[n]))
        per_sample.append(worst)
    return float(np.mean(per_sample)), float(np.min(per_sample))


def run_native(src: Path, dst: Path, cfg: Path, timeout: float) -> Tuple[str, float, str]:
    started = time.perf_counter()
    try:
        run = run_tool("mnnquant", ["quantized.out", str(src), str(dst), str(cfg)], timeout=timeout)
    except Exception as exc:  # timeout
        return "timeout", time.perf_counter() - started, str(exc)
    seconds = time.perf_counter() - started
    if run.crashed:
        return "crashed", seconds, run.crash_text()
    if not dst.is_file() or dst.stat().st_size == 0:
        return "no model", seconds, run.tail(1)
    return "ok", seconds, ""


def run_mnnq(src: Path, dst: Path, cfg: Path, timeout: float) -> Tuple[str, float, str]:
    started = time.perf_counter()
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "mnnq", "quantize", str(src), str(dst), str(cfg)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not dst.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "device supports" not in ln]
        return f"exit {proc.returncode}", seconds, (lines[-1] if lines else "")
    return "ok", seconds, ""


def bench_case(case: Case, methods: Sequence[str], inputs: Sequence[str], work: Path, timeout: float) -> List[Row]:
    rows: List[Row] = []
    size_float = case.float_mnn.stat().st_size
    references = float_outputs(case.float_mnn, case.heldout)
    rows.append(Row(case.name, "-", "-", "float", "ok", 0.0, 1.0, 1.0, size_float))
    for kind in inputs:
        if kind == "image" and case.image is None:
            continue
        for method in methods:
            cfg = work / f"{case.name}.{kind}.{method}.json"
            cfg.write_text(json.dumps(config_for(case, kind, method), indent=1))
            for tool, runner in (("native", run_native), ("mnnq", run_mnnq)):
                dst = work / f"{case.name}.{kind}.{method}.{tool}.mnn"
                status, seconds, note = runner(case.float_mnn, dst, cfg, timeout)
                row = Row(case.name, kind, method, tool, status, seconds, note=note)
                if status == "ok":
                    row.cosine_mean, row.cosine_min = heldout_cosine(dst, case.heldout, references)
                    row.size_bytes = dst.stat().st_size
                rows.append(row)
                print(f"  {case.name:18s} {kind:8s} {method:4s} {tool:6s} {status:8s} {seconds:7.2f} s "
                      + (f"cos {row.cosine_mean:.5f} / {row.cosine_min:.5f}" if row.cosine_mean is not None else note),
                      file=sys.stderr, flush=True)
    return rows


def print_rows(rows: List[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mnnq quantize vs native quantized.out (held-out output cosine vs float)", title_justify="left")
    for col in ("model", "inputs", "method", "tool", "status", "time s", "native/mnnq", "cos mean", "cos min", "size MB"):
        table.add_column(col)
    native_time = {(r.model, r.inputs, r.method): r.seconds for r in rows if r.tool == "native"}
    for r in rows:
        ratio = ""
        if r.tool == "mnnq" and (r.model, r.inputs, r.method) in native_time and r.seconds > 0:
            ratio = f"{native_time[(r.model, r.inputs, r.method)] / r.seconds:.2f}"
        table.add_row(r.model, r.inputs, r.method, r.tool, r.status if not r.note else f"{r.status}: {r.note}"[:40],
                      f"{r.seconds:.2f}", ratio,
                      "-" if r.cosine_mean is None else f"{r.cosine_mean:.5f}",
                      "-" if r.cosine_min is None else f"{r.cosine_min:.5f}",
                      "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.3f}")
    Console(width=160).print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits,efficientnet_lite0,mtcnn_onet")
    parser.add_argument("--cache", type=Path, default=None, help="pretrained model cache (benchmarks/pretrained.py)")
    parser.add_argument("--methods", default="KL,ADMM,EMA")
    parser.add_argument("--inputs", default="sequence,image")
    parser.add_argument("--model-path", type=Path, default=None, help="a float .mnn to benchmark instead")
    parser.add_argument("--calib", type=Path, default=None, help="with --model-path: folder of calibration test dirs")
    parser.add_argument("--heldout", type=Path, default=None, help="with --model-path: held-out test dirs")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    inputs = [m.strip() for m in args.inputs.split(",") if m.strip()]
    rows: List[Row] = []
    with tempfile.TemporaryDirectory(prefix="mnnq-bench-quantize-") as tmp:
        work = Path(tmp)
        if args.model_path:
            if not (args.calib and args.heldout):
                parser.error("--model-path needs --calib and --heldout")
            cases = [path_case(args.model_path, args.calib, args.heldout)]
        else:
            cases = []
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                try:
                    cases.append(digits_case(work) if name == "digits" else pretrained_case(name, work, args.cache))
                except Exception as exc:  # a missing extra must not hide the other models
                    print(f"skipping {name}: {exc}", file=sys.stderr)
        for case in cases:
            rows.extend(bench_case(case, methods, inputs, work, args.timeout))
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
