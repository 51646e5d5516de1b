"""select-block: auto_quant.py's block selection.

Tries one block size for all layers, 256, 128, 64, 32, stopping at the first that meets the
budget; then bisects how many candidate layers (smallest first) can keep twice that block.
If no block meets the budget it keeps the best one.
"""
from mnnq.plugin import SearchStrategy, hookimpl

BLOCKS = (256, 128, 64, 32)


def _all_blocks(ctx, block):
    return {n: ctx.setting(n).with_block(block) for n in ctx.candidates}


def _split_blocks(ctx, count, large, small):
    return {n: ctx.setting(n).with_block(large if i < count else small) for i, n in enumerate(ctx.candidates)}


def select_block(ctx) -> None:
    best_block, best_error, valid = None, float("inf"), None
    for block in BLOCKS:
        error = ctx.propose(_all_blocks(ctx, block), f"all layers block {block}")
        if error < best_error:
            best_block, best_error = block, error
        if ctx.meets(error):
            valid = block
            break
    if valid is None:
        ctx.accept(_all_blocks(ctx, best_block), best_error)
        ctx.note(f"select-block: no block size meets the budget; kept the best, {best_block} ({best_error:.4g})")
        return
    ctx.accept(_all_blocks(ctx, valid), best_error)
    if valid == BLOCKS[0]:
        return
    large = valid * 2
    lo, hi = 0, len(ctx.candidates)
    best_count, best_count_error = 0, best_error
    while lo < hi:
        mid = (lo + hi + 1) // 2
        error = ctx.propose(_split_blocks(ctx, mid, large, valid), f"{mid} smallest layers block {large}, rest {valid}")
        if ctx.meets(error):
            lo, best_count, best_count_error = mid, mid, error
        else:
            hi = mid - 1
    if best_count:
        ctx.accept(_split_blocks(ctx, best_count, large, valid), best_count_error)


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="select-block",
        summary="auto_quant.py's --select_block: largest block (256..32) under the rate, then bisect 2x blocks",
        run=select_block,
        order=20,
        presets=("auto_quant",),
        disabled_by=("select_block",),
    )
