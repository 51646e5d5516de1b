"""The auto-quant engine: a float model in, a weight-quantized model within the budget out.

One run is five named stages, each a function of what the previous ones produced:

1. **prepare** (:mod:`mnnq.autoquant.prepare`): read the model safely, list its layers, run the
   float model, set up the evaluators (fast: in-process simulation; exact: convert and run);
2. **search**: the pipeline's search-phase strategies, then its finish-phase ones, propose and
   accept per-layer settings (:mod:`mnnq.autoquant.pipeline` picks them from their own data);
3. **write**: the converter writes the final settings and the written file is measured on the
   whole test set; if it misses a budget the simulation met, the finish phase runs again on
   exact measurements and the model is written again;
4. **outputs**: model, params and report are staged and renamed into place together;
5. **report**: the result, with the per-layer table, trials and the timing breakdown.

Ctrl-C stops the run with :class:`~mnnq.errors.Interrupted` saying where it stopped; nothing is
written. The engine names no plugin: weight method, metric and strategies come from the
records' own data.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Tuple

from mnnq.autoquant.context import Evaluation, Search, StopSearch, Trial, strategy_view
from mnnq.autoquant.options import AutoQuantOptions, check_options
from mnnq.autoquant.pipeline import Pipeline, choose
from mnnq.autoquant.prepare import Prepared, prepare
from mnnq.autoquant.result import AutoQuantResult, LayerRow
from mnnq.autoquant.timing import Timings
from mnnq.autoquant.workers import WorkerLauncher
from mnnq.errors import Interrupted, PluginError
from mnnq.fileio import OutputSet
from mnnq.inputs.sources import resolve_model
from mnnq.layers import effective_block
from mnnq.measure import Measurement
from mnnq.mnn_backend.weight_bytes import account_weights, kept_float_reason
from mnnq.plugin_manager import MnnqPluginManager
from mnnq.records import Metric, WeightMethod
from mnnq.testset import load_testset

__all__ = ["AutoQuantOptions", "AutoQuantResult", "LayerRow", "run_auto_quant"]


@dataclass(frozen=True)
class Plugins:
    """The records one run uses, resolved from the options before anything runs."""

    metric: str
    metrics: Mapping[str, Metric]
    method: WeightMethod
    noise_method: WeightMethod       # ranks settings (the method's estimate_with, else itself)
    pipeline: Pipeline


class Progress:
    """Where a run is, for the one line an interrupted run prints."""

    def __init__(self, metric: str, rate: float):
        self.metric, self.rate = metric, rate
        self.stage = "checking the inputs"
        self.search: Optional[Search] = None

    def text(self) -> str:
        trials = self.search.trials if self.search is not None else ()
        done = [t.error for t in trials if not t.quick and math.isfinite(t.error)]
        best = (f"best {self.metric} so far {min(done):.6g} (rate {self.rate:g})" if done
                else "no full trial finished yet")
        return (f"interrupted while {self.stage}, after {len(trials)} trial{'s' if len(trials) != 1 else ''}; "
                f"{best}; nothing was written")


def run_auto_quant(opts: AutoQuantOptions, pm: MnnqPluginManager,
                   on_trial: Callable[[Trial], None] = lambda t: None,
                   started: Optional[float] = None) -> AutoQuantResult:
    """Search, write and re-measure; raises :class:`BadInput` / :class:`NativeFailure` with
    nothing written, :class:`Interrupted` on Ctrl-C (nothing written either). ``started``: the
    ``time.monotonic()`` of the command's start, so the report's breakdown includes start-up."""
    progress = Progress(opts.metric, opts.rate)
    timings = Timings()
    begun = time.monotonic()
    if started is not None:
        timings.add_phase("start-up", begun - started)
    try:
        return _run(opts, pm, on_trial, progress, timings, started if started is not None else begun)
    except KeyboardInterrupt:
        raise Interrupted(progress.text()) from None


def _run(opts: AutoQuantOptions, pm: MnnqPluginManager, on_trial: Callable[[Trial], None],
         progress: Progress, timings: Timings, started: float) -> AutoQuantResult:
    check_options(opts)
    plugins = resolve_plugins(opts, pm)
    progress.metric = plugins.metric
    testset = load_testset(Path(opts.test_dir))
    model = resolve_model(Path(opts.model))  # an ONNX / TFLite source becomes its cached float .mnn
    with tempfile.TemporaryDirectory(prefix="mnnq-autoquant-") as tmp, contextlib.ExitStack() as cleanup:
        work = Path(tmp)
        progress.stage = "reading the model"
        with trial_workers(plugins, opts, pm, testset, work) as launcher:
            prepared = prepare(model, testset, plugins.method, plugins.noise_method, plugins.metrics,
                               plugins.metric, opts.evaluator, work, timings, on_read=launcher.early)
            cleanup.callback(prepared.exact.cancel_ahead)  # a conversion started ahead ends with the run
            workers = launcher.ready(prepared.fast, prepared.rewritten, prepared.layers)
            search = new_search(prepared, plugins, opts, on_trial, timings, workers.many if workers.started else None)
            progress.search = search
            stopped = run_strategies(search, plugins.pipeline, progress)
        for note in workers.notes:
            search.note(note)
        timings.workers = {"processes": workers.started, "trials": workers.answered}
        search_costs = (timings.snapshot(), dict(timings.counts))
        simulated = search.measured_error if not search.exact else None
        progress.stage = "writing and re-measuring the model"
        final = work / "final.mnn"
        params, measured = write_final(search, prepared, plugins.pipeline, final, stopped, simulated, progress,
                                       timings)
        if _try_fp16(opts.fp16_float_weights, final):
            progress.stage = "storing the float weights as fp16"
            with timings.phase("fp16 float weights"):
                final, measured = _fp16_float_weights(search, prepared, final, measured)
        result = build_result(opts, prepared, plugins, search, final, measured, simulated, stopped)
        result.seconds = time.monotonic() - started
        result.timing = timing_report(timings, search.trials, search_costs)
        progress.stage = "writing the outputs"
        _write_outputs(opts, final, params, result)
    return result


def resolve_plugins(opts: AutoQuantOptions, pm: MnnqPluginManager) -> Plugins:
    """The metric, weight method and pipeline the options name (PluginError for unknown names)."""
    metrics = pm.metrics()
    metric = pm.metric(opts.metric).name
    if opts.weight_method:
        method = pm.weight_method(opts.weight_method)
    else:
        defaults = [m for m in pm.weight_methods().values() if m.default and m.hqq == bool(opts.hqq)]
        if len(defaults) != 1:
            found = ", ".join(m.name for m in defaults) or "none"
            raise PluginError(f"expected one default weight method with hqq={bool(opts.hqq)}, found {found}; "
                              "name one with --weight-method")
        method = defaults[0]
    noise_method = pm.weight_methods().get(method.estimate_with or "", method)
    pipeline = choose(pm.search_strategies(), opts.strategies, opts.switched_off, pm.search_strategy)
    return Plugins(metric, metrics, method, noise_method, pipeline)


@contextlib.contextmanager
def trial_workers(plugins: Plugins, opts: AutoQuantOptions, pm: MnnqPluginManager, testset, work: Path
             ) -> Iterator[WorkerLauncher]:
    """The ``--jobs`` workers (``jobs - 1`` processes sharing independent simulated trials with
    this one), stopped when the block ends. Workers load plugins by entry point: a weight method
    or metric registered only in this process keeps every trial here."""
    local = [name for name in (plugins.method.name,) if not pm.from_entry_point("mnnq_weight_methods", name)]
    local += [name for name in plugins.metrics if not pm.from_entry_point("mnnq_metrics", name)]
    skip = (f"--jobs: every trial ran in this process ({', '.join(local)} is not an installed plugin)"
            if local and opts.job_count > 1 else None)
    launcher = WorkerLauncher(opts.job_count - 1, plugins.method.name, list(plugins.metrics), plugins.metric,
                              work, testset, skip)
    try:
        yield launcher
    finally:
        launcher.close()


def search_evaluation(prepared: Prepared, many: Optional[Callable] = None) -> Evaluation:
    """How the search measures: the in-process simulation (``many``: its workers), or
    converting and running when the simulation is unavailable."""
    fast = prepared.fast
    if fast is None:
        return exact_evaluation(prepared)
    return Evaluation("fast", False, fast.measure, fast.measure_until_miss, many, lambda: fast.quick.key,
                      within_budget=prepared.exact.convert_ahead)


def new_search(prepared: Prepared, plugins: Plugins, opts: AutoQuantOptions, on_trial: Callable[[Trial], None],
               timings: Timings, many: Optional[Callable] = None, evaluation: Optional[Evaluation] = None) -> Search:
    evaluation = evaluation or search_evaluation(prepared, many)
    return Search(
        {l.name: l for l in prepared.layers}, prepared.settings, prepared.candidates, float(opts.rate),
        plugins.metric, evaluation, prepared.oracle, memory_modes=opts.memory_modes,
        allow_low_bits=opts.select_bits, allow_blocks=opts.select_block,
        deadline=(time.monotonic() + opts.time_budget) if opts.time_budget else None,
        on_trial=on_trial, timings=timings, unmeasured_note="initial: all layers 8 bits, per channel")


def exact_evaluation(prepared: Prepared) -> Evaluation:
    exact = prepared.exact
    return Evaluation("exact", True, exact.measure, exact.measure_until_miss, quick_key=lambda: exact.quick.key)


def run_strategies(search: Search, pipeline: Pipeline, progress: Progress,
                   phases: Tuple[str, ...] = ("search", "finish")) -> bool:
    """Run the pipeline's strategies of ``phases`` on ``search``; True when the time budget
    stopped them (the best configuration so far is kept)."""
    view = strategy_view(search)
    strategies = [*(pipeline.search if "search" in phases else ()), *(pipeline.finish if "finish" in phases else ())]
    try:
        for strategy in strategies:
            progress.stage = f"searching (strategy {strategy.name})"
            with search.stage(strategy.name):
                strategy.run(view)
    except StopSearch:
        search.note("time budget spent: stopped with the best configuration found so far")
        return True
    return False


def write_final(search: Search, prepared: Prepared, pipeline: Pipeline, out: Path, stopped: bool,
                simulated: Optional[float], progress: Progress, timings: Timings) -> Tuple[dict, Measurement]:
    """Write ``search.settings`` to ``out`` with the converter and measure the file on the whole
    test set. When the written model misses a budget the simulation met, the finish phase runs
    again on exact measurements and the model is written again."""
    params, measured = _write_and_measure(search, prepared, out, timings)
    if search.meets(search.error) or search.exact or stopped:
        return params, measured
    mode = search.memory_mode
    simulation = f" (simulation with float activations: {simulated:.4g})" if simulated is not None else ""
    search.note(f"the written model measured {search.error:.4g} in memory mode {mode}{simulation}; "
                "finishing with exact measurements")
    search.switch_evaluation(exact_evaluation(prepared))
    progress.stage = "finishing on exact measurements"
    with timings.phase("exact finishing"):
        run_strategies(search, pipeline, progress, phases=("finish",))
    progress.stage = "writing and re-measuring the model"
    return _write_and_measure(search, prepared, out, timings)


def _write_and_measure(search: Search, prepared: Prepared, out: Path, timings: Timings
                       ) -> Tuple[dict, Measurement]:
    with timings.phase("final write + re-measure"):
        params, measured = prepared.exact.write_and_measure(search.guarded(search.settings), out,
                                                            search.memory_mode)
    search.set_error(measured.error(search.metric))
    return params, measured


# --fp16-float-weights auto tries fp16 storage when the float weights are at least this share of
# the written file (an embedding table, an unrolled cell's shared weights): below it, the second
# conversion would cost more time than the bytes are worth.
FP16_AUTO_SHARE = 0.25


def _try_fp16(option, written: Path) -> bool:
    if option == "auto":
        account = account_weights(written, {})
        return account.share(account.float_bytes) >= FP16_AUTO_SHARE
    return bool(option)


def _fp16_float_weights(search: Search, prepared: Prepared, written: Path, measured: Measurement
                        ) -> Tuple[Path, Measurement]:
    """``--fp16-float-weights``: the written model with its float weights as fp16, when that is
    smaller and still meets the budget (measured); else the model as written."""
    from mnnq.autoquant.fp16_weights import with_fp16_float_weights

    model, measured, note = with_fp16_float_weights(
        written, measured, lambda path: prepared.exact.measure_file(path, search.memory_mode), search.metric,
        search.meets)
    search.note(note)
    return model, measured


def build_result(opts: AutoQuantOptions, prepared: Prepared, plugins: Plugins, search: Search, final: Path,
            measured: Measurement, simulated: Optional[float], stopped: bool) -> AutoQuantResult:
    settings = search.guarded(search.settings)
    rows = []
    for layer in prepared.layers:
        s = settings[layer.name]
        rows.append(LayerRow(layer.name, layer.kind, layer.shape_text(), s.bits,
                             effective_block(layer, s.block) if s.bits else -1, s.reason))
    return AutoQuantResult(
        model=prepared.model, quant_model=Path(opts.quant_model), params_path=opts.params_path,
        rate=float(opts.rate), metric=plugins.metric, met=search.meets(measured.error(plugins.metric)),
        errors=dict(measured.errors), simulated_error=simulated, float_errors=dict(prepared.float_measure.errors),
        memory_mode=search.memory_mode, method=plugins.method.name,
        evaluator="fast" if prepared.fast is not None else "exact", strategies=plugins.pipeline.names,
        layers=rows, size_before=prepared.model.stat().st_size, size_after=final.stat().st_size,
        trials=list(search.trials), seconds=0.0, notes=prepared.notes + search.notes, stopped_early=stopped,
        measurement=measured,
        weights=account_weights(final, {r.name: kept_float_reason(r.reason) for r in rows if not r.bits}))


def _write_outputs(opts: AutoQuantOptions, final: Path, params: dict, result: AutoQuantResult) -> None:
    """Model, params file and (with --report-json) the report, renamed into place together."""
    with OutputSet() as outputs:
        outputs.copy(final, Path(opts.quant_model))
        outputs.write_text(opts.params_path, json.dumps(params, indent=1) + "\n")
        if opts.report_json is not None:
            from mnnq.report import autoquant_dict

            outputs.write_text(Path(opts.report_json), json.dumps(autoquant_dict(result), indent=2) + "\n")


def timing_report(timings: Timings, trials, search_costs: Tuple[Mapping[str, float], Mapping[str, int]]) -> dict:
    """The breakdown for the report: phases (they add up to the wall time), what trials cost,
    and what one simulated trial costs: per weight change (quantize, swap, load) and per sample
    run (forward), from the search's share of the costs."""
    report = timings.as_dict()
    costs, counts = search_costs
    fast = [t for t in trials if t.evaluator == "fast"]
    report["trials"] = {"total": len(trials), "fast": len(fast), "exact": len(trials) - len(fast),
                        "fast_seconds": round(sum(t.seconds for t in fast), 6),
                        "worker_processes": timings.workers.get("processes", 0),
                        "in_workers": timings.workers.get("trials", 0),
                        "converted_ahead": timings.converted_ahead["started"],
                        "converted_ahead_used": timings.converted_ahead["used"]}
    if fast:
        n = len(fast)
        report["per_fast_trial_s"] = {
            "total": round(sum(t.seconds for t in fast) / n, 6),
            **{k: round(costs.get(k, 0.0) / n, 6) for k in ("weight_quant", "swap", "load")},
            "samples_run": round(counts.get("forward", 0) / n, 3),
            "forward_per_sample": round(costs.get("forward", 0.0) / max(counts.get("forward", 0), 1), 6),
        }
    return report
