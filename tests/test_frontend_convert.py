"""`mnnq convert` (MNNConvert's flags, mnnq's exit codes) and `resolve_model` (ONNX -> cached float MNN)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnnq.errors import BadInput
from mnnq.inputs import sources
from mnnq.inputs.sources import resolve_model
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.testing import build_convnet, reference_outputs, run_cli, write_testdir


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """convnet.onnx + its float .mnn, a passing test dir and one whose reference is off by 1."""
    d = tmp_path_factory.mktemp("convnet")
    mnn = build_convnet(d)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    ref = reference_outputs(mnn, {"x": x})
    write_testdir(d / "td_ok", {"x": x}, ref)
    write_testdir(d / "td_bad", {"x": x}, {"y": ref["y"] + 1.0})
    return d


def test_convert_writes_the_model_and_passes_the_testdir_check(convnet, tmp_path):
    dst = tmp_path / "out.mnn"
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(convnet / "convnet.onnx"),
                              "--MNNModel", str(dst), "--testdir", str(convnet / "td_ok"), "--bizCode", "demo"])
    assert code == 0, err
    assert "TEST_SUCCESS" in out and "--testdir check passed" in out
    x = np.loadtxt(convnet / "td_ok" / "x.txt").reshape(1, 3, 16, 16)
    got = LoadedModel(dst, ["x"], ["y"]).run({"x": x})["y"]
    np.testing.assert_allclose(got.ravel(), np.loadtxt(convnet / "td_ok" / "y.txt"), rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mnn"]   # no temp files, no .Error.mnn


def test_failing_testdir_check_exits_2_and_leaves_dst_untouched(convnet, tmp_path):
    dst = tmp_path / "out.mnn"
    dst.write_bytes(b"previous model")
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(convnet / "convnet.onnx"),
                              "--MNNModel", str(dst), "--testdir", str(convnet / "td_bad")])
    assert code == 2
    assert "TESTERROR" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("mnnq: error:")]
    assert len(lines) == 1 and "--testdir check failed" in lines[0] and "output y" in lines[0], err
    assert dst.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mnn"]


def test_thredhold_is_passed_through(convnet, tmp_path):
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(convnet / "convnet.onnx"),
                              "--MNNModel", str(tmp_path / "o.mnn"), "--testdir", str(convnet / "td_bad"),
                              "--thredhold", "2"])
    assert code == 0, err


def test_corrupt_source_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile", str(bad), "--MNNModel", str(tmp_path / "o.mnn")])
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mnnq: error:") and "bad.onnx" in lines[0], err
    assert not (tmp_path / "o.mnn").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--modelFile", "convnet.onnx", "--MNNModel", "o.mnn"], "-f"),
    (["-f", "ONNX", "--modelFile", "missing.onnx", "--MNNModel", "o.mnn"], "not found"),
    (["-f", "PADDLE", "--modelFile", "convnet.onnx", "--MNNModel", "o.mnn"], "unknown source format"),
    (["-f", "TORCH", "--modelFile", "convnet.onnx", "--MNNModel", "o.mnn"], "cannot read that format"),
    (["-f", "ONNX", "--modelFile", "convnet.onnx"], "--MNNModel"),
    (["-f", "ONNX", "--modelFile", "convnet.onnx", "--MNNModel", "nodir/o.mnn"], "does not exist"),
    (["-f", "ONNX", "--modelFile", "convnet.onnx", "--MNNModel", "convnet.onnx"], "input file"),
    (["-f", "ONNX", "--modelFile", "convnet.onnx", "--MNNModel", "o.mnn", "--testdir", "nowhere"], "input.json"),
])
def test_bad_usage_exits_2(convnet, monkeypatch, argv, expected):
    monkeypatch.chdir(convnet)
    code, out, err = run_cli(["convert", *argv])
    assert code == 2
    assert expected in err, err
    assert not (convnet / "o.mnn").exists()


def test_relative_paths_work_although_the_converter_runs_elsewhere(convnet, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "net.onnx").write_bytes((convnet / "convnet.onnx").read_bytes())
    (work / "td").symlink_to(convnet / "td_ok")
    monkeypatch.chdir(work)
    code, out, err = run_cli(["convert", "-f", "ONNX", "--modelFile=models/net.onnx", "--MNNModel", "net.mnn",
                              "--testdir", "td", "--saveExternalData"])
    assert code == 0, err
    assert (work / "net.mnn").is_file() and (work / "net.mnn.weight").is_file()
    x = np.loadtxt(convnet / "td_ok" / "x.txt").reshape(1, 3, 16, 16)
    got = LoadedModel(work / "net.mnn", ["x"], ["y"]).run({"x": x})["y"]
    np.testing.assert_allclose(got.ravel(), np.loadtxt(convnet / "td_ok" / "y.txt"), rtol=1e-4, atol=1e-5)


def test_info_and_version_print_and_exit_0(convnet):
    code, out, _ = run_cli(["convert", "-f", "MNN", "--modelFile", str(convnet / "convnet.mnn"), "--info"])
    assert code == 0 and "Model Inputs:" in out and "[ x ]" in out
    code, out, _ = run_cli(["convert", "--version"])
    assert code == 0 and out.strip().splitlines()[-1][0].isdigit()
    code, out, _ = run_cli(["convert", "--help"])
    assert code == 0 and "--MNNModel" in out and "exits 2" in out


def test_convert_never_imports_mnn_tools(convnet, tmp_path):
    """MNN.tools pip-installs a telemetry SDK and phones home at import: mnnq must never import it."""
    code = ("import sys\nfrom mnnq.cli import main\n"
            f"rc = main(['convert', '-f', 'ONNX', '--modelFile', {str(convnet / 'convnet.onnx')!r}, "
            f"'--MNNModel', {str(tmp_path / 'o.mnn')!r}])\n"
            f"rc2 = main(['testdir', 'make', '--model', {str(convnet / 'convnet.onnx')!r}, '--out', "
            f"{str(tmp_path / 'td')!r}, '--reference', 'mnn'])\n"
            "assert rc == 0 and rc2 == 0, (rc, rc2)\n"
            "assert not [m for m in sys.modules if m == 'MNN.tools' or m.startswith('MNN.tools.')]\n")
    env = dict(os.environ, MNNQ_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ resolve_model

def test_resolve_model_returns_mnn_paths_unchanged(tmp_path):
    assert resolve_model(tmp_path / "float.mnn") == tmp_path / "float.mnn"
    assert resolve_model(Path("rel/x.MNN")) == Path("rel/x.MNN")


def test_resolve_model_converts_onnx_once_into_a_cache_keyed_by_content(convnet, tmp_path, monkeypatch):
    monkeypatch.setenv("MNNQ_CACHE", str(tmp_path / "cache"))
    got = resolve_model(convnet / "convnet.onnx")
    digest = hashlib.sha256((convnet / "convnet.onnx").read_bytes()).hexdigest()
    assert got.is_file() and got.parent.parent == tmp_path / "cache" / "converted"
    assert got.parent.name.startswith(digest)
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 16, 16))
    np.testing.assert_allclose(LoadedModel(got, ["x"], ["y"]).run({"x": x})["y"],
                               LoadedModel(convnet / "convnet.mnn", ["x"], ["y"]).run({"x": x})["y"], rtol=1e-5)

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(sources, "_convert", no_conversion)
    copy = tmp_path / "renamed.onnx"                 # same bytes under another name: same entry
    copy.write_bytes((convnet / "convnet.onnx").read_bytes())
    assert resolve_model(copy) == got
    assert resolve_model(convnet / "convnet.onnx", cache=tmp_path / "cache") == got
    assert [p.name for p in (tmp_path / "cache" / "converted").iterdir()] == [got.parent.name]


def test_resolve_model_rejects_unknown_missing_and_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MNNQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadInput, match="unknown model type '.pt'"):
        resolve_model(tmp_path / "model.pt")
    with pytest.raises(BadInput, match="model not found"):
        resolve_model(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(BadInput, match="cannot convert .*bad.onnx"):
        resolve_model(bad)
    assert not any((tmp_path / "cache" / "converted").iterdir())   # nothing half-written is left
