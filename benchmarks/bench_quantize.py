"""Full-INT8 benchmark (issue 14): native quantized.out, mnnq quantize and onnxruntime's
quantize_static, in one run, on the same calibration images and the same held-out images.

    python benchmarks/bench_quantize.py [--models yolov8n_320,ppocr_det,ppocr_cls,efficientnet_lite0] [--cache DIR]
                                        [--methods KL,ADMM,EMA,MSE] [--rate-models all]
                                        [--rates 0.01,0.02] [--repeat N] [--json OUT] [--keep DIR]

Per model (benchmarks/pretrained.py gives the fixed-shape ONNX file and the float .mnn): 24
calibration and 12 held-out images of its domain (quantize_images.py: photos for the detector,
text pages for the text detector, text lines for the classifier) written as PNG files, and a
quantized.out config as a user writes it: path, format, mean, normal, width, height,
used_image_num 24, feature_quantize_method, weight_quantize_method MAX_ABS. Every tool runs as a
user runs it, in its own process, start-up included:

- ``native KL``: ``quantized.out`` (``_tools.mnnquant`` through mnnq's native layer, in a child; a
  crash is reported as such);
- ``mnnq <method>``: ``python -m mnnq quantize`` with each feature method, and ``mnnq default``
  (the config without feature_quantize_method), also with ``--bias-correction`` (on; the other
  runs use mnnq's default, ``auto``); ``mnnq KL
  --rate R --metric cosine`` for each rate of ``--rates`` on the --rate models (its note: the
  layers kept float and the candidates the fallback measured, from its JSON report);
- ``ort MinMax`` / ``ort Entropy`` / ``ort Percentile``: onnxruntime's ``quantize_static`` (QDQ,
  per-channel int8 weights, int8 activations, default options) on the ONNX source, fed the
  calibration images preprocessed exactly as quantized.out does (MNN's ImageProcess), in a child
  (a failure is reported). quantize_static cannot set the entropy histogram's bins: at its 128,
  as many as the quantized bins, the only candidate threshold is the whole range, so Entropy's
  scales equal MinMax's.

Reported: held-out output cosine against the float model in the same runtime (MNN or
onnxruntime) -- per image the worst output, then mean and min over the 12 -- wall time, the share
of conv layers that run INT8 (MNN: counted by a session callback against the float model's conv
ops; onnxruntime: convs whose input and weight are dequantized), file size. One verdict line per
target of issue 14 ends the output: the text detector's ">= 0.99 with >= 70% of convs INT8" is
judged on the default run and on each --rate run (the verdict names which met it), its time
target on each --rate run. Timings come from a shared machine: they are noisy (``--repeat N``
keeps the median of N runs of each tool, --rate runs included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quantize_images import DOMAINS, write_images  # noqa: E402

MODEL_DOMAINS = {"yolov8n_320": "photos", "efficientnet_lite0": "photos", "ppocr_det": "pages", "ppocr_cls": "lines"}
CONV_OPS = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise", "ConvInt8",
            "DepthwiseConvInt8")
CALIB_IMAGES = 24
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
# Targets of issue 14 (held-out cosine mean / min, INT8 share, time ratios).
YOLO_TARGET = (0.999, 0.998)
TEXT_DET_TARGET = (0.99, 0.70)
RATE_TIME_RATIO = 3.0
ROLES = {"yolov8n_320": "YOLO-style detector", "ppocr_det": "MobileNetV3-style text detector"}


@dataclass
class Case:
    name: str
    onnx: Path
    float_mnn: Path
    config: dict                     # quantized.out keys without the method
    heldout: List[Dict[str, np.ndarray]] = field(repr=False)
    calib_feeds: List[Dict[str, np.ndarray]] = field(repr=False)
    conv_ops: int = 0


@dataclass
class Row:
    model: str
    tool: str
    status: str
    seconds: float
    cosine_mean: Optional[float] = None
    cosine_min: Optional[float] = None
    int8_share: Optional[float] = None
    int8_convs: str = ""
    size_bytes: Optional[int] = None
    note: str = ""


# ----------------------------------------------------------------------------------- cases

def image_feeds(folder: Path, config: dict, input_name: str) -> List[Dict[str, np.ndarray]]:
    """Every image of ``folder`` preprocessed as quantized.out does (mnnq quantize's own config
    parsing and preprocessing: MNN's ImageProcess)."""
    from mnnq.inputs.images import read_bgr
    from mnnq.quantize.config import parse_config
    from mnnq.quantize.inputs import preprocess

    cfg = parse_config(config)
    return [{input_name: preprocess(read_bgr(p), cfg, cfg.width, cfg.height)} for p in sorted(folder.glob("*.png"))]


def make_case(name: str, work: Path, cache: Optional[Path]) -> Case:
    from benchmarks.pretrained import prepare
    from mnnq.mnn_backend.inventory import read_conv_ops

    if name not in MODEL_DOMAINS:
        raise ValueError(f"no image domain for {name}; choose from {', '.join(MODEL_DOMAINS)}")
    got = prepare(name, cache)
    make = DOMAINS[MODEL_DOMAINS[name]]
    calib = write_images(work / name / "calib", make("calib"))
    held = write_images(work / name / "heldout", make("heldout"))
    inp = got.info["inputs"][0]
    pre = got.info["source"]["preprocess"]
    config = {"path": str(calib), "format": pre["format"], "mean": pre["mean"], "normal": pre["normal"],
              "width": inp["shape"][3], "height": inp["shape"][2], "used_image_num": CALIB_IMAGES}
    return Case(name, got.onnx, got.float_mnn, config, image_feeds(held, config, inp["name"]),
                image_feeds(calib, config, inp["name"]), len(read_conv_ops(got.float_mnn)))


# ----------------------------------------------------------------------------------- measuring

def mnn_outputs(model: Path, feeds_list) -> List[Dict[str, np.ndarray]]:
    from mnnq.mnn_backend.runtime import LoadedModel, model_io_names

    names = model_io_names(model)[1]
    loaded = LoadedModel(model, list(feeds_list[0]), names)
    return [loaded.run(feeds) for feeds in feeds_list]


def cosine_stats(references, got) -> Tuple[float, float]:
    """(mean, min) over samples of the worst output's cosine similarity (0 for non-finite)."""
    from mnnq.measure import cosine_similarity as cosine

    per_sample = []
    for ref, out in zip(references, got):
        worst = 1.0
        for name, a in ref.items():
            worst = min(worst, cosine(a, np.asarray(out[name])))
        per_sample.append(worst)
    return float(np.mean(per_sample)), float(np.min(per_sample))


def int8_conv_count(model: Path, shape: Sequence[int]) -> int:
    """Conv ops of ``model`` that run an INT8 kernel (one run, session callback)."""
    import MNN

    interp = MNN.Interpreter(str(model))
    session = interp.createSession({"numThread": 1})
    feed = interp.getSessionInput(session)
    feed.copyFrom(MNN.Tensor(list(shape), MNN.Halide_Type_Float, np.zeros(shape, np.float32),
                             MNN.Tensor_DimensionType_Caffe))
    seen: List[str] = []
    interp.runSessionWithCallBackInfo(session, lambda t, op: True, lambda t, op: seen.append(op.getType()) or True)
    return sum(1 for t in seen if t.split(" [")[0] in CONV_OPS and ("INT8" in t or t.endswith("Int8")))


def ort_int8_convs(model: Path) -> Tuple[int, int]:
    """(convs whose data input and weight come from DequantizeLinear, all convs) of a QDQ model."""
    import onnx

    graph = onnx.load(str(model)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    return sum(1 for n in convs if n.input[0] in dequantized and n.input[1] in dequantized), len(convs)


def ort_outputs(model: Path, feeds_list) -> List[Dict[str, np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feeds))) for feeds in feeds_list]


