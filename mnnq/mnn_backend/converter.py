"""MNN's converter, called as ``_tools.mnnconvert`` in a child process.

Success is judged from the written file and the printed lines, never from the return value:
the converter returns True even when it wrote nothing or ignored a malformed params file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from mnnq.errors import BadInput, NativeFailure
from mnnq.mnn_backend.native import Child, ChildJob, Limits, NativeRun, probe_limits, run_tool, start_tool, tool_result

# Lines the converter prints when it ignored the compression params file and wrote a float model.
PARAMS_REJECTED_MARKERS = ("json2protobuf", "Parse compression params", "parse compress")
# Printed when --hqq really took effect.
HQQ_MARKER = "Use HQQ"


def params_rejected(run: NativeRun, dst: Path) -> bool:
    """Whether the converter printed that it ignored the compression params file (it then
    writes a float model); if so ``dst`` is deleted. Callers raise their own error."""
    lowered = run.output.lower()
    if any(marker.lower() in lowered for marker in PARAMS_REJECTED_MARKERS):
        Path(dst).unlink(missing_ok=True)
        return True
    return False


def _check_written(run: NativeRun, dst: Path, what: str) -> None:
    if run.crashed:
        raise NativeFailure(
            f"MNN converter crashed ({run.crash_text()}) while {what}; see the converter output below",
            tail=run.tail(),
        )
    if not dst.is_file() or dst.stat().st_size == 0:
        raise NativeFailure(f"MNN converter wrote no model while {what}", tail=run.tail())


def converter_argv(src: Path, out: Path, extra: Sequence[str] = (), source_format: str = "MNN") -> List[str]:
    """``mnnconvert`` reading ``src`` (``source_format``) and writing ``out``, then ``extra``."""
    return ["mnnconvert", "-f", source_format, "--modelFile", str(src), "--MNNModel", str(out),
            "--bizCode", "mnnq", *extra]


def convert(
    src: Path,
    dst: Path,
    source_format: str = "MNN",
    extra: Sequence[str] = (),
    what: str = "converting",
    limits: Optional[Limits] = None,
) -> NativeRun:
    """Convert ``src`` into ``dst`` (written inside a temporary folder, then moved)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_file():
        raise BadInput(f"model not found: {src}")
    with tempfile.TemporaryDirectory(prefix="mnnq-convert-") as work:
        out = Path(work) / "out.mnn"
        argv = converter_argv(src, out, extra, source_format)
        run = run_tool("mnnconvert", argv, cwd=work, limits=limits)
        _check_written(run, out, what)
        _place(out, dst)
    return run


