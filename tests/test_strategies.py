"""Each built-in search strategy's mechanics against a stand-in evaluator with known per-layer
errors (what it proposes, keeps and records). Whether a strategy finds a good plan on a real
model is tested on real converted models in test_strategies_real.py."""
import pytest

from mnnq.plugin import Layer, LayerSetting, StopSearch
from mnnq.testing import search_context

# name -> (error added at 4 bits, error added per block-size step below 256, float-only error)
LAYERS = {
    "small": Layer("small", "conv", 16, 16, (1, 1)),
    "mid": Layer("mid", "conv", 64, 64, (1, 1)),
    "big": Layer("big", "conv", 256, 256, (1, 1)),
    "dw": Layer("dw", "depthwise", 64, 64, (3, 3), (64, 1, 3, 3)),
}
BASE = {"small": 0.001, "mid": 0.002, "big": 0.004, "dw": 0.001}  # error at 8 bits per channel
AT4 = {"small": 0.004, "mid": 0.030, "big": 0.008, "dw": 0.002}  # extra error at 4 bits
BLOCK_GAIN = {256: 0.9, 128: 0.7, 64: 0.5, 32: 0.3}  # error factor with blocks (smaller = better)


def fake_error(settings, memory_mode="normal", low_penalty=0.0):
    total = 0.0
    for name, s in settings.items():
        if s.bits == 0:
            continue
        e = BASE[name] + (AT4[name] if s.bits == 4 else 0.0)
        if s.block > 0 and LAYERS[name].in_per_group % s.block == 0:
            e *= BLOCK_GAIN.get(s.block, 1.0)
        total += e
    return total + (low_penalty if memory_mode == "low" else 0.0)


def make_toy(target, low_penalty=0.0, underflow=(), exact=True, settings=None):
    toy = search_context(LAYERS, lambda s, mode: fake_error(s, mode, low_penalty), target=target, metric="max_rel",
                         exact=exact, underflows=lambda n, s: n in underflow, settings=settings)
    toy.ctx.remeasure("initial")
    return toy


def make_ctx(target, **kw):
    return make_toy(target, **kw).ctx


def strategy(pm, name):
    return pm.search_strategy(name)


def test_select_bits_keeps_4_bits_only_where_budget_holds(pm):
    ctx = make_ctx(target=0.025)
    strategy(pm, "select-bits").run(ctx)
    bits = {n: ctx.setting(n).bits for n in LAYERS}
    # mid costs 0.030*0.5 at 4 bits -> over budget alone; the others fit together.
    assert bits == {"small": 4, "mid": 8, "big": 4, "dw": 4}
    assert ctx.error <= 0.025
    assert all(ctx.setting(n).block == 64 for n in LAYERS)


def test_select_bits_stops_when_block_64_misses(pm):
    toy = make_toy(target=0.001)
    strategy(pm, "select-bits").run(toy.ctx)
    assert all(toy.ctx.setting(n) == LayerSetting(8, -1) for n in LAYERS)
    assert any("misses" in note for note in toy.search.notes)


def test_select_block_takes_largest_block_meeting_budget(pm):
    # 8 bits everywhere: per-channel 0.008; blocks scale layers whose channels divide.
    ctx = make_ctx(target=0.0065)
    strategy(pm, "select-block").run(ctx)
    assert ctx.error <= 0.0065
    # 256 gives small/mid/dw no block (16/64/1 channels not divisible) -> 0.0076 > target; 128 too;
    # 64 applies to mid and big -> 0.001+0.001+0.002+0.001=0.005 meets.
    assert fake_error(ctx.settings) == pytest.approx(ctx.error)
    assert [t.note for t in ctx.trials[1:4]] == ["all layers block 256", "all layers block 128", "all layers block 64"]


def test_select_block_keeps_best_when_nothing_meets(pm):
    toy = make_toy(target=0.0001)
    ctx = toy.ctx
    strategy(pm, "select-block").run(ctx)
    assert ctx.error == min(t.error for t in ctx.trials[1:])
    assert any("no block size meets" in n for n in toy.search.notes)


def test_memory_mode_falls_back_to_normal(pm):
    ctx = make_ctx(target=0.01, low_penalty=0.05)
    assert ctx.error > 0.01  # measured in low
    strategy(pm, "memory-mode").run(ctx)
    assert ctx.memory_mode == "normal" and ctx.error <= 0.01


def test_memory_mode_does_nothing_for_simulation(pm):
    ctx = make_ctx(target=0.01, low_penalty=0.05, exact=False)
    strategy(pm, "memory-mode").run(ctx)
    assert ctx.memory_mode == "low"


def test_skip_layers_floats_largest_first_until_budget(pm):
    ctx = make_ctx(target=0.004)
    strategy(pm, "skip-layers").run(ctx)
    assert ctx.setting("big").bits == 0  # largest first, and it lowers the error
    assert ctx.error <= 0.004
    assert ctx.setting("small").bits == 8  # stopped once the budget held


def test_skip_layers_restores_previous_setting(pm):
    ctx = make_ctx(target=0.0, settings={**{n: LayerSetting(8, -1) for n in LAYERS}, "small": LayerSetting(4, 64)})
    strategy(pm, "skip-layers").run(ctx)
    # every layer lowers the error when floated, so all end float; none is reset to 8 bits
    assert all(ctx.setting(n).bits == 0 for n in LAYERS)


