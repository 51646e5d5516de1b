"""Example mnnq plugins: ``percentile`` (activation calibration) and ``snr_db`` (a metric).

Each module is one plugin, registered in pyproject.toml under ``[project.entry-points.mnnq]``.
"""

__version__ = "0.1.0"
