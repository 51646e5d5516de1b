"""``mnnq testdir make`` / ``mnnq testdir show``: build and inspect MNN test sets.

make: exit 0 when the test set was written (notes such as "random inputs" or "under the floor"
are printed, not fatal), 2 on bad input (nothing written).
show: exit 0 when nothing is wrong (notes may be printed), 1 when it flags problems (NaN/Inf,
size mismatches, missing files, an output under max_rel's floor in every sample, names the
``--model`` lacks), 2 when the folder is not a readable test set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mnnq.cli_args import add_flag, number, positive_int
from mnnq.errors import EXIT_MISSED, EXIT_OK


def add_parser(subparsers):
    p = subparsers.add_parser("testdir", help="make an MNN test set from images / arrays / random data, or show one",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="testdir_command", metavar="ACTION")

    mk = sub.add_parser(
        "make", help="write a test set with reference outputs",
        description="Write an MNN test set (one sample: a test dir; several: 000/, 001/, ...) whose references "
                    "come from the float MNN model, or from onnxruntime when --model is an ONNX file. Inputs from "
                    "--images (preprocessed as quantized.out does), --npy arrays, or seeded --random data "
                    "(the fallback when nothing else is given). Exit 0 written, 2 bad input (nothing written).")
    add_flag(mk, "--model", required=True, help=".mnn, .onnx or .tflite model (ONNX/TFLite are converted and cached)")
    add_flag(mk, "--out", required=True, help="folder to write (must be new or empty, or use --force)")
    add_flag(mk, "--samples", type=positive_int, default=None,
          help="number of samples (images/arrays: at most this many; random: this many; default all / 1)")
    g = mk.add_argument_group("images (quantized.out's preprocessing keys)")
    add_flag(g, "--images", default=None, help="folder of JPEG/PNG/BMP images for the image input (sorted by name)")
    add_flag(g, "--image-config", default=None,
          help="YAML/JSON file with format/mean/normal/width/height[/center_crop_h/w/path] "
               "(a quantized.out config works)")
    add_flag(g, "--image-input", default=None, help="input the images feed (default: the model's first input)")
    add_flag(g, "--format", default=None, type=str.upper, choices=("RGB", "BGR", "RGBA", "BGRA", "GRAY"),
          help="colour order the model wants (default BGR, as quantized.out)")
    add_flag(g, "--mean", type=number, nargs="+", default=None, help="per-channel mean (dst = (src - mean) * normal)")
    add_flag(g, "--normal", type=number, nargs="+", default=None, help="per-channel scale")
    add_flag(g, "--width", type=positive_int, default=None, help="resize width (default: the model's)")
    add_flag(g, "--height", type=positive_int, default=None, help="resize height (default: the model's)")
    add_flag(g, "--center-crop-h", type=number, default=None, help="fraction of the height kept, centred (default 1)")
    add_flag(g, "--center-crop-w", type=number, default=None, help="fraction of the width kept, centred (default 1)")
    a = mk.add_argument_group("arrays and random data")
    add_flag(a, "--npy", action="append", default=[], metavar="[NAME=]FILE",
          help="a .npy (one input; NAME= when the model has several) or .npz keyed by input name; an array may "
               "stack samples along a leading axis; repeatable")
    add_flag(a, "--random", action="store_true", help="seeded uniform random data for inputs without other data")
    add_flag(a, "--seed", type=int, default=0, help="random seed (default 0)")
    add_flag(a, "--range", type=number, nargs=2, metavar=("LO", "HI"), default=None,
          help="random range for every input (default 0 1 for float inputs; integer inputs need one)")
    add_flag(a, "--input-range", action="append", default=[], metavar="NAME=LO,HI", help="random range of one input")
    add_flag(mk, "--shape", action="append", default=[], metavar="NAME=D0,D1,...",
          help="size of an input with dynamic dimensions, e.g. x=1,3,224,224; repeatable")
    add_flag(mk, "--reference", choices=("auto", "mnn", "onnxruntime"), default="auto",
          help="what computes the reference outputs: the float MNN model, or onnxruntime on the ONNX source "
               "(needs mnnq[onnx]); auto = onnxruntime for an ONNX model when installed, else mnn")
    add_flag(mk, "--force", action="store_true", help="replace an existing test set at --out")

    sh = sub.add_parser(
        "show", help="print what a test set holds and flag problems (exit 1 when it finds any)",
        description="Print a test set's inputs, outputs, shapes, dtypes and value ranges, and flag problems: "
                    "NaN/Inf, size mismatches, missing files, outputs under max_rel's 0.01 floor in every sample. "
                    "Exit 0 clean, 1 problems found, 2 not a readable test set.")
    sh.add_argument("dir", help="test dir, or a folder of test dirs")
    add_flag(sh, "--model", default=None, help="also check names and output sizes against this model (.mnn/.onnx/.tflite)")
    return p


def run(args, out: Console, err: Console) -> int:
    from mnnq.errors import BadInput

    # MNN is already imported quietly: mnnq.cli.main does it before every command but `plugins`.
    if args.testdir_command == "make":
        return _make(args, out, err)
    if args.testdir_command == "show":
        return _show(args, out, err)
    raise BadInput("give an action: mnnq testdir make ... | mnnq testdir show DIR")


# ------------------------------------------------------------------------------ make

def _make(args, out: Console, err: Console) -> int:
    from mnnq.frontend.testdir_make import MakeOptions, make_testdir

    flags = {"format": args.format, "mean": args.mean, "normal": args.normal, "width": args.width,
             "height": args.height, "center_crop_h": args.center_crop_h, "center_crop_w": args.center_crop_w}
    opts = MakeOptions(
        model=Path(args.model), out=Path(args.out), samples=args.samples,
        images=Path(args.images) if args.images else None,
        image_config=Path(args.image_config) if args.image_config else None, image_flags=flags,
        image_input=args.image_input, npy=args.npy, random=args.random, seed=args.seed,
        range=tuple(args.range) if args.range else None, input_ranges=args.input_range, shapes=args.shape,
        reference=args.reference, force=args.force)
    result = make_testdir(opts)
    meta = result.metadata
    layout = "1 sample (MNN test dir)" if meta["samples"] == 1 else f"{meta['samples']} samples (000/ ...)"
    ref = meta["reference"]
    out.print(f"mnnq testdir make: wrote {result.out} — {layout}; references from {ref['kind']} {ref['version']}",
              soft_wrap=True)
    table = Table(title_justify="left", show_edge=False)
    for col in ("", "name", "dtype", "shape", "min", "max", "from"):
        table.add_column(col, overflow="fold")
    for i in meta["inputs"]:
        source = i["source"]
        if source == "images":
            source += f" ({len(i['files'])} in {i['folder']})"
        elif source == "random":
            source = f"RANDOM (seed {i['seed']}, {i['range'][0]:g}..{i['range'][1]:g})"
        elif source == "npy":
            source += " (" + ", ".join(Path(f).name for f in i["files"]) + ")"
        table.add_row("in", i["name"], i["dtype"], str(i["shape"]), _fmt(i["min"]), _fmt(i["max"]), source)
    for o in meta["outputs"]:
        table.add_row("out", o["name"], "float32", str(o["shape"]), _fmt(o["min"]), _fmt(o["max"]), ref["kind"])
    out.print(table)
    conversion = meta.get("conversion_error")
    if conversion:
        out.print("float MNN model vs onnxruntime (conversion error, max_rel): "
                  + ", ".join(f"{k} {v:.2e}" for k, v in conversion.items()), soft_wrap=True, markup=False)
    if meta["random_fallback"]:
        err.print("warning: no --images or --npy given: the inputs are seeded RANDOM data (the fallback), "
                  "recorded as such in mnnq-testset.json; quantization error on random inputs says little about "
                  "real ones", soft_wrap=True, markup=False)
    elif meta["random_inputs"]:
        err.print("note: some inputs are seeded random data (--random)", markup=False)
    for note in result.notes:
        err.print(f"note: {note}", soft_wrap=True, markup=False)
    return EXIT_OK


# ------------------------------------------------------------------------------ show

def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _show(args, out: Console, err: Console) -> int:
    from mnnq.frontend.testdir_show import inspect, read_testset

    result = inspect(read_testset(Path(args.dir)), Path(args.model) if args.model else None)
    n = len(result.samples)
    meta = result.metadata or {}
    kind = "1 sample (MNN test dir)" if n == 1 and result.samples[0].directory == result.root else f"{n} samples"
    extra = ""
    if meta:
        ref = meta.get("reference", {})
        extra = (f"; made by {meta.get('created_by', '?')}, references from {ref.get('kind', '?')} "
                 f"{ref.get('version', '')}")
    out.print(f"test set {result.root}: {kind}{extra}", soft_wrap=True, markup=False)
    sources = {i.get("name"): i.get("source") for i in meta.get("inputs", []) if isinstance(i, dict)}
    table = Table(title_justify="left", show_edge=False)
    for col in ("tensor", "dtype", "shape / size", "min", "max", "max|v| per sample", "source"):
        table.add_column(col, overflow="fold")
    first = result.samples[0]
    for idx, t in enumerate(first.tensors):
        per = [s.tensors[idx] for s in result.samples if len(s.tensors) > idx and s.tensors[idx].name == t.name]
        vals = [p.values for p in per if p.values is not None]
        finite = [v[np.isfinite(v)] for v in vals]
        finite = [v for v in finite if v.size]
        lo = _fmt(min(float(v.min()) for v in finite)) if finite else "-"
        hi = _fmt(max(float(v.max()) for v in finite)) if finite else "-"
        maxima = [float(np.max(np.abs(v))) for v in finite]
        amax = f"{_fmt(min(maxima))}..{_fmt(max(maxima))}" if len(maxima) > 1 else (_fmt(maxima[0]) if maxima else "-")
        dtype = "int" if per and all(p.integer for p in per if p.values is not None) else "float"
        size = f"{t.shape}" if t.shape is not None else (f"{vals[0].size} values" if vals else "-")
        source = sources.get(t.name, "") if t.role == "input" else ""
        if source == "random":
            source = "RANDOM"
        table.add_row(f"{'in ' if t.role == 'input' else 'out'} {t.name}", dtype, size, lo, hi, amax, source)
    out.print(table)
    for note in result.notes:
        out.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
    for problem in result.problems:
        out.print(f"PROBLEM: {problem}", soft_wrap=True, markup=False, highlight=False)
    if result.problems:
        out.print(f"{len(result.problems)} problem(s) found", markup=False)
        return EXIT_MISSED
    out.print("no problems found", markup=False)
    return EXIT_OK
