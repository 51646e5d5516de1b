"""max_abs: symmetric abs-max weight quantization (converter ``asymmetric: false``)."""
from mnnq.plugin import WeightMethod, channel_scales_max_abs, hookimpl, qdq_max_abs, underflows_max_abs


@hookimpl
def mnnq_weight_methods():
    yield WeightMethod(
        name="max_abs",
        summary="symmetric: scale = max|w| / (2^(b-1)-1) per channel or block",
        asymmetric=False,
        hqq=False,
        quantize_dequantize=qdq_max_abs,
        underflows=underflows_max_abs,
        channel_scales=channel_scales_max_abs,
        default=True,  # auto-quant's method with --hqq 0
    )