# ----------------------------------------------------------------------------------- tools

def run_native(case: Case, dst: Path, cfg: Path, timeout: float) -> Tuple[str, float, str]:
    from mnnq.mnn_backend.native import run_tool

    started = time.perf_counter()
    try:
        run = run_tool("mnnquant", ["quantized.out", str(case.float_mnn), str(dst), str(cfg)], timeout=timeout)
    except Exception as exc:  # the native layer's timeout
        return "timeout", time.perf_counter() - started, str(exc)
    seconds = time.perf_counter() - started
    if run.crashed:
        return "crashed", seconds, run.crash_text()
    if not dst.is_file() or dst.stat().st_size == 0:
        return "no model", seconds, run.tail(1)
    return "ok", seconds, ""


def run_mnnq(case: Case, dst: Path, cfg: Path, flags: Sequence[str], timeout: float) -> Tuple[str, float, str]:
    from mnnq.mnn_backend.native import output_tail

    report = dst.with_suffix(".report.json")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mnnq", "quantize", str(case.float_mnn), str(dst), str(cfg), *flags,
                           "--report-json", str(report)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, COLUMNS="200"))
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not dst.is_file():
        return f"exit {proc.returncode}", seconds, output_tail(proc.stderr, 1)
    note = "" if proc.returncode == 0 else "rate missed (exit 1)"
    return "ok", seconds, "; ".join(n for n in (note, fallback_note(json.loads(report.read_text()))) if n)


