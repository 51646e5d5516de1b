"""mnnq's plugin host: one pluggy manager that loads the ``mnnq`` entry-point group.

Built-ins and third-party plugins are found the same way. A plugin that fails to import or
whose hook raises is reported (``manager.failures``) and skipped; two records with the same
name are an error naming both plugins. ``MNNQ_DISABLE_PLUGINS=name,...`` blocks plugins by
entry-point name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import pluggy

from mnnq.errors import PluginError
from mnnq.hookspecs import PROJECT, MnnqSpecs
from mnnq.records import FeatureMethod, Metric, SearchStrategy, WeightMethod

DISABLE_ENV = "MNNQ_DISABLE_PLUGINS"

# hook name -> (record type, human name of the kind)
KINDS: Dict[str, Tuple[type, str]] = {
    "mnnq_weight_methods": (WeightMethod, "weight method"),
    "mnnq_feature_methods": (FeatureMethod, "feature method"),
    "mnnq_search_strategies": (SearchStrategy, "search strategy"),
    "mnnq_metrics": (Metric, "metric"),
}


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    error: str


class MnnqPluginManager(pluggy.PluginManager):
    def __init__(self, disabled: Optional[Iterable[str]] = None):
        super().__init__(PROJECT)
        self.add_hookspecs(MnnqSpecs)
        self.failures: List[PluginFailure] = []
        self._entry_points: set = set()  # plugin names registered from the entry-point group
        self._cache: Dict[str, Dict[str, object]] = {}
        self._owners: Dict[Tuple[str, str], str] = {}
        env = os.environ.get(DISABLE_ENV, "")
        self.disabled = {n.strip() for n in env.split(",") if n.strip()} | set(disabled or ())
        for name in self.disabled:
            self.set_blocked(name)

    def load_entrypoints(self) -> None:
        """Register every plugin of the ``mnnq`` entry-point group; failures are recorded."""
        eps = metadata.entry_points()
        group = eps.select(group=PROJECT) if hasattr(eps, "select") else eps.get(PROJECT, [])
        for ep in sorted(group, key=lambda e: e.name):
            if self.is_blocked(ep.name) or self.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the tool
                self.failures.append(PluginFailure(ep.name, f"failed to load: {exc.__class__.__name__}: {exc}"))
                continue
            try:
                self.register(plugin, name=ep.name)
                self._entry_points.add(ep.name)
            except Exception as exc:
                self.failures.append(PluginFailure(ep.name, f"failed to register: {exc}"))
        self.check_pending()

    def _collect(self, hook_name: str) -> Dict[str, object]:
        """``{record name: record}`` of one hook. Each plugin's implementation is called through
        pluggy (a caller of the hook without the other plugins' implementations: wrappers,
        tracing and blocking apply), so a plugin that raises is skipped on its own and every
        record is known to come from its plugin."""
        if hook_name in self._cache:
            return self._cache[hook_name]
        record_type, kind = KINDS[hook_name]
        found: Dict[str, object] = {}
        owner: Dict[str, str] = {}
        for plugin_name, records in self._per_plugin(hook_name):
            for record in records:
                if not isinstance(record, record_type):
                    self._fail(plugin_name,
                               f"{hook_name} yielded {type(record).__name__}, expected {record_type.__name__}")
                    continue
                if record.name in found:
                    raise PluginError(f"two plugins define the {kind} '{record.name}': "
                                      f"{owner[record.name]} and {plugin_name}; disable one with {DISABLE_ENV}")
                found[record.name] = record
                owner[record.name] = plugin_name
        self._cache[hook_name] = found
        self._owners.update({(hook_name, n): p for n, p in owner.items()})
        return found

    def _per_plugin(self, hook_name: str) -> Iterator[Tuple[str, list]]:
        """``(plugin name, its records)`` for each plugin implementing ``hook_name``, in pluggy's
        call order (the last registered first); a plugin whose hook raises is recorded in ``failures`` and skipped."""
        hook = getattr(self.hook, hook_name)
        impls = [impl for impl in reversed(hook.get_hookimpls()) if not (impl.hookwrapper or impl.wrapper)]
        for impl in impls:
            others = [other.plugin for other in impls if other.plugin is not impl.plugin]
            caller = self.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                results = caller()
                records = [record for result in results for record in (result or ())]
            except Exception as exc:  # a broken plugin must not break the tool
                self._fail(impl.plugin_name, f"{hook_name} raised {exc.__class__.__name__}: {exc}")
                continue
            yield impl.plugin_name, records

    def _fail(self, plugin: str, error: str) -> None:
        failure = PluginFailure(plugin, error)
        if failure not in self.failures:  # hooks are collected again after register/unregister
            self.failures.append(failure)

    def collect_all(self) -> None:
        """Collect the records of every hook now, so ``failures`` also lists hooks that raise
        (raises :class:`PluginError` on duplicate names)."""
        for hook_name in KINDS:
            self._collect(hook_name)

    def from_entry_point(self, hook_name: str, name: str) -> bool:
        """Whether the record ``name`` comes from an installed plugin (one that another process
        loading the entry points also has), not from a plugin registered here by hand."""
        return self.owner_of(hook_name, name) in self._entry_points

    def owner_of(self, hook_name: str, name: str) -> str:
        self._collect(hook_name)
        return self._owners.get((hook_name, name), "?")

    def register(self, plugin, name=None):
        self._cache.clear()
        return super().register(plugin, name=name)

    def unregister(self, plugin=None, name=None):
        self._cache.clear()
        return super().unregister(plugin=plugin, name=name)

    # -- the records of each kind ----------------------------------------------------------
    def weight_methods(self) -> Dict[str, WeightMethod]:
        return self._collect("mnnq_weight_methods")  # type: ignore[return-value]

    def feature_methods(self) -> Dict[str, FeatureMethod]:
        return self._collect("mnnq_feature_methods")  # type: ignore[return-value]

    def search_strategies(self) -> Dict[str, SearchStrategy]:
        return self._collect("mnnq_search_strategies")  # type: ignore[return-value]

    def metrics(self) -> Dict[str, Metric]:
        return self._collect("mnnq_metrics")  # type: ignore[return-value]

    def weight_method(self, name: str) -> WeightMethod:
        return self._pick("mnnq_weight_methods", name)  # type: ignore[return-value]

    def feature_method(self, name: str) -> FeatureMethod:
        return self._pick("mnnq_feature_methods", name)  # type: ignore[return-value]

    def search_strategy(self, name: str) -> SearchStrategy:
        return self._pick("mnnq_search_strategies", name)  # type: ignore[return-value]

    def metric(self, name: str) -> Metric:
        return self._pick("mnnq_metrics", name)  # type: ignore[return-value]

    def listing(self) -> List[Tuple[str, str, str, str]]:
        """``(kind, record name, plugin, summary)`` of every record, by kind then name (what
        ``mnnq plugins`` prints)."""
        rows = []
        for hook_name, (_, kind) in KINDS.items():
            for name, record in sorted(self._collect(hook_name).items()):
                rows.append((kind, name, self.owner_of(hook_name, name), record.summary))
        return rows

    def _pick(self, hook_name: str, name: str):
        records = self._collect(hook_name)
        if name not in records:
            kind = KINDS[hook_name][1]
            known = ", ".join(sorted(records)) or "none loaded"
            raise PluginError(f"unknown {kind} '{name}'; available: {known}")
        return records[name]


def get_plugin_manager(load: bool = True) -> MnnqPluginManager:
    """A fresh manager with every installed plugin loaded and collected (tests register fakes
    on it): ``failures`` lists plugins that failed to import and hooks that raised."""
    pm = MnnqPluginManager()
    if load:
        pm.load_entrypoints()
        pm.collect_all()
    return pm
