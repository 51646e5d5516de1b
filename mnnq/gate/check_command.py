"""``mnnq check``: validate every model the project config lists, and print one summary.

``--rebuild`` first rewrites each quantized file with its job (auto-quant, quantize or apply).
File arguments (what pre-commit passes) narrow the check to the models those files belong to:
a listed quantized or float model, a file inside a test dir, a job's params or config file;
a changed config checks every model. Exit 0 all within budget, 1 any over it, 2 any that
cannot be measured (or a bad config).
"""
from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from rich.console import Console

from mnnq.cli_args import FAILURES, add_flag, failure_text, plugin_manager, report_failure
from mnnq.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MISSED, EXIT_OK, BadInput, MnnqError
from mnnq.gate.project import ModelSpec, ProjectConfig, find_config, load_config
from mnnq.gate.validate_command import add_report_flags, report_paths


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check", help="validate every model in mnnq.yaml / [tool.mnnq] (optionally rebuilding them first)",
        description="Validate every model the project config lists and print one summary: exit 0 all "
                    "within budget, 1 any over it, 2 any that cannot be measured (or a bad config).")
    add_flag(p, "--config", default=None,
             help="project config (mnnq.yaml or pyproject.toml); default: found from the current folder up")
    add_flag(p, "--rebuild", action="store_true", help="rewrite each quantized file with its job before validating")
    add_flag(p, "--model", action="append", default=None, metavar="NAME",
             help="check only this model (repeatable; default: all)")
    add_flag(p, "--no-layers", action="store_true", help="skip the per-layer errors against the float model")
    add_report_flags(p)
    p.add_argument("files", nargs="*", help="changed files (as pre-commit passes them): check only the models they "
                                            "belong to")
    return p


# ---------------------------------------------------------------------------------------------
# Which models


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def affected(config: ProjectConfig, files: Iterable[str]) -> List[ModelSpec]:
    """The models that ``files`` (paths relative to the current folder) belong to."""
    changed = [Path(f).resolve() for f in files]
    if config.path.resolve() in changed:
        return list(config.models)
    picked = []
    for spec in config.models:
        own = {p.resolve() for p in spec.files()}
        test_dir = spec.test_dir.resolve()
        if any(f in own or _inside(f, test_dir) for f in changed):
            picked.append(spec)
    return picked


def select(config: ProjectConfig, names: Optional[Sequence[str]], files: Sequence[str]) -> List[ModelSpec]:
    models = list(config.models)
    if names:
        known = {m.name for m in models}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInput(f"--model {unknown[0]}: {config.path} lists no such model; it lists "
                           f"{', '.join(sorted(known))}")
        models = [m for m in models if m.name in set(names)]
    if files:
        chosen = {id(m) for m in affected(config, files)}
        models = [m for m in models if id(m) in chosen]
    return models


# ---------------------------------------------------------------------------------------------
# Rebuilding


def _flags(options: dict) -> List[str]:
    argv: List[str] = []
    for key, value in options.items():
        flag = "--" + key
        for item in value if isinstance(value, list) else [value]:
            argv += [flag, str(item).lower() if isinstance(item, bool) else str(item)]
    return argv


def _auto_quant_options(spec: ModelSpec) -> dict:
    """An auto-quant job's flags: the model entry's budget, then the job's own options."""
    return {"rate": spec.rate, "metric": spec.metric, "memory_mode": spec.memory_mode, **spec.job.options}


def _quantize_options(spec: ModelSpec) -> dict:
    """A quantize job's flags besides its config, as the job spells them."""
    return {k: v for k, v in spec.job.options.items() if k != "config"}


def rebuild_argv(spec: ModelSpec) -> List[str]:
    """The ``mnnq`` command line that rewrites ``spec.quantized`` with its job (what --rebuild
    prints and records; it runs the same job through the engines)."""
    job = spec.job
    assert job is not None and spec.float_model is not None
    if job.kind == "auto-quant":
        return ["auto-quant", "--model", str(spec.float_model), "--quant_model", str(spec.quantized),
                "--test_dir", str(spec.test_dir), *_flags(_auto_quant_options(spec))]
    if job.kind == "apply":
        argv = ["apply", str(spec.float_model), str(spec.quantized), "--params", str(job.options["params"])]
        return (argv + (["--hqq"] if job.options.get("hqq") else [])
                + (["--fp16-float-weights"] if job.options.get("fp16_float_weights") else []))
    return ["quantize", str(spec.float_model), str(spec.quantized), str(job.options["config"]),
            *_flags({k.replace("_", "-"): v for k, v in _quantize_options(spec).items()})]


