"""`mnnq tradeoff`: one point per rate from one screening; every point written, measured and
rebuildable with `mnnq apply`."""
import json
import xml.etree.ElementTree as ET

from common import DIGITS_MODEL, DIGITS_TESTSET, measured
from mnnq.testing import file_digests, run_cli


def test_curve_points_are_written_measured_and_rebuildable(tmp_path, pm):
    out = tmp_path / "curve"
    code, stdout, stderr = run_cli(["tradeoff", "--model", DIGITS_MODEL, "--test_dir", DIGITS_TESTSET,
                                    "--rates", "0.02,0.1,0.05", "--out", out])
    assert code == 0, stdout + stderr
    assert "rate" in stdout and "0.05" in stdout and "tradeoff.svg" in stdout
    data = json.loads((out / "tradeoff.json").read_text())
    points = data["points"]
    assert [p["rate"] for p in points] == [0.1, 0.05, 0.02]            # largest budget first
    sizes = [p["size_bytes"] for p in points]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]             # a tighter budget costs bytes
    for p in points:
        model = out / p["model"]
        assert model.stat().st_size == p["size_bytes"]
        errors = measured(model, DIGITS_TESTSET, pm, p["memory_mode"])
        assert errors["max_rel"] == p["error"] <= p["rate"]            # measured on the written file
        rebuilt = tmp_path / f"rebuilt-{p['rate']}.mnn"
        code, stdout, stderr = run_cli(["apply", DIGITS_MODEL, rebuilt, "--params", out / p["params"], "--hqq"])
        assert code == 0, stdout + stderr
        assert rebuilt.read_bytes() == model.read_bytes()
    # the screening ran once: later points answer most of their trials from earlier ones
    assert 0 < points[0]["new_trials"] <= points[0]["trials"]
    assert all(p["new_trials"] < p["trials"] for p in points[1:])
    svg = ET.fromstring((out / "tradeoff.svg").read_text())
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}circle")) == len(points)


def test_a_folder_that_is_not_empty_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "curve"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = file_digests(out)
    code, stdout, stderr = run_cli(["tradeoff", "--model", DIGITS_MODEL, "--test_dir", DIGITS_TESTSET, "--out", out])
    assert code == 2 and "must be a new or empty folder" in stderr
    assert file_digests(out) == before


def test_bad_rates_are_a_usage_error(tmp_path):
    code, stdout, stderr = run_cli(["tradeoff", "--model", DIGITS_MODEL, "--test_dir", DIGITS_TESTSET,
                                    "--rates", "0.05,-1", "--out", tmp_path / "c"])
    assert code == 2 and "comma-separated positive rates" in stderr
    assert not (tmp_path / "c").exists()


def test_jobs_give_the_same_curve(tmp_path, monkeypatch):
    """--jobs workers take part of the screening (their quick samples are this process's) and
    change nothing: the same points and the same model files as one process."""
    monkeypatch.setenv("MNNQ_WAIT_FOR_WORKERS", "1")   # the tiny model's batches would end first
    curves = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"curve{jobs}"
        code, stdout, stderr = run_cli(["tradeoff", "--model", DIGITS_MODEL, "--test_dir", DIGITS_TESTSET,
                                        "--rates", "0.02,0.1", "--out", out, "--jobs", jobs])
        assert code == 0, stdout + stderr
        curves[jobs] = json.loads((out / "tradeoff.json").read_text())
    assert curves["1"]["points"] == curves["3"]["points"]
    for p in curves["1"]["points"]:
        assert (tmp_path / "curve1" / p["model"]).read_bytes() == (tmp_path / "curve3" / p["model"]).read_bytes()
