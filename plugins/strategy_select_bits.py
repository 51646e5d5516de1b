"""select-bits: auto_quant.py's bit selection, over every quantizable layer.

Sets block 64 everywhere (as auto_quant.py does) and measures; if that misses the budget it
stops. Otherwise it tries 4 bits on each candidate layer, smallest first, and keeps 4 bits
where the error stays within the budget.
"""
from mnnq.plugin import SearchStrategy, hookimpl

START_BLOCK = 64
LOW_BITS = 4


def select_bits(ctx) -> None:
    blocked = {n: ctx.setting(n).with_block(START_BLOCK) for n in ctx.candidates}
    error = ctx.propose(blocked, f"all layers block {START_BLOCK}")
    if not ctx.meets(error):
        ctx.note(f"select-bits: block {START_BLOCK} already misses the budget ({error:.4g}); bits left at 8")
        return
    ctx.accept(blocked, error)
    for name in ctx.candidates:
        current = ctx.setting(name)
        if current.bits <= LOW_BITS or current.is_float:
            continue
        change = {name: current.with_bits(LOW_BITS)}
        error = ctx.propose(change, f"{name}: {LOW_BITS} bits")
        if ctx.meets(error):
            ctx.accept(change, error)


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="select-bits",
        summary="auto_quant.py's --select_bits: try 4 bits per layer (smallest first), keep it under the rate",
        run=select_bits,
        order=10,
        presets=("auto_quant",),
        disabled_by=("select_bits",),
    )
