"""Run a model from a cut in its main graph, on the float activations cached at that cut.

When a trial changes only layers at op position ``p`` or later, every tensor computed before
``p`` is the float model's: the run can start at ``p``. MNN loads a module between any named
tensors (``nn.load_module_from_file(path, inputs, outputs)``); the suffix module's inputs are
the cut's *frontier*: the tensors produced before ``p`` (model inputs included) that ops at
``p`` or later read. Tensors computed from no model input (constants) are left out: loading the
suffix walks back to them and keeps them. The frontier's float values come from one run per
sample of a float module whose outputs are every frontier tensor any cut needs, kept as MNN
vars (their own memory layout: read back to numpy and fed again, the packed NC4HW4 tensors lose
their layout; a module's output vars stay valid through its later runs). Measured on a
YOLOv8n: the forward of a probe of one conv costs 0.33x of a whole forward, averaged over its
convs, with bit-identical outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mnnq.mnn_backend.inventory import _OP_INPUTS, _OP_OUTPUTS, model_graphs, op_tensor_indexes, reading_model

# Float activations kept for all samples together (a YOLOv8n at 320 px needs 22 MB a sample, the
# PP-OCR detector 33 MB); a sample that would go over runs whole.
MAX_CACHED_BYTES = 512 * 2 ** 20


@dataclass
class GraphCuts:
    """Where the main graph of a model file can be cut. ``producer[t]``: the position of the op
    writing tensor ``t`` (absent: nobody writes it); ``last_reader[t]``: the last position
    reading it."""

    names: List[str]
    input_names: List[str]
    output_names: List[str]
    producer: Dict[int, int]
    last_reader: Dict[int, int]
    constant: set  # tensors computed from no model input (the suffix module rebuilds them)
    index: Dict[str, int] = field(default_factory=dict)  # tensor name -> index
    _frontiers: Dict[int, Optional[Tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, input_names: Sequence[str], output_names: Sequence[str]) -> Optional["GraphCuts"]:
        """The cuts of ``path``'s main graph; None when its ops are not in an order where every
        tensor is written before it is read (then no cut is safe)."""
        with reading_model(path) as buf:
            graph = model_graphs(buf, subgraphs=False)[0]
            names = graph.tensor_names(buf)
            ops = [(op_tensor_indexes(buf, op, _OP_INPUTS), op_tensor_indexes(buf, op, _OP_OUTPUTS))
                   for op in graph.ops]
        index = {name: i for i, name in enumerate(names)}
        if any(n not in index for n in [*input_names, *output_names]) or \
                any(not 0 <= t < len(names) for ins, outs in ops for t in [*ins, *outs]):
            return None  # a tensor index outside the name table (a damaged file): no cut is safe
        fed = {index[n] for n in input_names}
        producer: Dict[int, int] = {}
        last_reader: Dict[int, int] = {}
        constant: set = set()
        for position, (ins, outs) in enumerate(ops):
            for t in ins:
                if t not in producer and t not in fed:
                    return None  # read before it is written
                last_reader[t] = position
            for t in outs:
                producer.setdefault(t, position)
                if t not in fed and all(i in constant for i in ins):
                    constant.add(t)
        return cls(names, list(input_names), list(output_names), producer, last_reader, constant, index)

    def frontier(self, position: int) -> Optional[Tuple[str, ...]]:
        """The tensors a run starting at op ``position`` is fed, model inputs first; None when
        a model output is written before ``position`` (the suffix would not write it)."""
        if position not in self._frontiers:
            if any(self.producer.get(self.index[n], -1) < position for n in self.output_names):
                self._frontiers[position] = None
            else:
                inner = [self.names[t] for t, at in sorted(self.producer.items(), key=lambda kv: kv[1])
                         if at < position and self.last_reader.get(t, -1) >= position
                         and t not in self.constant and self.names[t] not in self.input_names]
                self._frontiers[position] = (*self.input_names, *inner)
        return self._frontiers[position]


class FloatActivations:
    """Per sample, the float values of every frontier tensor the given cut positions need,
    as MNN vars (one float module over the model file, run once per sample)."""

    def __init__(self, path: Path, cuts: GraphCuts, positions: Sequence[int], threads: int = 1):
        self.path = Path(path)
        self.cuts = cuts
        wanted: List[str] = []
        for position in sorted(set(positions)):
            for name in cuts.frontier(position) or ():
                if name not in cuts.input_names and name not in wanted:
                    wanted.append(name)
        self.tensors = wanted
        self._threads = threads
        self._samples: Dict[str, Optional[Dict[str, object]]] = {}
        self._model = None  # loaded at the first sample
        self.cached_bytes = 0
        self._full = False  # a sample did not fit: later ones are not computed either

    def values(self, sample: str, inputs: Mapping[str, np.ndarray]) -> Optional[Dict[str, object]]:
        """``{tensor: var}`` for ``sample`` (model inputs included); None when keeping them
        would take the samples' cache over MAX_CACHED_BYTES."""
        if sample not in self._samples:
            self._samples[sample] = None if self._full else self._compute(inputs)
        return self._samples[sample]

    def _compute(self, inputs: Mapping[str, np.ndarray]) -> Optional[Dict[str, object]]:
        from mnnq.mnn_backend.runtime import LoadedModel

        if self._model is None:
            self._model = LoadedModel(self.path, self.cuts.input_names, self.tensors or self.cuts.input_names,
                                      threads=self._threads, quick_init=True)
        feeds = self._model.feeds(inputs)
        values = dict(zip(self.cuts.input_names, feeds))
        if self.tensors:
            outs = self._model.forward_vars(feeds)
            size = sum(int(np.prod(v.shape)) * 4 for v in outs)
            if self.cached_bytes + size > MAX_CACHED_BYTES:
                self._full = True
                return None
            self.cached_bytes += size
            values.update(zip(self.tensors, outs))
        return values
