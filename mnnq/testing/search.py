"""A search context over a stand-in evaluator, for unit-testing a search strategy without a
model: ``toy = search_context(layers, error_of, target=...)``, then ``strategy.run(toy.ctx)``.

``toy.ctx`` is exactly what auto-quant gives a strategy (only the members of
:class:`mnnq.plugin.SearchContext`, read-only); ``toy.search`` is the state behind it (its
``notes`` and ``guarded`` too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from mnnq.autoquant.context import Evaluation, Search, strategy_view
from mnnq.contracts import SearchContext
from mnnq.layers import Layer, LayerSetting
from mnnq.measure import Measurement

ErrorOf = Callable[[Mapping[str, LayerSetting], str], float]


@dataclass
class ToySearch:
    ctx: SearchContext
    search: Search


class _Oracle:
    def __init__(self, weight_noise, underflows):
        self._noise, self._underflows = weight_noise, underflows

    def weight_noise(self, name: str, setting: LayerSetting) -> Optional[float]:
        return self._noise(name, setting) if self._noise else None

    def underflows(self, name: str, setting: LayerSetting) -> bool:
        return bool(self._underflows(name, setting)) if self._underflows else False


def search_context(layers: Mapping[str, Layer], error_of: ErrorOf, *, target: float, metric: str = "toy",
                   settings: Optional[Mapping[str, LayerSetting]] = None, candidates: Optional[Sequence[str]] = None,
                   exact: bool = True, weight_noise: Optional[Callable[[str, LayerSetting], Optional[float]]] = None,
                   underflows: Optional[Callable[[str, LayerSetting], bool]] = None,
                   memory_modes=("low", "normal"), allow_low_bits: bool = True, allow_blocks: bool = True,
                   deadline: Optional[float] = None, unmeasured_note: str = "initial") -> ToySearch:
    """``error_of(settings, memory_mode)`` is the stand-in model's error; every layer starts at
    ``settings`` (default 8 bits per channel); ``candidates`` default to every layer, smallest
    first. ``exact`` says whether trials count as runs of the written model."""

    def measure(s, memory_mode, quick=False) -> Measurement:
        return Measurement({metric: float(error_of(s, memory_mode))})

    names = list(candidates) if candidates is not None else sorted(layers, key=lambda n: layers[n].weight_count)
    search = Search(layers, settings or {n: LayerSetting(8, -1) for n in layers}, names, target, metric,
                    Evaluation("exact" if exact else "fast", exact, measure), _Oracle(weight_noise, underflows),
                    memory_modes=tuple(memory_modes), allow_low_bits=allow_low_bits, allow_blocks=allow_blocks,
                    deadline=deadline, unmeasured_note=unmeasured_note)
    return ToySearch(strategy_view(search), search)


def manager_with(plugins: Mapping[str, object]):
    """A fresh plugin manager with only ``plugins`` (``{plugin name: module or object}``)
    registered: nothing installed is loaded."""
    from mnnq.plugin_manager import MnnqPluginManager

    pm = MnnqPluginManager()
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return pm
