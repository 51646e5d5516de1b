"""The bad-input table (docs/bad-inputs.md): every row is a case here, with the same id.

Each case runs one command as a user would (``mnnq.cli.main``; rows that may kill the process
natively run ``python -m mnnq`` in a child instead, so a crash fails the row and not the whole
test session) and asserts: exit code 2, exactly one ``mnnq: error:`` line (argparse's own
``mnnq <command>: error:`` for usage errors) that names the bad thing, no traceback, nothing
written (the output folder and the working folder stay empty) and every source file
byte-identical afterwards.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from mnnq.mnn_backend.inventory import _NET_OPLISTS, _OP_INPUTS, _OP_TYPE, OP_CONVOLUTION, _Buf, read_conv_ops
from mnnq.testing import file_digests, run_cli, tiny_model

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^mnnq(?: [\w-]+)*: error: ")
DOC = ROOT / "docs" / "bad-inputs.md"


# ---------------------------------------------------------------------------------------------
# The sources every case reads (built once) and per-case bad inputs


@dataclass
class World:
    root: Path
    model: Path          # float convnet .mnn
    onnx: Path           # its ONNX source
    test_dir: Path       # 4-sample test set (000/ .. 003/)
    quant: Path          # a weight-quantized model (auto-quant output)
    params: Path         # its params file
    calib: Path          # quantize config calibrating on the test set (input_type: sequence)
    config: Path         # mnnq.yaml listing the quantized model
    images: Path         # two good PNG images


def png_bytes(rgb: np.ndarray) -> bytes:
    """A plain 8-bit RGB PNG (no PIL needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("sources")
    saved = os.environ.get("MNNQ_CACHE")
    os.environ["MNNQ_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    tm = tiny_model(root / "convnet", "convnet")
    quant = root / "q.mnn"
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", quant, "--test_dir", tm.test_dir,
                   "--rate", "0.1"])
    assert run.code == 0, run.err
    calib = tm.calibration_config(root / "calibration.json")
    config = root / "mnnq.yaml"
    config.write_text("models:\n  - name: convnet\n    float: convnet/convnet.mnn\n    quantized: q.mnn\n"
                      "    test_dir: convnet/testset\n    rate: 0.1\n")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        (images / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (20, 20, 3))))
    yield World(root, tm.model, tm.directory / "convnet.onnx", tm.test_dir, quant, Path(str(quant) + ".json"),
                calib, config, images)
    if saved is None:
        os.environ.pop("MNNQ_CACHE", None)
    else:
        os.environ["MNNQ_CACHE"] = saved


