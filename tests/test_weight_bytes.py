"""Weights MNN's converter cannot quantize are accounted for and reported (issue 13, item 5).

The model (``mnnq.testing.models.build_shared_matmul``): two convs, then an unrolled recurrent
cell whose Gemm weights ``Wx`` [hidden,32] and ``Wh`` [hidden,hidden] are read by every time
step: 6 + 5 Gemms share 2 tensors, more than the 4 uses the converter turns into convs.
"""
import json

import numpy as np
import pytest

import mnnq
from mnnq.gate.check_command import rebuild_argv
from mnnq.gate.project import load_config
from mnnq.measure import compare
from mnnq.mnn_backend import weight_bytes as wb
from mnnq.mnn_backend.native import run_tool
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.testing.builders import file_sha256, make_testset, run_cli, write_calibration_config
from mnnq.testing.models import build_shared_matmul
from mnnq.testset import load_testset

STEPS, ROW, HIDDEN = 6, 32, 64
SHARED_OPS = 2 * STEPS - 1          # the first Wh product (zero state) is folded by the converter
# The flatbuffer pads each vector to 4 or 8 bytes: two builds that differ only in weight sizes may
# differ by that much per stored tensor in their non-weight bytes.
ALIGN = 8
# A weight-quantized conv gains an IDSTQuan table in place of its float weight vector: a vtable
# (<= 36 B for its 16 fields), its scalar fields (<= 48 B), the length prefixes of its buffer and
# scale vectors and their padding. Measured about 100 B; allowed 160 B per quantized conv.
QUANT_TABLE = 160


def shared_bytes(hidden: int) -> int:
    """float32 bytes of Wx and Wh."""
    return 4 * (hidden * ROW + hidden * hidden)


