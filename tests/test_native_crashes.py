"""Native crashes are contained: a converter or runtime child that dies (fault-injected with
``MNNQ_FAULT_INJECT``, see mnnq.mnn_backend.native) becomes exit 2 with a one-line error naming
the signal and the tail of the native output; mnnq itself survives and writes nothing.

Also: the MNN runtime is never used in-process on a file that has not first been read by the
converter and run by the runtime in child processes.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import mnnq.autoquant.prepare as engine
from mnnq.mnn_backend.native import FAULT_ENV, Limits
from mnnq.testing import file_digests, run_cli, tiny_model

from test_bad_inputs import bad_tensor_index


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    tm = tiny_model(tmp_path_factory.mktemp("crash-src"), "convnet")
    q = tm.directory / "q.mnn"
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", q, "--test_dir", tm.test_dir, "--rate", "0.1"])
    assert run.code == 0, run.err
    return tm, Path(str(q) + ".json")


def error_lines(err: str):
    return [line for line in err.splitlines() if line.startswith("mnnq: error: ")]


SIGNALS = [("segv", "SIGSEGV"), ("abort", "SIGABRT"), ("kill", "SIGKILL")]


@pytest.mark.parametrize("how, name", SIGNALS)
def test_converter_killed_while_writing_the_model(convnet, tmp_path, monkeypatch, how, name):
    """auto-quant searches, then the converter child writing the final model dies: exit 2."""
    tm, _ = convnet
    before = file_digests(tm.directory)
    out = tmp_path / "out"
    out.mkdir()
    # Only the conversions that weight-quantize: the search (fast evaluator) runs in-process,
    # so this is the final write, after every trial.
    monkeypatch.setenv(FAULT_ENV, f"{how}:mnnconvert:--weightQuantBits")
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", out / "q.mnn", "--test_dir", tm.test_dir,
                   "--rate", "0.1", "--report_json", out / "r.json"])
    assert run.code == 2, run.out + run.err
    [line] = error_lines(run.err)
    assert f"MNN converter crashed (killed by {name}) while writing the weight-quantized model" in line
    assert "native output (last lines):" in run.err
    assert f"mnnq fault injection: {how} in mnnconvert" in run.err  # the tail of the child's output
    assert "Traceback" not in run.err
    assert list(out.iterdir()) == []
    assert file_digests(tm.directory) == before


def test_converter_killed_in_apply(convnet, tmp_path, monkeypatch):
    tm, params = convnet
    before = file_digests(tm.directory)
    monkeypatch.setenv(FAULT_ENV, "segv:mnnconvert:--weightQuantBits")
    run = run_cli(["apply", tm.model, tmp_path / "q.mnn", "--params", params, "--test_dir", tm.test_dir])
    assert run.code == 2
    [line] = error_lines(run.err)
    assert "MNN converter crashed (killed by SIGSEGV)" in line and "mnnq fault injection" in run.err
    assert not (tmp_path / "q.mnn").exists() and file_digests(tm.directory) == before


def test_converter_killed_on_the_first_read(convnet, tmp_path, monkeypatch):
    """A crash while reading the user's model names the model and keeps the native tail."""
    tm, _ = convnet
    monkeypatch.setenv(FAULT_ENV, "abort:mnnconvert")
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", tmp_path / "q.mnn", "--test_dir",
                   tm.test_dir])
    assert run.code == 2
    [line] = error_lines(run.err)
    assert re.search(r"not a readable MNN model: \S*convnet\.mnn \(MNN converter crashed \(killed by SIGABRT\)", line)
    assert "mnnq fault injection: abort in mnnconvert" in run.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["auto-quant", "apply", "validate"])
def test_runtime_child_killed(convnet, tmp_path, monkeypatch, command):
    tm, params = convnet
    monkeypatch.setenv(FAULT_ENV, "kill:runtime")
    argv = {
        "auto-quant": ["auto-quant", "--model", tm.model, "--quant_model", tmp_path / "q.mnn", "--test_dir",
                       tm.test_dir],
        "apply": ["apply", tm.model, tmp_path / "q.mnn", "--params", params],
        "validate": ["validate", "--model", tm.directory / "q.mnn", "--test-dir", tm.test_dir, "--rate", "0.1"],
    }[command]
    run = run_cli(argv)
    assert run.code == 2
    [line] = error_lines(run.err)
    assert re.search(r"MNN runtime crashed \((killed by )?SIGKILL\)", line), line
    assert list(tmp_path.iterdir()) == []


def test_a_hanging_converter_is_killed_at_the_timeout(convnet, tmp_path, monkeypatch):
    tm, _ = convnet
    monkeypatch.setattr(engine, "probe_limits", lambda path: Limits(memory=None, timeout=3.0))
    monkeypatch.setenv(FAULT_ENV, "hang:mnnconvert")
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", tmp_path / "q.mnn", "--test_dir",
                   tm.test_dir])
    assert run.code == 2
    [line] = error_lines(run.err)
    assert "MNN mnnconvert did not finish within 3 s (killed)" in line
    assert "mnnq fault injection: hang in mnnconvert" in run.err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The in-process runtime only ever sees validated files


