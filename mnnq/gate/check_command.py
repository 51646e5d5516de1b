"""``mnnq check``: validate every model the project config lists, and print one summary.

``--rebuild`` first rewrites each quantized file with its job (auto-quant, quantize or apply).
File arguments (what pre-commit passes) narrow the check to the models those files belong to:
a listed quantized or float model, a file inside a test dir, a job's params or config file;
a changed config checks every model. Exit 0 all within budget, 1 any over it, 2 any that
cannot be measured (or a bad config).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import traceback
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from rich.console import Console

from mnnq.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MISSED, EXIT_OK, BadInput, MnnqError
from mnnq.gate.project import ModelSpec, ProjectConfig, find_config, load_config
from mnnq.cli import add_flag, plugin_manager
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


def rebuild_argv(spec: ModelSpec) -> List[str]:
    """The ``mnnq`` command line that rewrites ``spec.quantized`` with its job."""
    job = spec.job
    assert job is not None and spec.float_model is not None
    if job.kind == "auto-quant":
        options = {"rate": spec.rate, "metric": spec.metric, "memory_mode": spec.memory_mode, **job.options}
        return ["auto-quant", "--model", str(spec.float_model), "--quant_model", str(spec.quantized),
                "--test_dir", str(spec.test_dir), *_flags(options)]
    if job.kind == "apply":
        argv = ["apply", str(spec.float_model), str(spec.quantized), "--params", str(job.options["params"])]
        return (argv + (["--hqq"] if job.options.get("hqq") else [])
                + (["--fp16-float-weights"] if job.options.get("fp16_float_weights") else []))
    options = {k: v for k, v in job.options.items() if k != "config"}
    return ["quantize", str(spec.float_model), str(spec.quantized), str(job.options["config"]),
            *_flags({k.replace("_", "-"): v for k, v in options.items()})]


class _Tee(io.TextIOBase):
    """Forwards writes to ``stream`` and keeps a copy (to quote the job's error line)."""

    def __init__(self, stream):
        self.stream = stream
        self.parts: List[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def text(self) -> str:
        return "".join(self.parts)


def _quoted_error(text: str) -> str:
    """The message of the last ``mnnq: error: ...`` the CLI printed (unwrapped), if any."""
    start = text.rfind("mnnq: error: ")
    if start < 0:
        return ""
    message = text[start + len("mnnq: error: "):].split("native output (last lines):")[0]
    return " ".join(message.split())


def rebuild(spec: ModelSpec, err: Console) -> dict:
    """Run the job through mnnq's own CLI (it prints its own report); return what happened."""
    from mnnq.cli import main as cli_main

    argv = rebuild_argv(spec)
    started = time.monotonic()
    err.print(f"mnnq check: rebuilding {spec.name}: mnnq {' '.join(argv)}", highlight=False, markup=False)
    message = ""
    tee = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(tee):
            code = cli_main(argv)
    except SystemExit as exc:  # argparse rejected the job's flags
        code = exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
        message = f"mnnq {argv[0]} rejected the job's options"
    except MnnqError as exc:
        code, message = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in a job must not pass the gate
        err.print(traceback.format_exc(), highlight=False, markup=False)
        code, message = EXIT_BAD_INPUT, f"{exc.__class__.__name__}: {exc}"
    if code == EXIT_INTERRUPTED:  # Ctrl-C inside the job (it cleaned up and said where it stopped)
        raise KeyboardInterrupt
    if code not in (EXIT_OK, EXIT_MISSED) and not message:
        message = _quoted_error(tee.text()) or f"mnnq {argv[0]} exited with status {code}"
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
                built = rebuild(spec, err)
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
