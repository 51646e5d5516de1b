"""sensitivity: measure what each layer costs at each setting, then spend the budget where it
buys the most bytes.

1. Screening: every candidate layer is quantized alone (all others float) at a probe setting
   on a few informative samples; its error at every other setting (bits 8..2, per channel and
   the block sizes the converter would apply) is predicted from the weights' quantization
   noise, which scales the output error (error^2 is proportional to it for small noise). The
   smallest layers, together holding at most SMALL_SHARE (1.5 %) of the weights, are screened as one
   group at 8 bits (one trial instead of one each; they stay at 8 bits or float).
2. Allocation: per layer, the settings form a chain from float to the smallest file along the
   lower convex hull of (bytes, error^2); all layers' steps are merged cheapest first (error^2
   added per byte saved), the greedy answer to this knapsack.
3. Confirmation: when the predictions leave some layer float, every layer at its first (gentlest)
   setting is measured first and, if it meets the budget, leads the sequence. The longest prefix
   whose real error (all layers together) is within the budget is then found by walking down
   from the predicted length in doubling strides and bisecting, and the next steps are tried one
   by one to use what budget is left; both on the quick samples, after a first measurement on
   every sample (which lets the host add the sample that misses most to the quick ones).
4. Verification: the plan is measured on every sample. When the quick samples were too
   optimistic, confirmation runs again below the quick answer: on the quick samples (which now
   include the sample that missed), then on every sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from mnnq.plugin import FLOAT_BITS, PER_CHANNEL, LayerSetting, SearchStrategy, hookimpl

BITS = (8, 6, 5, 4, 3, 2)
BLOCKS = (PER_CHANNEL, 128, 64, 32)
PROBE = LayerSetting(4, PER_CHANNEL)  # loud enough to measure, still a realistic setting
REFINE_TRIALS = 16
VERIFY_ROUNDS = 2  # confirmations on the quick samples before confirming on every sample
# the smallest layers holding at most this share of the weights are one unit, screened at 8 bits
SMALL_SHARE = 0.015
SMALL_MIN_LAYERS = 3
# a bit width whose per-channel error is predicted this far over the budget ends the layer's list
HOPELESS = 3.0


@dataclass(frozen=True)
class Option:
    setting: LayerSetting
    nbytes: float
    error: float


@dataclass(frozen=True)
class Step:
    layer: str  # a layer, or a group of small layers (see Screen.members)
    option: Option
    cost: float  # error^2 added per byte saved


@dataclass
class Screen:
    """What screening found: ``options[unit]`` (settings within the budget, with predicted or
    measured errors) and ``members[unit]``: the layers a unit sets (itself, or a small group)."""

    options: Dict[str, List[Option]]
    members: Dict[str, Tuple[str, ...]]


def small_layers(ctx) -> List[str]:
    """The smallest candidates holding together at most SMALL_SHARE of the weights (none when
    fewer than SMALL_MIN_LAYERS): screened as one group."""
    total = sum(ctx.layers[n].weight_count for n in ctx.candidates)
    group, held = [], 0
    for name in ctx.candidates:  # smallest first
        held += ctx.layers[name].weight_count
        if held > SMALL_SHARE * total:
            break
        group.append(name)
    return group if len(group) >= SMALL_MIN_LAYERS else []


def layer_settings(ctx, name: str, bits: int) -> List[LayerSetting]:
    """The distinct settings at ``bits`` the converter would really apply to ``name``."""
    blocks = BLOCKS if ctx.allow_blocks else (PER_CHANNEL,)
    seen, out = set(), []
    for block in blocks:
        eff = ctx.effective_block(name, block)
        if eff in seen:
            continue
        seen.add(eff)
        setting = LayerSetting(bits, eff)
        if not ctx.would_underflow(name, setting):
            out.append(setting)
    return out


def screen(ctx) -> Screen:
    """Each candidate's error when quantized alone, per setting.

    When the host knows the weights, one probe per layer (PROBE, measured with all other
    layers float) fixes the layer's gain ``error^2 / weight noise``; every other setting's
    error is predicted from its weight noise, which numpy computes without running the model.
    Otherwise every setting is measured, bit width by bit width, until the layer misses.
    """
    base = {n: LayerSetting(FLOAT_BITS, PER_CHANNEL) for n in ctx.layers}
    probe = PROBE if ctx.allow_low_bits else LayerSetting(8, PER_CHANNEL)
    predictable = [n for n in ctx.candidates if ctx.weight_noise(n, probe)]
    small = [n for n in small_layers(ctx) if n in predictable]
    probed = [n for n in predictable if n not in small]
    found = Screen({n: [] for n in ctx.candidates if n not in small}, {n: (n,) for n in ctx.candidates})
    trials = [({**base, n: probe}, f"probe {n}: {probe.bits} bits per channel") for n in probed]
    eight = LayerSetting(8, PER_CHANNEL)
    if small:
        trials.append(({**base, **{n: eight for n in small}}, f"probe the {len(small)} smallest layers: 8 bits"))
    errors = ctx.measure_many(trials, quick=True)
    for name, error in zip(probed, errors):
        found.options[name] = predicted_options(ctx, name, error ** 2 / ctx.weight_noise(name, probe))
    if small:
        unit = f"{len(small)} smallest layers"
        for name in small:
            del found.members[name]
        found.members[unit] = tuple(small)
        nbytes = sum(ctx.layer_bytes(n, eight) for n in small)
        found.options[unit] = [Option(eight, nbytes, errors[-1])] if ctx.meets(errors[-1]) else []
    measure_settings(ctx, [n for n in ctx.candidates if n not in predictable], base, found.options)
    return found


def predicted_options(ctx, name: str, gain: float) -> List[Option]:
    """The layer's settings whose error predicted from ``gain`` (error^2 per unit of weight
    noise) is within the budget."""
    options = []
    for bits in BITS if ctx.allow_low_bits else (8,):
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
                options.append(Option(setting, ctx.layer_bytes(name, setting), predicted))
    return options


def measure_settings(ctx, active: List[str], base: Dict[str, LayerSetting], options: Dict[str, List[Option]]) -> None:
    """Without weights to predict from: measure every setting of ``active`` layers, bit width
    by bit width, until a layer misses."""
    for bits in BITS if ctx.allow_low_bits else (8,):
        batch: List[Tuple[str, LayerSetting]] = [(n, s) for n in active for s in layer_settings(ctx, n, bits)]
        if not batch:
            break
        trials = [({**base, n: s}, f"screen {n}: {s.bits} bits, block {s.block}") for n, s in batch]
        errors = ctx.measure_many(trials, quick=True)
        fits = set()
        for (name, setting), error in zip(batch, errors):
            if ctx.meets(error):
                options[name].append(Option(setting, ctx.layer_bytes(name, setting), error))
                fits.add(name)
        active = [n for n in active if n in fits]


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


def plan(ctx, found: Screen) -> List[Step]:
    order = {unit: min(ctx.candidates.index(n) for n in members) for unit, members in found.members.items()}
    steps: List[Step] = []
    for name, opts in found.options.items():
        float_bytes = sum(ctx.layer_bytes(n, LayerSetting(FLOAT_BITS)) for n in found.members[name])
        start = Option(LayerSetting(FLOAT_BITS, PER_CHANNEL), float_bytes, 0.0)
        chain = hull_steps(name, start, opts)
        # keep each layer's own order even where its hull is not strictly convex
        running = -math.inf
        for step in chain:
            running = max(running, step.cost)
            steps.append(Step(step.layer, step.option, running))
    steps.sort(key=lambda s: (s.cost, order[s.layer]))
    return steps


def with_step(settings: Dict[str, LayerSetting], step: Step, found: Screen) -> Dict[str, LayerSetting]:
    return {**settings, **{n: step.option.setting for n in found.members[step.layer]}}


def apply_steps(ctx, steps: List[Step], count: int, found: Screen) -> Dict[str, LayerSetting]:
    settings = {**ctx.settings, **{n: LayerSetting(FLOAT_BITS, PER_CHANNEL) for n in ctx.candidates}}
    for step in steps[:count]:
        settings = with_step(settings, step, found)
    return settings


def confirmed(ctx, settings: Dict[str, LayerSetting], note: str, quick: bool) -> float:
    """The error on the quick samples (``quick``: a lower bound of the whole set's) or on the
    whole test set when it meets the budget; when it misses, the error of the first samples that
    already miss (the maximum over more samples is no lower)."""
    return ctx.measure_until_miss(settings, note, quick=quick)


def first_guess(ctx, steps: List[Step]) -> int:
    """The longest prefix whose predicted errors, added like independent noise, fit."""
    guess = 0
    energy: Dict[str, float] = {}
    for i, step in enumerate(steps, start=1):
        energy[step.layer] = step.option.error ** 2
        if math.sqrt(sum(energy.values())) <= ctx.target:
            guess = i
    return guess


def longest_prefix(ctx, steps: List[Step], guess: int, found: Screen, quick: bool,
                   top: Optional[int] = None, known: Optional[Dict[int, float]] = None) -> Tuple[int, Dict[int, float]]:
    """``(count, measured)``: the largest number (at most ``top``) of leading steps whose real
    error meets the budget, by bisection starting at ``guess``; ``measured`` maps each count
    tried to its error (``known``: counts already measured on every sample)."""
    measured: Dict[int, float] = dict(known or {})

    def error_at(count: int) -> float:
        if count not in measured:
            # the first one on every sample: it shows the host which samples miss (the quick
            # samples then include the worst one)
            measured[count] = confirmed(ctx, apply_steps(ctx, steps, count, found),
                                        f"plan: first {count} of {len(steps)} steps", quick and bool(measured))
        return measured[count]

    lo, hi = 0, len(steps) if top is None else top  # error_at(lo) assumed within budget
    guess = min(guess, hi)
    if guess:
        # gallop from the guess (errors of a plan are not monotonic in its length, so the
        # prediction's neighbourhood is searched first), then bisect what is left
        lo, hi = _gallop(ctx, error_at, guess, hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ctx.meets(error_at(mid)):
            lo = mid
        else:
            hi = mid - 1
    if lo and lo not in measured:
        error_at(lo)
    return lo, measured


def _gallop(ctx, error_at, guess: int, hi: int) -> Tuple[int, int]:
    """``(lo, hi)`` bracketing the longest prefix within the budget (``lo`` meets it, or is 0).
    A guess that meets is the lower end (bisection explores above it). A guess that misses is
    walked down in doubling strides until a count meets: the answer is usually near the
    prediction, and a plan's error is not monotonic in its length, so halving at once could land
    on a worse stretch."""
    if ctx.meets(error_at(guess)):
        return guess, hi
    upper, stride = guess - 1, 1  # the largest count not yet known to miss
    while guess - stride > 0:
        count = guess - stride
        if ctx.meets(error_at(count)):
            return count, upper
        upper, stride = count - 1, stride * 2
    return 0, upper


def refine(ctx, steps: List[Step], count: int, best: Dict[str, LayerSetting], best_error: float,
           failed_layers: set, found: Screen, quick: bool, trials: int = REFINE_TRIALS
           ) -> Tuple[Dict[str, LayerSetting], float]:
    """Use the budget left after the prefix: try the following steps one by one."""
    tried = 0
    for step in steps[count:]:
        if tried >= trials:
            break
        if step.layer in failed_layers:
            continue
        trial = with_step(best, step, found)
        if trial == best:
            continue
        tried += 1
        setting = step.option.setting
        error = confirmed(ctx, trial, f"refine {step.layer}: {setting.bits} bits, block {setting.block}", quick)
        if ctx.meets(error):
            best, best_error = trial, error
        else:
            failed_layers.add(step.layer)
    return best, best_error


def sensitivity(ctx) -> None:
    with ctx.stage("screening"):
        found = screen(ctx)
    with ctx.stage("planning"):
        steps = plan(ctx, found)
        guess = first_guess(ctx, steps)
    if not steps:
        ctx.note("sensitivity: no layer can be quantized alone within the budget; all kept float")
        everything_float = apply_steps(ctx, steps, 0, found)
        ctx.accept(everything_float, ctx.measure(everything_float, "all candidates float"))
        return
    with ctx.stage("confirmation"):
        steps, known = gentlest_first(ctx, steps, guess, found)
    best, best_error = verified(ctx, steps, max(known) if known else guess, found, known)
    ctx.accept(best, best_error)


def gentlest_first(ctx, steps: List[Step], guess: int, found: Screen) -> Tuple[List[Step], Dict[int, float]]:
    """Taking every layer out of float first saves the most bytes (4 bytes a weight down to 1 or
    less); where predictions leave some layers' first step after the first guess, measure all
    first steps together (on every sample): when they meet the budget, they lead the plan and
    the search starts from there. Returns ``(steps, {count: measured error})``."""
    seen, first, rest = set(), [], []
    for step in steps:
        (rest if step.layer in seen else first).append(step)
        seen.add(step.layer)
    if all(step in steps[:guess] for step in first):
        return steps, {}
    ordered = first + rest
    error = confirmed(ctx, apply_steps(ctx, ordered, len(first), found),
                      f"plan: every layer at its first setting ({len(first)} steps)", quick=False)
    if not ctx.meets(error):
        return steps, {}
    return ordered, {len(first): error}


def verified(ctx, steps: List[Step], guess: int, found: Screen, known: Optional[Dict[int, float]] = None
             ) -> Tuple[Dict[str, LayerSetting], float]:
    """Confirm on the quick samples, then verify on every sample. When the quick samples were
    too optimistic (the host has then added the sample that missed to them), confirm on them
    once more below their first answer; after that, on every sample."""
    top: Optional[int] = None
    for _ in range(VERIFY_ROUNDS):
        best, best_error, count = confirm(ctx, steps, guess if top is None else top, found, quick=True, top=top,
                                          known=known if top is None else None)
        with ctx.stage("verification"):
            error = ctx.measure_until_miss(best, "verify the plan on every sample")
        if ctx.meets(error):
            return best, error
        top = count
    best, best_error, _ = confirm(ctx, steps, top, found, quick=False, top=top)
    return best, best_error


def confirm(ctx, steps: List[Step], guess: int, found: Screen, quick: bool, top: Optional[int] = None,
            known: Optional[Dict[int, float]] = None) -> Tuple[Dict[str, LayerSetting], float, int]:
    """``(settings, error, prefix length)``: the longest prefix within the budget, refined."""
    with ctx.stage("confirmation"):
        count, measured = longest_prefix(ctx, steps, guess, found, quick, top, known)
        best = apply_steps(ctx, steps, count, found)
        best_error = measured[count] if count else confirmed(ctx, best, "plan: all candidates float", quick)
    with ctx.stage("refine"):
        failed = {steps[count].layer} if count < len(steps) and count + 1 in measured else set()
        best, best_error = refine(ctx, steps, count, best, best_error, failed, found, quick,
                                  REFINE_TRIALS if quick else REFINE_TRIALS // 2)
    return best, best_error, count


@hookimpl
def mnnq_search_strategies():
    yield SearchStrategy(
        name="sensitivity",
        summary="per-layer error at bits 8..2 and every block size, then the smallest file under the rate",
        run=sensitivity,
        order=5,
        default=True,
        presets=("sensitivity",),
    )
