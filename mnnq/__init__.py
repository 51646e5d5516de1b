"""mnnq: quantize MNN models to an error budget, prove it, and keep it proven in CI."""

from mnnq.version import __version__
from mnnq.hookspecs import hookimpl  # (plugin authors import it from here)
from mnnq.errors import BadInput, MnnqError, NativeFailure, PluginError
from mnnq import api as _api
from mnnq.api import Result, auto_quant, validate
import mnnq.quantize as _quantize_package

# ``mnnq.quantize`` stays the full-INT8 subpackage (mnnq.quantize.engine, ...); calling it runs
# mnnq.api.quantize. A plain function of that name would hide the subpackage.
quantize = _api.make_callable(_quantize_package)

__all__ = ["hookimpl", "__version__", "auto_quant", "quantize", "validate", "Result",
           "MnnqError", "BadInput", "NativeFailure", "PluginError"]
