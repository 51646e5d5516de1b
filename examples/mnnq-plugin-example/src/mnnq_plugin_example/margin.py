"""margin: a finishing step that leaves head-room under the budget.

A plan tuned to the last drop of the budget on a few test samples often misses it on the next
inputs. After the search, ``margin`` keeps the written model's error at or under
``(1 - MARGIN) * rate``: while it is over, it gives the largest quantized layer its next safer
setting (fewer bits -> 8 bits -> float) when that lowers the error. Being a finish-phase
strategy, it also runs again on exact measurements when the written model misses a budget
that the in-process simulation met.

It joins auto-quant's default pipeline and both presets through its record's data
(``default=True``, ``presets``): installing the package is all it takes.
"""
from __future__ import annotations

from mnnq.plugin import FINISH, FLOAT_BITS, LayerSetting, SearchStrategy, hookimpl

MARGIN = 0.10


def safer(setting: LayerSetting) -> LayerSetting:
    """The next safer setting: 8 bits per channel after fewer bits, float after 8 bits."""
    if setting.bits < 8:
        return LayerSetting(8, -1)
    return setting.with_bits(FLOAT_BITS)


def keep_a_margin(ctx) -> None:
    limit = ctx.target * (1.0 - MARGIN)
    if ctx.error <= limit:
        return
    for name in reversed(ctx.candidates):  # largest first
        while not ctx.setting(name).is_float and ctx.error > limit:
            change = {name: safer(ctx.setting(name))}
            error = ctx.propose(change, f"margin: {name} to {change[name].bits or 'float'}")
            if error >= ctx.error:
                break
            ctx.accept(change, error)
        if ctx.error <= limit:
            return
    ctx.note(f"margin: could not get under {limit:.4g} ({MARGIN:.0%} under the rate); error {ctx.error:.4g}")


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="margin",
        summary=f"finish: keep the error {MARGIN:.0%} under the rate (largest layers to safer settings first)",
        run=keep_a_margin,
        order=50,
        default=True,
        phase=FINISH,
        presets=("sensitivity", "auto_quant"),
    )