def fallback_note(doc: dict) -> str:
    """What the --rate fallback did, from mnnq's JSON report ("" when it did not run)."""
    tradeoff = doc.get("tradeoff")
    if not tradeoff:
        return "all INT8 met the rate" if doc.get("rate") is not None else ""
    points = tradeoff["points"]
    chosen = next(p for p in points if p["chosen"])
    full = sum(1 for p in points[1:] if p["complete"])
    return (f"{chosen['layers_float']} of {tradeoff['layers']} kept float; {len(tradeoff['ranking'])} ranked, "
            f"{len(points) - 1} candidates ({full} on every sample)")


def run_ort(case: Case, method: str, dst: Path, work: Path, timeout: float) -> Tuple[str, float, str]:
    """onnxruntime's quantize_static in a child process (this script with --ort-child)."""
    from mnnq.mnn_backend.native import output_tail

    data = work / f"{case.name}.calib.npz"
    if not data.is_file():
        name = next(iter(case.calib_feeds[0]))
        np.savez(data, name=np.array(name), **{f"x{i}": f[name] for i, f in enumerate(case.calib_feeds)})
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--ort-child", str(case.onnx), str(dst), method, str(data)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, ""
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not dst.is_file():
        return "failed", seconds, output_tail(proc.stderr, 1) or f"exit {proc.returncode}"
    return "ok", seconds, ""


def ort_child(src: str, dst: str, method: str, data: str) -> int:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    arrays = np.load(data)
    name = str(arrays["name"])
    feeds = iter([{name: arrays[k]} for k in sorted((k for k in arrays.files if k != "name"), key=lambda k: int(k[1:]))])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return 0


# ----------------------------------------------------------------------------------- one model

def measured(case: Case, row: Row, dst: Path, references, outputs_of, convs) -> Row:
    """Fill ``row`` from the written model ``dst`` (when the run wrote one)."""
    if row.status != "ok":
        return row
    row.cosine_mean, row.cosine_min = cosine_stats(references, outputs_of(dst, case.heldout))
    done, total = convs(dst)
    row.int8_share, row.int8_convs = done / max(total, 1), f"{done}/{total}"
    row.size_bytes = dst.stat().st_size
    return row


def bench_case(case: Case, args, work: Path) -> List[Row]:
    shape = list(next(iter(case.heldout[0].values())).shape)
    mnn_refs = mnn_outputs(case.float_mnn, case.heldout)
    mnn_convs = lambda p: (min(int8_conv_count(p, shape), case.conv_ops), case.conv_ops)   # noqa: E731
    rows = [Row(case.name, "float", "ok", 0.0, 1.0, 1.0, 0.0, f"0/{case.conv_ops}", case.float_mnn.stat().st_size)]
    runs = [("native KL", "native", "KL", [])]
    runs += [(f"mnnq {m}", "mnnq", m, []) for m in args.methods]
    runs.append(("mnnq default", "mnnq", None, []))
    runs.append(("mnnq default --bias-correction", "mnnq", None, ["--bias-correction"]))
    if case.name in args.rate_models or "all" in args.rate_models:
        runs += [(f"mnnq KL --rate {rate}", "mnnq", "KL", ["--rate", str(rate), "--metric", "cosine"])
                 for rate in args.rates]
    for label, tool, method, flags in runs:
        keys = dict(case.config, weight_quantize_method="MAX_ABS")
        if method:
            keys["feature_quantize_method"] = method
        cfg = work / case.name / f"{label.replace(' ', '_')}.json"
        cfg.write_text(json.dumps(keys, indent=1))
        dst = work / case.name / f"{label.replace(' ', '_')}.mnn"
        runner = run_native if tool == "native" else lambda c, d, f, t: run_mnnq(c, d, f, flags, t)
        status, seconds, note = repeated(args.repeat, lambda: runner(case, dst, cfg, args.timeout))
        rows.append(measured(case, Row(case.name, label, status, seconds, note=note), dst, mnn_refs, mnn_outputs, mnn_convs))
        report(rows[-1])
    ort_refs = ort_outputs(case.onnx, case.heldout)
    for method in ORT_METHODS:
        dst = work / case.name / f"ort_{method}.onnx"
        status, seconds, note = repeated(args.repeat, lambda: run_ort(case, method, dst, work, args.timeout))
        rows.append(measured(case, Row(case.name, f"ort {method}", status, seconds, note=note), dst, ort_refs,
                             ort_outputs, ort_int8_convs))
        report(rows[-1])
    return rows


