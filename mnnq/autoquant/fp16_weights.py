"""auto-quant's ``--fp16-float-weights``: store the weights MNN cannot quantize as fp16.

MNN's weight quantization leaves float every weight outside a conv: a MatMul/Gemm weight
shared by more than 4 ops (an unrolled recurrent cell), Add/Mul constants, embedding tables
(see :mod:`mnnq.mnn_backend.weight_bytes`). The converter's only route to quantize a shared
MatMul weight (``--optimizePrefer 2``) copies it into every op, which makes the file bigger for
any weight shared by 4 or more ops at 8 bits. What does pay off is the converter's ``--fp16``,
run as a second conversion of the written model: it halves those float bytes and leaves the
quantized convs untouched. The result is measured like any candidate and kept only when it
meets the rate and is smaller.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Tuple

from mnnq.measure import Measurement
from mnnq.mnn_backend.converter import store_float_weights_fp16

MB = 1024.0 * 1024.0


def with_fp16_float_weights(written: Path, measured: Measurement, measure: Callable[[Path], Measurement],
                            metric: str, meets: Callable[[float], bool]) -> Tuple[Path, Measurement, str]:
    """``(model, measurement, note)``: ``written`` re-written with its float weights as fp16
    (``<written>-fp16.mnn`` beside it) and measured by ``measure`` when that is smaller and
    ``meets`` the rate in ``metric``; else ``written`` and ``measured`` unchanged, the note
    saying why."""
    half = written.with_name(written.stem + "-fp16.mnn")
    store_float_weights_fp16(written, half)
    before, after = written.stat().st_size, half.stat().st_size
    if after >= before:
        return written, measured, (f"--fp16-float-weights: no float weights to halve ({before / MB:.3f} MB -> "
                                   f"{after / MB:.3f} MB); the float32 model was kept")
    trial = measure(half)
    error, base = trial.error(metric), measured.error(metric)
    if not meets(error):
        return written, measured, (f"--fp16-float-weights: with the float weights as fp16 ({after / MB:.3f} MB) "
                                   f"the model measured {metric} {error:.4g}, over the rate; the float32 model "
                                   f"({before / MB:.3f} MB, {metric} {base:.4g}) was kept")
    return half, trial, (f"float weights stored as fp16 (--fp16-float-weights): {before / MB:.3f} MB -> "
                         f"{after / MB:.3f} MB, {metric} {base:.4g} -> {error:.4g}; `mnnq apply` rebuilds this "
                         "model with --hqq as used and --fp16-float-weights")
