"""The Python API (mnnq.auto_quant / quantize / validate) on small real models: result objects,
errors before anything is written, plugins and blocking."""
import json
import types

import numpy as np
import pytest

import mnnq
from mnnq import api, hookimpl
from mnnq.errors import BadInput, MnnqError, PluginError
from mnnq.plugin_manager import get_plugin_manager
from mnnq.records import Metric


@pytest.fixture(scope="module")
def quantized(tiny_convnet, tmp_path_factory):
    """auto-quant's result on the convnet (cosine <= 0.1), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("api") / "q.mnn"
    trials = []
    result = api.auto_quant(tiny_convnet.model, out, tiny_convnet.test_dir, rate=0.1, metric="cosine",
                            on_trial=trials.append)
    return result, trials


def test_auto_quant_result(quantized, tiny_convnet):
    r, trials = quantized
    assert r.command == "auto-quant" and r.passed and r.status == "MET"
    assert r.model_path.is_file() and r.params_path == r.model_path.with_name("q.mnn.json")
    assert r.params["algo"][0]["quantParams"]["layer"]
    assert [row["name"] for row in r.layers] == ["conv1", "conv2", "dwconv3", "conv4", "fc__matmul_converted"]
    assert {"name", "kind", "shape", "bits", "block", "reason"} <= set(r.layers[0])
    assert r.metric == "cosine" and r.rate == 0.1
    assert r.error == r.metrics["cosine"] <= 0.1 and "max_rel" in r.metrics
    assert r.report["status"] == "MET" and r.report["layers"] == r.layers
    assert len(trials) == len(r.details.trials) > 0
    # the claim holds for the file: measure it again through the API
    v = api.validate(r.model_path, tiny_convnet.test_dir, rate=0.1, metric="cosine", memory_mode=r.details.memory_mode)
    assert v.passed and v.error == pytest.approx(r.error, rel=1e-5, abs=1e-9)


def test_auto_quant_missed_budget_is_a_result_not_an_exception(tiny_convnet, tmp_path):
    r = api.auto_quant(tiny_convnet.model, tmp_path / "q.mnn", tiny_convnet.test_dir, rate=1e-9,
                       strategies="select-bits", memory_mode="normal")
    assert not r.passed and r.status == "MISSED" and r.error > 1e-9
    assert r.model_path.is_file()                  # best effort, as the CLI's exit 1


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0}, "rate: expected a positive"),
    ({"rate": "0.05"}, "rate: expected a positive"),
    ({"selectbits": 0}, "unknown option 'selectbits' (did you mean 'select_bits'?)"),
    ({"strategies": 3}, "strategies: expected a name"),
    ({"memory_mode": "tiny"}, "memory-mode must be auto, low or normal"),
])
def test_auto_quant_bad_options(tiny_convnet, tmp_path, kwargs, message):
    with pytest.raises(BadInput) as err:
        api.auto_quant(tiny_convnet.model, tmp_path / "q.mnn", tiny_convnet.test_dir, **kwargs)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_and_unknown_metric(tiny_convnet, tmp_path):
    with pytest.raises(BadInput, match="model not found"):
        api.auto_quant(tmp_path / "nope.mnn", tmp_path / "q.mnn", tiny_convnet.test_dir)
    with pytest.raises(PluginError, match="unknown metric 'nope'"):
        api.auto_quant(tiny_convnet.model, tmp_path / "q.mnn", tiny_convnet.test_dir, metric="nope")
    with pytest.raises(BadInput, match="model: expected a file or folder path"):
        api.validate(None, tiny_convnet.test_dir, rate=0.1)
    assert list(tmp_path.iterdir()) == []


def test_quantize_from_a_mapping(tiny_convnet, tmp_path):
    progress = []
    r = api.quantize(tiny_convnet.model, tmp_path / "int8.mnn",
                     {"path": str(tiny_convnet.test_dir), "input_type": "sequence", "feature_quantize_method": "EMA"},
                     rate=0.01, metric="cosine", on_progress=lambda *p: progress.append(p))
    assert r.command == "quantize" and r.passed and r.status == "MET"
    assert r.model_path.is_file() and r.params_path.is_file() and "algo" in r.params
    assert r.error == r.metrics["cosine"] <= 0.01
    assert {row["status"] for row in r.layers} == {"int8"} and len(r.layers) == 5
    assert r.report["feature_quantize_method"] == "EMA" and progress


def test_quantize_from_a_file_and_bad_configs(tiny_convnet, tmp_path):
    config = tiny_convnet.calibration_config(tmp_path / "calib.json")
    r = api.quantize(tiny_convnet.model, tmp_path / "int8.mnn", config)
    assert r.passed and r.rate is None and r.report["feature_quantize_method"] == "KL"
    with pytest.raises(BadInput, match="feature_quantize_method"):
        api.quantize(tiny_convnet.model, tmp_path / "x.mnn",
                     {"path": str(tiny_convnet.test_dir), "input_type": "sequence", "feature_quantize_method": "nope"})
    with pytest.raises(BadInput, match="'path' is missing"):
        api.quantize(tiny_convnet.model, tmp_path / "x.mnn", {"input_type": "sequence"})
    with pytest.raises(BadInput, match="not JSON-serialisable"):
        api.quantize(tiny_convnet.model, tmp_path / "x.mnn", {"path": object()})
    for bad in ("8", 0, 2.5, True):
        with pytest.raises(BadInput, match=f"eval_samples: expected a positive integer, got {bad!r}"):
            api.quantize(tiny_convnet.model, tmp_path / "x.mnn", config, eval_samples=bad)
    with pytest.raises(BadInput, match="bias_correction: expected auto, on or off, got 'maybe'"):
        api.quantize(tiny_convnet.model, tmp_path / "x.mnn", config, bias_correction="maybe")
    assert not (tmp_path / "x.mnn").exists()
    assert api.quantize(tiny_convnet.model, tmp_path / "on.mnn", config, bias_correction=True).passed


def test_validate_pass_fail_and_layers(quantized, tiny_convnet):
    r, _ = quantized
    v = api.validate(r.model_path, tiny_convnet.test_dir, rate=0.1, metric="cosine", float_model=tiny_convnet.model)
    assert v.command == "validate" and v.passed and v.status == "pass"
    assert v.params_path == r.params_path and v.params == r.params
    assert {row["name"] for row in v.layers} >= {"conv1", "conv4"} and all("error" in row for row in v.layers)
    tight = api.validate(r.model_path, tiny_convnet.test_dir, rate=1e-9, metric="cosine")
    assert not tight.passed and tight.status == "fail" and tight.layers == []


def test_validate_unmeasurable_raises_with_the_result(tiny_convnet, tmp_path):
    corrupt = tmp_path / "corrupt.mnn"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(api.ModelNotMeasurable) as err:
        api.validate(corrupt, tiny_convnet.test_dir, rate=0.1)
    assert isinstance(err.value, BadInput) and err.value.exit_code == 2
    assert err.value.result.status == "error" and not err.value.result.passed
    with pytest.raises(BadInput, match="memory_mode"):
        api.validate(corrupt, tiny_convnet.test_dir, rate=0.1, memory_mode="high")


class HalfMetric:
    @hookimpl
    def mnnq_metrics(self):
        yield Metric(name="half_max_rel", summary="max_rel / 2",
                     per_output=lambda ref, out: float(np.abs(out - ref).max() / np.abs(ref).max() / 2))


def test_plugins_from_a_manager_and_blocking(quantized, tiny_convnet):
    r, _ = quantized
    pm = get_plugin_manager()
    pm.register(HalfMetric(), name="half")
    v = api.validate(r.model_path, tiny_convnet.test_dir, rate=1.0, metric="half_max_rel", plugin_manager=pm)
    assert v.metrics["half_max_rel"] == pytest.approx(v.metrics["max_rel"] / 2)
    with pytest.raises(PluginError, match="unknown metric 'cosine'"):
        api.validate(r.model_path, tiny_convnet.test_dir, rate=1.0, metric="cosine", disable_plugins="metric_cosine")
    with pytest.raises(BadInput, match="not both"):
        api.validate(r.model_path, tiny_convnet.test_dir, rate=1.0, plugin_manager=pm, disable_plugins=["x"])


def test_installed_plugins_are_used_and_failures_warn(quantized, tiny_convnet, mnnq_install):
    class Broken:
        @hookimpl
        def mnnq_search_strategies(self):
            raise RuntimeError("boom")

    r, _ = quantized
    mnnq_install(HalfMetric(), "half")
    mnnq_install(Broken(), "broken")
    expected = "plugin 'broken' skipped: mnnq_search_strategies raised RuntimeError: boom"
    with pytest.warns(api.PluginWarning, match=expected):
        v = api.validate(r.model_path, tiny_convnet.test_dir, rate=1.0, metric="half_max_rel")
    assert v.passed and "half_max_rel" in v.metrics


def test_errors_carry_the_cli_exit_code(tiny_convnet, tmp_path):
    with pytest.raises(MnnqError) as err:
        api.auto_quant(tiny_convnet.model, tmp_path / "q.mnn", tmp_path / "no-such-testset")
    assert err.value.exit_code == 2


def test_make_callable_keeps_the_package_a_package():
    package = types.ModuleType("scratch_pkg")
    package.engine = "a submodule"
    api.make_callable(package)
    assert callable(package) and package.engine == "a submodule"
    assert "config" in str(package.__signature__)


def test_top_level_names():
    """``mnnq/__init__.py`` exposes the API; ``mnnq.quantize`` is both the function and the package."""
    assert mnnq.auto_quant is api.auto_quant and mnnq.validate is api.validate and mnnq.Result is api.Result
    assert isinstance(mnnq.quantize, types.ModuleType) and callable(mnnq.quantize)
    import mnnq.quantize.engine as engine

    assert mnnq.quantize.engine is engine
    assert mnnq.MnnqError is MnnqError


def test_top_level_quantize_runs(tiny_convnet, tmp_path):
    r = mnnq.quantize(tiny_convnet.model, tmp_path / "int8.mnn", tiny_convnet.calibration_config(tmp_path / "c.json"))
    assert r.command == "quantize" and r.passed
    assert json.loads(r.params_path.read_text()) == r.params
