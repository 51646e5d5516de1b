"""The hooks mnnq plugins implement.

Every hook yields (or returns a list of) records; plugin authors import them, and the marker,
from :mod:`mnnq.plugin`. Built-in plugins in ``plugins/`` use exactly these hooks and register
through the ``mnnq`` entry-point group, as a third-party package would::

    # pyproject.toml of your package
    [project.entry-points.mnnq]
    my_metric = "my_package.my_metric"
"""
from __future__ import annotations

from typing import Iterable

import pluggy

from mnnq.records import FeatureMethod, Metric, SearchStrategy, WeightMethod

PROJECT = "mnnq"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MnnqSpecs:
    @hookspec
    def mnnq_weight_methods(self) -> Iterable[WeightMethod]:
        """Yield weight-only quantization methods.

        Example::

            import numpy as np
            from mnnq.plugin import WeightMethod, hookimpl

            @hookimpl
            def mnnq_weight_methods():
                yield WeightMethod(
                    name="identity", summary="keeps weights float (for testing)",
                    asymmetric=False, hqq=False,
                    quantize_dequantize=lambda w, bits, block: w,
                    underflows=lambda w, bits, block: False)
        """

    @hookspec
    def mnnq_feature_methods(self) -> Iterable[FeatureMethod]:
        """Yield activation calibration methods for full INT8 quantization.

        Example::

            import numpy as np
            from mnnq.plugin import FeatureMethod, Observer, hookimpl

            class AbsMax(Observer):
                def __init__(self): self.m = 0.0
                def update(self, x): self.m = max(self.m, float(np.abs(x).max()))
                def finish(self, bits, clamp): return (self.m / clamp or 1.0, 0)

            @hookimpl
            def mnnq_feature_methods():
                yield FeatureMethod(name="absmax", summary="max |x| / clamp",
                                    make_observer=AbsMax)
        """

    @hookspec
    def mnnq_search_strategies(self) -> Iterable[SearchStrategy]:
        """Yield auto-quant search strategies.

        Example::

            from mnnq.plugin import SearchStrategy, hookimpl

            def all_eight_bits(ctx):
                changes = {n: ctx.setting(n).with_bits(8) for n in ctx.candidates}
                error = ctx.propose(changes, "all 8 bits")
                if ctx.meets(error):
                    ctx.accept(changes, error)

            @hookimpl
            def mnnq_search_strategies():
                yield SearchStrategy(name="all-8", summary="every layer at 8 bits",
                                     run=all_eight_bits)
        """

    @hookspec
    def mnnq_metrics(self) -> Iterable[Metric]:
        """Yield error metrics.

        Example::

            import numpy as np
            from mnnq.plugin import Metric, hookimpl

            @hookimpl
            def mnnq_metrics():
                yield Metric(name="max_abs", summary="max |out - ref|",
                             per_output=lambda ref, out: float(np.abs(out - ref).max()))
        """
