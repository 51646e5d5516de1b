"""``mnnq convert``: MNNConvert's command line, run without MNN's telemetry wrapper.

Every argument is passed to the converter (``_tools.mnnconvert`` in a child process, see
``mnnq.mnn_backend.native``) under MNNConvert's own spelling, with mnnq's conventions on top:

- path arguments (``--modelFile``, ``--MNNModel``, ``--testdir``, ...) are made absolute, since the
  converter runs in a temporary working directory (where its ``.Error.mnn`` dumps stay);
- the model is written into that directory and moved onto ``--MNNModel`` (or ``--JsonFile``)
  atomically, only when the conversion and the ``--testdir`` check succeeded;
- exit 0 when the output was written (and the check printed ``TEST_SUCCESS``), 2 with one line
  saying what went wrong otherwise (the converter itself always "succeeds").
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from rich.console import Console

from mnnq.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput, NativeFailure
from mnnq.fileio import atomic_copy, check_output_path

# MNNConvert flags whose value is a file or folder (cli.cpp); made absolute before the call.
PATH_FLAGS = ("modelFile", "MNNModel", "prototxt", "compressionParamsFile", "inputConfigFile",
              "testdir", "testconfig", "JsonFile", "customOpLibs")
FRAMEWORKS = ("TF", "CAFFE", "ONNX", "TFLITE", "MNN", "TORCH", "JSON")
# Lines of converter noise not worth echoing.
NOISE = ("The device supports",)

USAGE = """\
usage: mnnq convert -f ONNX|TFLITE|TF|CAFFE|TORCH|MNN|JSON --modelFile SRC --MNNModel DST [MNNConvert flags]

MNNConvert-compatible model conversion (no telemetry): every flag is MNNConvert's and is passed
through unchanged, paths made absolute. mnnq writes DST atomically and exits 0 only when DST was
written and, with --testdir DIR, the converter's check printed TEST_SUCCESS; otherwise it prints
one line saying why and exits 2 (DST is left untouched).

MNNConvert's own flags follow."""


def add_parser(subparsers):
    # '+' as the only prefix: every MNNConvert token (-f, --modelFile, --fp16, ...) lands in argv.
    p = subparsers.add_parser(
        "convert", prefix_chars="+", add_help=False,
        help="convert ONNX/TFLite/TF/Caffe to MNN with MNNConvert's flags (no telemetry; exit 2 on failure)",
        description=USAGE)
    p.add_argument("argv", nargs="*", help="MNNConvert arguments")
    return p


# ----------------------------------------------------------------------------- argv handling

def _split(token: str) -> Tuple[Optional[str], Optional[str]]:
    """``--name=value`` -> (name, value); ``--name`` -> (name, None); ``-f`` -> ('framework', None);
    anything else -> (None, None)."""
    if token.startswith("--") and len(token) > 2:
        name, eq, value = token[2:].partition("=")
        return name, (value if eq else None)
    if token in ("-f", "-h", "-v"):
        return {"-f": "framework", "-h": "help", "-v": "version"}[token], None
    if token.startswith("-f="):
        return "framework", token[3:]
    return None, None


def _absolute(flag: str, value: str) -> str:
    if flag == "customOpLibs":  # "libA.so;libB.so": only names that exist here are made absolute
        return ";".join(str(Path(v).resolve()) if v and Path(v).exists() else v for v in value.split(";"))
    return str(Path(value).expanduser().resolve()) if value else value


def parse_argv(argv: Sequence[str]) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """(argv with path values made absolute, {flag: value} of the flags mnnq looks at)."""
    out: List[str] = []
    seen: Dict[str, Optional[str]] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, value = _split(token)
        if name is None:
            out.append(token)
            i += 1
            continue
        takes_value = name in PATH_FLAGS or name in ("framework", "thredhold")
        if takes_value and value is None:
            if i + 1 >= len(tokens):
                raise BadInput(f"{token} needs a value")
            value = tokens[i + 1]
            i += 1
        if name in PATH_FLAGS:
            value = _absolute(name, value)
        seen[name] = value
        if value is None:
            out.append(token)
        elif token.startswith("--") and "=" in token:
            out.append(f"--{name}={value}")
        else:
            out.extend([token.split("=")[0], value])
        i += 1
    return out, seen


def replace_flag(argv: List[str], flag: str, value: str) -> List[str]:
    """argv (as returned by :func:`parse_argv`) with ``--flag``'s value replaced."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == f"--{flag}":
            out[i + 1] = value
        elif token.startswith(f"--{flag}="):
            out[i] = f"--{flag}={value}"
    return out


# ----------------------------------------------------------------------------- running

def _echo(output: str, out: Console) -> None:
    for line in output.splitlines():
        if line.strip() and not line.startswith(NOISE):
            out.print(line, markup=False, highlight=False, soft_wrap=True)


def _run(argv: Sequence[str], cwd: str):
    from mnnq.mnn_backend.native import run_tool

    return run_tool("mnnconvert", ["mnnconvert", *argv], cwd=cwd)


def _raise_if_crashed(run, dst: Optional[Path] = None) -> None:
    if not run.crashed:
        return
    unwritten = f"; {dst} was not written" if dst else ""
    if "Check convert result by" in run.output:  # e.g. test-dir names that are not the model's inputs
        raise BadInput(f"the --testdir check crashed the converter ({run.crash_text()}) after: "
                       f"{_last_error(run.output)}; check the test dir's input names and shapes{unwritten}")
    raise NativeFailure(f"MNN converter crashed ({run.crash_text()}){unwritten}", tail=run.tail())


def _last_error(output: str) -> str:
    """The converter's most telling line: an [ERROR] / 'Does Not Exist' / 'ERROR' line, else the last."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith(NOISE)]
    for pattern in (r"does not exist|not found|\[ERROR\]|TESTERROR", r"error|failed|invalid"):
        for ln in reversed(lines):
            if re.search(pattern, ln, re.IGNORECASE):
                return re.sub(r"^\[\d\d:\d\d:\d\d\] :\d+: ", "", ln)
    return lines[-1] if lines else "no output"


