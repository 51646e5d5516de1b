"""Example mnnq plugins: ``percentile`` (activation calibration), ``snr_db`` (a metric) and
``margin`` (a finish-phase search strategy).

Each module is one plugin, registered in pyproject.toml under ``[project.entry-points.mnnq]``.
"""

__version__ = "0.1.0"
