"""mnnq: quantize MNN models to an error budget, prove it, and keep it proven in CI."""

__version__ = "0.1.0"

from mnnq.hookspecs import hookimpl  # noqa: E402  (plugin authors import it from here)

__all__ = ["hookimpl", "__version__"]
