"""min_max: asymmetric min-max weight quantization (the converter's default mode)."""
from mnnq.plugin import WeightMethod, hookimpl, qdq_min_max, underflows_min_max


@hookimpl
def mnnq_weight_methods():
    yield WeightMethod(
        name="min_max",
        summary="asymmetric: scale = (max - min) / (2^b - 1), offset = min, per channel or block",
        asymmetric=True,
        hqq=False,
        quantize_dequantize=qdq_min_max,
        underflows=underflows_min_max,
    )
