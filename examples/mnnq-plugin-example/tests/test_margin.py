"""margin on a stand-in model (mnnq.testing.search_context): what it changes and when it stops."""
import pytest

from mnnq.plugin import FINISH, Layer, LayerSetting
from mnnq.testing import manager_with, search_context
from mnnq_plugin_example import margin

LAYERS = {n: Layer(n, "conv", c, c, (1, 1)) for n, c in (("small", 8), ("mid", 32), ("big", 128))}
COST = {"small": 0.004, "mid": 0.01, "big": 0.02}  # error each layer adds at 4 bits (a quarter at 8)


def error_of(settings, memory_mode):
    return sum(COST[n] * (1.0 if s.bits == 4 else 0.25 if s.bits == 8 else 0.0) for n, s in settings.items())


def toy(target):
    return search_context(LAYERS, error_of, target=target, settings={n: LayerSetting(4) for n in LAYERS})


@pytest.fixture
def strategy():
    return manager_with({"example_margin": margin}).search_strategies()["margin"]


def test_record_composes_as_a_default_finish_step(strategy):
    assert strategy.phase == FINISH and strategy.default
    assert set(strategy.presets) == {"sensitivity", "auto_quant"}


def test_raises_the_largest_layer_first_until_under_the_margin(strategy):
    t = toy(target=0.03)                      # 0.034 at 4 bits everywhere; limit 0.027
    strategy.run(t.ctx)
    assert t.ctx.setting("big").bits == 8 and t.ctx.setting("small").bits == 4
    assert t.ctx.error == pytest.approx(error_of(t.ctx.settings, "normal")) and t.ctx.error <= 0.027


def test_does_nothing_with_head_room(strategy):
    t = toy(target=0.1)
    strategy.run(t.ctx)
    assert all(t.ctx.setting(n).bits == 4 for n in LAYERS)
    assert [tr.note for tr in t.ctx.trials] == ["initial"]


def test_goes_to_float_when_8_bits_is_not_enough(strategy):
    t = toy(target=0.0001)
    strategy.run(t.ctx)
    assert all(t.ctx.setting(n).is_float for n in LAYERS) and t.ctx.error == 0.0


def test_says_so_when_the_margin_cannot_be_held(strategy):
    floor = 0.05  # an error no layer setting removes (e.g. from the runtime)
    t = search_context(LAYERS, lambda s, mode: floor + error_of(s, mode), target=0.05,
                       settings={n: LayerSetting(4) for n in LAYERS})
    strategy.run(t.ctx)
    assert t.ctx.error == pytest.approx(floor)
    assert any("margin: could not get under" in n for n in t.search.notes)