def repeated(times: int, run) -> Tuple[str, float, str]:
    """``run()`` up to ``times`` times (stopping at the first failure): its status and note, and
    the median wall time."""
    results = []
    for _ in range(max(1, times)):
        results.append(run())
        if results[-1][0] != "ok":
            return results[-1]
    return results[-1][0], float(np.median([r[1] for r in results])), results[-1][2]


def report(row: Row) -> None:
    what = (f"cos {row.cosine_mean:.5f} / {row.cosine_min:.5f}, INT8 convs {row.int8_convs}"
            if row.cosine_mean is not None else row.note[:120])
    note = f"  {row.note[:80]}" if row.cosine_mean is not None else ""  # a failed row's note is `what`
    print(f"  {row.model:12s} {row.tool:26s} {row.status:8s} {row.seconds:7.2f} s  {what}{note}",
          file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- output

def print_table(rows: List[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="full INT8: held-out output cosine vs float (12 images), wall time (noisy shared machine)",
                  title_justify="left")
    for col in ("model", "run", "status", "time s", "x native", "cos mean", "cos min", "INT8 convs", "size MB", "note"):
        table.add_column(col, overflow="fold")
    native = {r.model: r.seconds for r in rows if r.tool == "native KL"}
    for r in rows:
        ratio = f"{r.seconds / native[r.model]:.2f}" if r.model in native and r.seconds and r.tool != "float" else ""
        table.add_row(r.model, r.tool, r.status, f"{r.seconds:.1f}" if r.tool != "float" else "", ratio,
                      _f(r.cosine_mean), _f(r.cosine_min),
                      f"{r.int8_convs} ({r.int8_share:.0%})" if r.int8_share is not None else "",
                      f"{r.size_bytes / 1e6:.2f}" if r.size_bytes else "", r.note[:70])
    Console(width=220).print(table)


def _f(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def _find(rows: List[Row], model: str, tool: str) -> Optional[Row]:
    return next((r for r in rows if r.model == model and r.tool == tool), None)


def _ok(row: Optional[Row]) -> bool:
    return row is not None and row.status == "ok" and row.cosine_mean is not None


def yolo_verdict(rows: List[Row], model: str) -> str:
    mine, native = _find(rows, model, "mnnq default"), _find(rows, model, "native KL")
    if not _ok(mine):
        return f"NOT MET: mnnq default did not write a model ({mine.status if mine else 'not run'})"
    misses = []
    if mine.cosine_mean < YOLO_TARGET[0] or mine.cosine_min < YOLO_TARGET[1]:
        misses.append(f"cosine {mine.cosine_mean:.4f} / {mine.cosine_min:.4f} < {YOLO_TARGET[0]} / {YOLO_TARGET[1]}")
    if native is None or mine.seconds > native.seconds:
        misses.append(f"{mine.seconds:.1f} s > native {native.seconds:.1f} s" if native else "no native time")
    state = "met" if not misses else "NOT MET: " + "; ".join(misses)
    return (f"{state} (mnnq default cosine {mine.cosine_mean:.4f} / {mine.cosine_min:.4f} in {mine.seconds:.1f} s, "
            f"native {native.seconds:.1f} s)" if native else state)


def text_det_verdicts(rows: List[Row], model: str, rates: Sequence[float]) -> List[str]:
    """The text detector's two targets: >= 0.99 held-out cosine with >= 70% of convs INT8 (by
    default or with --rate: met when one of them meets it, each listed), and each --rate run's
    wall time <= 3x native quantized.out's."""
    native = _find(rows, model, "native KL")
    runs = [r for r in [_find(rows, model, "mnnq default")] + [_find(rows, model, f"mnnq KL --rate {x}") for x in rates]
            if r is not None]
    good = [r for r in runs if _ok(r) and r.cosine_mean >= TEXT_DET_TARGET[0] and r.int8_share >= TEXT_DET_TARGET[1]]
    listed = "; ".join(f"{r.tool}: {r.cosine_mean:.4f} with {r.int8_convs} ({r.int8_share:.0%})" if _ok(r)
                       else f"{r.tool}: {r.status}" for r in runs)
    out = [f"cosine >= {TEXT_DET_TARGET[0]} with >= {TEXT_DET_TARGET[1]:.0%} of convs INT8: "
           + (f"met by {', '.join(r.tool for r in good)}" if good else "NOT MET") + f" ({listed})"]
    for rate in rates:
        row = _find(rows, model, f"mnnq KL --rate {rate}")
        if row is None or native is None or not _ok(row):
            continue
        ratio = row.seconds / native.seconds
        out.append(f"--rate {rate} wall time: {'met' if ratio <= RATE_TIME_RATIO else 'NOT MET'}: {row.seconds:.1f} s "
                   f"= {ratio:.2f}x native ({native.seconds:.1f} s; target <= {RATE_TIME_RATIO}x)")
    return out


def verdicts(rows: List[Row], models: Sequence[str], methods: Sequence[str], rates: Sequence[float]) -> List[str]:
    lines = []
    for model in models:
        role = ROLES.get(model)
        if role == "YOLO-style detector":
            lines.append(f"{model} ({role}): {yolo_verdict(rows, model)}")
        elif role == "MobileNetV3-style text detector":
            lines += [f"{model} ({role}) {v}" for v in text_det_verdicts(rows, model, rates)]
    broken = [f"{m} {r.tool} ({r.status})" for m in models for r in rows
              if r.model == m and r.tool in [f"mnnq {x}" for x in methods] and not (_ok(r) and r.cosine_min > 0.0)]
    lines.append("every feature method works on every model: " + ("met" if not broken else "NOT MET: " + ", ".join(broken)))
    for model in models:
        mine = _find(rows, model, "mnnq default")
        theirs = [r for r in rows if r.model == model and r.tool.startswith("ort") and _ok(r)]
        if not theirs:
            lines.append(f"{model}: onnxruntime could not quantize it (" + ", ".join(
                f"{r.tool}: {r.status} {r.note[:60]}" for r in rows if r.model == model and r.tool.startswith("ort")) + ")")
            continue
        best = max(theirs, key=lambda r: r.cosine_mean)
        # at the 4 decimals shown: 12 images do not resolve the 5th
        good = _ok(mine) and round(mine.cosine_mean, 4) >= round(best.cosine_mean, 4)
        lines.append(f"{model}: mnnq default {'at or above' if good else 'BELOW'} onnxruntime: "
                     f"{_f(mine.cosine_mean if mine else None)} / {_f(mine.cosine_min if mine else None)} vs "
                     f"{best.tool} {best.cosine_mean:.4f} / {best.cosine_min:.4f}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--ort-child"]:
        return ort_child(*argv[1:5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="yolov8n_320,ppocr_det,ppocr_cls,efficientnet_lite0")
    parser.add_argument("--cache", type=Path, default=None, help="pretrained model cache (benchmarks/pretrained.py)")
    parser.add_argument("--methods", default="KL,ADMM,EMA,MSE", help="mnnq feature methods to run")
    parser.add_argument("--rate-models", default="all", help="models also run with --rate (comma-separated, or all)")
    parser.add_argument("--rates", default="0.01,0.02", help="the --rate of those runs (--metric cosine), comma-separated")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--repeat", type=int, default=1, help="run each tool this many times, keep the median time")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and verdicts as JSON")
    parser.add_argument("--keep", type=Path, default=None, help="keep images, configs and models in this folder")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.rate_models = [m.strip() for m in args.rate_models.split(",") if m.strip()]
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    from mnnq.mnn_backend.native import start_child_server
    start_child_server()             # before MNN runs anything in this process
    rows: List[Row] = []
    with tempfile.TemporaryDirectory(prefix="mnnq-bench-quantize-") as tmp:
        work = args.keep or Path(tmp)
        for name in models:
            case = make_case(name, work, args.cache)
            rows += bench_case(case, args, work)
    print_table(rows)
    lines = verdicts(rows, models, args.methods, args.rates)
    for line in lines:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "verdicts": lines}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
