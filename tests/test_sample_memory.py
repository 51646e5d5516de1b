"""The simulation runs a sample once per setting: a whole-set measurement after a quick one runs
only the samples the quick one did not, and gives what a fresh evaluator measures."""
from __future__ import annotations

import pytest

from common import DIGITS_TESTSET
from common import prepared_digits as common_prepared_digits
from mnnq.layers import LayerSetting
from mnnq.plugin_manager import get_plugin_manager
from mnnq.testset import load_testset


def prepared_digits(tmp_path, name):
    return common_prepared_digits(tmp_path / name)


@pytest.fixture
def low_bits(tmp_path):
    prepared, timings = prepared_digits(tmp_path, "a")
    settings = {name: LayerSetting(3, -1) for name in prepared.candidates}
    return prepared, timings, {**prepared.settings, **settings}


def test_a_whole_set_measurement_reuses_the_quick_samples_runs(low_bits, tmp_path):
    prepared, timings, settings = low_bits
    fast, samples = prepared.fast, len(prepared.testset.samples)
    start = timings.counts["forward"]
    quick = fast.measure(settings, quick=True)
    quick_count = len(fast.quick.view.samples)
    assert timings.counts["forward"] - start == quick_count < samples
    before = timings.counts["forward"]
    whole = fast.measure(settings)
    assert timings.counts["forward"] - before == samples - quick_count

    fresh, _ = prepared_digits(tmp_path, "b")
    expected = fresh.fast.measure(settings)
    assert whole.errors == expected.errors
    assert whole.errors["max_rel"] >= quick.errors["max_rel"]
    assert sorted((r.sample, r.output) for r in whole.details) == sorted((r.sample, r.output) for r in expected.details)


def test_a_known_miss_costs_no_forward(low_bits):
    prepared, timings, settings = low_bits
    fast = prepared.fast
    whole = fast.measure(settings)
    limit = whole.errors["max_rel"] / 2
    before = timings.counts["forward"]
    result, complete = fast.measure_until_miss(settings, "normal", "max_rel", limit)
    assert not complete and result.errors["max_rel"] > limit
    assert timings.counts["forward"] == before
    # other settings are run, not answered from memory
    other = {**settings, next(iter(prepared.candidates)): LayerSetting(8, -1)}
    fast.measure(other, quick=True)
    assert timings.counts["forward"] > before


def test_a_quick_keep_or_drop_runs_only_quick_samples_and_stops_at_a_miss(low_bits):
    prepared, timings, settings = low_bits
    fast = prepared.fast
    quick_count = len(fast.quick.view.samples)
    before = timings.counts["forward"]
    result, complete = fast.measure_until_miss(settings, "normal", "max_rel", 0.0, quick=True)
    assert not complete and result.errors["max_rel"] > 0.0
    assert timings.counts["forward"] - before == 1          # the first quick sample already misses
    result, complete = fast.measure_until_miss(settings, "normal", "max_rel", 1e9, quick=True)
    assert complete and timings.counts["forward"] - before == quick_count
    assert result.errors == fast.measure(settings, quick=True).errors
    assert timings.counts["forward"] - before == quick_count  # every quick sample was run once


def _measurement_with_worst(testset, worst: int):
    return _measurement_with_misses(testset, {worst: 0.9})


def test_a_sample_that_missed_joins_a_full_quick_set_up_to_its_limit():
    from mnnq.autoquant.samples import QUICK_LIMIT, QUICK_SAMPLES, QuickSamples
    testset = load_testset(DIGITS_TESTSET)
    quick = QuickSamples(testset, get_plugin_manager().metrics()["max_rel"], "max_rel")
    outside = [i for i in range(len(testset.samples)) if i not in quick.indices]
    quick.learn(_measurement_with_worst(testset, outside[0]))      # joins
    assert len(quick.indices) == QUICK_SAMPLES + 1 and outside[0] in quick.indices
    newcomer = next(i for i in outside if i not in quick.indices)
    quick.learn(_measurement_with_worst(testset, newcomer))        # a later miss still joins
    assert newcomer in quick.indices and len(quick.indices) == QUICK_LIMIT
    last = next(i for i in outside if i not in quick.indices)
    quick.learn(_measurement_with_worst(testset, last))            # but the set stops growing
    assert last not in quick.indices and len(quick.indices) == QUICK_LIMIT
    assert quick.order()[0] == last                                # it is still tried first


def _measurement_with_misses(testset, errors):
    from mnnq.measure import Measurement, OutputError
    rows = [OutputError(s.name, "out", 1.0, 0.0, {"max_rel": errors.get(i, 0.01)}) for i, s in enumerate(testset.samples)]
    return Measurement({"max_rel": max(errors.values())}, rows, [])


def test_with_a_limit_every_sample_over_it_joins_up_to_the_limit_of_the_set():
    from mnnq.autoquant.samples import QUICK_LIMIT, QuickSamples
    testset = load_testset(DIGITS_TESTSET)
    quick = QuickSamples(testset, get_plugin_manager().metrics()["max_rel"], "max_rel")
    outside = [i for i in range(len(testset.samples)) if i not in quick.indices]
    misses = {outside[0]: 0.2, outside[1]: 0.3, outside[2]: 0.4, outside[3]: 0.5}
    quick.learn(_measurement_with_misses(testset, misses), limit=0.05)
    assert len(quick.indices) == QUICK_LIMIT
    # the worst ones first: 0.5 and 0.4 join; 0.3 and 0.2 find the set full
    assert outside[3] in quick.indices and outside[2] in quick.indices
    assert outside[0] not in quick.indices and not quick.can_grow()


def test_a_whole_set_miss_after_the_quick_samples_met_runs_every_sample(low_bits, tmp_path):
    """Verification: the quick samples met with these settings, the whole set misses. Every
    sample is run (not only up to the first miss), so all the samples that miss join the quick
    ones at once; without a quick pass first, a whole-set run still stops at its first miss."""
    prepared, timings, settings = low_bits
    fast, samples = prepared.fast, len(prepared.testset.samples)
    quick_error = fast.measure(settings, quick=True).errors["max_rel"]
    whole = fast.measure(settings).errors["max_rel"]  # measured once, to pick a limit between
    assert whole > quick_error
    limit = (quick_error + whole) / 2

    fresh, fresh_timings = prepared_digits(tmp_path, "c")
    fast = fresh.fast
    before = fresh_timings.counts["forward"]
    _, complete = fast.measure_until_miss(settings, "normal", "max_rel", limit)  # no quick pass: stops early
    assert not complete and fresh_timings.counts["forward"] - before < samples

    fresh, fresh_timings = prepared_digits(tmp_path, "d")
    fast = fresh.fast
    quick_before = list(fast.quick.indices)
    fast.measure_until_miss(settings, "normal", "max_rel", limit, quick=True)
    result, complete = fast.measure_until_miss(settings, "normal", "max_rel", limit)
    assert complete and result.errors["max_rel"] == whole > limit   # every sample ran: complete, a miss
    assert fresh_timings.counts["forward"] == samples            # every sample, each once
    over = {row.sample for row in result.details if row.values["max_rel"] > limit}
    joined = set(fast.quick.indices) - set(quick_before)
    assert joined and {fresh.testset.samples[i].name for i in joined} <= over
