"""The final conversion started ahead: while the simulated search goes on, the settings of the
last trial within the budget are converted in a child; the final write waits only for what is
left, and writes the same bytes as a conversion started at the end."""
from __future__ import annotations

import json

from common import DIGITS_MODEL, DIGITS_TESTSET
from common import prepared_digits as common_prepared_digits
from mnnq.layers import LayerSetting
from mnnq.mnn_backend.converter import start_weight_quantize, weight_quantize
from mnnq.params import with_settings
from mnnq.testing import process_alive


def prepared_digits(tmp_path):
    return common_prepared_digits(tmp_path / "work")[0]


def at_bits(prepared, bits):
    return {**prepared.settings, **{name: LayerSetting(bits, -1) for name in prepared.candidates}}


def test_a_conversion_started_ahead_is_the_one_the_final_write_uses(tmp_path):
    prepared = prepared_digits(tmp_path)
    exact, settings = prepared.exact, at_bits(prepared, 4)
    exact.convert_ahead(settings)
    exact.convert_ahead(settings)  # the same settings again: still one conversion
    assert exact.timings.converted_ahead == {"started": 1, "used": 0}
    params = exact.write(settings, tmp_path / "ahead.mnn")
    assert exact.timings.converted_ahead == {"started": 1, "used": 1}

    direct = tmp_path / "direct.mnn"
    weight_quantize(prepared.rewritten, direct, params, hqq=True, asymmetric=True)
    assert (tmp_path / "ahead.mnn").read_bytes() == direct.read_bytes()


def test_newer_settings_replace_a_conversion_and_other_settings_convert_at_once(tmp_path):
    prepared = prepared_digits(tmp_path)
    exact = prepared.exact
    four, five, eight = at_bits(prepared, 4), at_bits(prepared, 5), at_bits(prepared, 8)
    exact.convert_ahead(four)
    exact.convert_ahead(five)
    assert exact.timings.converted_ahead["started"] == 2
    exact.write(eight, tmp_path / "eight.mnn")  # neither: the one ahead is cancelled
    assert exact.timings.converted_ahead["used"] == 0 and exact._ahead is None
    direct = tmp_path / "direct.mnn"
    weight_quantize(prepared.rewritten, direct, with_settings(prepared.exact.template, eight, True),
                    hqq=True, asymmetric=True)
    assert (tmp_path / "eight.mnn").read_bytes() == direct.read_bytes()


def test_a_cancelled_conversion_leaves_no_file_and_no_child(tmp_path):
    prepared = prepared_digits(tmp_path)
    params = with_settings(prepared.exact.template, at_bits(prepared, 4), True)
    job = start_weight_quantize(prepared.rewritten, params, hqq=True, asymmetric=True)
    work, pid = job.work, job._child.pid
    job.cancel()
    assert not work.exists()
    assert pid is None or not process_alive(pid)


def test_tradeoff_converts_ahead_through_its_memo(tmp_path, monkeypatch):
    """mnnq tradeoff wraps the simulation in its memo (mnnq.autoquant.memo): the wrapper keeps
    the conversion ahead, and each point's model is the one the final write would convert."""
    from mnnq.autoquant.evaluators import ExactEvaluator
    from mnnq.cli import main

    calls = []
    original = ExactEvaluator.convert_ahead
    monkeypatch.setattr(ExactEvaluator, "convert_ahead", lambda self, settings: (calls.append(1), original(self, settings)))
    out = tmp_path / "curve"
    assert main(["tradeoff", "--model", str(DIGITS_MODEL), "--test_dir", str(DIGITS_TESTSET), "--rates", "0.02,0.1",
                 "--out", str(out), "--jobs", "1"]) == 0
    assert calls
    for point in json.loads((out / "tradeoff.json").read_text())["points"]:
        direct = tmp_path / point["model"]
        weight_quantize(DIGITS_MODEL, direct, json.loads((out / point["params"]).read_text()), hqq=True,
                        asymmetric=True)
        assert (out / point["model"]).read_bytes() == direct.read_bytes()
