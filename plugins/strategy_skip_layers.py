"""skip-layers: auto_quant.py's last resort, keep layers float until the budget holds.

Walks the candidates from the largest back to the smallest, setting one layer float
(bits 0) at a time and keeping it float when that lowers the error; stops once the error
is within the budget. Unlike auto_quant.py it restores a layer to its previous setting
(not always 8 bits) when keeping it float does not help.
"""
from mnnq.plugin import FINISH, FLOAT_BITS, SearchStrategy, hookimpl


def skip_layers(ctx) -> None:
    if ctx.meets(ctx.error):
        return
    for name in reversed(ctx.candidates):
        current = ctx.setting(name)
        if current.is_float:
            continue
        change = {name: current.with_bits(FLOAT_BITS)}
        error = ctx.propose(change, f"{name}: keep float")
        if error < ctx.error:
            ctx.accept(change, error)
        if ctx.meets(ctx.error):
            return


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="skip-layers",
        summary="auto_quant.py's skipMoreOps: keep layers float (largest first) while it lowers the error",
        run=skip_layers,
        order=40,
        default=True,
        phase=FINISH,
        presets=("auto_quant", "sensitivity"),
    )
