"""MAX_ABS: quantized.out's default INT8 weight scales, ``s_c = max|w_c| / C`` per output channel.

For full INT8 (``mnnq quantize``) it gives the per-channel scales of the params file. Used for
weight-only quantization it is the converter's own symmetric encoding (``asymmetric: false``),
simulated exactly by ``quantize_dequantize`` (:mod:`mnnq.weightquant`).
"""
from mnnq.plugin import WeightMethod, channel_scales_max_abs, hookimpl, qdq_max_abs, underflows_max_abs


@hookimpl
def mnnq_weight_methods():
    yield WeightMethod(
        name="MAX_ABS",
        summary="full INT8: symmetric per-channel max|w|/C (quantized.out's MAX_ABS); weight-only: symmetric",
        asymmetric=False,
        hqq=False,
        quantize_dequantize=qdq_max_abs,
        underflows=underflows_max_abs,
        channel_scales=channel_scales_max_abs,
    )
