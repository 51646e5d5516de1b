"""hqq: the converter's ``--hqq`` (asymmetric, zero point optimised by half-quadratic steps)."""
from mnnq.plugin import WeightMethod, hookimpl, qdq_hqq, underflows_hqq


@hookimpl
def mnnq_weight_methods():
    yield WeightMethod(
        name="hqq",
        summary="asymmetric min-max scale, zero point refined by 20 HQQ proximal steps (--hqq)",
        asymmetric=True,
        hqq=True,
        quantize_dequantize=qdq_hqq,
        underflows=underflows_hqq,
        # HQQ only moves the zero point of min-max quantization: its noise tracks min-max's,
        # which costs a twentieth to compute.
        estimate_with="min_max",
        default=True,  # auto-quant's method with --hqq 1 (auto_quant.py's default)
    )
