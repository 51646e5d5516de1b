"""``mnnq tradeoff``: the size / error curve of one model, from one screening.

The auto-quant pipeline runs once per rate on one prepared model; every search shares its
measurements (:mod:`mnnq.autoquant.memo`), so the screening, which does not depend on the rate,
runs once. Each point is then written by the converter and its file measured on the whole test
set, like any auto-quant result; its params file (``q-<rate>.mnn.json``) rebuilds the same model
with ``mnnq apply``. The curve goes to ``tradeoff.json``, ``tradeoff.svg`` and the terminal.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Sequence

from mnnq.autoquant.context import Trial
from mnnq.autoquant.engine import (Progress, build_result, new_search, resolve_plugins, run_strategies,
                                   search_evaluation, trial_workers, write_final)
from mnnq.autoquant.memo import Memory, remembering
from mnnq.autoquant.options import AutoQuantOptions, check_search_flags
from mnnq.autoquant.prepare import prepare
from mnnq.autoquant.result import AutoQuantResult
from mnnq.autoquant.timing import Timings
from mnnq.errors import BadInput, Interrupted
from mnnq.fileio import OutputSet
from mnnq.inputs.sources import resolve_model
from mnnq.plugin_manager import MnnqPluginManager
from mnnq.testset import load_testset


@dataclass
class TradeoffPoint:
    rate: float
    result: AutoQuantResult
    trials: int            # trials this point's search recorded
    new_trials: int        # of those, measured now (the others were answered from earlier points)


@dataclass
class Tradeoff:
    model: Path
    out: Path
    metric: str
    points: List[TradeoffPoint] = field(default_factory=list)
    size_before: int = 0
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return all(p.result.met for p in self.points)


def point_name(rate: float) -> str:
    return f"q-{rate:g}.mnn"


def check_rates(rates: Sequence[float]) -> List[float]:
    out = sorted({float(r) for r in rates}, reverse=True)
    if not out or any(not (r > 0) or r != r or r == float("inf") for r in out):
        raise BadInput(f"--rates needs positive numbers, got {', '.join(map(str, rates)) or 'none'}")
    return out


def run_tradeoff(opts: AutoQuantOptions, rates: Sequence[float], out: Path, pm: MnnqPluginManager,
                 on_trial: Callable[[Trial], None] = lambda t: None) -> Tradeoff:
    """Write one model and params file per rate into ``out`` (a new or empty folder), with
    ``tradeoff.json`` and ``tradeoff.svg``; nothing is written on bad input or Ctrl-C."""
    progress = Progress(opts.metric, max(rates) if rates else 0.0)
    try:
        return _run(opts, check_rates(rates), Path(out), pm, on_trial, progress)
    except KeyboardInterrupt:
        raise Interrupted(progress.text()) from None


def _run(opts: AutoQuantOptions, rates: List[float], out: Path, pm: MnnqPluginManager,
         on_trial: Callable[[Trial], None], progress: Progress) -> Tradeoff:
    started = time.monotonic()
    opts.rate = rates[0]
    check_search_flags(opts)
    _check_out(out, Path(opts.model))
    plugins = resolve_plugins(opts, pm)
    progress.metric = plugins.metric
    testset = load_testset(Path(opts.test_dir))
    model = resolve_model(Path(opts.model))
    curve = Tradeoff(model, out, plugins.metric, size_before=model.stat().st_size)
    with tempfile.TemporaryDirectory(prefix="mnnq-tradeoff-") as tmp, contextlib.ExitStack() as cleanup:
        work = Path(tmp)
        timings = Timings()
        staged = work / "points"
        staged.mkdir()
        with trial_workers(plugins, opts, pm, testset, work) as launcher:
            prepared = prepare(model, testset, plugins.method, plugins.noise_method, plugins.metrics,
                               plugins.metric, opts.evaluator, work, timings, on_read=launcher.early)
            cleanup.callback(prepared.exact.cancel_ahead)  # a conversion started ahead ends with the run
            workers = launcher.ready(prepared.fast, prepared.rewritten, prepared.layers)
            memory = Memory()
            for evaluator in (prepared.fast, prepared.exact):
                if evaluator is not None:
                    evaluator.quick.learning = False  # quick measurements keep one meaning across rates
            evaluation = remembering(search_evaluation(prepared, workers.many if workers.started else None), memory)
            for rate in rates:
                opts.rate = progress.rate = rate
                curve.points.append(_point(opts, rate, prepared, plugins, evaluation, memory, timings, on_trial,
                                           progress, staged))
        curve.notes = list(prepared.notes) + workers.notes
        curve.seconds = time.monotonic() - started
        _write_curve(curve, staged, out)
    return curve


def _point(opts, rate, prepared, plugins, evaluation, memory: Memory, timings, on_trial, progress,
           staged: Path) -> TradeoffPoint:
    """Search at ``rate``, then write and measure the point's model into ``staged``."""
    hits_before = memory.hits
    search = new_search(prepared, plugins, opts, on_trial, timings, evaluation=evaluation)
    progress.search = search
    stopped = run_strategies(search, plugins.pipeline, progress)
    simulated = search.measured_error if not search.exact else None
    final = staged / point_name(rate)
    progress.stage = f"writing and measuring the model for rate {rate:g}"
    params, measured = write_final(search, prepared, plugins.pipeline, final, stopped, simulated, progress, timings)
    point_opts = AutoQuantOptions(**{**opts.__dict__, "quant_model": final})
    result = build_result(point_opts, prepared, plugins, search, final, measured, simulated, stopped)
    (staged / (point_name(rate) + ".json")).write_text(json.dumps(params, indent=1) + "\n")
    trials = len(search.trials)
    return TradeoffPoint(rate, result, trials, trials - (memory.hits - hits_before))


def _check_out(out: Path, model: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out} must be a new or empty folder (it gets one model per rate)")
    if not out.parent.is_dir():
        raise BadInput(f"--out {out}: its parent folder does not exist; create it first")
    if out.resolve() == Path(model).resolve().parent:
        raise BadInput(f"--out {out} is the float model's folder; give a new folder")


def curve_dict(curve: Tradeoff) -> dict:
    return {
        "model": str(curve.model), "metric": curve.metric, "met": curve.met,
        "size_before_bytes": curve.size_before, "wall_time_s": curve.seconds, "notes": curve.notes,
        "points": [{
            "rate": p.rate, "status": p.result.status, "met": p.result.met,
            "error": p.result.errors[curve.metric], "errors": p.result.errors,
            "simulated_error": p.result.simulated_error, "memory_mode": p.result.memory_mode,
            "size_bytes": p.result.size_after, "size_ratio": p.result.size_after / max(curve.size_before, 1),
            "model": point_name(p.rate), "params": point_name(p.rate) + ".json",
            "trials": p.trials, "new_trials": p.new_trials,
            "layers": [{"name": r.name, "bits": r.bits, "block": r.block} for r in p.result.layers],
        } for p in curve.points],
    }


def _write_curve(curve: Tradeoff, staged: Path, out: Path) -> None:
    data = curve_dict(curve)
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        _stage_outputs(curve, data, staged, out)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _stage_outputs(curve: Tradeoff, data: dict, staged: Path, out: Path) -> None:
    from mnnq.report import tradeoff_svg

    with OutputSet() as outputs:
        for point in curve.points:
            name = point_name(point.rate)
            outputs.copy(staged / name, out / name)
            outputs.copy(staged / (name + ".json"), out / (name + ".json"))
        outputs.write_text(out / "tradeoff.json", json.dumps(data, indent=2) + "\n")
        outputs.write_text(out / "tradeoff.svg", tradeoff_svg(data))
