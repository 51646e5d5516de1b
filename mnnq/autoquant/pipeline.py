"""Which search strategies an auto-quant run executes, decided from the strategies' own data.

* Without ``--strategy``: every strategy with ``default=True``.
* ``--strategy NAME,...``: each NAME is a preset (a name some strategy lists in ``presets``:
  every strategy listing it) or a strategy; the order given is kept.
* A strategy whose ``disabled_by`` names a switch the user turned off is dropped.
* Search-phase strategies run before finish-phase ones (each group by ``order`` when it comes
  from the default pipeline or a preset); the finish phase runs again on exact measurements
  when the written model misses a budget the simulation met.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from mnnq.records import FINISH, SEARCH, SearchStrategy


@dataclass(frozen=True)
class Pipeline:
    search: Tuple[SearchStrategy, ...]
    finish: Tuple[SearchStrategy, ...]

    @property
    def names(self) -> List[str]:
        return [s.name for s in (*self.search, *self.finish)]


def presets(strategies: Mapping[str, SearchStrategy]) -> Dict[str, List[SearchStrategy]]:
    """``{preset name: its strategies by phase and order}``."""
    found: Dict[str, List[SearchStrategy]] = {}
    for strategy in strategies.values():
        for preset in strategy.presets:
            found.setdefault(preset, []).append(strategy)
    return {name: _ordered(members) for name, members in found.items()}


def _ordered(strategies: Sequence[SearchStrategy]) -> List[SearchStrategy]:
    return sorted(strategies, key=lambda s: (s.phase != SEARCH, s.order, s.name))


def choose(strategies: Mapping[str, SearchStrategy], requested: Optional[Sequence[str]],
           switched_off: Sequence[str], pick) -> Pipeline:
    """The pipeline for ``requested`` names (None: the default one). ``switched_off`` lists the
    auto-quant switches turned off (``select_bits``, ``select_block``); ``pick(name)`` returns a
    strategy by name or raises the plugin manager's error for an unknown one."""
    if requested:
        named = presets(strategies)
        chosen: List[SearchStrategy] = []
        for name in requested:
            for strategy in named.get(name) or [pick(name)]:
                if strategy not in chosen:
                    chosen.append(strategy)
    else:
        chosen = _ordered([s for s in strategies.values() if s.default])
    kept = [s for s in chosen if not set(s.disabled_by) & set(switched_off)]
    return Pipeline(tuple(s for s in kept if s.phase == SEARCH), tuple(s for s in kept if s.phase == FINISH))
