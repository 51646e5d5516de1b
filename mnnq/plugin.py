"""Everything a plugin author needs, in one module: ``from mnnq.plugin import ...``.

The built-in plugins (``plugins/``, installed as ``mnnq_plugins``) import only from here, exactly
as a third-party package does; ``tests/test_plugin_api.py`` keeps it so.

* the hook marker: :data:`hookimpl`;
* the records hooks yield: :class:`WeightMethod`, :class:`FeatureMethod`, :class:`SearchStrategy`
  (with its phases :data:`SEARCH` / :data:`FINISH`), :class:`Metric`;
* what strategies work on: :class:`SearchContext` (the contract of ``run(ctx)``), :class:`Layer`,
  :class:`LayerSetting`, :data:`FLOAT_BITS`, :data:`PER_CHANNEL`, :class:`Trial`,
  :class:`StopSearch`;
* what feature methods return: :class:`ActivationObserver` (the contract) and :class:`Observer`
  (a base class with a no-op ``end_batch``);
* numeric helpers that match MNN 3.6.1 bit for bit: weight quantize-dequantize and underflow
  checks (``qdq_*``, ``underflows_*``, ``channel_scales_max_abs``), MNN's rounding
  (``c_round``), streaming activation statistics (:class:`AbsHistogram`, ``min_max``) and
  activation params from a range (``range_params``, ``clip_negative_tail``);
* :class:`BadInput`: raise it for a condition the user can fix (one line, exit 2).
"""
from mnnq.contracts import ActivationObserver, Observer, SearchContext, StopSearch, Trial
from mnnq.errors import BadInput
from mnnq.hookspecs import hookimpl
from mnnq.layers import FLOAT_BITS, PER_CHANNEL, Layer, LayerSetting
from mnnq.measure import cosine_similarity
from mnnq.quantize.stats import AbsHistogram, clip_negative_tail, min_max, range_params
from mnnq.records import FINISH, SEARCH, FeatureMethod, Metric, SearchStrategy, WeightMethod
from mnnq.weightquant import (c_round, channel_scales_max_abs, qdq_hqq, qdq_max_abs, qdq_min_max, underflows_hqq,
                              underflows_max_abs, underflows_min_max)

__all__ = [
    "hookimpl",
    "WeightMethod", "FeatureMethod", "SearchStrategy", "Metric", "SEARCH", "FINISH",
    "SearchContext", "Layer", "LayerSetting", "FLOAT_BITS", "PER_CHANNEL", "Trial", "StopSearch",
    "ActivationObserver", "Observer",
    "qdq_max_abs", "qdq_min_max", "qdq_hqq", "underflows_max_abs", "underflows_min_max", "underflows_hqq",
    "channel_scales_max_abs", "c_round", "AbsHistogram", "min_max", "range_params", "clip_negative_tail",
    "cosine_similarity",
    "BadInput",
]
