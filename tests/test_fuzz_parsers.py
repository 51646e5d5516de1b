"""Fuzzing the parsers of user files with hypothesis: test dirs (input.json + data files), params
files, the gate's project config (mnnq.yaml / [tool.mnnq]) and quantize's calibration config.
Whatever the input, the result is a parsed value or an MnnqError (printed by the CLI as one
line), never another exception (a traceback).

Example counts are kept small so the whole file runs in well under a minute; raise them with
``MNNQ_FUZZ_EXAMPLES=2000`` for a longer local run.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnnq.errors import MnnqError

EXAMPLES = int(os.environ.get("MNNQ_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

# -- value strategies ---------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True)
           | st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)
names = st.sampled_from(["x", "y", "a", "b", "", "input", "output", "0", "x.txt", "../x", "x/y"]) | st.text(max_size=6)
dims = st.integers(-3, 6) | st.integers(-(2 ** 40), 2 ** 40) | st.sampled_from([True, 0.5, "3", None])
shapes = st.lists(dims, max_size=5) | json_values
number_text = st.lists(st.sampled_from(["0", "1", "-2.5", "1e3", "nan", "inf", "-inf", "abc", "1e999", "0x10",
                                        "", "\n", "\t", "１", "1_0"]), max_size=40).map(" ".join)
file_bytes = number_text.map(str.encode) | st.binary(max_size=64)


def _entry():
    return st.fixed_dictionaries({"name": names | json_values},
                                 optional={"shape": shapes, "value": json_values | st.floats(-5, 5)})


input_docs = st.fixed_dictionaries({}, optional={
    "inputs": st.lists(_entry() | json_values, max_size=3) | json_values,
    "outputs": st.lists(names | json_values, max_size=3) | json_values,
}) | json_values
DATA_NAMES = ["x.txt", "y.txt", "a.txt", "b.txt", "input.txt", "input0.txt", "output.txt", "0.txt", "1.txt"]


def _text_or_raw(doc) -> bytes:
    if isinstance(doc, bytes):
        return doc
    try:
        return json.dumps(doc).encode()
    except (TypeError, ValueError):
        return repr(doc).encode()


def _expect_clean(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MnnqError as exc:
        assert str(exc).strip(), "an MnnqError says what is wrong"  # the CLI prints it as one line
        return None


# -- test dirs ----------------------------------------------------------------------------------

@FUZZ
@given(doc=input_docs | st.binary(max_size=80),
       files=st.dictionaries(st.sampled_from(DATA_NAMES), file_bytes, max_size=5),
       multi=st.booleans(), second=st.booleans())
def test_testset_reader(doc, files, multi, second):
    from mnnq.testset import load_testset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = [root / "000", root / "001"] if multi and second else [root / "000"] if multi else [root]
        for i, sample in enumerate(samples):
            sample.mkdir(exist_ok=True)
            (sample / "input.json").write_bytes(_text_or_raw(doc))
            for name, data in files.items():
                (sample / name).write_bytes(data if i == 0 else data[::-1])
        _expect_clean(load_testset, root)


@FUZZ
@given(dims=st.lists(st.integers(1, 2 ** 20), min_size=1, max_size=4), value=st.floats(-2, 2))
def test_testset_constant_inputs_of_any_size(dims, value):
    """``value`` inputs are materialised: a shape too large must be refused, not crash."""
    from mnnq.testset import load_testset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "input.json").write_text(json.dumps({"inputs": [{"name": "x", "shape": dims, "value": value}],
                                                     "outputs": ["y"]}))
        (root / "y.txt").write_text("1 2 3\n")
        _expect_clean(load_testset, root)


# -- params files --------------------------------------------------------------------------------

def _layer():
    weight = st.fixed_dictionaries({}, optional={"name": names, "bits": json_values | st.integers(-3, 12),
                                                 "blockSize": json_values | st.integers(-3, 300),
                                                 "asymmetric": json_values})
    return st.fixed_dictionaries({}, optional={"opName": names | json_values,
                                               "weight": st.lists(weight | json_values, max_size=2) | json_values})


params_docs = st.fixed_dictionaries({}, optional={"algo": st.lists(
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["QUANTIZE", "PRUNE", ""]) | json_values,
                                        "quantParams": st.fixed_dictionaries({}, optional={
                                            "layer": st.lists(_layer() | json_values, max_size=3) | json_values})
                                        | json_values}) | json_values, max_size=2) | json_values}) | json_values


@FUZZ
@given(doc=params_docs | st.binary(max_size=80))
def test_params_files(doc):
    from mnnq.params import read_params_file, settings_from_params, with_settings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.json"
        path.write_bytes(_text_or_raw(doc))
        parsed = _expect_clean(read_params_file, path)
        if parsed is not None:
            settings = _expect_clean(settings_from_params, parsed, str(path))
            if settings is not None:
                _expect_clean(with_settings, parsed, settings, True)


@FUZZ
@given(doc=params_docs)
def test_settings_from_params_on_any_document(doc):
    from mnnq.params import settings_from_params

    _expect_clean(settings_from_params, doc, "params.json")


# -- the gate's project config ---------------------------------------------------------------------

def _model_entry():
    return st.fixed_dictionaries({}, optional={
        "name": names | json_values, "float": names | json_values, "quantized": names | json_values,
        "test_dir": names | json_values, "metric": st.sampled_from(["max_rel", "cosine"]) | json_values,
        "rate": st.floats(allow_nan=True) | json_values, "memory_mode": st.sampled_from(["low", "fast"]) | json_values,
        "job": st.dictionaries(st.sampled_from(["auto-quant", "apply", "quantize", "auto_quant", "x"]),
                               st.dictionaries(st.sampled_from(["hqq", "params", "config", "rate", "strategy",
                                                                "select_bits", "time_budget", "zz"]), json_values,
                                               max_size=3) | json_values, max_size=2) | json_values,
    })


configs = st.fixed_dictionaries({}, optional={
    "models": st.lists(_model_entry() | json_values, max_size=3) | json_values,
    "defaults": st.dictionaries(st.sampled_from(["rate", "metric", "memory_mode", "other"]), json_values,
                                max_size=3) | json_values,
}) | json_values


@FUZZ
@given(data=configs)
def test_project_config_structures(data):
    from mnnq.gate.project import parse_config

    _expect_clean(parse_config, data, Path("/tmp/project/mnnq.yaml"))


@FUZZ
@given(data=configs, raw=st.text(max_size=80), use_raw=st.booleans())
def test_project_config_files(data, raw, use_raw):
    from mnnq.gate.project import load_config

    text = raw if use_raw else yaml.safe_dump(data, allow_unicode=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mnnq.yaml"
        path.write_text(text, encoding="utf-8")
        _expect_clean(load_config, path)


@FUZZ
@given(raw=st.text(max_size=120), header=st.sampled_from(["", "[tool.mnnq]\n", "[[tool.mnnq.models]]\n",
                                                          "[tool]\nmnnq = 3\n"]))
def test_project_config_pyproject(raw, header):
    from mnnq.gate.project import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pyproject.toml"
        path.write_text(header + raw, encoding="utf-8")
        _expect_clean(load_config, path)


# -- quantize's calibration config (mnnq.quantize.config, when present) -----------------------------

QUANTIZE_KEYS = ["path", "input_type", "format", "mean", "normal", "width", "height", "center_crop_h",
                 "center_crop_w", "used_image_num", "used_sample_num", "feature_quantize_method",
                 "weight_quantize_method", "quant_bits", "feature_clamp_value", "weight_clamp_value", "batch_size",
                 "skip_quant_op_names", "debug", "inputs", "winogradOpt", "pathh", "unknown"]
quantize_docs = st.dictionaries(st.sampled_from(QUANTIZE_KEYS), json_values | st.sampled_from(
    [".", "/", "sequence", "image", "RGB", "KL", "MAX_ABS", 8, 0, -1, 3.5, True, [1, 2, 3], [{"name": "x"}]]),
    max_size=8) | json_values


@FUZZ
@given(doc=quantize_docs)
def test_quantize_config(doc):
    from mnnq.quantize import config

    if isinstance(doc, dict):
        _expect_clean(config.parse_config, doc)


@FUZZ
@given(doc=quantize_docs | st.binary(max_size=80), suffix=st.sampled_from([".json", ".yaml", ".yml", ".txt"]))
def test_quantize_config_files(doc, suffix):
    from mnnq.quantize import config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"calib{suffix}"
        path.write_bytes(_text_or_raw(doc))
        raw = _expect_clean(config.read_config_file, path)
        if raw is not None:
            _expect_clean(config.parse_config, raw, path, base_dir=Path(tmp))