def _rebuild_auto_quant(spec: ModelSpec, pm, out: Console, err: Console) -> int:
    from mnnq.api import auto_quant
    from mnnq.autoquant.command import trial_progress
    from mnnq.report import print_autoquant

    options = _auto_quant_options(spec)
    if "strategy" in options:
        options["strategies"] = options.pop("strategy")
    rate = options.pop("rate")
    with trial_progress(err) as on_trial:
        result = auto_quant(spec.float_model, spec.quantized, spec.test_dir, rate, on_trial=on_trial,
                            plugin_manager=pm, **options)
    print_autoquant(result.details, out)
    return EXIT_OK if result.passed else EXIT_MISSED


def _rebuild_quantize(spec: ModelSpec, pm, out: Console, err: Console) -> int:
    from mnnq.api import quantize
    from mnnq.quantize.command import finish, stage_progress

    options = {k.replace("-", "_"): v for k, v in _quantize_options(spec).items()}
    with stage_progress(err) as on_progress:  # the job's options are the API's (checked there)
        result = quantize(spec.float_model, spec.quantized, spec.job.options["config"], on_progress=on_progress,
                          **{**options, "plugin_manager": pm})
    report_json = options.get("report_json")
    return finish(result.details, Path(report_json) if report_json else None, out)


def _rebuild_apply(spec: ModelSpec, pm, out: Console, err: Console) -> int:
    from mnnq.apply import apply_params
    from mnnq.apply_command import print_applied

    params = spec.job.options["params"]
    result = apply_params(spec.float_model, spec.quantized, params, hqq=bool(spec.job.options.get("hqq")),
                          test_dir=None, metric="max_rel", rate=None, memory_mode="normal", pm=pm,
                          fp16_float_weights=bool(spec.job.options.get("fp16_float_weights")))
    return print_applied(result, out, str(params))


REBUILDERS = {"auto-quant": _rebuild_auto_quant, "quantize": _rebuild_quantize, "apply": _rebuild_apply}


def rebuild(spec: ModelSpec, pm, out: Console, err: Console) -> dict:
    """Run the model's job through the engines, printing its report and any failure as its
    command would; return what happened. Ctrl-C inside the job is re-raised."""
    argv = rebuild_argv(spec)
    started = time.monotonic()
    err.print(f"mnnq check: rebuilding {spec.name}: mnnq {' '.join(argv)}", highlight=False, markup=False)
    message = ""
    try:
        code = REBUILDERS[spec.job.kind](spec, pm, out, err)
    except FAILURES as exc:  # BadInput, NativeFailure, PluginError, Interrupted, Ctrl-C, OSError
        code, message = report_failure(exc), failure_text(exc)
    except Exception as exc:  # a bug in a job must not pass the gate
        err.print(traceback.format_exc(), highlight=False, markup=False)
        code, message = EXIT_BAD_INPUT, f"{exc.__class__.__name__}: {exc}"
    if code == EXIT_INTERRUPTED:  # the job cleaned up and said where it stopped
        raise KeyboardInterrupt
    return {"job": spec.job.kind, "argv": ["mnnq", *argv], "exit_code": code, "message": message,
            "wall_time_s": time.monotonic() - started}


# ---------------------------------------------------------------------------------------------


def run(args, out: Console, err: Console) -> int:
    from mnnq.gate.reports import deliver
    from mnnq.gate.runner import GateTarget, errored, measure

    paths = report_paths(args, [])
    config_path = Path(args.config) if args.config else None
    try:
        if config_path is None:
            config_path = find_config(Path.cwd())
        config = load_config(config_path)
        models = select(config, args.model, args.files)
    except MnnqError as exc:
        error_file = config_path if config_path is not None and config_path.is_file() else None
        return deliver("check", [], out, err, error=str(exc), error_file=error_file, config=config_path, **paths)

    if args.files and not models:
        out.print(f"mnnq check: none of the {len(args.files)} changed file(s) belongs to a model in {config.path}; "
                  "nothing to check", highlight=False)
        return deliver("check", [], out, err, config=config.path, **paths)

    pm = plugin_manager(err)
    results = []
    for spec in models:
        target = GateTarget.from_spec(spec)
        built = None
        if args.rebuild:
            if spec.job is None:
                results.append(errored(target, f"--rebuild: model '{spec.name}' has no job in {config.path}; "
                                               "add job: {auto-quant: {}} (or quantize / apply)"))
                continue
            try:
                built = rebuild(spec, pm, out, err)
            except KeyboardInterrupt:
                err.print("mnnq: interrupted", highlight=False)
                return EXIT_INTERRUPTED
            if built["exit_code"] not in (EXIT_OK, EXIT_MISSED):
                result = errored(target, f"rebuild failed: {built['message']}")
                result.rebuild = built
                results.append(result)
                continue
        result = measure(target, pm, layers=not args.no_layers)
        result.rebuild = built
        results.append(result)
    return deliver("check", results, out, err, config=config.path, **paths)
