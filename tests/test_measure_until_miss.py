"""Keep-or-drop measurements stop running samples once the error is over the budget."""
from __future__ import annotations


import numpy as np

from mnnq.autoquant.evaluators import measure_until_miss
from mnnq.measure import compare
from mnnq.mnn_backend.runtime import LoadedModel
from mnnq.plugin_manager import get_plugin_manager
from mnnq.testset import load_testset
from common import DIGITS_DIR



class Counting:
    """The digits model, counting runs; ``spoil`` samples get a perturbed output."""

    def __init__(self, testset, spoil=()):
        self.model = LoadedModel(DIGITS_DIR / "digits.mnn", testset.input_names, testset.output_names)
        self.spoiled = {id(testset.samples[i].inputs[testset.input_names[0]]) for i in spoil}
        self.runs = 0

    def run(self, inputs):
        self.runs += 1
        out = self.model.run(inputs)
        if id(next(iter(inputs.values()))) in self.spoiled:
            out = {k: v + np.float32(10.0) * np.abs(v).max() for k, v in out.items()}
        return out


def test_a_miss_stops_early_and_a_pass_is_the_whole_test_set():
    testset = load_testset(DIGITS_DIR / "testset")
    metrics = {"max_rel": get_plugin_manager().metrics()["max_rel"]}
    assert len(testset.samples) > 8

    clean = Counting(testset)
    measurement, complete = measure_until_miss(clean, testset, metrics, "max_rel", 1.0)
    assert complete and clean.runs == len(testset.samples)
    full = compare(testset, [clean.model.run(s.inputs) for s in testset.samples], metrics, "max_rel")
    assert measurement.errors == full.errors

    spoiled = Counting(testset, spoil=[5])
    measurement, complete = measure_until_miss(spoiled, testset, metrics, "max_rel", 1.0)
    assert not complete and measurement.error("max_rel") > 1.0
    assert spoiled.runs == 6 < len(testset.samples)  # stopped at the spoiled sample
    assert len({d.sample for d in measurement.details}) == 6
