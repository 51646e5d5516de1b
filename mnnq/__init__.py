"""mnnq: quantize MNN models to an error budget, prove it, and keep it proven in CI."""

__version__ = "0.1.0"

from mnnq.hookspecs import hookimpl  # noqa: E402  (plugin authors import it from here)
from mnnq.errors import BadInput, MnnqError, NativeFailure, PluginError  # noqa: E402
from mnnq import api as _api  # noqa: E402
from mnnq.api import Result, auto_quant, validate  # noqa: E402
import mnnq.quantize as _quantize_package  # noqa: E402

# ``mnnq.quantize`` stays the full-INT8 subpackage (mnnq.quantize.engine, ...); calling it runs
# mnnq.api.quantize. A plain function of that name would hide the subpackage.
quantize = _api.make_callable(_quantize_package)

__all__ = ["hookimpl", "__version__", "auto_quant", "quantize", "validate", "Result",
           "MnnqError", "BadInput", "NativeFailure", "PluginError"]
