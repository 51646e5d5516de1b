"""MNN's test-dir format: file naming variants, multi-sample sets, and bad inputs."""
import json

import numpy as np
import pytest

from mnnq.errors import BadInput
from mnnq.testset import load_testset


def write(d, doc, files):
    d.mkdir(parents=True, exist_ok=True)
    (d / "input.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    for name, values in files.items():
        (d / name).write_text("\n".join(str(v) for v in values))
    return d


DOC = {"inputs": [{"name": "x", "shape": [1, 2]}], "outputs": ["y"]}


def test_named_files(tmp_path):
    ts = load_testset(write(tmp_path, DOC, {"x.txt": [1, 2], "y.txt": [3]}))
    assert ts.input_names == ["x"] and ts.output_names == ["y"] and len(ts.samples) == 1
    assert ts.samples[0].inputs["x"].shape == (1, 2)
    np.testing.assert_array_equal(ts.samples[0].references["y"], [3.0])


@pytest.mark.parametrize("inp,out", [("input0.txt", "0.txt"), ("input.txt", "output.txt"), ("input_0.txt", "output0.txt")])
def test_docs_file_names(tmp_path, inp, out):
    ts = load_testset(write(tmp_path, DOC, {inp: [1, 2], out: [3]}))
    np.testing.assert_array_equal(ts.samples[0].inputs["x"], [[1.0, 2.0]])


def test_value_fills_constant_input(tmp_path):
    doc = {"inputs": [{"name": "x", "shape": [2, 2], "value": 0.5}], "outputs": ["y"]}
    ts = load_testset(write(tmp_path, doc, {"y.txt": [1]}))
    assert ts.samples[0].inputs["x"].tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_two_inputs_and_integer_values(tmp_path):
    doc = {"inputs": [{"name": "ids", "shape": [3]}, {"name": "b", "shape": [1]}], "outputs": ["o1", "o2"]}
    ts = load_testset(write(tmp_path, doc, {"ids.txt": [1, 2, 3], "b.txt": [0.5], "o1.txt": [1], "1.txt": [2]}))
    assert ts.input_names == ["ids", "b"]
    assert ts.samples[0].references["o2"].tolist() == [2.0]


def test_multi_sample_folder(tmp_path):
    for i in range(3):
        write(tmp_path / f"{i:03d}", DOC, {"x.txt": [i, i], "y.txt": [i]})
    (tmp_path / "notes").mkdir()
    ts = load_testset(tmp_path)
    assert [s.name for s in ts.samples] == ["000", "001", "002"] and ts.multi


@pytest.mark.parametrize("doc,files,message", [
    ("{not json", {}, "not valid JSON"),
    ({"outputs": ["y"]}, {}, '"inputs"'),
    ({"inputs": [{"name": "x"}]}, {}, '"outputs"'),
    ({"inputs": [{"name": "x", "shape": [1, -2]}], "outputs": ["y"]}, {}, "positive integers"),
    (DOC, {"y.txt": [1]}, "no data for input 'x'"),
    (DOC, {"x.txt": [1, 2]}, "no reference for output 'y'"),
    (DOC, {"x.txt": [1, 2, 3], "y.txt": [1]}, "has 3 values but shape"),
    (DOC, {"x.txt": [1, "nan"], "y.txt": [1]}, "NaN or Inf"),
    (DOC, {"x.txt": [1, 2], "y.txt": ["inf"]}, "NaN or Inf"),
    (DOC, {"x.txt": [1, "abc"], "y.txt": [1]}, "non-number"),
    (DOC, {"x.txt": [], "y.txt": [1]}, "is empty"),
    (DOC, {"x.txt": [1, "1e60"], "y.txt": [1]}, r"x\.txt holds 1e60 at line 2, beyond float32's range"),
    (DOC, {"x.txt": [1, 2], "y.txt": ["-3.5e38"]}, r"y\.txt holds -3\.5e38 at line 1, beyond float32's range"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "value": 1e60}], "outputs": ["y"]}, {"y.txt": [1]},
     "within float32's range, got 1e\\+60"),
])
def test_bad_test_dirs(tmp_path, doc, files, message):
    write(tmp_path, doc, files)
    with pytest.raises(BadInput, match=message):
        load_testset(tmp_path)


def test_bad_values_are_named_by_line(tmp_path):
    """Several values on a line, blank lines: the line is the 1-based line of the offending token."""
    write(tmp_path, DOC, {"y.txt": [1]})
    (tmp_path / "x.txt").write_text("0.5 1\n\n  2 3\n4 nan 5\n")
    with pytest.raises(BadInput, match=r"contains NaN or Inf at line 4 \(nan\)"):
        load_testset(tmp_path)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_testset(tmp_path / "nope")
    with pytest.raises(BadInput, match="no input.json and no sub-folders"):
        load_testset(tmp_path)


def test_samples_must_agree(tmp_path):
    write(tmp_path / "a", DOC, {"x.txt": [1, 2], "y.txt": [1]})
    write(tmp_path / "b", {"inputs": [{"name": "z", "shape": [1, 2]}], "outputs": ["y"]}, {"z.txt": [1, 2], "y.txt": [1]})
    with pytest.raises(BadInput, match="share inputs and outputs"):
        load_testset(tmp_path)