def _info_only(argv: List[str], seen: Dict[str, Optional[str]], out: Console) -> int:
    """--help / --version / --OP / --info: nothing is written; echo what the converter prints."""
    with tempfile.TemporaryDirectory(prefix="mnnq-convert-") as work:
        if "help" in seen:
            out.print(USAGE + "\n", markup=False, highlight=False, soft_wrap=True)
            run = _run(["--help"], work)
            _echo(run.output, out)
            return EXIT_OK
        run = _run(argv, work)
    _echo(run.output, out)
    _raise_if_crashed(run)
    if "version" in seen and re.search(r"^\d+\.\d+", run.output, re.MULTILINE):
        return EXIT_OK
    if "OP" in seen and "Total:" in run.output:
        return EXIT_OK
    if "info" in seen and "Model Inputs:" in run.output:
        return EXIT_OK
    raise BadInput(f"the converter printed no result: {_last_error(run.output)}")


def run(args, out: Console, err: Console) -> int:
    argv, seen = parse_argv(args.argv)
    if not args.argv or "help" in seen or "version" in seen or "OP" in seen or (
            "info" in seen and "MNNModel" not in seen and "JsonFile" not in seen):
        if not args.argv:  # like MNNConvert: print the usage; a usage error for mnnq
            _info_only(argv, {"help": None}, out)
            return EXIT_BAD_INPUT
        return _info_only(argv, seen, out)

    framework = seen.get("framework")
    if not framework:
        raise BadInput(f"give the source format with -f ({'|'.join(FRAMEWORKS)})")
    if framework not in FRAMEWORKS:
        raise BadInput(f"-f {framework}: unknown source format; use one of {', '.join(FRAMEWORKS)}")
    src = seen.get("modelFile")
    if not src:
        raise BadInput("give the source model with --modelFile SRC")
    src_path = Path(src)
    if not src_path.is_file():
        raise BadInput(f"--modelFile {src_path}: model not found" if not src_path.exists()
                       else f"--modelFile {src_path} is not a file")
    dst_flag = "MNNModel" if "MNNModel" in seen else "JsonFile" if "JsonFile" in seen else None
    if dst_flag is None or not seen[dst_flag]:
        raise BadInput("give the output with --MNNModel DST (or --JsonFile DST to dump an MNN model as JSON)")
    dst = check_output_path(Path(seen[dst_flag]), [src_path], f"--{dst_flag}")
    testdir = seen.get("testdir")
    if testdir is not None and not (Path(testdir) / "input.json").is_file():
        subdirs = sorted(p for p in Path(testdir).glob("*/input.json")) if Path(testdir).is_dir() else []
        hint = (f"it is a multi-sample set and the converter checks one test dir: pass {subdirs[0].parent}"
                if subdirs else "give an MNN test dir (make one with 'mnnq testdir make')")
        raise BadInput(f"--testdir {testdir} has no input.json; {hint}")

    with tempfile.TemporaryDirectory(prefix="mnnq-convert-") as work:
        staged = Path(work) / "out" / dst.name
        staged.parent.mkdir()
        result = _run(replace_flag(argv, dst_flag, str(staged)), work)
        _echo(result.output, out)
        _raise_if_crashed(result, dst)
        if "Framework Input ERROR" in result.output:
            raise BadInput(f"-f {framework}: this MNN converter cannot read that format "
                           f"(export the model to ONNX and use -f ONNX)")
        if not staged.is_file() or staged.stat().st_size == 0:
            raise BadInput(f"the converter wrote no model from {src_path}: {_last_error(result.output)}")
        if testdir is not None:
            _check_test(result.output, testdir, dst)
        # Side files (e.g. --saveExternalData's DST.weight) first, the model last.
        written = []
        for path in sorted(staged.parent.iterdir(), key=lambda p: p == staged):
            atomic_copy(path, dst.with_name(path.name))
            written.append(f"{dst.with_name(path.name)} ({path.stat().st_size} bytes)")
    out.print(f"mnnq: wrote {', '.join(written)}" + (f"; --testdir check passed ({testdir})" if testdir else ""),
              markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


_TESTERROR = re.compile(r"TESTERROR (\S+) value error : absMaxV:(\S+) - DiffMax (\S+)")


def _check_test(output: str, testdir: str, dst: Path) -> None:
    failures = _TESTERROR.findall(output)
    threshold = re.search(r"thredhold is (\S+)", output)
    thr = threshold.group(1) if threshold else "0.01"
    if failures:
        detail = "; ".join(f"output {name} max|diff| {diff} > {thr} x max|ref| {absmax}"
                           for name, absmax, diff in failures)
        raise BadInput(f"--testdir check failed against {testdir}: {detail}; {dst} was not written "
                       "(raise --thredhold or fix the test set)")
    if "TEST_SUCCESS" not in output:
        raise BadInput(f"--testdir check could not run on {testdir}: {_last_error(output)}; {dst} was not written")
