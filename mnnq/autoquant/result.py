"""What an auto-quant run produced: the written model's measurement, per-layer settings,
trials and where the time went."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from mnnq.contracts import Trial
from mnnq.measure import Measurement
from mnnq.mnn_backend.weight_bytes import WeightAccount


@dataclass
class LayerRow:
    name: str
    kind: str
    shape: str
    bits: int
    block: int
    reason: str = ""


@dataclass
class AutoQuantResult:
    model: Path
    quant_model: Path
    params_path: Path
    rate: float
    metric: str
    met: bool
    errors: Dict[str, float]
    simulated_error: Optional[float]
    float_errors: Dict[str, float]
    memory_mode: str
    method: str
    evaluator: str
    strategies: List[str]
    layers: List[LayerRow]
    size_before: int
    size_after: int
    trials: List[Trial]
    seconds: float
    notes: List[str] = field(default_factory=list)
    stopped_early: bool = False
    measurement: Optional[Measurement] = None
    timing: dict = field(default_factory=dict)  # the breakdown: phases and trial costs (engine.timing_report)
    weights: Optional[WeightAccount] = None  # the written file's weight bytes: quantized, float and why

    @property
    def status(self) -> str:
        return "MET" if self.met else "MISSED"
