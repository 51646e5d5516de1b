"""The example third-party package (examples/mnnq-plugin-example), installed with pip into a fresh
venv, is found through its entry points and works from mnnq's CLI.

The venv is made with ``python -m venv --without-pip``. A ``.pth`` file adds this environment's
site-packages with ``site.addsitedir`` (so mnnq, MNN, numpy, pytest, pip and setuptools are
visible, editable installs included) and puts the mnnq this test imports first. pip installs the
example into the venv itself with ``--no-deps --no-build-isolation --no-index``: no network.
Building the wheel needs setuptools >= 70.1 (or the ``wheel`` package); the ``test`` extra has it.
"""
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnnq-plugin-example"
CAN_BUILD = """
import sys
try:
    import setuptools
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
except Exception:
    sys.exit(1)
try:
    import wheel.bdist_wheel  # noqa: F401
    has_wheel = True
except Exception:
    has_wheel = False
sys.exit(0 if version >= (70, 1) or has_wheel else 1)
"""


def _site_dirs():
    dirs = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _run(python, *args, env=None, cwd=None):
    proc = subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300)
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """``(python, env)`` of a fresh venv with the example package installed by pip."""
    root = tmp_path_factory.mktemp("plugin-venv")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                                    ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    bindir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    import mnnq

    here = str(Path(mnnq.__file__).resolve().parents[1])
    if here not in _site_dirs():  # a checkout (editable install, or pytest's pythonpath): the same mnnq
        lines.append(f"import sys; sys.path.insert(0, {here!r})")
    (Path(purelib) / "_mnnq_test_parent_env.pth").write_text("\n".join(lines) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=str(bindir) + os.pathsep + env.get("PATH", ""), VIRTUAL_ENV=str(root / "venv"), COLUMNS="200",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    if _run(python, "-c", CAN_BUILD, env=env).returncode != 0:
        pytest.fail("building the example's wheel needs setuptools >= 70.1 (or the 'wheel' package); "
                    "install the test extra: pip install -e '.[test]'")
    install = _run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                   str(source), env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    return python, env


def mnnq(venv, *args, extra_env=None):
    python, env = venv
    return _run(python, "-m", "mnnq", *args, env={**env, **(extra_env or {})})


def test_installed_only_in_the_venv(venv):
    python, env = venv
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("mnnq-plugin-example")          # this environment is untouched
    where = _run(python, "-c", "import mnnq_plugin_example, mnnq; print(mnnq_plugin_example.__file__, mnnq.__file__)",
                 env=env)
    assert where.returncode == 0, where.stderr
    plugin_file, mnnq_file = where.stdout.split()
    assert Path(plugin_file).is_relative_to(Path(python).parents[1])   # from the venv's site-packages
    assert Path(mnnq_file).resolve().parent.name == "mnnq"


def test_mnnq_plugins_lists_all_three(venv):
    run = mnnq(venv, "plugins")
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "example_" in line]
    assert any("feature method" in r and "percentile" in r and "example_percentile" in r for r in rows), run.stdout
    assert any("metric" in r and "snr_db" in r and "example_snr" in r for r in rows), run.stdout
    assert any("search strategy" in r and "margin" in r and "example_margin" in r for r in rows), run.stdout
    assert "skipped" not in run.stderr


@pytest.mark.parametrize("strategy", [None, "auto_quant"])
def test_a_third_party_finish_strategy_joins_the_pipeline(venv, tiny_convnet, tmp_path, strategy):
    """The example's `margin` record says phase=FINISH, default=True and presets: installed, it
    runs last in the default pipeline and in the auto_quant preset, and its margin holds on the
    written model; blocked, the pipeline is mnnq's own again."""
    q, report = tmp_path / "q.mnn", tmp_path / "report.json"
    args = ["auto-quant", "--model", tiny_convnet.model, "--quant_model", q, "--test_dir", tiny_convnet.test_dir,
            "--rate", "0.05", "--report-json", report] + (["--strategy", strategy] if strategy else [])
    run = mnnq(venv, *args)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(report.read_text())
    assert data["strategies"][-1] == "margin"
    assert data["errors"]["max_rel"] <= 0.9 * 0.05 or any("margin: could not" in n for n in data["notes"])
    blocked = mnnq(venv, *args, "--disable-plugins", "example_margin")
    assert blocked.returncode == 0, blocked.stdout + blocked.stderr
    assert "margin" not in json.loads(report.read_text())["strategies"]


def test_auto_quant_with_the_snr_metric(venv, tiny_convnet, tmp_path):
    q, report = tmp_path / "q.mnn", tmp_path / "report.json"
    run = mnnq(venv, "auto-quant", "--model", tiny_convnet.model, "--quant_model", q, "--test_dir",
               tiny_convnet.test_dir, "--metric", "snr_db", "--rate", "75", "--report-json", report)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(report.read_text())
    assert data["metric"] == "snr_db" and data["status"] == "MET"
    assert 0 < data["errors"]["snr_db"] <= 75                 # SNR >= 25 dB on the written model
    assert q.is_file() and any(layer["bits"] == 4 for layer in data["layers"])

    check = mnnq(venv, "validate", "--model", q, "--test-dir", tiny_convnet.test_dir, "--metric", "snr_db",
                 "--rate", "75")
    assert check.returncode == 0, check.stdout + check.stderr


def test_quantize_with_the_percentile_method(venv, tiny_convnet, tmp_path):
    config = tiny_convnet.calibration_config(tmp_path / "calib.json", feature_quantize_method="percentile")
    out, report = tmp_path / "int8.mnn", tmp_path / "report.json"
    run = mnnq(venv, "quantize", tiny_convnet.model, out, config, "--report-json", report)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(report.read_text())
    assert data["feature_quantize_method"] == "percentile" and data["layers_int8"] == 5
    assert data["output_cosine"]["min"] > 0.999


@pytest.mark.parametrize("how", ["environment", "flag", "flag before the command"])
def test_blocked_plugin_is_gone(venv, tiny_convnet, tmp_path, how):
    args = ["auto-quant", "--model", tiny_convnet.model, "--quant-model", tmp_path / "q.mnn",
            "--test-dir", tiny_convnet.test_dir, "--metric", "snr_db"]
    if how == "environment":
        run = mnnq(venv, *args, extra_env={"MNNQ_DISABLE_PLUGINS": "example_snr"})
    elif how == "flag":
        run = mnnq(venv, *args, "--disable-plugins", "example_snr")
    else:
        run = mnnq(venv, "--disable-plugins", "metric_cosine,example_snr", *args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "unknown metric 'snr_db'" in run.stderr
    assert not (tmp_path / "q.mnn").exists()


def test_the_example_packages_own_tests_pass(venv):
    python, env = venv
    source = Path(python).parents[2] / "src"
    run = _run(python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", env=env, cwd=source)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
