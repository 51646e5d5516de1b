"""mnnq's version, in a module of its own: reports and test-set metadata record it without
importing the package's public API (``mnnq/__init__`` imports :mod:`mnnq.api`)."""

__version__ = "0.1.0"