def test_guard_keeps_underflowing_layers_float(pm):
    toy = make_toy(target=1.0, underflow=("mid",))
    guarded = toy.search.guarded(toy.ctx.settings)
    assert guarded["mid"].bits == 0 and guarded["mid"].reason == "scale underflow"
    assert guarded["big"].bits == 8


# -- sensitivity: a fake model whose error^2 grows with each layer's weight noise ---------------
GAIN = {"small": 0.0005, "mid": 0.004, "big": 0.001, "dw": 0.0008}


def noise(name, s):
    if s.bits == 0:
        return 0.0
    blocked = s.block > 0 and LAYERS[name].in_per_group % s.block == 0 and LAYERS[name].in_per_group > s.block
    return (4.0 ** (8 - s.bits)) * (0.5 if blocked else 1.0)


def noisy_error(settings):
    return sum(GAIN[n] ** 2 * noise(n, s) for n, s in settings.items()) ** 0.5


def noisy_toy(target, measured=True, **kw):
    toy = search_context(LAYERS, lambda s, mode: noisy_error(s), target=target, metric="max_rel", exact=False,
                         weight_noise=kw.pop("weight_noise", noise), **kw)
    if measured:
        toy.ctx.remeasure("initial")
    return toy


def noisy_ctx(target, **kw):
    return noisy_toy(target, **kw).ctx


def test_sensitivity_meets_budget_probing_each_layer_once(pm):
    target = 0.05
    ctx = noisy_ctx(target)
    strategy(pm, "sensitivity").run(ctx)
    assert ctx.error <= target and noisy_error(ctx.settings) == pytest.approx(ctx.error)
    # the most sensitive layer gets the most bits
    assert ctx.setting("mid").bits >= max(ctx.setting(n).bits for n in ("small", "big"))
    # screening probed each layer once; the rest was predicted from weight noise
    assert sum(t.note.startswith("probe") for t in ctx.trials) == len(LAYERS)
    assert {t.stage for t in ctx.trials[1:]} <= {"screening", "confirmation", "refine", "verification"}
    assert all(t.quick for t in ctx.trials if t.stage == "screening")


def test_sensitivity_respects_select_bits_off(pm):
    ctx = noisy_ctx(0.05, allow_low_bits=False)
    strategy(pm, "sensitivity").run(ctx)
    assert {ctx.setting(n).bits for n in LAYERS} <= {0, 8}


def test_sensitivity_without_weights_measures_every_setting(pm):
    ctx = noisy_ctx(0.05, weight_noise=lambda name, s: None)
    strategy(pm, "sensitivity").run(ctx)
    assert ctx.error <= 0.05
    assert any(t.note.startswith("screen") for t in ctx.trials)


def test_time_budget_stops_the_search(pm):
    ctx = noisy_ctx(0.05, measured=False, deadline=0.0)  # already spent
    with pytest.raises(StopSearch):
        strategy(pm, "sensitivity").run(ctx)


def test_starting_settings_are_measured_only_when_a_strategy_reads_the_error(pm):
    ctx = noisy_ctx(0.05, measured=False)
    assert ctx.measured_error is None and not ctx.trials
    strategy(pm, "sensitivity").run(ctx)
    assert not any(t.note == "initial" for t in ctx.trials)  # sensitivity measures its own proposals
    assert ctx.measured_error == ctx.error <= 0.05

    fresh = noisy_ctx(0.05, measured=False)
    assert fresh.error == pytest.approx(noisy_error(fresh.settings))  # the first read measures once
    assert fresh.error == fresh.error and [t.note for t in fresh.trials] == ["initial"]


def test_a_strategy_sees_only_the_search_context_contract(pm):
    """Built-ins and third parties get the same read-only view: engine wiring and anything
    outside mnnq.plugin.SearchContext is not reachable, and nothing can be assigned."""
    ctx = make_ctx(target=0.05)
    for hidden in ("guarded", "switch_evaluation", "set_error", "_settings", "notes", "evaluator_name"):
        with pytest.raises(AttributeError, match="not part of the search context"):
            getattr(ctx, hidden)
    with pytest.raises(AttributeError, match="ctx.accept"):
        ctx.memory_mode = "normal"
    with pytest.raises(TypeError):
        ctx.settings["small"] = LayerSetting(4)


def test_the_smallest_layers_are_screened_as_one_group_at_8_bits(pm):
    """Layers holding together at most 1.5% of the weights cost one probe, not one each; they
    stay at 8 bits (or float) while the big layers get their own settings."""
    tiny = {f"t{i}": Layer(f"t{i}", "conv", 8, 8, (1, 1)) for i in range(5)}     # 64 weights each
    layers = {**tiny, "big": Layer("big", "conv", 256, 256, (1, 1))}             # 65536 weights

    def error(settings, mode):
        return sum((4.0 ** (8 - s.bits)) * 1e-4 for s in settings.values() if s.bits) ** 0.5

    toy = search_context(layers, error, target=0.05, exact=False,
                         weight_noise=lambda n, s: 0.0 if s.bits == 0 else 4.0 ** (8 - s.bits))
    strategy(pm, "sensitivity").run(toy.ctx)
    probes = [t.note for t in toy.ctx.trials if t.note.startswith("probe")]
    assert probes == ["probe big: 4 bits per channel", "probe the 5 smallest layers: 8 bits"]
    assert {toy.ctx.setting(n).bits for n in tiny} <= {0, 8}
    assert toy.ctx.setting("big").bits < 8 and toy.ctx.error <= 0.05