class Case:
    """One row's folders: ``dir`` for its bad inputs, ``out`` for outputs (must stay empty)."""

    def __init__(self, world: World, tmp_path: Path):
        self.w = world
        self.dir = tmp_path / "case"
        self.out = tmp_path / "out"
        self.dir.mkdir()
        self.out.mkdir()

    def file(self, name: str, data) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    # -- models -----------------------------------------------------------------------------
    def model(self, kind: str, source: Optional[Path] = None) -> Path:
        data = (source or self.w.model).read_bytes()
        if kind == "missing":
            return self.dir / "missing.mnn"
        if kind == "empty":
            return self.file("empty.mnn", b"")
        if kind == "truncated":  # the converter crashes on it
            return self.file("truncated.mnn", data[: len(data) // 100])
        if kind == "tail-cut":  # the converter reads it; the runtime cannot load it
            return self.file("tail-cut.mnn", data[: len(data) * 95 // 100])
        if kind == "text":
            return self.file("notes.mnn", "this is not a model\n")
        if kind == "onnx-as-mnn":
            return self.file("renamed.mnn", self.w.onnx.read_bytes())
        if kind == "length-bomb":  # a weight vector claims 16 GB: the converter would try to allocate it
            op = read_conv_ops(self.w.model)[1]
            buf = bytearray(self.w.model.read_bytes())
            struct.pack_into("<I", buf, op.weight_offset - 4, 0xFFFFFFF0)
            return self.file("bomb.mnn", bytes(buf))
        if kind == "bad-index":  # the first conv reads tensor 2**31-16: the converter copies it, the runtime crashes
            return self.file("bad-index.mnn", bad_tensor_index(self.w.model.read_bytes()))
        if kind == "suffix":
            return self.file("model.bin", data)
        raise ValueError(kind)

    # -- test sets --------------------------------------------------------------------------
    def testset(self, mutate: Optional[Callable[[Path], None]] = None, single: bool = False) -> Path:
        """A copy of the world's test set (``single``: only sample 000, as one test dir) with
        ``mutate(sample_dir)`` applied to sample 000."""
        dst = self.dir / "testset"
        if single:
            shutil.copytree(self.w.test_dir / "000", dst)
            sample = dst
        else:
            shutil.copytree(self.w.test_dir, dst)
            sample = dst / "000"
        if mutate is not None:
            mutate(sample)
        return dst

    def params(self, doc) -> Path:
        return self.file("params.json", json.dumps(doc) if not isinstance(doc, str) else doc)

    def unwritable_dir(self) -> Path:
        """A folder this process cannot create files in (root ignores permission bits: /sys)."""
        if os.geteuid() == 0:
            return Path("/sys")
        path = self.dir / "readonly"
        path.mkdir()
        path.chmod(0o555)
        return path


BAD_TENSOR_INDEX = 0x7FFFFFF0


def bad_tensor_index(data: bytes) -> bytes:
    """``data`` (a float .mnn) with its first conv op's input tensor index set to 2**31 - 16:
    the converter reads and rewrites such a file, the MNN runtime dies on it with SIGSEGV (the
    index points gigabytes past the tensor table, into unmapped memory; a small bad index reads
    whatever lies next to the table, and what happens then depends on the memory layout)."""
    buf = _Buf(data)
    for op in buf.tables(buf.root(), _NET_OPLISTS):
        if buf.scalar(op, _OP_TYPE, "<i", 0) == OP_CONVOLUTION:
            out = bytearray(data)
            struct.pack_into("<i", out, buf.indirect(op, _OP_INPUTS) + 4, BAD_TENSOR_INDEX)
            return bytes(out)
    raise AssertionError("no conv op")


# Test-set mutators (on one sample folder)

def _edit_json(sample: Path, fn) -> None:
    doc = json.loads((sample / "input.json").read_text())
    fn(doc)
    (sample / "input.json").write_text(json.dumps(doc))


def _values(sample: Path, name: str, fn) -> None:
    vals = (sample / f"{name}.txt").read_text().split()
    (sample / f"{name}.txt").write_text("\n".join(fn(vals)) + "\n")


def no_input_json(s: Path) -> None:
    (s / "input.json").unlink()


def bad_json(s: Path) -> None:
    (s / "input.json").write_text('{"inputs": [{"name": "x", "shape": [1, 3, 16, 16]}')


def json_list(s: Path) -> None:
    (s / "input.json").write_text('["x", "y"]')


def unknown_input(s: Path) -> None:
    _edit_json(s, lambda d: d["inputs"][0].update(name="image"))
    (s / "x.txt").rename(s / "image.txt")


def unknown_output(s: Path) -> None:
    _edit_json(s, lambda d: d.update(outputs=["logits"]))
    (s / "y.txt").rename(s / "logits.txt")


def short_input(s: Path) -> None:
    _values(s, "x", lambda v: v[:-1])


def nan_input(s: Path) -> None:
    _values(s, "x", lambda v: ["nan"] + v[1:])


def inf_reference(s: Path) -> None:
    _values(s, "y", lambda v: ["-inf"] + v[1:])


def overflow_input(s: Path) -> None:  # finite as float64, inf as float32
    _values(s, "x", lambda v: [v[0], "1e60"] + v[2:])


def overflow_reference(s: Path) -> None:
    _values(s, "y", lambda v: v[:2] + ["-1e60"] + v[3:])


def word_input(s: Path) -> None:
    _values(s, "x", lambda v: ["0.5", "abc"] + v[2:])


def reference_shape(s: Path) -> None:
    _values(s, "y", lambda v: v[:5])


def missing_data(s: Path) -> None:
    (s / "x.txt").unlink()


def empty_data(s: Path) -> None:
    (s / "x.txt").write_text("")


def bad_shape(s: Path) -> None:
    _edit_json(s, lambda d: d["inputs"][0].update(shape=[1, 3, -16, 16]))


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Case], List]
    expect: str                         # regex the error line must match (it names the bad thing)
    xfail: Optional[str] = None         # strict: remove the mark when it is fixed
    isolate: bool = False               # run `python -m mnnq` in a child process
    env: Dict[str, str] = field(default_factory=dict)


def aq(c: Case, model=None, test_dir=None, quant=None, *extra) -> List:
    return ["auto-quant", "--model", model or c.w.model, "--quant_model", quant or c.out / "q.mnn",
            "--test_dir", test_dir or c.w.test_dir, "--rate", "0.1", *extra]


def ap(c: Case, model=None, params=None, out=None, *extra) -> List:
    return ["apply", model or c.w.model, out or c.out / "q.mnn", "--params", params or c.w.params, *extra]


def va(c: Case, model=None, test_dir=None, *extra) -> List:
    return ["validate", "--model", model or c.w.quant, "--test-dir", test_dir or c.w.test_dir, "--rate", "0.1",
            *extra]


def ck(c: Case, text: Optional[str] = None, name: str = "mnnq.yaml", *extra) -> List:
    return ["check", "--config", c.file(name, text) if text is not None else c.w.config, *extra]


def qz(c: Case, model=None, config=None, out=None, *extra) -> List:
    return ["quantize", model or c.w.model, out or c.out / "int8.mnn", config or c.w.calib, *extra]


def qcfg(c: Case, doc) -> Path:
    return c.file("calib.json", json.dumps(doc) if not isinstance(doc, str) else doc)


def cv(c: Case, src=None, dst=None, *extra, fmt="ONNX") -> List:
    return ["convert", "-f", fmt, "--modelFile", src or c.w.onnx, "--MNNModel", dst or c.out / "m.mnn", *extra]


def tm(c: Case, model=None, out=None, *extra) -> List:
    return ["testdir", "make", "--model", model or c.w.model, "--out", out or c.out / "ts", *(extra or ["--random"])]


def image_folder(c: Case, bad: Dict[str, bytes]) -> Path:
    folder = c.dir / "images"
    shutil.copytree(c.w.images, folder)
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return folder


def good_png(c: Case) -> bytes:
    return (c.w.images / "0.png").read_bytes()


SEGV_RUNTIME = {"MNNQ_FAULT_INJECT": "segv:runtime"}
NOT_READABLE = r"not a readable MNN model: \S*{name}"
# The converter reads past the end of a damaged file: whether it crashes (-> "not a readable MNN
# model") or copies it (-> the runtime child rejects it) depends on what lies in memory there.
CANNOT_LOAD = r"(MNN runtime could not load \S*{name}|not a readable MNN model: \S*{name})"

MODEL_ROWS = [  # (id suffix, kind, expected)
    ("missing", "missing", r"model not found: \S*missing\.mnn"),
    ("empty", "empty", r"empty\S* \S*empty\.mnn|empty or not a file: \S*empty\.mnn"),
    ("truncated", "truncated", CANNOT_LOAD.format(name=r"truncated\.mnn")),
    ("tail-cut", "tail-cut", CANNOT_LOAD.format(name=r"tail-cut\.mnn")),
    ("text", "text", CANNOT_LOAD.format(name=r"notes\.mnn")),
    ("onnx-as-mnn", "onnx-as-mnn", CANNOT_LOAD.format(name=r"renamed\.mnn")),
    ("length-bomb", "length-bomb", NOT_READABLE.format(name=r"bomb\.mnn") + r".*killed by SIGABRT"),
    ("bad-index", "bad-index", r"MNN runtime crashed \(killed by SIGSEGV\) while (running|loading) \S*bad-index\.mnn"),
    ("suffix", "suffix", r"model \S*model\.bin: unknown model type '\.bin'"),
]

TESTSET_ROWS = [  # (id suffix, mutate, single, expected)
    ("testdir-missing", None, None, r"test dir not found: \S*nowhere"),
    ("testdir-no-input-json", no_input_json, True, r"test dir \S*testset has no input\.json"),
    ("testdir-sample-no-input-json", no_input_json, False, r"\S*testset/000 has data files but no input\.json"),
    ("input-json-malformed", bad_json, False, r"\S*000/input\.json is not valid JSON"),
    ("input-json-list", json_list, False, r'\S*000/input\.json needs a non-empty "inputs" list'),
    ("input-json-bad-shape", bad_shape, False, r'\S*000/input\.json: inputs\[0\] "shape" must be a list of positive'),
    ("unknown-input", unknown_input, True, r"has no input 'image' \(its inputs: x\)"),
    ("unknown-output", unknown_output, True, r"has no output 'logits' \(its outputs: y\)"),
    ("data-count", short_input, False, r"input file \S*000/x\.txt has 767 values but shape \[1, 3, 16, 16\] needs 768"),
    ("data-missing", missing_data, False, r"test dir \S*000 has no data for input 'x'"),
    ("data-empty", empty_data, False, r"input 'x' file \S*000/x\.txt is empty"),
    ("data-not-a-number", word_input, False, r"input 'x' file \S*000/x\.txt holds a non-number"),
    ("nan-input", nan_input, False, r"input 'x' file \S*000/x\.txt contains NaN or Inf"),
    ("inf-reference", inf_reference, False, r"reference 'y' file \S*000/y\.txt contains NaN or Inf"),
    ("overflow-input", overflow_input, False,
     r"input 'x' file \S*000/x\.txt holds 1e60 at line 2, beyond float32's range"),
    ("overflow-reference", overflow_reference, False,
     r"reference 'y' file \S*000/y\.txt holds -1e60 at line 3, beyond float32's range"),
    ("reference-shape", reference_shape, False, r"reference \S*000/y has 5 values but the model's output 'y' has 10"),
]


def output_folder_rows(command: str, argv: Callable[[Case, Path], List], shown: str, name: str) -> List[Row]:
    """The rows every model-writing command has: ``argv(c, output)`` with the output ``name`` in a
    missing folder and in an unwritable one; ``shown`` is how the error line names the output."""
    return [
        Row(f"{command}/output-folder-missing", lambda c: argv(c, c.out / "sub" / name),
            rf"{shown} folder does not exist: \S*out/sub"),
        Row(f"{command}/output-unwritable", lambda c: argv(c, c.unwritable_dir() / name),
            rf"{shown} folder is not writable: \S+"),
    ]


def _testset_arg(c: Case, mutate, single):
    return c.dir / "nowhere" if single is None else c.testset(mutate, single)


ROWS: List[Row] = []

# ---- auto-quant
for sfx, kind, expect in MODEL_ROWS:
    ROWS.append(Row(f"auto-quant/model-{sfx}", lambda c, k=kind: aq(c, model=c.model(k)), expect))
ROWS.append(Row("auto-quant/runtime-crash", lambda c: aq(c), r"MNN runtime crashed \(killed by SIGSEGV\) while "
                r"running \S*convnet\.mnn", env=SEGV_RUNTIME))
for sfx, mutate, single, expect in TESTSET_ROWS:
    ROWS.append(Row(f"auto-quant/{sfx}", lambda c, m=mutate, s=single: aq(c, test_dir=_testset_arg(c, m, s)), expect))
ROWS += [
    *output_folder_rows("auto-quant", lambda c, out: aq(c, quant=out), "--quant_model", "q.mnn"),
    Row("auto-quant/output-is-a-folder", lambda c: aq(c, quant=c.out), r"--quant_model \S*out is a folder"),
    Row("auto-quant/output-is-the-model", lambda c: aq(c, quant=c.w.model),
        r"--quant_model \S*convnet\.mnn is the input file"),
    Row("auto-quant/report-is-the-model", lambda c: aq(c, None, None, None, "--report_json", c.w.model),
        r"--report-json \S*convnet\.mnn is the input file"),
    Row("auto-quant/rate-negative", lambda c: aq(c, None, None, None, "--rate", "-1"),
        r"argument --rate.*expected a positive finite number, got '-1'"),
    Row("auto-quant/jobs-zero", lambda c: aq(c, None, None, None, "--jobs", "0"),
        r"argument --jobs: expected a positive integer or auto, got '0'"),
    Row("auto-quant/unknown-metric", lambda c: aq(c, None, None, None, "--metric", "psnr"), r"psnr"),
]

# ---- apply
for sfx, kind, expect in MODEL_ROWS:
    ROWS.append(Row(f"apply/model-{sfx}", lambda c, k=kind: ap(c, model=c.model(k)), expect))
ROWS.append(Row("apply/runtime-crash", lambda c: ap(c), r"MNN runtime crashed \(killed by SIGSEGV\) while loading "
                r"\S*convnet\.mnn", env=SEGV_RUNTIME))
ROWS += [
    Row("apply/params-missing", lambda c: ap(c, params=c.dir / "none.json"), r"params file not found: \S*none\.json"),
    Row("apply/params-malformed", lambda c: ap(c, params=c.params('{"algo": [')),
        r"params file \S*params\.json is not valid JSON"),
    Row("apply/params-wrong-shape", lambda c: ap(c, params=c.params([1, 2, 3])),
        r'params file \S*params\.json has no "algo" entry of type QUANTIZE'),
    Row("apply/params-unknown-layers", lambda c: ap(c, params=c.params(_params_with(c, opName="conv9"))),
        r"params file \S*params\.json names layers the model lacks: conv9"),
    Row("apply/params-bad-bits", lambda c: ap(c, params=c.params(_params_with(c, bits=99))),
        r"\S*params\.json: layer '\w+' has bits=99; use 0 \(float\) or 2\.\.8"),
    Row("apply/output-is-the-model", lambda c: ap(c, out=c.w.model), r"output model \S*convnet\.mnn is the input file"),
    Row("apply/output-is-the-params", lambda c: ap(c, out=c.w.params),
        r"output model \S*q\.mnn\.json is the input file"),
    *output_folder_rows("apply", lambda c, out: ap(c, out=out), "output model", "q.mnn"),
    Row("apply/report-is-the-params", lambda c: ap(c, None, None, None, "--report_json", c.w.params),
        r"--report-json \S*q\.mnn\.json is the input file"),
    Row("apply/testdir-no-input-json", lambda c: ap(c, None, None, None, "--test_dir", c.testset(no_input_json, True)),
        r"test dir \S*testset has no input\.json"),
    Row("apply/nan-input", lambda c: ap(c, None, None, None, "--test_dir", c.testset(nan_input)),
        r"input 'x' file \S*000/x\.txt contains NaN or Inf"),
    Row("apply/reference-shape", lambda c: ap(c, None, None, None, "--test_dir", c.testset(reference_shape)),
        r"reference \S*000/y has 5 values but the model's output 'y' has 10"),
    Row("apply/unknown-input", lambda c: ap(c, None, None, None, "--test_dir", c.testset(unknown_input, True)),
        r"has no input 'image' \(its inputs: x\)"),
]


def _params_with(c: Case, **weight) -> dict:
    doc = json.loads(c.w.params.read_text())
    entry = doc["algo"][0]["quantParams"]["layer"][0]
    if "opName" in weight:
        entry["opName"] = weight.pop("opName")
    entry["weight"][0].update(weight)
    return doc


# ---- validate
VALIDATE_MODEL_ROWS = [
    ("missing", "missing", r"mnnq: error: missing: quantized model not found: \S*missing\.mnn"),
    ("empty", "empty", r"mnnq: error: empty: quantized model is empty or not a file: \S*empty\.mnn"),
    ("truncated", "truncated", r"mnnq: error: truncated: " + CANNOT_LOAD.format(name=r"truncated\.mnn")),
    ("tail-cut", "tail-cut", r"mnnq: error: tail-cut: " + CANNOT_LOAD.format(name=r"tail-cut\.mnn")),
    ("text", "text", r"mnnq: error: notes: " + CANNOT_LOAD.format(name=r"notes\.mnn")),
    ("onnx-as-mnn", "onnx-as-mnn", r"mnnq: error: renamed: " + CANNOT_LOAD.format(name=r"renamed\.mnn")),
    ("length-bomb", "length-bomb", r"mnnq: error: bomb: not a readable MNN model: \S*bomb\.mnn \(MNN converter "
                                   r"crashed \(killed by SIGABRT\)"),
    ("bad-index", "bad-index", r"mnnq: error: bad-index: the MNN runtime crashed \(killed by SIGSEGV\).* while running "
                               r"\S*bad-index\.mnn"),
]
for sfx, kind, expect in VALIDATE_MODEL_ROWS:
    ROWS.append(Row(f"validate/model-{sfx}", lambda c, k=kind: va(c, model=c.model(k, c.w.quant)), expect))
ROWS.append(Row("validate/runtime-crash", lambda c: va(c), r"the MNN runtime crashed \(killed by SIGSEGV\)", env=SEGV_RUNTIME))
for sfx, mutate, single, expect in TESTSET_ROWS:
    ROWS.append(Row(f"validate/{sfx}", lambda c, m=mutate, s=single: va(c, test_dir=_testset_arg(c, m, s)), expect))
ROWS += [
    Row("validate/report-folder-missing", lambda c: va(c, None, None, "--report-json", c.out / "sub" / "r.json"),
        r"--report-json folder does not exist: \S*out/sub"),
    Row("validate/report-is-the-model", lambda c: va(c, None, None, "--report-json", c.w.quant),
        r"--report-json \S*q\.mnn is the input file"),
    Row("validate/summary-unwritable", lambda c: va(c, None, None, "--summary-md", c.unwritable_dir() / "s.md"),
        r"--summary-md folder is not writable: \S+"),
    Row("validate/rate-zero", lambda c: va(c, None, None, "--rate", "0"), r"argument --rate.*positive finite"),
    Row("validate/unknown-metric", lambda c: va(c, None, None, "--metric", "psnr"), r"psnr"),
]

# ---- check
CHECK_MODEL = "models:\n  - name: m\n    quantized: {q}\n    test_dir: {t}\n    rate: 0.1\n"
ROWS += [
    Row("check/config-missing", lambda c: ["check", "--config", c.dir / "mnnq.yaml"],
        r"config not found: \S*mnnq\.yaml"),
    Row("check/no-config-found", lambda c: ["check"], r"no mnnq\.yaml \(or \[tool\.mnnq\] in pyproject\.toml\) in "),
    Row("check/config-empty", lambda c: ck(c, ""), r"mnnq\.yaml: \(top level\): the config is empty"),
    Row("check/config-not-yaml", lambda c: ck(c, "models: [\n  - name: a\n  quantized"),
        r"mnnq\.yaml:\d+: not valid YAML"),
    Row("check/config-a-list", lambda c: ck(c, "- a\n- b\n"), r"mnnq\.yaml: \(top level\): expected a mapping"),
    Row("check/config-no-models", lambda c: ck(c, "defaults:\n  rate: 0.1\n"),
        r"mnnq\.yaml:\d*:? ?models: needs a non-empty list of models"),
    Row("check/config-unknown-key", lambda c: ck(c, "modles: []\n"), r"mnnq\.yaml:1: modles: unknown key"),
    Row("check/config-models-a-mapping", lambda c: ck(c, "models:\n  a: b\n"),
        r"mnnq\.yaml:1: models: needs a non-empty list"),
    Row("check/config-rate-negative", lambda c: ck(c, CHECK_MODEL.format(q=c.w.quant, t=c.w.test_dir)
                                                   .replace("0.1", "-0.1")),
        r"mnnq\.yaml:5: models\[0\]\.rate: expected a positive number"),
    Row("check/config-bad-memory-mode", lambda c: ck(c, CHECK_MODEL.format(q=c.w.quant, t=c.w.test_dir)
                                                     + "    memory_mode: fast\n"),
        r"models\[0\]\.memory_mode: expected one of normal, low, got 'fast'"),
    Row("check/config-job-wrong-shape", lambda c: ck(c, CHECK_MODEL.format(q=c.w.quant, t=c.w.test_dir)
                                                     + f"    float: {c.w.model}\n    job: [auto-quant]\n"),
        r"models\[0\]\.job: expected exactly one of auto-quant, quantize, apply"),
    Row("check/pyproject-without-table", lambda c: ck(c, "[project]\nname = 'x'\n", "pyproject.toml"),
        r"pyproject\.toml: has no \[tool\.mnnq\] table"),
    Row("check/unknown-model-name", lambda c: ck(c, None, "mnnq.yaml", "--model", "resnet"),
        r"--model resnet: \S*mnnq\.yaml lists no such model"),
    Row("check/quantized-missing", lambda c: ck(c, CHECK_MODEL.format(q=c.dir / "gone.mnn", t=c.w.test_dir)),
        r"mnnq: error: m: quantized model not found: \S*gone\.mnn"),
    Row("check/testdir-no-input-json", lambda c: ck(c, CHECK_MODEL.format(q=c.w.quant,
                                                                         t=c.testset(no_input_json, True))),
        r"mnnq: error: m: test dir \S*testset has no input\.json"),
    Row("check/report-unwritable", lambda c: ck(c, None, "mnnq.yaml", "--report-json", c.unwritable_dir() / "r.json"),
        r"--report-json folder is not writable"),
]

# ---- quantize (it reads models in-process: the model rows run in a child)
QUANTIZE_MODEL_ROWS = [
    ("missing", "missing", r"float model not found or empty: \S*missing\.mnn"),
    ("empty", "empty", r"float model not found or empty: \S*empty\.mnn"),
    ("truncated", "truncated", r"\S*truncated\.mnn is not an MNN model the inventory can read"),
    ("tail-cut", "tail-cut", r"\S*tail-cut\.mnn"),
    ("text", "text", r"\S*notes\.mnn is not an MNN model the inventory can read"),
    ("onnx-as-mnn", "onnx-as-mnn", r"\S*renamed\.mnn is not an MNN model the inventory can read"),
    ("length-bomb", "length-bomb", r"\S*bomb\.mnn is not an MNN model the inventory can read"),
    ("bad-index", "bad-index", r"MNN runtime crashed \(killed by SIGSEGV\) while loading \S*bad-index\.mnn"),
]
for sfx, kind, expect in QUANTIZE_MODEL_ROWS:
    ROWS.append(Row(f"quantize/model-{sfx}", lambda c, k=kind: qz(c, model=c.model(k)), expect, isolate=True))
ROWS += [
    Row("quantize/config-missing", lambda c: qz(c, config=c.dir / "none.json"),
        r"config file not found: \S*none\.json"),
    Row("quantize/config-malformed", lambda c: qz(c, config=qcfg(c, '{"path": ')),
        r"config \S*calib\.json is not valid JSON"),
    Row("quantize/config-a-list", lambda c: qz(c, config=qcfg(c, [1, 2])),
        r"config \S*calib\.json must hold a mapping of keys"),
    Row("quantize/config-yaml-a-string", lambda c: qz(c, config=c.file("calib.yaml", "just text\n")),
        r"config \S*calib\.yaml must hold a mapping of keys"),
    Row("quantize/config-unknown-method", lambda c: qz(c, config=qcfg(c, {"path": str(c.w.test_dir),
                                                                          "input_type": "sequence",
                                                                          "feature_quantize_method": "MINMAX"})),
        r"config key 'feature_quantize_method': unknown value 'MINMAX'"),
    Row("quantize/config-bad-bits", lambda c: qz(c, config=qcfg(c, {"path": str(c.w.test_dir),
                                                                    "input_type": "sequence", "quant_bits": 16})),
        r"config key 'quant_bits': expected an integer 2\.\.8, got 16"),
    Row("quantize/config-path-missing", lambda c: qz(c, config=qcfg(c, {"path": str(c.dir / "nowhere"),
                                                                        "input_type": "sequence"})),
        r"config key 'path': folder not found: \S*nowhere"),
    Row("quantize/calibration-folder-empty", lambda c: qz(c, config=qcfg(c, {"path": str(c.file("e/.keep", "").parent),
                                                                             "width": 16, "height": 16})),
        r"config key 'path': no readable images in \S*/e"),
    Row("quantize/calibration-images-unreadable", lambda c: qz(c, config=qcfg(c, {
        "path": str(image_folder(c, {"0.png": b"not a png", "1.png": b"GIF89a junk"})), "width": 16, "height": 16})),
        r"config key 'path': no readable images in \S*/images \(2 unreadable files\)"),
    Row("quantize/calibration-image-truncated", lambda c: qz(c, config=qcfg(c, {
        "path": str(image_folder(c, {"2.png": good_png(c)[:60]})), "width": 16, "height": 16})),
        r"2\.png", isolate=True),
    Row("quantize/calibration-nan", lambda c: qz(c, config=qcfg(c, {"path": str(c.testset(nan_input)),
                                                                    "input_type": "sequence"})),
        r"NaN"),
    Row("quantize/calibration-overflow", lambda c: qz(c, config=qcfg(c, {"path": str(c.testset(overflow_input)),
                                                                         "input_type": "sequence"})),
        r"input 'x' file \S*000/x\.txt holds 1e60 at line 2, beyond float32's range"),
    Row("quantize/config-mean-count", lambda c: qz(c, config=qcfg(c, {"path": str(c.w.images), "width": 16,
                                                                      "height": 16, "format": "RGB", "mean": [0, 0]})),
        r"config key 'mean': format RGB has 3 channel\(s\), so 'mean' needs 3 values \(one per channel\), got 2"),
    Row("quantize/config-normal-count", lambda c: qz(c, config=qcfg(c, {"path": str(c.w.images), "width": 16,
                                                                        "height": 16, "normal": [0.017]})),
        r"config key 'normal': format BGR \(the default\) has 3 channel\(s\), so 'normal' needs 3 values"),
    Row("quantize/calibration-data-count", lambda c: qz(c, config=qcfg(c, {"path": str(c.testset(short_input)),
                                                                           "input_type": "sequence"})),
        r"x\.txt.*767"),
    Row("quantize/output-is-the-model", lambda c: qz(c, out=c.w.model),
        r"output model \S*convnet\.mnn is the input file"),
    *output_folder_rows("quantize", lambda c, out: qz(c, out=out), "output model", "int8.mnn"),
]

# ---- convert
ROWS += [
    Row("convert/source-missing", lambda c: cv(c, src=c.dir / "none.onnx"),
        r"--modelFile \S*none\.onnx: model not found"),
    Row("convert/source-empty", lambda c: cv(c, src=c.file("empty.onnx", b"")), r"empty\.onnx"),
    Row("convert/source-not-onnx", lambda c: cv(c, src=c.file("notes.onnx", "not a model\n")), r"notes\.onnx"),
    Row("convert/source-truncated", lambda c: cv(c, src=c.file("cut.onnx", c.w.onnx.read_bytes()[:2000])),
        r"cut\.onnx|converter"),
    Row("convert/unknown-format", lambda c: cv(c, fmt="PYTORCH"), r"-f PYTORCH: unknown source format"),
    Row("convert/output-is-the-source", lambda c: cv(c, dst=c.w.onnx),
        r"--MNNModel \S*convnet\.onnx is the input file"),
    *output_folder_rows("convert", lambda c, out: cv(c, dst=out), "--MNNModel", "m.mnn"),
    Row("convert/testdir-no-input-json", lambda c: cv(c, None, None, "--testdir", c.testset(no_input_json, True)),
        r"--testdir \S*testset has no input\.json"),
    Row("convert/testdir-wrong-references", lambda c: cv(c, None, None, "--testdir", c.testset(
        lambda s: _values(s, "y", lambda v: [str(float(x) + 5.0) for x in v]), True)),
        r"--testdir check failed against \S*testset: output y"),
    Row("convert/no-output-flag", lambda c: ["convert", "-f", "ONNX", "--modelFile", c.w.onnx],
        r"give the output with --MNNModel"),
]

# ---- testdir make / show
ROWS += [
    Row("testdir/make-model-missing", lambda c: tm(c, c.model("missing")), r"missing\.mnn"),
    Row("testdir/make-model-truncated", lambda c: tm(c, c.model("truncated")), r"truncated\.mnn", isolate=True),
    Row("testdir/make-model-tail-cut", lambda c: tm(c, c.model("tail-cut")), r"tail-cut\.mnn", isolate=True),
    Row("testdir/make-model-text", lambda c: tm(c, c.model("text")), r"notes\.mnn", isolate=True),
    Row("testdir/make-model-bad-index", lambda c: tm(c, c.model("bad-index")), r"bad-index\.mnn", isolate=True),
    Row("testdir/show-model-bad-index", lambda c: ["testdir", "show", c.w.test_dir, "--model", c.model("bad-index")],
        r"bad-index\.mnn", isolate=True),
    Row("testdir/make-out-is-a-file", lambda c: tm(c, None, c.w.model, "--random"), r"convnet\.mnn"),
    Row("testdir/make-out-unwritable", lambda c: tm(c, None, c.unwritable_dir() / "ts", "--random"), r"not writable"),
    Row("testdir/make-npy-wrong-shape", lambda c: tm(c, None, None, "--npy", _npy(c, np.zeros((1, 3, 8, 8), "f4"))),
        r"x\.npy|shape"),
    Row("testdir/make-npy-nan", lambda c: tm(c, None, None, "--npy", _npy(c, np.full((1, 3, 16, 16), np.nan, "f4"))),
        r"NaN"),
    Row("testdir/make-npy-overflow", lambda c: tm(c, None, None, "--npy", _npy(c, np.full((1, 3, 16, 16), 1e60))),
        r"input 'x' holds values beyond float32's range"),
    Row("testdir/make-mean-count", lambda c: tm(c, None, None, "--images", c.w.images, "--format", "RGB",
                                                "--mean", "0", "0"),
        r"key 'mean': format RGB has 3 channel\(s\), so 'mean' needs 3 values \(one per channel\), got 2"),
    Row("testdir/make-npy-not-numpy", lambda c: tm(c, None, None, "--npy", c.file("x.npy", "not numpy")), r"x\.npy"),
    Row("testdir/make-images-unreadable", lambda c: tm(c, None, None, "--images", image_folder(c, {
        "0.png": b"junk", "1.png": b"junk"})), r"images"),
    Row("testdir/make-image-truncated", lambda c: tm(c, None, None, "--images", image_folder(c, {
        "2.png": good_png(c)[:60]})), r"2\.png", isolate=True),
    Row("testdir/show-no-input-json", lambda c: ["testdir", "show", c.testset(no_input_json, True)],
        r"testset.*input\.json"),
    Row("testdir/show-malformed-input-json", lambda c: ["testdir", "show", c.testset(bad_json, True)],
        r"input\.json"),
    Row("testdir/show-missing", lambda c: ["testdir", "show", c.dir / "nowhere"], r"nowhere"),
]


def _npy(c: Case, array: np.ndarray) -> Path:
    path = c.dir / "x.npy"
    np.save(path, array)
    return path


# ---------------------------------------------------------------------------------------------


def run_row(row: Row, argv: List[str], cwd: Path):
    if not row.isolate:
        run = run_cli(argv)
        return run.code, run.out, run.err
    env = dict(os.environ, COLUMNS="200", **row.env)
    proc = subprocess.run([sys.executable, "-m", "mnnq", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _param(row: Row):
    marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
    return pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_bad_input(row: Row, world: World, tmp_path: Path, monkeypatch):
    case = Case(world, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    argv = [str(a) for a in row.argv(case)]
    before = file_digests(world.root, case.dir)

    code, out, err = run_row(row, argv, cwd)

    shown = f"mnnq {' '.join(argv)}\nexit {code}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert code == 2, shown
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, shown
    assert re.search(row.expect, lines[0]), f"{lines[0]!r} does not match {row.expect!r}\n{shown}"
    assert "Traceback" not in out + err, shown
    assert sorted(p.name for p in case.out.iterdir()) == [], "nothing may be written"
    assert sorted(p.name for p in cwd.iterdir()) == [], "nothing may be left in the working folder"
    assert file_digests(world.root, case.dir) == before, "sources must be byte-identical"


def test_every_row_is_in_the_doc():
    """docs/bad-inputs.md lists exactly the rows tested here (by id)."""
    documented = set(re.findall(r"^\| `([\w/-]+)` \|", DOC.read_text(), re.M))
    assert documented == {r.id for r in ROWS}