class Spy:
    """Records, in order, the child-process probes of a model and every in-process load."""

    def __init__(self, monkeypatch):
        import MNN.expr as F
        import MNN.nn as nn

        import mnnq.apply as apply_module

        self.events = []
        monkeypatch.setattr(engine, "start_isolated", self._started(engine.start_isolated))
        monkeypatch.setattr(apply_module, "probe_runtime", self._probe(apply_module.probe_runtime))
        for module, name in ((nn, "load_module_from_file"), (F, "load_as_dict")):
            monkeypatch.setattr(module, name, self._load(getattr(module, name)))

    def _probe(self, real):
        def probe(model, *args, **kwargs):
            result = real(model, *args, **kwargs)  # raises for a bad model: then nothing is recorded
            self.events.append(("validated", str(Path(model).resolve())))
            return result
        return probe

    def _started(self, real):
        """A probe started in a child and waited for later: validated once its result is in."""
        def start(model, *args, **kwargs):
            run = real(model, *args, **kwargs)
            wait = run.result

            def result():
                outputs = wait()  # raises for a bad model: then nothing is recorded
                self.events.append(("validated", str(Path(model).resolve())))
                return outputs
            run.result = result
            return run
        return start

    def _load(self, real):
        def load(path, *args, **kwargs):
            self.events.append(("loaded", str(Path(path).resolve())))
            return real(path, *args, **kwargs)
        return load

    def check(self, user_files):
        """Every in-process load is of a file mnnq made (a converter output in a temporary
        folder) or of a user's file validated before."""
        validated = set()
        for kind, path in self.events:
            if kind == "validated":
                validated.add(path)
            elif path in user_files:
                assert path in validated, f"{path} was loaded in-process before it was validated: {self.events}"
            else:
                assert "/mnnq-" in path, f"in-process load of a file mnnq did not make: {path}"


def test_autoquant_validates_before_loading_in_process(convnet, tmp_path, monkeypatch):
    tm, _ = convnet
    spy = Spy(monkeypatch)
    run = run_cli(["auto-quant", "--model", tm.model, "--quant_model", tmp_path / "q.mnn", "--test_dir",
                   tm.test_dir, "--rate", "0.1"])
    assert run.code == 0, run.err
    assert ("validated", str(tm.model.resolve())) in spy.events
    assert any(kind == "loaded" for kind, _ in spy.events)
    spy.check({str(tm.model.resolve())})


def test_apply_validates_before_loading_in_process(convnet, tmp_path, monkeypatch):
    tm, params = convnet
    spy = Spy(monkeypatch)
    run = run_cli(["apply", tm.model, tmp_path / "q.mnn", "--params", params, "--test_dir", tm.test_dir])
    assert run.code == 0, run.err
    spy.check({str(tm.model.resolve())})


@pytest.mark.parametrize("command", ["auto-quant", "apply"])
def test_a_file_the_runtime_crashes_on_never_reaches_this_process(convnet, tmp_path, monkeypatch, command):
    """The converter accepts this damaged file; the runtime dies on it - in a child."""
    tm, params = convnet
    bad = tmp_path / "bad.mnn"
    bad.write_bytes(bad_tensor_index(tm.model.read_bytes()))
    spy = Spy(monkeypatch)
    argv = (["auto-quant", "--model", bad, "--quant_model", tmp_path / "q.mnn", "--test_dir", tm.test_dir]
            if command == "auto-quant" else ["apply", bad, tmp_path / "q.mnn", "--params", params])
    run = run_cli(argv)
    assert run.code == 2
    [line] = error_lines(run.err)
    assert "MNN runtime crashed (killed by SIGSEGV)" in line and "bad.mnn" in line
    assert spy.events == [], "nothing may be validated or loaded in-process"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mnn"]


@pytest.mark.parametrize("code, what", [(-11, "crashed (killed by SIGSEGV)"), (139, "crashed (killed by SIGSEGV)"),
                                        (137, "crashed (killed by SIGKILL)"), (1, "exited with exit status 1"),
                                        (128, "exited with exit status 128")])
def test_gate_child_exit_codes_read_as_every_native_child(tmp_path, monkeypatch, code, what):
    """The gate's child is 'crashed' exactly when native.crashed says so (codes above 128 are
    signals, as exit_text reads them)."""
    import subprocess

    from mnnq.gate import runner
    from mnnq.mnn_backend import native

    assert native.crashed(code) == what.startswith("crashed")
    assert native.NativeRun("t", [], code, "").crashed == native.crashed(code)
    monkeypatch.setattr(native, "run_python", lambda *a, **k: subprocess.CompletedProcess([], code, b"", b""))
    assert runner._run_child(tmp_path, None) == what
