"""Which samples a trial runs on: a small quick subset for screening and tentative decisions,
the whole test set to confirm.

The quick subset starts as the QUICK_SAMPLES samples the deciding metric counts with the largest
reference range (:func:`mnnq.measure.informative_samples`). With ``learning`` on, a whole-set
measurement teaches it: the sample with the largest error joins it, up to QUICK_LIMIT samples,
so that quick decisions look at the samples that miss (without it, a second round of quick
decisions would repeat the first one's measurements and miss again). When the quick
samples met the budget with some settings and the whole set misses with them (a plan verified),
the simulation runs every sample and the samples over the budget join, worst first, up to
QUICK_LIMIT: stopping at the first miss taught the quick set whichever sample missed first, not
the worst one, and the next round could miss again (MiniLM's 8-sample run: three rounds of
confirmation and refine became two, 25 s -> 21 s; YOLOv8n pays about 0.3 s for the extra samples).
(Screening on one sample instead of two halves the cost of a multi-sample set's screening but,
measured on a YOLOv8n and PP-OCR's classifier, gave 9 % and 38 % larger files.) (``mnnq tradeoff``
turns learning off: its searches share quick measurements, which must keep one meaning.) A run
that may stop at the first miss takes first the sample with the largest error in the last
whole-set measurement, then the quick samples, then the rest: a miss is found sooner.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from mnnq.measure import Measurement, informative_samples, informative_subset
from mnnq.records import Metric
from mnnq.testset import TestSet

QUICK_SAMPLES = 2    # screening: the most informative samples
QUICK_LIMIT = 4      # the worst samples of whole-set runs join them, up to this many


class QuickSamples:
    def __init__(self, testset: TestSet, metric: Metric, decides: str):
        self.testset = testset
        self.decides = decides
        informative = informative_samples(testset, metric)
        self._counted = set(informative)
        self._index = {sample.name: i for i, sample in enumerate(testset.samples)}
        self.indices: List[int] = informative_subset(testset, metric, QUICK_SAMPLES, informative)
        self.view = self._view()
        self.worst: Optional[int] = None  # the sample with the largest error in the last whole-set run
        self.learning = True

    def _view(self) -> TestSet:
        samples = [self.testset.samples[i] for i in self.indices]
        return TestSet(self.testset.root, self.testset.input_names, self.testset.output_names, samples)

    @property
    def key(self) -> Tuple[str, ...]:
        """The quick samples' names (what a quick measurement means right now)."""
        return tuple(self.testset.samples[i].name for i in self.indices)

    def order(self) -> List[int]:
        """Every sample index: the last worst one, the quick ones, then the rest."""
        first = ([self.worst] if self.worst is not None else []) + [i for i in self.indices if i != self.worst]
        return first + [i for i in range(len(self.testset.samples)) if i not in first]

    def use(self, indices) -> None:
        """Make ``indices`` the quick samples (a ``--jobs`` worker follows the auto-quant process's)."""
        wanted = sorted(indices)
        if wanted != self.indices:
            self.indices = wanted
            self.view = self._view()

    def can_grow(self) -> bool:
        return self.learning and len(self.indices) < QUICK_LIMIT

    def learn(self, measurement: Measurement, limit: Optional[float] = None) -> None:
        """Remember the sample with the deciding metric's largest error in ``measurement``;
        with ``limit``, every sample over it joins the quick ones too (up to QUICK_LIMIT)."""
        worst, worst_error = None, -1.0
        for row in measurement.details:
            value = row.values.get(self.decides)
            if value is not None and value > worst_error:
                worst, worst_error = self._index.get(row.sample), value
        if worst is None or worst not in self._counted:
            return
        self.worst = worst
        if not self.learning:
            return
        joining = [worst]
        if limit is not None:
            over = sorted(((row.values.get(self.decides), self._index.get(row.sample)) for row in measurement.details
                           if (row.values.get(self.decides) or 0.0) > limit), key=lambda pair: pair[0], reverse=True)
            joining += [index for _, index in over]
        added: List[int] = []
        for index in joining:
            if index in self._counted and index not in self.indices + added \
                    and len(self.indices) + len(added) < QUICK_LIMIT:
                added.append(index)
        if added:
            self.indices = sorted(self.indices + added)
            self.view = self._view()
