"""What one auto-quant run is asked to do (the CLI's flags), and the checks made before
anything runs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from mnnq.errors import BadInput
from mnnq.fileio import check_output_path


@dataclass
class AutoQuantOptions:
    model: Path
    quant_model: Path
    test_dir: Path
    rate: float = 0.05
    select_bits: bool = True
    select_block: bool = True
    hqq: bool = True
    metric: str = "max_rel"
    weight_method: Optional[str] = None  # default: the default weight method whose hqq matches `hqq`
    strategies: Optional[List[str]] = None  # default: every default strategy, by phase and order
    evaluator: str = "auto"  # auto | fast | exact
    memory_mode: str = "auto"  # auto (low, then normal) | low | normal
    time_budget: Optional[float] = None
    jobs: Union[int, str] = "auto"  # processes for simulated trials; auto = one per usable CPU (<= 4)
    report_json: Optional[Path] = None  # also write the report (with the model, atomically)
    # store the weights left float as fp16 when the model still meets the rate: True, False, or
    # "auto" (try it when such weights are at least FP16_AUTO_SHARE of the written file)
    fp16_float_weights: Union[bool, str] = "auto"

    @property
    def params_path(self) -> Path:
        return Path(str(self.quant_model) + ".json")

    @property
    def switched_off(self) -> List[str]:
        """The auto_quant.py switches turned off (strategies name them in ``disabled_by``)."""
        return [name for name in ("select_bits", "select_block") if not getattr(self, name)]

    @property
    def job_count(self) -> int:
        if self.jobs == "auto":
            from mnnq.autoquant.workers import auto_jobs

            return auto_jobs()
        return int(self.jobs)

    @property
    def memory_modes(self) -> tuple:
        """The runtime memory modes the budget may hold in, the preferred first."""
        return ("low", "normal") if self.memory_mode == "auto" else (self.memory_mode,)


def check_options(opts: AutoQuantOptions) -> None:
    """BadInput for a flag out of range, a missing model or an output path that would
    overwrite an input."""
    check_search_flags(opts)
    model = Path(opts.model)
    check_output_path(Path(opts.quant_model), [model], "--quant_model")
    check_output_path(opts.params_path, [model], "--quant_model (params file)")
    if opts.report_json is not None:
        check_output_path(Path(opts.report_json), [model, opts.quant_model, opts.params_path], "--report-json")


def check_search_flags(opts: AutoQuantOptions) -> None:
    """BadInput for a search flag out of range or a missing model."""
    rate = opts.rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise BadInput(f"--rate must be a positive number, got {opts.rate!r}")
    if opts.fp16_float_weights not in (True, False, "auto"):
        raise BadInput(f"--fp16-float-weights must be 0, 1 or auto, got {opts.fp16_float_weights!r}")
    if opts.memory_mode not in ("auto", "low", "normal"):
        raise BadInput(f"--memory-mode must be auto, low or normal, got {opts.memory_mode!r}")
    if opts.jobs != "auto" and (isinstance(opts.jobs, bool) or not isinstance(opts.jobs, int) or opts.jobs < 1):
        raise BadInput(f"--jobs must be a positive integer or auto, got {opts.jobs!r}")
    if opts.evaluator not in ("auto", "fast", "exact"):
        raise BadInput(f"--evaluator must be auto, fast or exact, got {opts.evaluator!r}")
    model = Path(opts.model)
    if not model.exists():
        raise BadInput(f"model not found: {model} (give the float .mnn model with --model)")
    if not model.is_file() or model.stat().st_size == 0:
        raise BadInput(f"model is empty or not a file: {model}")
