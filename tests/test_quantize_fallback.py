"""The ``--rate`` fallback on a real small model: the layers it keeps float, the trade-off curve in
the report and the SVG, and the search's scan on a synthetic budget (every prefix reachable)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mnnq.cli import main
from mnnq.testing import run_cli
from common import int8_layers

RATE = 0.003          # cosine: this chain's all-INT8 error is ~0.05; it needs about six layers float
OUTLIER_LAYERS = (1, 4, 6)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Eight 3x3 convs (16 channels, ReLU) and a 1x1 head; convs 1, 4 and 6 have one output
    channel 30x larger than the rest, so per-tensor INT8 params lose the other channels of that
    tensor -- which only goes away when the conv and the next one are both float. 16 random
    calibration samples as test dirs."""
    from mnnq.testing import write_calibration_config
    from mnnq.testing.models import OnnxGraph, export_and_convert, reference_outputs, write_multi_testdir

    root = tmp_path_factory.mktemp("qchain")
    g = OnnxGraph(3)
    rng = np.random.default_rng(103)
    h, cin = g.input("x", [1, 3, 12, 12]), 3
    for i in range(8):
        w = g.he((16, cin, 3, 3), cin * 9)
        if i in OUTLIER_LAYERS:
            w[int(rng.integers(16))] *= 30.0
        h, cin = g.conv_relu(h, f"c{i}", cin, 16, 3, weight=w), 16
    g.node("Identity", [g.conv(h, "head", 16, 4, 1)], "y")
    g.output("y", [1, 4, 12, 12])
    model = export_and_convert(g, root, "chain")
    data = np.random.default_rng(3)
    feeds = [{"x": data.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    write_multi_testdir(root / "calib", [(f, reference_outputs(model, f)) for f in feeds])
    return {"model": model, "config": write_calibration_config(root / "cfg.json", root / "calib")}


@pytest.fixture(scope="module")
def fallback_run(chain, tmp_path_factory):
    """``mnnq quantize --rate RATE --metric cosine`` with the JSON report and the SVG."""
    work = tmp_path_factory.mktemp("qchain-run")
    out, report, svg = work / "q.mnn", work / "r.json", work / "t.svg"
    rc, stdout, _ = run_cli(["quantize", chain["model"], out, chain["config"], "--rate", RATE,
                             "--metric", "cosine", "--report-json", report, "--svg", svg], columns=250)
    return {"rc": rc, "out": out, "doc": json.loads(report.read_text()), "svg": svg, "stdout": stdout}


def old_order_float_layers(chain, work: Path) -> list:
    """What the fallback before issue 14 kept float: rank every layer by the error with it as
    the only INT8 layer (all samples), then keep layers float in that order, one per round,
    until the model holds."""
    from mnnq.plugin_manager import get_plugin_manager
    from mnnq.quantize import engine

    opts = engine.QuantizeOptions(model=chain["model"], out=work / "old.mnn", config=chain["config"], rate=RATE,
                                  metric="cosine")
    job = engine.prepare(opts, get_plugin_manager())
    notes: list = []
    candidates = engine.make_candidates(job, work, engine.calibrate_job(job, notes, None, {}), notes, None)
    first, _ = candidates.first(notes)
    assert first.errors["cosine"] > RATE
    names, every = [l.name for l in job.layers], candidates.indices

    def error(keep) -> float:
        return candidates.measure(keep, every, None)[0].errors["cosine"]

    ranked = sorted(range(len(names)), key=lambda i: (-error([n for n in names if n != names[i]]), i))
    keep = []
    for i in ranked:
        keep.append(names[i])
        if error(keep) <= RATE:
            return keep
    return keep


def test_keeps_no_more_layers_float_than_the_old_order(chain, fallback_run, tmp_path):
    doc = fallback_run["doc"]
    assert fallback_run["rc"] == 0 and doc["status"] == "MET" and doc["errors"]["cosine"] <= RATE
    new = [l["name"] for l in doc["layers"] if l["status"] == "float"]
    old = old_order_float_layers(chain, tmp_path)
    assert len(old) >= 2                       # a model where the fallback matters
    assert 1 <= len(new) <= len(old), (new, old)


def test_the_curve_in_the_report_is_the_written_model(fallback_run):
    doc, out = fallback_run["doc"], fallback_run["out"]
    tradeoff = doc["tradeoff"]
    assert tradeoff["metric"] == "cosine" and tradeoff["rate"] == RATE and tradeoff["layers"] == 9
    points = tradeoff["points"]
    assert [p["round"] for p in points] == list(range(len(points))) and doc["rounds"] == len(points) - 1
    first, chosen = points[0], [p for p in points if p["chosen"]]
    assert first["stage"] == "all INT8" and first["layers_float"] == 0 and first["error"] > RATE
    assert len(chosen) == 1
    chosen = chosen[0]
    kept = {l["name"] for l in doc["layers"] if l["status"] == "float"}
    assert set(chosen["float"]) == kept and chosen["layers_int8"] == doc["layers_int8"] == 9 - len(kept)
    assert set(int8_layers(out)) == {l["name"] for l in doc["layers"]} - kept
    assert chosen["errors"] == doc["errors"] and chosen["output_cosine"] == doc["output_cosine"]
    assert chosen["complete"] and chosen["samples"] == doc["measured_samples"] == 16
    for p in points:
        assert p["layers_int8"] + p["layers_float"] == 9 and len(p["float"]) == p["layers_float"]
        assert p["holds"] == (p["complete"] and p["error"] <= RATE)
        if p["holds"]:
            assert p["layers_float"] >= chosen["layers_float"]
        if not p["complete"]:                  # stopped at the first sample over the rate
            assert p["samples"] < 16 and p["error"] > RATE
    assert {r["layer"] for r in tradeoff["ranking"]} == {l["name"] for l in doc["layers"]}
    assert len(tradeoff["ranking_samples"]) == 2
    svg = fallback_run["svg"].read_text()
    assert svg.startswith("<svg") and svg.count("<circle") == len(points) + 1 and f"chosen: {chosen['layers_int8']}" in svg


def test_the_terminal_report_has_the_tradeoff_table(fallback_run):
    rc, stdout = fallback_run["rc"], fallback_run["stdout"]
    assert rc == 0 and "trade-off: layers INT8 against cosine" in stdout and "(chosen)" in stdout
    assert "kept float: alone in INT8" in stdout and "sensitivity rank" in stdout


@pytest.mark.parametrize("where", ["missing_folder", "the_model", "the_output"])
def test_a_bad_svg_path_exits_2_with_nothing_written(chain, tmp_path, capsys, where):
    out, report = tmp_path / "q.mnn", tmp_path / "r.json"
    svg = {"missing_folder": tmp_path / "nowhere" / "t.svg", "the_model": chain["model"], "the_output": out}[where]
    before = chain["model"].read_bytes()
    rc = main(["quantize", str(chain["model"]), str(out), str(chain["config"]), "--rate", str(RATE),
               "--metric", "cosine", "--report-json", str(report), "--svg", str(svg)])
    err = capsys.readouterr().err
    assert rc == 2 and "--svg" in err
    assert not out.exists() and not Path(str(out) + ".json").exists() and not report.exists()
    assert chain["model"].read_bytes() == before


def test_svg_without_a_fallback_says_so_and_writes_nothing(chain, tmp_path, capsys):
    svg = tmp_path / "t.svg"
    rc = main(["quantize", str(chain["model"]), str(tmp_path / "q.mnn"), str(chain["config"]), "--rate", "0.5",
               "--metric", "cosine", "--svg", str(svg)])
    assert rc == 0 and not svg.exists() and "no trade-off to draw" in capsys.readouterr().out


# ----------------------------------------------------------------------- the scan, synthetic

def _search(n: int, holds_at):
    """A FloatSearch over ``n`` layers whose candidate with float set ``keep`` has error 0 when
    ``holds_at(keep)`` and 1 otherwise, on 4 samples."""
    from mnnq.quantize.evaluate import Evaluation
    from mnnq.quantize.fallback import Budget, FloatSearch, Point

    calls = []

    def evaluation(keep, order, stop) -> Evaluation:
        err = 0.0 if holds_at(tuple(keep)) else 1.0
        measured = list(order)[:1] if stop is not None and err > stop[1] else list(order)
        calls.append((tuple(keep), len(measured)))
        assert len(calls) < 10 * n + 10, "the search does not end"
        return Evaluation({"m": err}, (1.0 - err, 1.0 - err), samples=len(measured),
                          sample_errors={i: {"m": err} for i in measured}, complete=len(measured) == len(order))

    def measure(keep, order, stop):
        return evaluation(keep, order, stop), Path("/nonexistent/candidate.mnn")

    def measure_many(keeps, order, stop):
        for keep in keeps:
            yield measure(keep, order, stop)

    first = evaluation((), [0, 1, 2, 3], None)
    calls.clear()
    layers = [f"l{i}" for i in range(n)]
    search = FloatSearch(layers, Budget("m", 0.5), measure, measure_many, Point(0, "all INT8", (), first, False),
                         Path("/nonexistent/first.mnn"))
    return search, calls


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 16, 17, 20])
def test_the_scan_finds_the_smallest_prefix_that_holds(n):
    """Ranked by layer index (all-alone errors tie); a prefix of k layers holds from ``need`` on
    but also at k = 3 (not monotone): the scan finds the smallest, measuring the prefixes of 1,
    2, 4, 8 ... layers on every sample and stopping the others at their first sample."""
    for need in range(1, n + 1):
        def holds_at(keep, need=need):
            return len(keep) >= need or len(keep) == 3

        search, calls = _search(n, holds_at)
        point, _ = search.run()
        smallest = min(need, 3) if n >= 3 else need
        assert point.holds and len(point.float_layers) == smallest
        assert all(samples == 2 for _, samples in calls[:n])          # the ranking: two samples each
        scanned = calls[n:n + smallest]
        assert [keep for keep, _ in scanned] == [tuple(f"l{i}" for i in range(k)) for k in range(1, smallest + 1)]
        for keep, samples in scanned:
            assert samples == (4 if len(keep) & (len(keep) - 1) == 0 or holds_at(keep) else 1), (keep, samples)
        assert len(calls) == n + smallest + smallest          # then one refine try per float layer