def _place(out: Path, dst: Path) -> None:
    """Move a converter's ``out`` (in a folder about to be dropped) to ``dst``, whole or not at
    all (through a temporary name)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_dst = dst.with_name(f".{dst.name}.mnnq-tmp")
    try:
        shutil.move(str(out), str(tmp_dst))
        os.replace(tmp_dst, dst)
    except BaseException:
        tmp_dst.unlink(missing_ok=True)
        raise


def check_float_model(src: Path) -> NativeRun:
    """Make sure ``src`` is a model the converter can read (in a child, under
    :func:`~mnnq.mnn_backend.native.probe_limits`); raise BadInput / NativeFailure if not.

    The converter accepts some damaged files the runtime cannot load (or crashes on): before
    running a user's file in-process, also run it in a child (:mod:`mnnq.mnn_backend.isolated`).
    """
    src = Path(src)
    if not src.exists():
        raise BadInput(f"model not found: {src} (give the float .mnn model with --model)")
    if src.is_dir() or src.stat().st_size == 0:
        raise BadInput(f"model file is empty or not a file: {src}")
    with tempfile.TemporaryDirectory(prefix="mnnq-check-") as work:
        out = Path(work) / "probe.mnn"
        try:
            return convert(src, out, what=f"reading {src}", limits=probe_limits(src))
        except NativeFailure as exc:
            raise NativeFailure(f"not a readable MNN model: {src} ({exc}); re-export it with MNNConvert",
                                tail=exc.tail) from None


class TemplateRun(ChildJob):
    """The converter listing a model's layers in a child (see :func:`start_params_template`)."""

    def __init__(self, src: Path, limits: Optional[Limits]):
        self.src = Path(src)
        self._argv: List[str] = []

        def start(work: Path) -> Child:
            self._argv = converter_argv(self.src.resolve(), work / "out.mnn",
                                        ["--compressionParamsFile", str(work / "template.json")])
            return start_tool("mnnconvert", self._argv, cwd=str(work), limits=limits)

        super().__init__("mnnq-template-", start)

    def result(self, keep_model: Optional[Path] = None) -> dict:
        """The params template; ``keep_model`` also keeps the converter's float re-write of the
        model (the file a weight-quantizing conversion starts from) at that path."""
        try:
            run = tool_result("mnnconvert", self._argv, self._child)
            params, out = self.work / "template.json", self.work / "out.mnn"
            _check_written(run, out, f"listing the layers of {self.src}")
            if not params.is_file():
                raise NativeFailure(f"MNN converter wrote no params template for {self.src}", tail=run.tail())
            try:
                template = json.loads(params.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise NativeFailure(f"MNN converter wrote an unreadable params template for {self.src} ({exc})",
                                    tail=run.tail()) from None
            if keep_model is not None:
                shutil.move(str(out), str(keep_model))
            return template
        finally:
            self._work.cleanup()


def start_params_template(src: Path, limits: Optional[Limits] = None) -> TemplateRun:
    """Start the converter writing the compression params template for ``src`` (one entry per
    weight-quantizable layer); ``.result()`` waits for it."""
    return TemplateRun(src, limits)


def params_template(src: Path, limits: Optional[Limits] = None) -> dict:
    """The compression params template the converter writes for ``src`` (one entry per
    weight-quantizable layer)."""
    return start_params_template(src, limits).result()


def weight_quantize(
    src: Path,
    dst: Path,
    params: dict,
    hqq: bool,
    asymmetric: bool,
    extra: Sequence[str] = (),
) -> NativeRun:
    """Write a weight-quantized ``dst`` from float ``src`` with a compression params dict.

    Flags follow auto_quant.py: ``--weightQuantBits 8`` as the default for listed layers,
    ``--alignDenormalizedValue 0``; ``--hqq`` when asked.
    """
    return start_weight_quantize(src, params, hqq, asymmetric, extra).result(Path(dst))


class WeightQuantizeRun(ChildJob):
    """The converter writing a weight-quantized model in a child (see
    :func:`start_weight_quantize`): ``result(dst)`` waits, checks and moves it to ``dst``;
    ``cancel()`` when it is no longer wanted."""

    def __init__(self, src: Path, params: dict, hqq: bool, asymmetric: bool, extra: Sequence[str] = ()):
        src = Path(src).resolve()
        if not src.is_file():
            raise BadInput(f"model not found: {src}")
        self.hqq = hqq
        self._argv: List[str] = []

        def start(work: Path) -> Child:
            pfile = work / "params.json"
            pfile.write_text(json.dumps(params, indent=1))
            # The converter reads only the "=" spelling of this flag: "--weightQuantAsymmetric 1"
            # is taken as false, which also silently disables --hqq.
            self._argv = converter_argv(src, work / "out.mnn", [
                "--weightQuantBits", "8", "--weightQuantAsymmetric=" + ("1" if asymmetric else "0"),
                "--compressionParamsFile", str(pfile), "--alignDenormalizedValue", "0",
                *(["--hqq"] if hqq else []), *extra])
            return start_tool("mnnconvert", self._argv, cwd=str(work))

        super().__init__("mnnq-params-", start)

    def result(self, dst: Path) -> NativeRun:
        try:
            run = tool_result("mnnconvert", self._argv, self._child)
            out = self.work / "out.mnn"
            _check_written(run, out, "writing the weight-quantized model")
            if self.hqq and HQQ_MARKER not in run.output:
                raise NativeFailure("MNN converter did not apply --hqq (it needs asymmetric quantization)",
                                    tail=run.tail())
            if params_rejected(run, out):
                raise BadInput("MNN converter rejected the compression params (it would write a float model): "
                               + run.tail(3).replace("\n", " "))
            _place(out, Path(dst).resolve())
            return run
        finally:
            self._work.cleanup()


def start_weight_quantize(src: Path, params: dict, hqq: bool, asymmetric: bool, extra: Sequence[str] = ()
                          ) -> WeightQuantizeRun:
    """Start the converter writing a weight-quantized model from float ``src`` (see
    :func:`weight_quantize`); the caller does other work, then takes ``.result(dst)``."""
    return WeightQuantizeRun(src, params, hqq, asymmetric, extra)


def store_float_weights_fp16(src: Path, dst: Path) -> NativeRun:
    """Re-write the weight-quantized ``src`` as ``dst`` with the weights it left float stored
    as fp16 (the converter's ``--fp16``): float constants (shared MatMul/Gemm weights, Add/Mul
    operands, embedding tables) and float conv weights; conv biases, BatchNorm / LayerNorm
    parameters stay float32. Quantized convs are kept as they are: the converter casts a conv to
    fp16 only when it has no quantized weights. It must be a second conversion: with ``--fp16``
    and weight quantization in one, every conv is cast to fp16 first and none is quantized."""
    return convert(src, dst, "MNN", ["--fp16", "--alignDenormalizedValue", "0"],
                   what="storing the float weights as fp16")
