"""sensitivity: measure what each layer costs at each setting, then spend the budget where it
buys the most bytes.

1. Screening: every candidate layer is quantized alone (all others float) at a probe setting
   on a few samples (the quick subset); its error at every other setting (bits 8..2, per channel and
   the block sizes the converter would apply) is predicted from the weights' quantization
   noise, which scales the output error (error^2 is proportional to it for small noise).
2. Allocation: per layer, the settings form a chain from float to the smallest file along the
   lower convex hull of (bytes, error^2); all layers' steps are merged cheapest first (error^2
   added per byte saved), the greedy answer to this knapsack.
3. Confirmation: the longest prefix of that sequence whose real error (all layers together,
   whole test set) is within the budget is found by bisection, then the next steps are tried
   one by one to use what budget is left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

from mnnq.hookspecs import hookimpl
from mnnq.layers import FLOAT_BITS, PER_CHANNEL, LayerSetting, effective_block, weight_bytes
from mnnq.records import SearchStrategy

BITS = (8, 6, 5, 4, 3, 2)
BLOCKS = (PER_CHANNEL, 128, 64, 32)
PROBE = LayerSetting(4, PER_CHANNEL)  # loud enough to measure, still a realistic setting
REFINE_TRIALS = 16
# a bit width whose per-channel error is predicted this far over the budget ends the layer's list
HOPELESS = 3.0


@dataclass(frozen=True)
class Option:
    setting: LayerSetting
    nbytes: float
    error: float


@dataclass(frozen=True)
class Step:
    layer: str
    option: Option
    cost: float  # error^2 added per byte saved


def layer_settings(ctx, name: str, bits: int) -> List[LayerSetting]:
    """The distinct settings at ``bits`` the converter would really apply to ``name``."""
    layer = ctx.layers[name]
    blocks = BLOCKS if ctx.allow_blocks else (PER_CHANNEL,)
    seen, out = set(), []
    for block in blocks:
        eff = effective_block(layer, block)
        if eff in seen:
            continue
        seen.add(eff)
        setting = LayerSetting(bits, eff)
        if not ctx.underflows(name, setting):
            out.append(setting)
    return out


def screen(ctx) -> Dict[str, List[Option]]:
    """Each candidate's error when quantized alone, per setting.

    When the host knows the weights, one probe per layer (PROBE, measured with all other
    layers float) fixes the layer's gain ``error^2 / weight noise``; every other setting's
    error is predicted from its weight noise, which numpy computes without running the model.
    Otherwise every setting is measured, bit width by bit width, until the layer misses.
    """
    base = {n: LayerSetting(FLOAT_BITS, PER_CHANNEL) for n in ctx.layers}
    bit_widths = BITS if ctx.allow_low_bits else (8,)
    probe = PROBE if ctx.allow_low_bits else LayerSetting(8, PER_CHANNEL)
    options: Dict[str, List[Option]] = {n: [] for n in ctx.candidates}
    predictable = [n for n in ctx.candidates if ctx.weight_noise(n, probe)]
    if predictable:
        trials = [({**base, n: probe}, f"probe {n}: {probe.bits} bits per channel") for n in predictable]
        for name, error in zip(predictable, ctx.measure_many(trials, quick=True)):
            gain = error ** 2 / ctx.weight_noise(name, probe)
            for bits in bit_widths:
                settings = layer_settings(ctx, name, bits)
                if not settings:
                    continue
                # per channel first: when even that is far over the budget, so are fewer bits
                per_channel = math.sqrt(gain * (ctx.weight_noise(name, settings[0]) or 0.0))
                if per_channel > HOPELESS * ctx.target:
                    break
                for setting in settings:
                    predicted = math.sqrt(gain * (ctx.weight_noise(name, setting) or 0.0))
                    if predicted <= ctx.target:
                        options[name].append(Option(setting, weight_bytes(ctx.layers[name], setting), predicted))
    active = [n for n in ctx.candidates if n not in predictable]
    for bits in bit_widths:
        batch: List[Tuple[str, LayerSetting]] = [(n, s) for n in active for s in layer_settings(ctx, n, bits)]
        if not batch:
            break
        trials = [({**base, n: s}, f"screen {n}: {s.bits} bits, block {s.block}") for n, s in batch]
        errors = ctx.measure_many(trials, quick=True)
        fits = set()
        for (name, setting), error in zip(batch, errors):
            if ctx.meets(error):
                options[name].append(Option(setting, weight_bytes(ctx.layers[name], setting), error))
                fits.add(name)
        active = [n for n in active if n in fits]
    return options


def hull_steps(name: str, start: Option, options: List[Option]) -> List[Step]:
    """Steps from ``start`` (float) along the lower convex hull of (bytes, error^2)."""
    steps: List[Step] = []
    current = start
    remaining = [o for o in options if o.nbytes < current.nbytes]
    while remaining:
        def cost(o: Option) -> float:
            return (o.error ** 2 - current.error ** 2) / (current.nbytes - o.nbytes)
        best = min(remaining, key=lambda o: (cost(o), o.nbytes))
        steps.append(Step(name, best, cost(best)))
        current = best
        remaining = [o for o in remaining if o.nbytes < current.nbytes]
    return steps


def plan(ctx, options: Dict[str, List[Option]]) -> List[Step]:
    order = {n: i for i, n in enumerate(ctx.candidates)}
    steps: List[Step] = []
    for name, opts in options.items():
        start = Option(LayerSetting(FLOAT_BITS, PER_CHANNEL), weight_bytes(ctx.layers[name], LayerSetting(0)), 0.0)
        chain = hull_steps(name, start, opts)
        # keep each layer's own order even where its hull is not strictly convex
        running = -math.inf
        for step in chain:
            running = max(running, step.cost)
            steps.append(Step(step.layer, step.option, running))
    steps.sort(key=lambda s: (s.cost, order[s.layer]))
    return steps


def apply_steps(ctx, steps: List[Step], count: int) -> Dict[str, LayerSetting]:
    settings = {n: LayerSetting(FLOAT_BITS, PER_CHANNEL) for n in ctx.candidates}
    for step in steps[:count]:
        settings[step.layer] = step.option.setting
    return {**ctx.settings, **settings}


def confirmed(ctx, settings: Dict[str, LayerSetting], note: str) -> float:
    """The whole-test-set error of ``settings`` when it meets the budget; when it misses, the
    error of the first samples that already miss (the maximum over more samples is no lower)."""
    return ctx.measure_until_miss(settings, note)


def sensitivity(ctx) -> None:
    options = screen(ctx)
    steps = plan(ctx, options)
    if not steps:
        ctx.note("sensitivity: no layer can be quantized alone within the budget; all kept float")
        ctx.accept(apply_steps(ctx, steps, 0), ctx.measure(apply_steps(ctx, steps, 0), "all candidates float"))
        return
    # first guess: the longest prefix whose errors, added like independent noise, fit
    guess = 0
    energy: Dict[str, float] = {}
    for i, step in enumerate(steps, start=1):
        energy[step.layer] = step.option.error ** 2
        if math.sqrt(sum(energy.values())) <= ctx.target:
            guess = i
    measured: Dict[int, float] = {}

    def error_at(count: int) -> float:
        if count not in measured:
            measured[count] = confirmed(ctx, apply_steps(ctx, steps, count), f"plan: first {count} of {len(steps)} steps")
        return measured[count]

    lo, hi = 0, len(steps)  # error_at(lo) assumed within budget; find the largest count that is
    if guess and ctx.meets(error_at(guess)):
        lo = guess
    elif guess:
        hi = guess - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ctx.meets(error_at(mid)):
            lo = mid
        else:
            hi = mid - 1
    best = apply_steps(ctx, steps, lo)
    best_error = error_at(lo) if lo else ctx.measure(best, "plan: all candidates float")
    # use the budget that is left on the steps after the prefix
    failed_layers = {steps[lo].layer} if lo < len(steps) and lo + 1 in measured else set()
    tried = 0
    for step in steps[lo:]:
        if tried >= REFINE_TRIALS:
            break
        if step.layer in failed_layers:
            continue
        trial = {**best, step.layer: step.option.setting}
        if trial == best:
            continue
        tried += 1
        error = confirmed(ctx, trial, f"refine {step.layer}: {step.option.setting.bits} bits, block {step.option.setting.block}")
        if ctx.meets(error):
            best, best_error = trial, error
        else:
            failed_layers.add(step.layer)
    ctx.accept(best, best_error)


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="sensitivity",
        summary="per-layer error at bits 8..2 and every block size, then the smallest file under the rate",
        run=sensitivity,
        order=5,
        default=True,
    )
