"""Measurements remembered by settings, so several searches over one model share their trials.

``mnnq tradeoff --rates`` runs the pipeline once per rate. The screening trials (each layer
alone at its probe setting) do not depend on the rate, and neither does any other measurement:
an error is a property of the settings, the samples and the memory mode. :func:`remembering`
wraps an :class:`~mnnq.autoquant.context.Evaluation` so that settings measured once are not
run again. A run stopped at the first sample over a limit (``until_miss``) is kept as a lower
bound: it answers a later question whose limit it also exceeds, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Tuple

from mnnq.autoquant.context import Evaluation
from mnnq.autoquant.evaluators import settings_key
from mnnq.layers import LayerSetting
from mnnq.measure import Measurement

Key = Tuple[Tuple[Tuple[str, int, int], ...], str, tuple]


def memo_key(settings: Mapping[str, LayerSetting], memory_mode: str, samples: tuple) -> Key:
    """``samples``: the quick samples' names for a quick measurement, ``()`` for the whole set."""
    return settings_key(settings), memory_mode, samples


@dataclass
class Memory:
    whole: Dict[Key, Measurement] = field(default_factory=dict)
    partial: Dict[Key, Tuple[str, Measurement]] = field(default_factory=dict)  # stopped at a miss in a metric
    hits: int = 0


def remembering(evaluation: Evaluation, memory: Memory) -> Evaluation:
    """``evaluation`` with measurements looked up in (and added to) ``memory``."""

    def which(quick: bool) -> tuple:
        return tuple(evaluation.quick_key()) or ("quick",) if quick else ()

    def measure(settings, memory_mode, quick=False) -> Measurement:
        key = memo_key(settings, memory_mode, which(quick))
        whole = (key[0], memory_mode, ())
        if key not in memory.whole and quick and whole in memory.whole:
            key = whole  # the whole test set answers a quick question
        if key in memory.whole:
            memory.hits += 1
            return memory.whole[key]
        result = memory.whole[key] = evaluation.measure(settings, memory_mode, quick)
        return result

    def until_miss(settings, memory_mode, metric, limit, quick=False) -> Tuple[Measurement, bool]:
        key = memo_key(settings, memory_mode, which(quick))
        if key in memory.whole:
            memory.hits += 1
            return memory.whole[key], True
        stopped = memory.partial.get(key)
        if stopped is not None and stopped[0] == metric and stopped[1].error(metric) > limit:
            memory.hits += 1
            return stopped[1], False
        result, complete = evaluation.until_miss(settings, memory_mode, metric, limit, quick)
        if complete:
            memory.whole[key] = result
        else:
            memory.partial[key] = (metric, result)
        return result, complete

    def many(batch, memory_mode, quick) -> List[Measurement]:
        results: List[Optional[Measurement]] = [None] * len(batch)
        todo = []
        for i, settings in enumerate(batch):
            key = memo_key(settings, memory_mode, which(quick))
            if key in memory.whole:
                memory.hits += 1
                results[i] = memory.whole[key]
            else:
                todo.append(i)
        if todo:
            fresh = (evaluation.many([batch[i] for i in todo], memory_mode, quick) if evaluation.many is not None
                     else [evaluation.measure(batch[i], memory_mode, quick) for i in todo])
            for i, result in zip(todo, fresh):
                results[i] = memory.whole[memo_key(batch[i], memory_mode, which(quick))] = result
        return results  # type: ignore[return-value]

    return replace(evaluation, measure=measure, until_miss=until_miss if evaluation.until_miss is not None else None,
                   many=many)
