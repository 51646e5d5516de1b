"""snr_db: signal-to-noise ratio of an output, in dB, reported as "dB short of 100 dB".

``SNR = 10 log10(sum(ref^2) / sum((out - ref)^2))``. mnnq's metrics are errors (higher is worse,
the budget holds when ``error <= rate``, and rates are positive), so the metric reports

    error = max(0, 100 - SNR)        (0 when the output is exact or SNR >= 100 dB)

and a budget of "at least S dB" is ``--rate (100 - S)``: ``--rate 70`` means SNR >= 30 dB.
:func:`rate_for` and :func:`snr_of` convert. An output whose reference is all zeros has no
signal and is skipped (``None``). The error of a model is the max over outputs and samples,
i.e. the worst (lowest) SNR.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mnnq.plugin import Metric, hookimpl

CEILING_DB = 100.0


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """SNR in dB of ``actual`` against ``reference`` (any equal sizes); ``inf`` when exact."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    noise = np.asarray(actual, dtype=np.float64).ravel() - ref
    signal_power = float(np.dot(ref, ref))
    noise_power = float(np.dot(noise, noise))
    if noise_power == 0.0:
        return float("inf")
    if signal_power == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal_power / noise_power))


def snr_error(reference: np.ndarray, actual: np.ndarray) -> Optional[float]:
    """The metric: ``max(0, 100 - SNR)``; ``None`` (skip) when the reference is all zeros."""
    ref = np.asarray(reference, dtype=np.float64)
    if not np.any(ref):
        return None
    return max(0.0, CEILING_DB - snr_db(ref, actual))


def rate_for(min_snr_db: float) -> float:
    """The ``--rate`` that requires an SNR of at least ``min_snr_db`` (30 -> 70)."""
    return CEILING_DB - float(min_snr_db)


def snr_of(error: float) -> float:
    """The worst SNR (dB) a reported error stands for (70 -> 30)."""
    return CEILING_DB - float(error)


@hookimpl
def mnnq_metrics():
    yield Metric(
        name="snr_db",
        summary=f"{CEILING_DB:g} dB minus the output SNR in dB (--rate 70 = SNR >= 30 dB); skips all-zero references",
        per_output=snr_error,
        display=lambda error: f"SNR {snr_of(error):.2f} dB",
    )
