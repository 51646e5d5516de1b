"""memory-mode: auto_quant.py's runtime fallback.

auto_quant.py measures with runtime memory mode Low (dynamic int8 activations) and, if the
rate is missed, switches to Normal (float activations). The report says which mode the
budget holds under: the model must be run in that mode.
"""
from mnnq.plugin import FINISH, SearchStrategy, hookimpl


def memory_mode(ctx) -> None:
    # Only a run of the written model can tell memory modes apart; the in-process
    # simulation always computes float activations.
    if not ctx.exact:
        return
    if ctx.memory_mode != "low" or "normal" not in ctx.memory_modes:
        return
    error = ctx.remeasure("measure in memory mode low")
    if ctx.meets(error):
        return
    ctx.use_memory_mode("normal")
    error = ctx.remeasure("fall back to memory mode normal")
    ctx.note(f"memory-mode: low misses the budget; the model must run with memory mode normal ({error:.4g})")


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="memory-mode",
        summary="auto_quant.py's fallback: if memory mode low misses the rate, measure with memory mode normal",
        run=memory_mode,
        order=30,
        default=True,
        phase=FINISH,
        presets=("auto_quant", "sensitivity"),
    )