def shared_row(rows):
    """The one row of ``rows`` (dicts or FloatWeights) for the shared Gemm weights."""
    found = [r for r in rows if (r["reason"] if isinstance(r, dict) else r.reason) == wb.SHARED]
    assert len(found) == 1, rows
    return found[0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The float model, its 4-sample test set, and auto-quant's run on it (CLI, --report-json)."""
    d = tmp_path_factory.mktemp("shared")
    model = build_shared_matmul(d, steps=STEPS, hidden=HIDDEN)
    testset = make_testset(model, d / "testset", samples=4)
    q, report = d / "q.mnn", d / "report.json"
    run = run_cli(["auto-quant", "--model", model, "--quant_model", q, "--test_dir", testset,
                   "--report-json", report, "--fp16-float-weights", "0"])   # the float32 accounting
    return {"model": model, "testset": testset, "q": q, "run": run, "report": json.loads(report.read_text())}


def test_every_float_weight_byte_of_the_float_model_is_accounted(tmp_path):
    small = wb.account_weights(build_shared_matmul(tmp_path / "small", steps=STEPS, hidden=32))
    big = wb.account_weights(build_shared_matmul(tmp_path / "big", steps=STEPS, hidden=128))
    for hidden, account in ((32, small), (128, big)):
        row = shared_row(account.float)
        assert (row.kind, row.ops, row.tensors, row.uses, row.dtype) == ("MatMul/Gemm", SHARED_OPS, 2, STEPS, "float32")
        assert row.bytes == shared_bytes(hidden)
        assert account.quantized == []
        assert {(f.kind, f.reason) for f in account.float} >= {("Convolution", wb.FLOAT_CONV), ("Convolution", wb.BIAS)}
    # Only weights grow with ``hidden``: a weight byte the accounting missed would show up here.
    assert big.file_bytes - small.file_bytes >= shared_bytes(128) - shared_bytes(32)
    assert abs(big.other_bytes - small.other_bytes) <= ALIGN * sum(f.tensors for f in big.float)


def test_auto_quant_report_lists_the_shared_weights_and_adds_up(shared):
    assert shared["run"].code == 0, shared["run"].out + shared["run"].err
    weights = shared["report"]["weights"]
    row = shared_row(weights["float"])
    assert (row["kind"], row["ops"], row["tensors"], row["dtype"]) == ("MatMul/Gemm", SHARED_OPS, 2, "float32")
    assert row["bytes"] == shared_bytes(HIDDEN)
    assert "feeds up to 6 ops" in row["why"] and "--optimizePrefer 2" in row["why"]
    assert f"{SHARED_OPS} MatMul/Gemm ops sharing 2 weight tensors" in weights["headline"]
    assert weights["headline"].startswith(f"{row['share']:.0%} of the written file")
    # The two convs are quantized, or kept float by mnnq with that reason.
    conv_ops = sum(q["ops"] for q in weights["quantized"] if q["kind"] == "Convolution")
    kept = sum(f["ops"] for f in weights["float"] if f["reason"].startswith(wb.KEPT_BY_MNNQ))
    assert conv_ops >= 1 and conv_ops + kept == 2
    # Bytes add up to the written file, and what is not a weight is the float model's graph plus
    # the quantized convs' tables.
    size = shared["q"].stat().st_size
    assert weights["file_bytes"] == size == shared["report"]["size_after_bytes"]
    assert weights["float_bytes"] == sum(f["bytes"] for f in weights["float"] if not f["external"])
    assert weights["quantized_bytes"] + weights["float_bytes"] + weights["other_bytes"] == size
    float_other = wb.account_weights(shared["model"]).other_bytes
    assert -ALIGN * conv_ops <= weights["other_bytes"] - float_other <= QUANT_TABLE * conv_ops
    # The terminal report says the same.
    assert weights["headline"] in " ".join(shared["run"].out.split())
    assert wb.SHARED in shared["run"].out


def test_fp16_float_weights_halves_them_and_is_measured(tmp_path, shared, pm):
    q16 = tmp_path / "q16.mnn"
    r = mnnq.auto_quant(shared["model"], q16, shared["testset"], rate=0.05, fp16_float_weights=True)
    assert r.passed and r.weights == r.report["weights"]
    row = shared_row(r.weights["float"])
    assert row["dtype"] == "float16" and row["bytes"] == shared_bytes(HIDDEN) // 2
    assert r.weights["quantized"] == shared["report"]["weights"]["quantized"]  # quantized convs untouched
    assert q16.stat().st_size < shared["q"].stat().st_size - 0.9 * shared_bytes(HIDDEN) / 2
    assert any(n.startswith("float weights stored as fp16") for n in r.notes)
    # The reported errors are the fp16 file's own.
    ts = load_testset(shared["testset"])
    loaded = LoadedModel(q16, ts.input_names, ts.output_names, memory_mode=r.report["memory_mode"])
    measured = compare(ts, [loaded.run(s.inputs) for s in ts.samples], pm.metrics(), "max_rel").errors
    assert np.isclose(measured["max_rel"], r.metrics["max_rel"], rtol=1e-6, atol=1e-9)
    # `mnnq apply` rebuilds the same bytes from the params file.
    again = tmp_path / "again.mnn"
    code, out, err = run_cli(["apply", shared["model"], again, "--params", r.params_path, "--hqq",
                              "--fp16-float-weights"])
    assert code == 0, out + err
    assert file_sha256(again) == file_sha256(q16)


def test_fp16_float_weights_over_the_rate_keeps_float32(tmp_path, shared):
    """At a rate fp16 rounding alone exceeds (1e-9, where fp16 rounds to ~1e-4), every layer ends
    float and the fp16 copy is refused: the model written is the float32 one."""
    q = tmp_path / "q.mnn"
    r = mnnq.auto_quant(shared["model"], q, shared["testset"], rate=1e-9, fp16_float_weights=True)
    assert r.passed and r.error <= 1e-9
    assert shared_row(r.weights["float"])["dtype"] == "float32"
    assert any("over the rate; the float32 model" in n for n in r.notes)


def test_kept_float_layer_carries_mnnq_reason(tmp_path, tiny_model):
    tm = tiny_model("tiny_weight")
    r = mnnq.auto_quant(tm.model, tmp_path / "q.mnn", tm.test_dir, rate=0.05, hqq=False, fp16_float_weights=False)
    kept = [f for f in r.weights["float"] if f["reason"].startswith(wb.KEPT_BY_MNNQ)]
    assert [(f["kind"], f["ops"], f["reason"]) for f in kept] == [
        ("Convolution", 1, wb.kept_float_reason("scale underflow"))]
    assert kept[0]["bytes"] == 4 * 32 * 32 * 9


def test_quantize_report_lists_the_shared_weights(tmp_path, shared):
    out, report = tmp_path / "int8.mnn", tmp_path / "report.json"
    cfg = write_calibration_config(tmp_path / "calib.json", shared["testset"])
    code, stdout, err = run_cli(["quantize", shared["model"], out, cfg, "--report-json", report])
    assert code == 0, stdout + err
    weights = json.loads(report.read_text())["weights"]
    row = shared_row(weights["float"])
    assert (row["ops"], row["tensors"], row["bytes"]) == (SHARED_OPS, 2, shared_bytes(HIDDEN))
    assert sum(q["ops"] for q in weights["quantized"]) == 2   # the two convs, INT8
    assert weights["quantized_bytes"] + weights["float_bytes"] + weights["other_bytes"] == out.stat().st_size
    assert weights["headline"] in " ".join(stdout.split())


def test_embedding_table_and_external_weights(tmp_path, tiny_model):
    account = wb.account_weights(tiny_model("int_input").model)
    [table] = [f for f in account.float if f.reason == wb.EMBEDDING]
    assert (table.kind, table.ops, table.tensors, table.bytes) == ("Gather", 1, 1, 16 * 32 * 4)
    # Weights the converter stores outside the .mnn (--saveExternalData) are counted there, not in the file.
    model = build_shared_matmul(tmp_path, steps=STEPS, hidden=HIDDEN)
    out = tmp_path / "external.mnn"
    run_tool("mnnconvert", ["mnnconvert", "-f", "ONNX", "--modelFile", str(model.with_suffix(".onnx")),
                            "--MNNModel", str(out), "--saveExternalData"], cwd=str(tmp_path))
    external = wb.account_weights(out)
    assert external.external_bytes == (tmp_path / "external.mnn.weight").stat().st_size > shared_bytes(HIDDEN)
    assert {f.kind for f in external.float if f.external} == {"MatMul/Gemm", "Convolution"}
    assert external.quantized_bytes + external.float_bytes + external.other_bytes == out.stat().st_size


def test_gate_rebuild_keeps_fp16_float_weights(tmp_path):
    """A model the gate rebuilds (`mnnq check --rebuild`) gets the flag its job names."""
    (tmp_path / "mnnq.yaml").write_text(
        "defaults: {rate: 0.05}\nmodels:\n"
        "  - {name: a, float: f.mnn, quantized: a.mnn, test_dir: t, job: {auto-quant: {fp16_float_weights: 1}}}\n"
        "  - {name: c, float: f.mnn, quantized: c.mnn, test_dir: t,"
        " job: {apply: {params: p.json, hqq: true, fp16-float-weights: true}}}\n")
    a, c = load_config(tmp_path / "mnnq.yaml").models
    assert rebuild_argv(a)[-2:] == ["--fp16_float_weights", "1"]
    assert rebuild_argv(c)[-2:] == ["--hqq", "--fp16-float-weights"]


def test_fp16_auto_halves_the_shared_weights_when_they_dominate(shared, tmp_path, pm):
    """By default (--fp16-float-weights auto) a model whose float weights are at least a quarter
    of the written file gets them as fp16 when it still meets the rate."""
    q, report = tmp_path / "q.mnn", tmp_path / "report.json"
    run = run_cli(["auto-quant", "--model", shared["model"], "--quant_model", q, "--test_dir", shared["testset"],
                   "--report-json", report])
    assert run.code == 0, run.out + run.err
    data = json.loads(report.read_text())
    row = shared_row(data["weights"]["float"])
    assert row["dtype"] == "float16" and row["bytes"] == shared_bytes(HIDDEN) // 2
    assert any("stored as fp16" in n for n in data["notes"])
    assert q.stat().st_size < shared["q"].stat().st_size


def test_kept_float_reason_reaches_layers_inside_subgraphs(tmp_path, tiny_model):
    """Reasons are keyed by layer name (``<subgraph>::<op>`` inside a loop body), as the engines
    pass them; the two LSTM bodies hold convs of the same op name."""
    from mnnq.mnn_backend.converter import params_template, weight_quantize
    from mnnq.mnn_backend.inventory import read_conv_ops
    from mnnq.params import with_settings
    from mnnq.plugin import LayerSetting

    lstm = tiny_model("lstm")
    ops = read_conv_ops(lstm.model, subgraphs=True)
    kept = "lstm1_main0::Convolution23"
    assert kept in {op.key for op in ops}
    settings = {op.key: LayerSetting(0 if op.key == kept else 8) for op in ops}
    out = tmp_path / "q.mnn"
    weight_quantize(lstm.model, out, with_settings(params_template(lstm.model), settings, False),
                    hqq=False, asymmetric=False)
    account = wb.account_weights(out, {kept: wb.kept_float_reason("scale underflow")})
    [row] = [f for f in account.float if f.reason.startswith(wb.KEPT_BY_MNNQ)]
    assert (row.kind, row.ops, row.reason) == ("Convolution", 1, wb.kept_float_reason("scale underflow"))
    assert not [f for f in account.float if f.reason == wb.FLOAT_CONV]
    assert sum(q.ops for q in account.quantized) == len(ops) - 1
